//! The bench's results and the README's figures.
//!
//! `vmmci-bench` writes one JSON file per run into `bench/results/`
//! (`<UTC date>-<short rev>.json`): where and on what it ran, the counts it
//! used, and every raw point of every figure with its summary (n, median,
//! max; p99 only where n ≥ 100). `vmmci-figures` renders the README's figure
//! tables from the newest file there and rewrites the README between the
//! marker comments `<!-- figures:NAME:begin -->` / `<!-- figures:NAME:end -->`;
//! the test `readme_figures` fails when the README differs from what the
//! newest file gives. The targets the bench's `--check` enforces live here
//! too (`targets.rs`), so the README's target column and the check cannot
//! disagree.
//!
//! A figure in the JSON:
//!
//! ```json
//! {"unit": "ms", "points": [137.2, 141.9], "n": 2, "median": 139.55, "min": 137.2, "max": 141.9}
//! ```
//!
//! with `"p99"` only when n ≥ 100, and for signed quantities (guest − host)
//! an `"abs"` object with the same summary of |x|.
//!
//! Here: a figure, its summary, and reading it back. The results files'
//! names in `results.rs`, the targets and `--check` in `targets.rs`, the
//! README's tables in `tables.rs` (their cells in `cells.rs`, the line on
//! where the figures come from in `provenance.rs`), the marker rewrite in
//! `readme.rs`.

mod cells;
mod provenance;
mod rates;
mod readme;
mod results;
mod tables;
mod targets;
#[cfg(test)]
mod tests;

pub use readme::{begin_marker, end_marker, generate, rewrite, SECTIONS};
pub use results::{newest, result_file_name, results_dir, utc};
pub use tables::sections;
pub use targets::{
    checks, Check, ACK_IDLE_SLACK_MS, ACK_LOAD_MAX_MS, BINARY_MAX_BYTES, HELD_MAX_MS,
    HOST_SHUTDOWN_S, IDLE_USER_MAX_PERCENT, RESIDUAL_MAX_MS, RSS_MAX_KIB, STOP_LONG_S,
};

use serde_json::{json, Map, Value};

/// The JSON layout's version (`"schema"`).
pub const SCHEMA: u64 = 1;
/// Below this many points there is no p99.
pub const P99_MIN_N: usize = 100;

/// n, median, min, max (and p99 where n ≥ 100) of some points.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p99: Option<f64>,
}

impl Summary {
    /// What a "p99/max" target is held to: p99 where there is one, else max.
    pub fn tail(&self) -> f64 {
        self.p99.unwrap_or(self.max)
    }
    fn tail_name(&self) -> &'static str {
        if self.p99.is_some() {
            "p99"
        } else {
            "max"
        }
    }
}

/// The summary of `points` (`None` when empty). The median of an even count
/// is the mean of the middle two; p99 is the nearest rank.
pub fn summarize(points: &[f64]) -> Option<Summary> {
    if points.is_empty() {
        return None;
    }
    let mut s = points.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    let p99 = (n >= P99_MIN_N).then(|| {
        let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
        s[rank - 1]
    });
    Some(Summary {
        n,
        median,
        min: s[0],
        max: s[n - 1],
        p99,
    })
}

fn summary_json(s: &Summary) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("n".into(), json!(s.n));
    m.insert("median".into(), json!(s.median));
    m.insert("min".into(), json!(s.min));
    m.insert("max".into(), json!(s.max));
    if let Some(p) = s.p99 {
        m.insert("p99".into(), json!(p));
    }
    m
}

/// A figure: its unit, every point, and their summary.
pub fn figure(unit: &str, points: &[f64]) -> Value {
    let mut m = Map::new();
    m.insert("unit".into(), json!(unit));
    m.insert("points".into(), json!(points));
    if let Some(s) = summarize(points) {
        m.extend(summary_json(&s));
    } else {
        m.insert("n".into(), json!(0));
    }
    Value::Object(m)
}

/// A figure of a signed quantity (guest − host): also the summary of |x|.
pub fn signed_figure(unit: &str, points: &[f64]) -> Value {
    let mut v = figure(unit, points);
    let abs: Vec<f64> = points.iter().map(|x| x.abs()).collect();
    if let (Some(s), Value::Object(m)) = (summarize(&abs), &mut v) {
        m.insert("abs".into(), Value::Object(summary_json(&s)));
    }
    v
}

/// Milliseconds with microsecond resolution, for the JSON.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// A figure read back from the JSON, its summaries checked against its points.
#[derive(Clone, Debug)]
pub struct Fig {
    pub unit: String,
    pub points: Vec<f64>,
    pub s: Summary,
    /// Of |x|.
    pub abs: Summary,
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The figure at `path` under `v`: `Ok(None)` when absent, an error when it
/// is malformed or its stored summary does not match its points.
pub fn fig(v: &Value, path: &[&str]) -> Result<Option<Fig>, String> {
    let Some(cur) = path.iter().try_fold(v, |cur, p| cur.get(p)) else {
        return Ok(None);
    };
    let name = path.join(".");
    let unit = cur
        .get("unit")
        .and_then(Value::as_str)
        .ok_or(format!("{name}: no unit"))?
        .to_string();
    let points = points(cur, &name)?;
    let Some(s) = summarize(&points) else {
        return Ok(None);
    };
    let abs = summarize(&points.iter().map(|x| x.abs()).collect::<Vec<_>>())
        .expect("same length as points");
    for (stored, want, what) in [(Some(cur), &s, ""), (cur.get("abs"), &abs, ".abs")] {
        if stored.is_some_and(|o| !stored_summary_is(o, want)) {
            return Err(format!(
                "{name}{what}: the stored summary does not match the points ({want:?})"
            ));
        }
    }
    Ok(Some(Fig {
        unit,
        points,
        s,
        abs,
    }))
}

/// A figure's `"points"`, each a number.
fn points(figure: &Value, name: &str) -> Result<Vec<f64>, String> {
    figure
        .get("points")
        .and_then(Value::as_array)
        .ok_or(format!("{name}: no points"))?
        .iter()
        .map(|x| x.as_f64().ok_or(format!("{name}: a point is not a number")))
        .collect()
}

/// Whether the summary stored in `obj` is `want` (to rounding), with no
/// p99 where `want` has none.
fn stored_summary_is(obj: &Value, want: &Summary) -> bool {
    let got = |k: &str| obj.get(k).and_then(Value::as_f64);
    got("n") == Some(want.n as f64)
        && got("median").is_some_and(|x| close(x, want.median))
        && got("max").is_some_and(|x| close(x, want.max))
        && match want.p99 {
            Some(p) => got("p99").is_some_and(|x| close(x, p)),
            None => obj.get("p99").is_none(),
        }
}
