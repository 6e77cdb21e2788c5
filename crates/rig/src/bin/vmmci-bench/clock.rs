//! Part `clock`: the clock policies side by side (`vmmci_rig::clock_compare`
//! runs them), printed and as JSON.

use serde_json::{json, Map, Value};
use vmmci_rig::clock_compare::{self, Comparison, RunPoint};
use vmmci_rig::figures::{figure, signed_figure};
use vmmci_rig::RigError;

/// `minutes` of the three policies at once.
pub fn measure(kernel: &str, minutes: u64) -> Result<Value, RigError> {
    let c = clock_compare::compare(kernel, minutes)?;
    c.print();
    Ok(comparison_json(&c))
}

/// The comparison's points (the one place that reads `clock_compare`'s
/// results for the JSON).
fn comparison_json(c: &Comparison) -> Value {
    let runs: Vec<Value> = c
        .runs
        .iter()
        .map(|r| {
            let mut run = points_json(&r.points);
            run.insert("policy".into(), json!(r.name));
            run.insert("after_resume_ns".into(), json!(r.after_resume_ns));
            run.insert("steps".into(), json!(r.steps));
            run.insert("note".into(), json!(r.note));
            Value::Object(run)
        })
        .collect();
    json!({
        "minutes": c.minutes,
        "host_ppm": 50,
        "jitter_ns": 20000,
        "every_s": 10,
        "suspend_s": 90,
        "runs": runs,
    })
}

/// A run's probe points: `residual_ns` (the midpoints) and `width_ns` as
/// figures, and every point as `[seconds into the run, midpoint ns, width
/// ns]`.
pub fn points_json(points: &[RunPoint]) -> Map<String, Value> {
    let mids: Vec<f64> = points.iter().map(|p| p.mid_ns() as f64).collect();
    let widths: Vec<f64> = points.iter().map(|p| p.width_ns() as f64).collect();
    let raw: Vec<Value> = points
        .iter()
        .map(|p| json!([p.at_s, p.mid_ns(), p.width_ns()]))
        .collect();
    let mut m = Map::new();
    m.insert("residual_ns".into(), signed_figure("ns", &mids));
    m.insert("width_ns".into(), figure("ns", &widths));
    m.insert("points".into(), json!(raw));
    m
}
