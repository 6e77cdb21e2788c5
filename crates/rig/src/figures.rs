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
//! too, so the README's target column and the check cannot disagree.
//!
//! A figure in the JSON:
//!
//! ```json
//! {"unit": "ms", "points": [137.2, 141.9], "n": 2, "median": 139.55, "min": 137.2, "max": 141.9}
//! ```
//!
//! with `"p99"` only when n ≥ 100, and for signed quantities (guest − host)
//! an `"abs"` object with the same summary of |x|.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// The JSON layout's version (`"schema"`).
pub const SCHEMA: u64 = 1;
/// Below this many points there is no p99.
pub const P99_MIN_N: usize = 100;
/// ACK of a `vmctl stop` on an idle guest: at most the poll interval plus this.
pub const ACK_IDLE_SLACK_MS: f64 = 100.0;
/// ACK under load: vmd's deadline.
pub const ACK_LOAD_MAX_MS: f64 = 3000.0;
/// |guest − host| after a host resume (vmd's SYNCRTC, the agent's step).
pub const RESIDUAL_MAX_MS: f64 = 1.0;
/// Clock policies: |guest − host| over the run, `discipline` and chrony.
pub const HELD_MAX_MS: f64 = 5.0;
/// Agent's idle CPU, user time, % of a core.
pub const IDLE_USER_MAX_PERCENT: f64 = 0.1;
pub const RSS_MAX_KIB: f64 = 8192.0;
pub const BINARY_MAX_BYTES: f64 = 4.0 * 1024.0 * 1024.0;
/// vmd's long timeout after the ACK of a `vmctl stop`, and its host-shutdown
/// budget (`rcctl stop vmd`).
pub const STOP_LONG_S: f64 = 120.0;
pub const HOST_SHUTDOWN_S: f64 = 30.0;

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
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return Ok(None),
        }
    }
    let name = path.join(".");
    let unit = cur
        .get("unit")
        .and_then(Value::as_str)
        .ok_or(format!("{name}: no unit"))?
        .to_string();
    let points: Vec<f64> = cur
        .get("points")
        .and_then(Value::as_array)
        .ok_or(format!("{name}: no points"))?
        .iter()
        .map(|x| x.as_f64().ok_or(format!("{name}: a point is not a number")))
        .collect::<Result<_, _>>()?;
    let Some(s) = summarize(&points) else {
        return Ok(None);
    };
    let abs = summarize(&points.iter().map(|x| x.abs()).collect::<Vec<_>>())
        .expect("same length as points");
    let check = |obj: &Value, want: &Summary, what: &str| -> Result<(), String> {
        let got = |k: &str| obj.get(k).and_then(Value::as_f64);
        let ok = got("n") == Some(want.n as f64)
            && got("median").is_some_and(|x| close(x, want.median))
            && got("max").is_some_and(|x| close(x, want.max))
            && match want.p99 {
                Some(p) => got("p99").is_some_and(|x| close(x, p)),
                None => obj.get("p99").is_none(),
            };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{name}{what}: the stored summary does not match the points ({want:?})"
            ))
        }
    };
    check(cur, &s, "")?;
    if let Some(a) = cur.get("abs") {
        check(a, &abs, ".abs")?;
    }
    Ok(Some(Fig {
        unit,
        points,
        s,
        abs,
    }))
}

// ---------------------------------------------------------------- files

/// `<repo>/bench/results`.
pub fn results_dir(repo: &Path) -> PathBuf {
    repo.join("bench").join("results")
}

/// `YYYY-MM-DDTHHMMSSZ-<short rev>.json`: names sort by date.
pub fn result_file_name(date_utc: &str, short_rev: &str) -> String {
    // 2026-05-01T12:03:55Z -> 2026-05-01T120355Z
    format!("{}-{short_rev}.json", date_utc.replace(':', ""))
}

/// The newest results file in `dir` (the greatest name: names start with
/// the UTC date).
pub fn newest(dir: &Path) -> Result<PathBuf, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    names.pop().ok_or(format!(
        "no results in {} (run scripts/bench)",
        dir.display()
    ))
}

/// UTC date and time, `YYYY-MM-DDTHH:MM:SSZ`, of a Unix time.
pub fn utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

// ---------------------------------------------------------------- targets

/// One target held against one figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub what: String,
    pub measured: String,
    pub target: String,
    pub ok: bool,
}

fn poll_ms(r: &Value) -> f64 {
    r.get("poll_interval_ms")
        .and_then(Value::as_f64)
        .unwrap_or(250.0)
}

/// Every target that the figures in `r` can be held to. A missing part
/// adds nothing; a malformed figure is an error.
pub fn checks(r: &Value) -> Result<Vec<Check>, String> {
    let mut out = vec![];
    let ack_idle = poll_ms(r) + ACK_IDLE_SLACK_MS;
    let mut le = |what: &str, f: &Summary, value: f64, limit: f64, unit: &str, stat: &str| {
        out.push(Check {
            what: format!("{what} (n={})", f.n),
            measured: format!("{stat} {value:.3} {unit}"),
            target: format!("<= {limit} {unit}"),
            ok: value <= limit,
        });
    };
    if let Some(f) = fig(r, &["basic", "ack_ms"])? {
        let s = &f.s;
        le("ACK, idle", s, s.tail(), ack_idle, "ms", s.tail_name());
    }
    if let Some(f) = fig(r, &["basic", "resume_residual_ns"])? {
        let a = &f.abs;
        le(
            "|guest - host| after a +90 s host resume",
            a,
            a.max / 1e6,
            RESIDUAL_MAX_MS,
            "ms",
            "max",
        );
    }
    if let Some(f) = fig(r, &["basic", "idle_cpu_user_percent"])? {
        let s = &f.s;
        le(
            "agent idle CPU, user",
            s,
            s.max,
            IDLE_USER_MAX_PERCENT,
            "%",
            "max",
        );
    }
    if let Some(f) = fig(r, &["basic", "rss_kib"])? {
        let s = &f.s;
        le("agent RSS", s, s.max, RSS_MAX_KIB, "KiB", "max");
    }
    if let Some(f) = fig(r, &["basic", "binary_bytes"])? {
        let s = &f.s;
        le("static binary", s, s.max, BINARY_MAX_BYTES, "bytes", "max");
    }
    if let Some(f) = fig(r, &["load", "ack_ms"])? {
        let s = &f.s;
        le(
            "ACK under load",
            s,
            s.tail(),
            ACK_LOAD_MAX_MS,
            "ms",
            s.tail_name(),
        );
    }
    if let Some(f) = fig(r, &["distro", "systemd_load_ack_ms"])? {
        let s = &f.s;
        le(
            "ACK under load, systemd unit",
            s,
            s.tail(),
            ACK_LOAD_MAX_MS,
            "ms",
            s.tail_name(),
        );
    }
    if let Some(f) = fig(r, &["distro", "systemd_stop_s"])? {
        let s = &f.s;
        le(
            "vmctl stop -> VM end, Debian 12 systemd",
            s,
            s.max,
            HOST_SHUTDOWN_S,
            "s",
            "max",
        );
    }
    if let Some(f) = fig(r, &["distro", "openrc_stop_s"])? {
        let s = &f.s;
        le(
            "vmctl stop -> VM end, Debian 12 OpenRC",
            s,
            s.max,
            STOP_LONG_S,
            "s",
            "max",
        );
    }
    if let Some(runs) = r.pointer("/clock/runs").and_then(Value::as_array) {
        for run in runs {
            let policy = run.get("policy").and_then(Value::as_str).unwrap_or("?");
            if let Some(f) = fig(run, &["residual_ns"])? {
                if policy != "step-on-request" {
                    let a = &f.abs;
                    le(
                        &format!("clock, {policy}: |guest - host|"),
                        a,
                        a.tail() / 1e6,
                        HELD_MAX_MS,
                        "ms",
                        a.tail_name(),
                    );
                }
            }
            if let Some(x) = run.get("after_resume_ns").and_then(Value::as_f64) {
                let s = summarize(&[x.abs()]).expect("one point");
                le(
                    &format!("clock, {policy}: |guest - host| right after the resume"),
                    &s,
                    x.abs() / 1e6,
                    RESIDUAL_MAX_MS,
                    "ms",
                    "at",
                );
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- README

/// The README's generated sections, in the order they appear.
pub const SECTIONS: [&str; 4] = ["main", "clock", "window", "load"];

pub fn begin_marker(name: &str) -> String {
    format!("<!-- figures:{name}:begin -->")
}
pub fn end_marker(name: &str) -> String {
    format!("<!-- figures:{name}:end -->")
}

/// A number with a real minus sign, as the README writes them.
fn num(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    match s.strip_prefix('-') {
        // -0.000 is 0.
        Some(rest) if rest.chars().any(|c| c.is_ascii_digit() && c != '0') => {
            format!("−{rest}")
        }
        Some(rest) => rest.to_string(),
        None => s,
    }
}

/// Every point when there are few, else the summary: "median 137 ms, max
/// 245 ms" (and p99 where n ≥ 100). `conv` turns a stored value into the
/// unit shown.
fn measured(f: &Fig, conv: f64, decimals: usize, unit: &str) -> String {
    let v = |x: f64| num(x * conv, decimals);
    if f.s.n <= 5 {
        let pts: Vec<String> = f.points.iter().map(|&x| v(x)).collect();
        return format!("{} {unit}", pts.join(", "));
    }
    let mut s = format!("median {} {unit}", v(f.s.median));
    if let Some(p) = f.s.p99 {
        s += &format!(", p99 {} {unit}", v(p));
    }
    s + &format!(", max {} {unit}", v(f.s.max))
}

/// Like [`measured`], for a signed quantity: median of x, max (and p99) of |x|.
fn measured_signed(f: &Fig, conv: f64, decimals: usize, unit: &str) -> String {
    let v = |x: f64| num(x * conv, decimals);
    if f.s.n <= 5 {
        return measured(f, conv, decimals, unit);
    }
    let mut s = format!("median {} {unit}", v(f.s.median));
    if let Some(p) = f.abs.p99 {
        s += &format!(", p99 \\|x\\| {} {unit}", v(p));
    }
    s + &format!(", max \\|x\\| {} {unit}", v(f.abs.max))
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

/// Markdown table cell: no pipes or newlines.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "; ")
}

fn parts(r: &Value) -> Vec<String> {
    r.pointer("/counts/parts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn missing(file: &str, r: &Value, what: &str, part: &str) -> String {
    format!(
        "_{what}: not measured in `{file}` (parts: {}); part `{part}` of `scripts/bench`. \
         The tables use the newest results file alone: save a full run._",
        parts(r).join(", ")
    )
}

fn count(r: &Value, k: &str) -> String {
    r.pointer(&format!("/counts/{k}"))
        .map(|v| v.to_string())
        .unwrap_or_else(|| "?".into())
}

/// The counts of the parts that ran.
fn counts(r: &Value) -> String {
    let c = |k: &str| count(r, k);
    let parts = parts(r);
    let mut out = vec![];
    for p in &parts {
        out.push(match p.as_str() {
            "basic" => format!(
                "basic {} stops, {} resumes, {} s idle",
                c("stops"),
                c("resumes"),
                c("idle_secs")
            ),
            "clock" => format!("clock {} minutes", c("clock_minutes")),
            "window" => format!("window {} boots per image", c("window_boots")),
            "load" => format!("load {} stops", c("load_stops")),
            "distro" => format!(
                "distro {} systemd, {} OpenRC and {} loaded systemd stops",
                c("distro_stops"),
                c("openrc_stops"),
                c("distro_load_stops")
            ),
            other => other.to_string(),
        });
    }
    out.join("; ")
}

/// Where the figures come from: one line.
fn provenance(file: &str, r: &Value) -> String {
    let s = |p: &str| r.pointer(p).and_then(Value::as_str).unwrap_or("?");
    let dirty = if r.pointer("/git/dirty").and_then(Value::as_bool) == Some(true) {
        " with uncommitted changes"
    } else {
        ""
    };
    let date = s("/date").replacen('T', " ", 1).replace('Z', " UTC");
    let kernels: Vec<String> = r
        .get("kernels")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|k| {
                    let used_by: Vec<&str> = k
                        .get("used_by")
                        .and_then(Value::as_array)
                        .map(|u| u.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    format!(
                        "{}: {} (for {})",
                        k.get("name").and_then(Value::as_str).unwrap_or("?"),
                        k.get("version").and_then(Value::as_str).unwrap_or("?"),
                        used_by.join(", ")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let short = if r.pointer("/counts/short").and_then(Value::as_bool) == Some(true) {
        " (a `--short` run)"
    } else {
        ""
    };
    format!(
        "From [`{file}`](bench/results/{file}){short}: revision `{}`{dirty}, {date}, \
         {} under TCG on {} cores; guest kernels: {}. Counts: {}. Every stop ended \
         clean (the bench fails on any other end).",
        s("/git/short"),
        s("/qemu"),
        r.pointer("/host/cores")
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into()),
        kernels.join("; "),
        counts(r)
    )
}

fn main_section(file: &str, r: &Value) -> Result<String, String> {
    let poll = poll_ms(r);
    let ack_idle = poll + ACK_IDLE_SLACK_MS;
    let mut rows: Vec<[String; 5]> = vec![];
    let mut row = |a: &str, f: &Fig, m: String, t: String, ok: Option<bool>| {
        rows.push([
            a.to_string(),
            f.s.n.to_string(),
            m,
            t,
            ok.map_or(String::new(), |o| yes(o).to_string()),
        ]);
    };
    let basic = r.get("basic").is_some();
    if let Some(f) = fig(r, &["basic", "ack_ms"])? {
        row(
            "ACK latency, `vmctl stop` to vmd's \"ack received\"",
            &f,
            measured(&f, 1.0, 0, "ms"),
            format!(
                "{} ≤ poll interval + {ACK_IDLE_SLACK_MS} ms = {ack_idle} ms",
                f.s.tail_name()
            ),
            Some(f.s.tail() <= ack_idle),
        );
    }
    if let Some(f) = fig(r, &["basic", "stop_to_end_ms"])? {
        row(
            "`vmctl stop` to VM end (busybox guest, real shutdown)",
            &f,
            measured(&f, 1e-3, 2, "s"),
            format!("vmd's long timeout: {STOP_LONG_S} s"),
            Some(f.s.max / 1e3 <= STOP_LONG_S),
        );
    }
    if let Some(f) = fig(r, &["distro", "systemd_stop_s"])? {
        let ack = fig(r, &["distro", "systemd_ack_ms"])?
            .map(|a| format!("; ACK {}", measured(&a, 1.0, 0, "ms")))
            .unwrap_or_default();
        row(
            "`vmctl stop` to VM end, Debian 12 with systemd and the .deb",
            &f,
            measured(&f, 1.0, 2, "s") + &ack,
            format!("vmd's host shutdown: {HOST_SHUTDOWN_S} s"),
            Some(f.s.max <= HOST_SHUTDOWN_S),
        );
    }
    if let Some(f) = fig(r, &["distro", "openrc_stop_s"])? {
        let ack = fig(r, &["distro", "openrc_ack_ms"])?
            .map(|a| format!("; ACK {}", measured(&a, 1.0, 0, "ms")))
            .unwrap_or_default();
        row(
            "`vmctl stop` to VM end, Debian 12 with sysvinit + OpenRC (Debian's init scripts under TCG)",
            &f,
            measured(&f, 1.0, 1, "s") + &ack,
            format!("{HOST_SHUTDOWN_S} s; held to {STOP_LONG_S} s"),
            Some(f.s.max <= STOP_LONG_S),
        );
    }
    if let Some(f) = fig(r, &["basic", "resume_residual_ns"])? {
        row(
            "guest − host after a +90 s host resume (clock probe)",
            &f,
            measured_signed(&f, 1e-6, 3, "ms"),
            format!("\\|x\\| ≤ {RESIDUAL_MAX_MS} ms"),
            Some(f.abs.max / 1e6 <= RESIDUAL_MAX_MS),
        );
    }
    let idle_secs = r.pointer("/basic/idle/wall_s").and_then(Value::as_f64);
    let ticks = |k: &str| {
        r.pointer(&format!("/basic/idle/{k}"))
            .and_then(Value::as_i64)
    };
    if let Some(f) = fig(r, &["basic", "idle_cpu_user_percent"])? {
        let detail = match (ticks("user_ticks"), idle_secs) {
            (Some(t), Some(w)) => format!(" ({t} clock ticks in {w:.0} s)"),
            _ => String::new(),
        };
        row(
            "agent idle CPU, user",
            &f,
            measured(&f, 1.0, 3, "% of a core") + &detail,
            format!("≤ {IDLE_USER_MAX_PERCENT} %"),
            Some(f.s.max <= IDLE_USER_MAX_PERCENT),
        );
    }
    if let Some(f) = fig(r, &["basic", "idle_cpu_system_percent"])? {
        let per_access = fig(r, &["basic", "accesses_per_sec"])?
            .filter(|a| a.s.max > 0.0)
            .map(|a| {
                format!(
                    " (about {:.0} µs per device access, TCG's emulated port I/O)",
                    f.s.max / 100.0 / a.s.max * 1e6
                )
            })
            .unwrap_or_default();
        row(
            "agent idle CPU, system",
            &f,
            measured(&f, 1.0, 3, "% of a core") + &per_access,
            String::new(),
            None,
        );
    }
    if let Some(f) = fig(r, &["basic", "rss_kib"])? {
        row(
            "agent RSS",
            &f,
            measured(&f, 1.0 / 1024.0, 1, "MiB"),
            format!("≤ {} MiB", RSS_MAX_KIB / 1024.0),
            Some(f.s.max <= RSS_MAX_KIB),
        );
    }
    if let Some(f) = fig(r, &["basic", "accesses_per_sec"])? {
        row(
            "device accesses per second, idle (polls and drift samples)",
            &f,
            measured(&f, 1.0, 1, ""),
            String::new(),
            None,
        );
    }
    if let Some(f) = fig(r, &["basic", "binary_bytes"])? {
        row(
            "static binary",
            &f,
            measured(&f, 1.0 / 1024.0 / 1024.0, 1, "MiB"),
            format!("≤ {} MiB", BINARY_MAX_BYTES / 1024.0 / 1024.0),
            Some(f.s.max <= BINARY_MAX_BYTES),
        );
    }
    let mut out = provenance(file, r) + "\n";
    if !rows.is_empty() {
        out += "\n| figure | n | measured | target | met |\n|---|---|---|---|---|\n";
        for r in &rows {
            out += &format!(
                "| {} |\n",
                r.iter()
                    .map(|c| c.trim_end().to_string())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }
    if !basic {
        out += &format!(
            "\n{}\n",
            missing(
                file,
                r,
                "ACK latency, stop time, resume residual, idle cost",
                "basic"
            )
        );
    }
    if r.get("distro").is_none() {
        out += &format!(
            "\n{}\n",
            missing(
                file,
                r,
                "The stops in Debian 12 (systemd, OpenRC)",
                "distro"
            )
        );
    }
    Ok(out)
}

fn clock_section(file: &str, r: &Value) -> Result<String, String> {
    let Some(c) = r.get("clock") else {
        return Ok(missing(file, r, "The clock policies side by side", "clock") + "\n");
    };
    let g = |k: &str| {
        c.get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into())
    };
    let mut out = format!(
        "{} minutes, host clock {} ppm fast with ±{} µs read noise, a +90 s suspend \
         half way; guest − host by the clock probe every {} s (|x|, ms):\n\n\
         | policy | n | median \\|x\\| | max \\|x\\| | right after the resume | steps | note |\n\
         |---|---|---|---|---|---|---|\n",
        g("minutes"),
        g("host_ppm"),
        c.get("jitter_ns")
            .and_then(Value::as_f64)
            .map_or("?".into(), |j| num(j / 1e3, 0)),
        g("every_s"),
    );
    let mut after: Vec<f64> = vec![];
    for run in c
        .get("runs")
        .and_then(Value::as_array)
        .ok_or("clock: no runs")?
    {
        let policy = run.get("policy").and_then(Value::as_str).unwrap_or("?");
        let f = fig(run, &["residual_ns"])?.ok_or(format!("clock, {policy}: no points"))?;
        let a = run.get("after_resume_ns").and_then(Value::as_f64);
        after.extend(a.map(f64::abs));
        let p99 = f
            .abs
            .p99
            .map(|p| format!(" (p99 {})", num(p / 1e6, 3)))
            .unwrap_or_default();
        out += &format!(
            "| `{policy}` | {} | {} | {}{p99} | {} | {} | {} |\n",
            f.s.n,
            num(f.abs.median / 1e6, 3),
            num(f.abs.max / 1e6, 3),
            a.map_or("–".into(), |x| num(x / 1e6, 3)),
            run.get("steps").map(|v| v.to_string()).unwrap_or_default(),
            cell(run.get("note").and_then(Value::as_str).unwrap_or(""))
        );
    }
    if let Some(worst) = after.iter().copied().reduce(f64::max) {
        out += &format!(
            "\nRight after the resume the largest \\|x\\| of the {} policies is {} ms \
             (goal: ≤ {RESIDUAL_MAX_MS} ms); `discipline` and chrony are held to \\|x\\| ≤ \
             {HELD_MAX_MS} ms over the run (p99 where n ≥ {P99_MIN_N}, else max).\n",
            after.len(),
            num(worst / 1e6, 3)
        );
    }
    Ok(out)
}

fn window_section(file: &str, r: &Value) -> Result<String, String> {
    let Some(w) = r.get("window") else {
        return Ok(missing(file, r, "The boot window", "window") + "\n");
    };
    let mut out = String::from(
        "| image | boots | kernel start → DRIVER_OK | agent started | the old module's point |\n\
         |---|---|---|---|---|\n",
    );
    for (key, label) in [
        ("systemd", "systemd, the .deb's unit"),
        ("openrc", "sysvinit + OpenRC, packaging/openrc"),
    ] {
        if w.get(key).is_none() {
            continue;
        }
        let f = |k: &str| fig(w, &[key, k]);
        let d = f("driver_ok_s")?.ok_or(format!("window.{key}: no DRIVER_OK points"))?;
        let show = |x: Option<Fig>| x.map_or("–".to_string(), |x| measured(&x, 1.0, 1, "s"));
        out += &format!(
            "| {label} | {} | {} | {} | {} |\n",
            d.s.n,
            measured(&d, 1.0, 1, "s"),
            show(f("agent_started_s")?),
            show(f("old_module_s")?),
        );
    }
    Ok(out)
}

fn load_section(file: &str, r: &Value) -> Result<String, String> {
    let mut rows = String::new();
    if let Some(f) = fig(r, &["load", "ack_ms"])? {
        let busy = fig(r, &["load", "busy_percent"])?
            .map(|b| format!("; guest CPU busy {}", measured(&b, 1.0, 0, "%")))
            .unwrap_or_default();
        rows += &format!(
            "| busybox guests, the agent at its defaults (nice 0) | {} | {}{busy} | {} ≤ {ACK_LOAD_MAX_MS} ms | {} |\n",
            f.s.n,
            measured(&f, 1.0, 0, "ms"),
            f.s.tail_name(),
            yes(f.s.tail() <= ACK_LOAD_MAX_MS)
        );
    }
    if let Some(f) = fig(r, &["distro", "systemd_load_ack_ms"])? {
        rows += &format!(
            "| Debian 12, the .deb's unit (nice −10, CPUWeight=1000) | {} | {} | {} ≤ {ACK_LOAD_MAX_MS} ms | {} |\n",
            f.s.n,
            measured(&f, 1.0, 0, "ms"),
            f.s.tail_name(),
            yes(f.s.tail() <= ACK_LOAD_MAX_MS)
        );
    }
    let mut out = String::new();
    if !rows.is_empty() {
        out += "| REBOOT posted → ACK, under load | n | measured | target | met |\n\
                |---|---|---|---|---|\n";
        out += &rows;
    }
    if r.get("load").is_none() {
        out += &format!(
            "{}{}\n",
            if out.is_empty() { "" } else { "\n" },
            missing(file, r, "The ACK under load in busybox guests", "load")
        );
    }
    if r.get("distro").is_none() {
        out += &format!(
            "{}{}\n",
            if out.is_empty() { "" } else { "\n" },
            missing(
                file,
                r,
                "The ACK under load through the systemd unit",
                "distro"
            )
        );
    }
    Ok(out)
}

/// The README's generated sections for results `r` read from `file` (its
/// name in `bench/results/`).
pub fn sections(file: &str, r: &Value) -> Result<Vec<(&'static str, String)>, String> {
    if r.get("schema").and_then(Value::as_u64) != Some(SCHEMA) {
        return Err(format!("{file}: not a results file of schema {SCHEMA}"));
    }
    Ok(vec![
        ("main", main_section(file, r)?),
        ("clock", clock_section(file, r)?),
        ("window", window_section(file, r)?),
        ("load", load_section(file, r)?),
    ])
}

/// `readme` with each section's text between its markers (each marker
/// exactly once, begin before end).
pub fn rewrite(readme: &str, sections: &[(&str, String)]) -> Result<String, String> {
    let mut out = readme.to_string();
    for (name, body) in sections {
        let (b, e) = (begin_marker(name), end_marker(name));
        if out.matches(&b).count() != 1 || out.matches(&e).count() != 1 {
            return Err(format!("README: {b} and {e} must appear once each"));
        }
        let i = out.find(&b).expect("counted") + b.len();
        let j = out.find(&e).expect("counted");
        if j < i {
            return Err(format!("README: {e} before {b}"));
        }
        out.replace_range(i..j, &format!("\n{}\n", body.trim_end()));
    }
    Ok(out)
}

/// The README as the newest results in `<repo>/bench/results` make it, and
/// which file that was.
pub fn generate(repo: &Path) -> Result<(String, PathBuf), String> {
    let path = newest(&results_dir(repo))?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let r: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("a results file name that is not UTF-8")?;
    let readme_path = repo.join("README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .map_err(|e| format!("{}: {e}", readme_path.display()))?;
    Ok((rewrite(&readme, &sections(file, &r)?)?, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            (s.n, s.median, s.min, s.max, s.p99),
            (3, 2.0, 1.0, 3.0, None)
        );
        assert_eq!(summarize(&[1.0, 2.0]).unwrap().median, 1.5);
        assert_eq!(summarize(&[]), None);
        // p99 only from 100 points on: the 99th of 1..=100.
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(summarize(&v).unwrap().p99, Some(99.0));
        assert_eq!(summarize(&v[..99]).unwrap().p99, None);
        assert_eq!(summarize(&v[..99]).unwrap().tail(), 99.0);
    }

    #[test]
    fn figures_round_trip_and_catch_edits() {
        let v = json!({"a": signed_figure("ns", &[-3.0, 1.0, 2.0])});
        let f = fig(&v, &["a"]).unwrap().unwrap();
        assert_eq!((f.s.median, f.abs.max), (1.0, 3.0));
        assert!(fig(&v, &["b"]).unwrap().is_none());
        let mut edited = v.clone();
        edited["a"]["max"] = json!(1.5);
        assert!(fig(&edited, &["a"]).is_err());
        let mut edited = v.clone();
        edited["a"]["p99"] = json!(3.0);
        assert!(fig(&edited, &["a"]).is_err(), "a p99 from 3 points");
    }

    #[test]
    fn dates_and_names() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_767_225_599), "2025-12-31T23:59:59Z");
        assert_eq!(
            result_file_name("2026-05-01T12:03:55Z", "9dc3b80"),
            "2026-05-01T120355Z-9dc3b80.json"
        );
    }

    #[test]
    fn rewrite_between_markers() {
        let readme = "a\n<!-- figures:x:begin -->\nold\n<!-- figures:x:end -->\nb\n";
        let out = rewrite(readme, &[("x", "new\n".into())]).unwrap();
        assert_eq!(
            out,
            "a\n<!-- figures:x:begin -->\nnew\n<!-- figures:x:end -->\nb\n"
        );
        assert_eq!(rewrite(&out, &[("x", "new".into())]).unwrap(), out);
        assert!(rewrite("a\n", &[("x", "new".into())]).is_err());
    }

    fn sample() -> Value {
        json!({
            "schema": SCHEMA,
            "poll_interval_ms": 250,
            "counts": {"parts": ["basic", "load"]},
            "basic": {
                "ack_ms": figure("ms", &[100.0, 200.0, 340.0]),
                "resume_residual_ns": signed_figure("ns", &[-150_000.0, -900_000.0]),
            },
            "load": {"ack_ms": figure("ms", &[100.0, 2999.0])},
        })
    }

    #[test]
    fn checks_hold_the_targets() {
        let mut r = sample();
        assert!(checks(&r).unwrap().iter().all(|c| c.ok));
        r["basic"]["ack_ms"] = figure("ms", &[100.0, 351.0]);
        r["load"]["ack_ms"] = figure("ms", &[3001.0]);
        r["basic"]["resume_residual_ns"] = signed_figure("ns", &[-1_000_001.0]);
        let bad: Vec<String> = checks(&r)
            .unwrap()
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.what)
            .collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
    }

    #[test]
    fn sections_say_what_is_missing() {
        let s = sections("x.json", &sample()).unwrap();
        let get = |n: &str| &s.iter().find(|(k, _)| *k == n).unwrap().1;
        assert!(get("main").contains("| ACK latency"));
        assert!(get("main").contains("100, 200, 340 ms"), "{}", get("main"));
        assert!(get("main").contains("−0.150, −0.900 ms"), "{}", get("main"));
        assert!(
            get("clock").starts_with("_The clock policies side by side: not measured in `x.json`")
        );
        assert!(get("window").contains("not measured"));
        assert!(get("load").contains("| busybox guests"));
        assert!(!get("main").contains("p99"), "no p99 from 3 points");
    }
}
