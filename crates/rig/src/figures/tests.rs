//! The summaries, the file names, the targets, the tables and the marker
//! rewrite, on small made-up results.

use serde_json::{json, Value};

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
    assert!(get("clock").starts_with("_The clock policies side by side: not measured in `x.json`"));
    assert!(get("window").contains("not measured"));
    assert!(get("load").contains("| busybox guests"));
    assert!(!get("main").contains("p99"), "no p99 from 3 points");
}

/// One `discipline` run and chrony's beside it, as the `rates` part writes
/// them.
fn rates_sample() -> Value {
    let run = |policy: &str, mids: &[f64]| {
        json!({
            "ppm": 20000.0,
            "policy": policy,
            "residual_ns": signed_figure("ns", mids),
            "width_ns": figure("ns", &[100_000.0]),
            "lock_s": if policy == "discipline" { json!([6.0, 7.5]) } else { Value::Null },
            "steps_after_lock": if policy == "discipline" { json!(0) } else { Value::Null },
            "set_back_samples": if policy == "discipline" { json!(1) } else { Value::Null },
            "after_set_back_ns": -120_000,
            "note": "learned rate +20000.000 ppm",
        })
    };
    let mut r = sample();
    r["rates"] = json!({
        "minutes": 2,
        "runs": [run("discipline", &[-300_000.0, 4_000_000.0]), run("chrony SOCK refclock", &[9e9])],
    });
    r
}

#[test]
fn rates_are_held_to_their_targets_chronys_are_not() {
    let mut r = rates_sample();
    let rates = |r: &Value| -> Vec<Check> {
        checks(r)
            .unwrap()
            .into_iter()
            .filter(|c| c.what.contains("discipline, host +20000 ppm"))
            .collect()
    };
    let held = rates(&r);
    assert_eq!(held.len(), 5, "{held:?}");
    assert!(held.iter().all(|c| c.ok), "{held:?}");
    assert!(checks(&r)
        .unwrap()
        .iter()
        .all(|c| !c.what.contains("chrony")));
    r["rates"]["runs"][0]["residual_ns"] = signed_figure("ns", &[5_100_000.0]);
    r["rates"]["runs"][0]["steps_after_lock"] = json!(1);
    r["rates"]["runs"][0]["lock_s"] = json!([29.0, 31.0]);
    r["rates"]["runs"][0]["set_back_samples"] = json!(3);
    let missed = rates(&r).iter().filter(|c| !c.ok).count();
    assert_eq!(missed, 4);

    let s = sections("x.json", &rates_sample()).unwrap();
    let table = &s.iter().find(|(k, _)| *k == "rates").unwrap().1;
    assert!(
        table.contains("| 20000 ppm | `discipline` | 2 | 2.150 | max 4.000 | 6.0–7.5 s | 0 | 1, −0.120 ms | yes |"),
        "{table}"
    );
    assert!(table.contains("`chrony SOCK refclock` | 1 |"), "{table}");
    assert!(table.contains("(not held)"), "{table}");
}
