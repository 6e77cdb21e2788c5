//! Part `clock`: the clock policies side by side (`vmmci_rig::clock_compare`
//! runs them), printed and as JSON.

use serde_json::{json, Value};
use vmmci_rig::clock_compare::{self, Comparison};
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
            let mids: Vec<f64> = r.points.iter().map(|p| p.mid_ns() as f64).collect();
            let widths: Vec<f64> = r.points.iter().map(|p| p.width_ns() as f64).collect();
            // Per point: [seconds into the run, midpoint ns, width ns].
            let points: Vec<Value> = r
                .points
                .iter()
                .map(|p| json!([p.at_s, p.mid_ns(), p.width_ns()]))
                .collect();
            json!({
                "policy": r.name,
                "residual_ns": signed_figure("ns", &mids),
                "width_ns": figure("ns", &widths),
                "points": points,
                "after_resume_ns": r.after_resume_ns,
                "steps": r.steps,
                "note": r.note,
            })
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
