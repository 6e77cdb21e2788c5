//! Where the figures come from: the file, the revision, QEMU, the guest
//! kernels and the counts, in one line; and the note for a part the file
//! does not have.

use serde_json::Value;

/// Where the figures come from: one line.
pub(super) fn provenance(file: &str, r: &Value) -> String {
    let s = |p: &str| r.pointer(p).and_then(Value::as_str).unwrap_or("?");
    let dirty = if r.pointer("/git/dirty").and_then(Value::as_bool) == Some(true) {
        " with uncommitted changes"
    } else {
        ""
    };
    let date = s("/date").replacen('T', " ", 1).replace('Z', " UTC");
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
        kernels(r).join("; "),
        counts(r)
    )
}

/// Each guest kernel: "name: version (for part, part)".
fn kernels(r: &Value) -> Vec<String> {
    let kernel = |k: &Value| {
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
    };
    r.get("kernels")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(kernel).collect())
        .unwrap_or_default()
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

fn count(r: &Value, k: &str) -> String {
    r.pointer(&format!("/counts/{k}"))
        .map(|v| v.to_string())
        .unwrap_or_else(|| "?".into())
}

/// The parts the run measured.
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

/// The note in place of `what` when the file has no part `part`.
pub(super) fn missing(file: &str, r: &Value, what: &str, part: &str) -> String {
    format!(
        "_{what}: not measured in `{file}` (parts: {}); part `{part}` of `scripts/bench`. \
         The tables use the newest results file alone: save a full run._",
        parts(r).join(", ")
    )
}

/// After `out`, a note for each `(part, what)` that `r` lacks.
pub(super) fn note_missing(out: &mut String, file: &str, r: &Value, lacks: &[(&str, &str)]) {
    for &(part, what) in lacks {
        if r.get(part).is_none() {
            let sep = if out.is_empty() { "" } else { "\n" };
            *out += &format!("{sep}{}\n", missing(file, r, what, part));
        }
    }
}
