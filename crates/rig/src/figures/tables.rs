//! The README's figure tables, one section each: the main table (stops,
//! resume, idle cost, size), the clock policies, the boot window, and the
//! ACK under load.

use serde_json::Value;

use super::cells::{cell, measured, measured_signed, num, yes};
use super::provenance::{missing, note_missing, provenance};
use super::targets::{
    ack_idle_limit_ms, ACK_IDLE_SLACK_MS, ACK_LOAD_MAX_MS, BINARY_MAX_BYTES, HELD_MAX_MS,
    HOST_SHUTDOWN_S, IDLE_USER_MAX_PERCENT, RESIDUAL_MAX_MS, RSS_MAX_KIB, STOP_LONG_S,
};
use super::{fig, Fig, P99_MIN_N, SCHEMA};

/// The README's generated sections for results `r` read from `file` (its
/// name in `bench/results/`).
pub fn sections(file: &str, r: &Value) -> Result<Vec<(&'static str, String)>, String> {
    if r.get("schema").and_then(Value::as_u64) != Some(SCHEMA) {
        return Err(format!("{file}: not a results file of schema {SCHEMA}"));
    }
    Ok(vec![
        ("main", main_section(file, r)?),
        ("clock", clock_section(file, r)?),
        ("rates", super::rates::rates_section(file, r)?),
        ("window", window_section(file, r)?),
        ("load", load_section(file, r)?),
    ])
}

/// The main table's rows: figure, n, measured, target, met.
#[derive(Default)]
struct Rows(Vec<[String; 5]>);

impl Rows {
    /// A row for `f`; `met` is `None` where there is no target.
    fn add(&mut self, what: &str, f: &Fig, measured: String, target: String, met: Option<bool>) {
        self.0.push([
            what.to_string(),
            f.s.n.to_string(),
            measured,
            target,
            met.map_or(String::new(), |o| yes(o).to_string()),
        ]);
    }

    fn markdown(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let mut out =
            String::from("\n| figure | n | measured | target | met |\n|---|---|---|---|---|\n");
        for r in &self.0 {
            let cells: Vec<&str> = r.iter().map(|c| c.trim_end()).collect();
            out += &format!("| {} |\n", cells.join(" | "));
        }
        out
    }
}

/// Where the figures come from, the main table, and a note for each part
/// it lacks.
fn main_section(file: &str, r: &Value) -> Result<String, String> {
    let mut rows = Rows::default();
    stop_rows(r, &mut rows)?;
    resume_row(r, &mut rows)?;
    idle_rows(r, &mut rows)?;
    footprint_rows(r, &mut rows)?;
    let mut out = provenance(file, r) + "\n" + &rows.markdown();
    let lacks = [
        (
            "basic",
            "ACK latency, stop time, resume residual, idle cost",
        ),
        ("distro", "The stops in Debian 12 (systemd, OpenRC)"),
    ];
    note_missing(&mut out, file, r, &lacks);
    Ok(out)
}

/// The idle ACK, and `vmctl stop` to the VM's end: busybox, then Debian 12
/// with systemd and with OpenRC.
fn stop_rows(r: &Value, rows: &mut Rows) -> Result<(), String> {
    if let Some(f) = fig(r, &["basic", "ack_ms"])? {
        let limit = ack_idle_limit_ms(r);
        let tail = f.s.tail_name();
        let what = "ACK latency, `vmctl stop` to vmd's \"ack received\"";
        let target = format!("{tail} ≤ poll interval + {ACK_IDLE_SLACK_MS} ms = {limit} ms");
        let met = f.s.tail() <= limit;
        rows.add(what, &f, measured(&f, 1.0, 0, "ms"), target, Some(met));
    }
    if let Some(f) = fig(r, &["basic", "stop_to_end_ms"])? {
        let what = "`vmctl stop` to VM end (busybox guest, real shutdown)";
        let target = format!("vmd's long timeout: {STOP_LONG_S} s");
        let met = f.s.max / 1e3 <= STOP_LONG_S;
        rows.add(what, &f, measured(&f, 1e-3, 2, "s"), target, Some(met));
    }
    if let Some((f, m)) = distro_stop(r, "systemd", 2)? {
        let target = format!("vmd's host shutdown: {HOST_SHUTDOWN_S} s");
        let what = "`vmctl stop` to VM end, Debian 12 with systemd and the .deb";
        rows.add(what, &f, m, target, Some(f.s.max <= HOST_SHUTDOWN_S));
    }
    if let Some((f, m)) = distro_stop(r, "openrc", 1)? {
        let target = format!("{HOST_SHUTDOWN_S} s; held to {STOP_LONG_S} s");
        let what = "`vmctl stop` to VM end, Debian 12 with sysvinit + OpenRC \
                    (Debian's init scripts under TCG)";
        rows.add(what, &f, m, target, Some(f.s.max <= STOP_LONG_S));
    }
    Ok(())
}

/// The stop times of Debian 12 image `init` in seconds, with its ACKs.
fn distro_stop(r: &Value, init: &str, decimals: usize) -> Result<Option<(Fig, String)>, String> {
    let Some(f) = fig(r, &["distro", &format!("{init}_stop_s")])? else {
        return Ok(None);
    };
    let ack = fig(r, &["distro", &format!("{init}_ack_ms")])?
        .map(|a| format!("; ACK {}", measured(&a, 1.0, 0, "ms")))
        .unwrap_or_default();
    let m = measured(&f, 1.0, decimals, "s") + &ack;
    Ok(Some((f, m)))
}

/// guest − host after a resume: the median of x, the largest |x|.
fn resume_row(r: &Value, rows: &mut Rows) -> Result<(), String> {
    let Some(f) = fig(r, &["basic", "resume_residual_ns"])? else {
        return Ok(());
    };
    let what = "guest − host after a +90 s host resume (clock probe: each resume's \
                narrowest of 5 bracketed points)";
    let width = fig(r, &["basic", "resume_width_ns"])?
        .map(|w| format!("; interval width {}", measured(&w, 1e-6, 3, "ms")))
        .unwrap_or_default();
    let m = measured_signed(&f, 1e-6, 3, "ms") + &width;
    let target = format!("\\|x\\| ≤ {RESIDUAL_MAX_MS} ms");
    let met = f.abs.max / 1e6 <= RESIDUAL_MAX_MS;
    rows.add(what, &f, m, target, Some(met));
    Ok(())
}

/// The agent's idle CPU: user time (with its clock ticks), and system time
/// (with what one device access costs).
fn idle_rows(r: &Value, rows: &mut Rows) -> Result<(), String> {
    let idle_secs = r.pointer("/basic/idle/wall_s").and_then(Value::as_f64);
    let ticks = r.pointer("/basic/idle/user_ticks").and_then(Value::as_i64);
    if let Some(f) = fig(r, &["basic", "idle_cpu_user_percent"])? {
        let detail = match (ticks, idle_secs) {
            (Some(t), Some(w)) => format!(" ({t} clock ticks in {w:.0} s)"),
            _ => String::new(),
        };
        rows.add(
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
        let m = measured(&f, 1.0, 3, "% of a core") + &per_access;
        rows.add("agent idle CPU, system", &f, m, String::new(), None);
    }
    Ok(())
}

/// RSS, device accesses per second, and the binary's size.
fn footprint_rows(r: &Value, rows: &mut Rows) -> Result<(), String> {
    const MIB: f64 = 1024.0 * 1024.0;
    if let Some(f) = fig(r, &["basic", "rss_kib"])? {
        let target = format!("≤ {} MiB", RSS_MAX_KIB / 1024.0);
        let m = measured(&f, 1.0 / 1024.0, 1, "MiB");
        rows.add("agent RSS", &f, m, target, Some(f.s.max <= RSS_MAX_KIB));
    }
    if let Some(f) = fig(r, &["basic", "accesses_per_sec"])? {
        let what = "device accesses per second, idle (polls and drift samples)";
        rows.add(what, &f, measured(&f, 1.0, 1, ""), String::new(), None);
    }
    if let Some(f) = fig(r, &["basic", "binary_bytes"])? {
        let target = format!("≤ {} MiB", BINARY_MAX_BYTES / MIB);
        let m = measured(&f, 1.0 / MIB, 1, "MiB");
        let met = f.s.max <= BINARY_MAX_BYTES;
        rows.add("static binary", &f, m, target, Some(met));
    }
    Ok(())
}

/// The clock policies side by side, with the largest |x| right after the
/// resume.
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
         half way; guest − host by the clock probe, three bracketed points every {} s, \
         each point's midpoint (|x|, ms; the widest interval beside it):\n\n\
         | policy | n | median \\|x\\| | max \\|x\\| | widest | right after the resume | steps | note |\n\
         |---|---|---|---|---|---|---|---|\n",
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
        let widest = fig(run, &["width_ns"])?.map_or("–".into(), |w| num(w.s.max / 1e6, 3));
        out += &format!(
            "| `{policy}` | {} | {} | {}{p99} | {widest} | {} | {} | {} |\n",
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

/// Kernel start → DRIVER_OK in each Debian 12 image, beside the agent's
/// start and the old module's point.
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

/// The ACK under load: busybox guests, and the Debian 12 unit.
fn load_section(file: &str, r: &Value) -> Result<String, String> {
    let mut rows = String::new();
    if let Some(f) = fig(r, &["load", "ack_ms"])? {
        let busy = fig(r, &["load", "busy_percent"])?
            .map(|b| format!("; guest CPU busy {}", measured(&b, 1.0, 0, "%")))
            .unwrap_or_default();
        let label = "busybox guests, the agent at its defaults (nice 0)";
        rows += &loaded_ack_row(label, &f, &busy);
    }
    if let Some(f) = fig(r, &["distro", "systemd_load_ack_ms"])? {
        let label = "Debian 12, the .deb's unit (nice −10, CPUWeight=1000)";
        rows += &loaded_ack_row(label, &f, "");
    }
    let mut out = String::new();
    if !rows.is_empty() {
        out += "| REBOOT posted → ACK, under load | n | measured | target | met |\n\
                |---|---|---|---|---|\n";
        out += &rows;
    }
    let lacks = [
        ("load", "The ACK under load in busybox guests"),
        ("distro", "The ACK under load through the systemd unit"),
    ];
    note_missing(&mut out, file, r, &lacks);
    Ok(out)
}

/// One row of loaded ACKs, held to vmd's deadline; `detail` follows the
/// figure.
fn loaded_ack_row(label: &str, f: &Fig, detail: &str) -> String {
    format!(
        "| {label} | {} | {}{detail} | {} ≤ {ACK_LOAD_MAX_MS} ms | {} |\n",
        f.s.n,
        measured(f, 1.0, 0, "ms"),
        f.s.tail_name(),
        yes(f.s.tail() <= ACK_LOAD_MAX_MS)
    )
}
