//! Part `rates`: `discipline` across host clock rates, chrony beside it
//! (`vmmci_rig::clock_rates` runs them), printed and as JSON.

use serde_json::{json, Value};
use vmmci_rig::clock_rates::{self, RateRun, RatesPlan, JITTER_NS, SET_BACK_NS};
use vmmci_rig::figures::P99_MIN_N;
use vmmci_rig::RigError;

use crate::clock::points_json;

pub fn measure(plan: &RatesPlan) -> Result<Value, RigError> {
    let runs = clock_rates::run(plan)?;
    print(plan, &runs);
    Ok(json!({
        "minutes": plan.minutes,
        "jitter_ns": JITTER_NS,
        "every_s": 10,
        "set_back_ns": SET_BACK_NS,
        "runs": runs.iter().map(run_json).collect::<Vec<Value>>(),
    }))
}

fn run_json(r: &RateRun) -> Value {
    let after: Vec<Value> = r
        .after_set_back_points
        .iter()
        .map(|p| json!([p.mid_ns(), p.width_ns()]))
        .collect();
    let mut run = points_json(&r.points);
    for (key, value) in [
        ("ppm", json!(r.ppm)),
        ("policy", json!(r.policy)),
        ("lock_s", json!(r.lock_s.map(|(lo, hi)| [lo, hi]))),
        ("steps_after_lock", json!(r.steps_after_lock)),
        ("set_back_samples", json!(r.set_back_samples)),
        ("after_set_back_ns", json!(r.after_set_back_ns)),
        ("after_set_back_points", json!(after)),
        ("note", json!(r.note)),
    ] {
        run.insert(key.into(), value);
    }
    Value::Object(run)
}

fn print(plan: &RatesPlan, runs: &[RateRun]) {
    println!(
        "\ndiscipline across host clock rates (±{} µs read noise), {} min each, then the host \
         clock set back 40 s; guest − host by the clock probe, 3 points every 10 s (ms):",
        JITTER_NS / 1000,
        plan.minutes
    );
    println!(
        "{:>8} {:<22} {:>5} {:>9} {:>9} {:>9} {:>13} {:>6} {:>8} {:>10}  note",
        "ppm", "policy", "n", "median", "p99", "max", "lock (s)", "steps", "samples", "after"
    );
    for r in runs {
        let abs: Vec<i64> = r.points.iter().map(|p| p.mid_ns().abs()).collect();
        let ms = |x: Option<i64>| x.map_or("-".into(), |v| format!("{:.3}", v as f64 / 1e6));
        println!(
            "{:>+8} {:<22} {:>5} {:>9} {:>9} {:>9} {:>13} {:>6} {:>8} {:>10}  {}",
            r.ppm,
            r.policy,
            abs.len(),
            ms(vmmci_rig::stats::median(&abs)),
            // No p99 from fewer than 100 points.
            ms((abs.len() >= P99_MIN_N)
                .then(|| vmmci_rig::stats::percentile(&abs, 99.0))
                .flatten()),
            ms(abs.iter().copied().max()),
            r.lock_s
                .map_or("-".into(), |(lo, hi)| format!("{lo:.1}..{hi:.1}")),
            r.steps_after_lock.map_or("-".into(), |s| s.to_string()),
            r.set_back_samples.map_or("-".into(), |s| s.to_string()),
            ms(r.after_set_back_ns),
            r.note
        );
    }
}
