//! The README's table of `discipline` across host clock rates, chrony
//! beside it.

use serde_json::Value;

use super::cells::{cell, num, yes};
use super::fig;
use super::provenance::missing;
use super::targets::{
    LOCK_MAX_S, RATE_FAST_MAX_MS, RATE_SLOW_MAX_MS, RATE_SLOW_PPM, RESIDUAL_MAX_MS,
    SET_BACK_MAX_SAMPLES,
};

pub(super) fn rates_section(file: &str, r: &Value) -> Result<String, String> {
    let Some(c) = r.get("rates") else {
        return Ok(missing(file, r, "discipline across host clock rates", "rates") + "\n");
    };
    let minutes = c.get("minutes").and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!(
        "{minutes} minutes at each rate; guest − host by the clock probe, three bracketed \
         points every 10 s (|x|, ms: p99 where n ≥ 100, else max); the lock bracketed by \
         the agent's status read every second after DRIVER_OK; then the host clock set back \
         40 s (no SYNCRTC): the agent's samples that saw it before its step, and guest − \
         host 30 s after the jump. Targets (`discipline`): \\|x\\| ≤ {RATE_SLOW_MAX_MS} ms \
         within ±{RATE_SLOW_PPM} ppm and ≤ {RATE_FAST_MAX_MS} ms beyond, locked within \
         {LOCK_MAX_S} s, no step after the lock, a set-back stepped within \
         {SET_BACK_MAX_SAMPLES} samples and within {RESIDUAL_MAX_MS} ms after.\n\n\
         | host clock | policy | n | median \\|x\\| | tail \\|x\\| | locked after DRIVER_OK | \
         steps after lock | set back 40 s: samples, then | targets met | note |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    for run in c
        .get("runs")
        .and_then(Value::as_array)
        .ok_or("rates: no runs")?
    {
        let policy = run.get("policy").and_then(Value::as_str).unwrap_or("?");
        let ppm = run.get("ppm").and_then(Value::as_f64).unwrap_or(f64::NAN);
        let f = fig(run, &["residual_ns"])?.ok_or(format!("rates, {ppm}: no points"))?;
        let tail = format!("{} {}", f.abs.tail_name(), num(f.abs.tail() / 1e6, 3));
        let number = |k: &str| run.get(k).and_then(Value::as_f64);
        let lock = match (
            run.pointer("/lock_s/0").and_then(Value::as_f64),
            run.pointer("/lock_s/1").and_then(Value::as_f64),
        ) {
            (Some(lo), Some(hi)) => format!("{}–{} s", num(lo, 1), num(hi, 1)),
            _ => "–".into(),
        };
        let set_back = format!(
            "{}, {} ms",
            number("set_back_samples").map_or("–".into(), |n| num(n, 0)),
            number("after_set_back_ns").map_or("–".into(), |x| num(x / 1e6, 3)),
        );
        let met = if policy == "discipline" {
            let max_ms = if ppm.abs() <= RATE_SLOW_PPM {
                RATE_SLOW_MAX_MS
            } else {
                RATE_FAST_MAX_MS
            };
            let ok = f.abs.tail() / 1e6 <= max_ms
                && number("steps_after_lock") == Some(0.0)
                && run
                    .pointer("/lock_s/1")
                    .and_then(Value::as_f64)
                    .is_some_and(|hi| hi <= LOCK_MAX_S)
                && number("set_back_samples").is_some_and(|n| n <= SET_BACK_MAX_SAMPLES)
                && number("after_set_back_ns").is_some_and(|x| x.abs() / 1e6 <= RESIDUAL_MAX_MS);
            yes(ok).to_string()
        } else {
            "(not held)".into()
        };
        out += &format!(
            "| {} ppm | `{policy}` | {} | {} | {tail} | {lock} | {} | {set_back} | {met} | {} |\n",
            num(ppm, 0),
            f.s.n,
            num(f.abs.median / 1e6, 3),
            number("steps_after_lock").map_or("–".into(), |s| num(s, 0)),
            cell(run.get("note").and_then(Value::as_str).unwrap_or("")),
        );
    }
    Ok(out)
}
