//! The targets: the limits each figure is held to, and the checks the
//! bench's `--check` fails on. The README's target column reads the same
//! limits.

use serde_json::Value;

use super::{fig, Fig, Summary};
use Held::{AbsMax, AbsTail, Max, Tail};

/// ACK of a `vmctl stop` on an idle guest: at most the poll interval plus this.
pub const ACK_IDLE_SLACK_MS: f64 = 100.0;
/// ACK under load: vmd's deadline.
pub const ACK_LOAD_MAX_MS: f64 = 3000.0;
/// vmd's long timeout after the ACK of a `vmctl stop`, and its host-shutdown
/// budget (`rcctl stop vmd`).
pub const STOP_LONG_S: f64 = 120.0;
pub const HOST_SHUTDOWN_S: f64 = 30.0;
/// Agent's RSS: 8 MiB.
pub const RSS_MAX_KIB: f64 = 8.0 * 1024.0;
pub const BINARY_MAX_BYTES: f64 = 4.0 * 1024.0 * 1024.0;
/// Agent's idle CPU, user time, % of a core.
pub const IDLE_USER_MAX_PERCENT: f64 = 0.1;
/// |guest − host| after a host resume (vmd's SYNCRTC, the agent's step).
pub const RESIDUAL_MAX_MS: f64 = 1.0;
/// Clock policies: |guest − host| over the run, `discipline` and chrony.
pub const HELD_MAX_MS: f64 = 5.0;
/// `discipline` across host rates: |guest − host| (p99 where n ≥ 100, else
/// max) within ±[`RATE_SLOW_PPM`] …
pub const RATE_SLOW_MAX_MS: f64 = 1.0;
pub const RATE_SLOW_PPM: f64 = 200.0;
/// … and beyond, up to the 20,000 ppm measured.
pub const RATE_FAST_MAX_MS: f64 = 5.0;
/// Boot (DRIVER_OK) to the lock, s.
pub const LOCK_MAX_S: f64 = 30.0;
/// The agent's samples that see a 40 s set-back before it is stepped.
pub const SET_BACK_MAX_SAMPLES: f64 = 2.0;

/// Which number of a figure a target holds.
#[derive(Clone, Copy)]
enum Held {
    Max,
    /// p99 where there is one, else max.
    Tail,
    /// Max of |x|.
    AbsMax,
    /// p99 of |x| where there is one, else max.
    AbsTail,
}

impl Held {
    /// The summary held, its number, and the number's name.
    fn of(self, f: &Fig) -> (&Summary, f64, &'static str) {
        match self {
            Max => (&f.s, f.s.max, "max"),
            Tail => (&f.s, f.s.tail(), f.s.tail_name()),
            AbsMax => (&f.abs, f.abs.max, "max"),
            AbsTail => (&f.abs, f.abs.tail(), f.abs.tail_name()),
        }
    }
}

/// One target held against one figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub what: String,
    pub measured: String,
    pub target: String,
    pub ok: bool,
}

impl Check {
    /// `stat` (`value` of `n` points) at most `limit`.
    fn at_most(what: &str, n: usize, stat: &str, value: f64, limit: f64, unit: &str) -> Check {
        Check {
            what: format!("{what} (n={n})"),
            measured: format!("{stat} {value:.3} {unit}"),
            target: format!("<= {limit} {unit}"),
            ok: value <= limit,
        }
    }
}

/// A limit on one number of a figure.
struct Limit {
    held: Held,
    /// Stored units in one `unit` (1e6 ns in a ms).
    per: f64,
    max: f64,
    unit: &'static str,
}

impl Limit {
    /// `held` at most `max`, in the figure's own unit.
    fn own(held: Held, max: f64, unit: &'static str) -> Limit {
        Limit {
            held,
            per: 1.0,
            max,
            unit,
        }
    }

    /// `held` of a figure in ns, at most `max` ms.
    fn ns_as_ms(held: Held, max: f64) -> Limit {
        Limit {
            held,
            per: 1e6,
            max,
            unit: "ms",
        }
    }

    fn check(&self, what: &str, f: &Fig) -> Check {
        let (s, value, stat) = self.held.of(f);
        Check::at_most(what, s.n, stat, value / self.per, self.max, self.unit)
    }
}

/// The figures held to a fixed limit in their own unit, in the order the
/// bench prints them: (figure, held, limit, unit, what).
#[rustfmt::skip]
const FIXED: [(&str, Held, f64, &str, &str); 7] = [
    ("basic.idle_cpu_user_percent", Max, IDLE_USER_MAX_PERCENT, "%", "agent idle CPU, user"),
    ("basic.rss_kib", Max, RSS_MAX_KIB, "KiB", "agent RSS"),
    ("basic.binary_bytes", Max, BINARY_MAX_BYTES, "bytes", "static binary"),
    ("load.ack_ms", Tail, ACK_LOAD_MAX_MS, "ms", "ACK under load"),
    ("distro.systemd_load_ack_ms", Tail, ACK_LOAD_MAX_MS, "ms", "ACK under load, systemd unit"),
    ("distro.systemd_stop_s", Max, HOST_SHUTDOWN_S, "s", "vmctl stop -> VM end, Debian 12 systemd"),
    ("distro.openrc_stop_s", Max, STOP_LONG_S, "s", "vmctl stop -> VM end, Debian 12 OpenRC"),
];

/// The idle ACK's limit: the run's poll interval (250 ms when unrecorded)
/// plus the slack.
pub(super) fn ack_idle_limit_ms(r: &Value) -> f64 {
    let poll = r
        .get("poll_interval_ms")
        .and_then(Value::as_f64)
        .unwrap_or(250.0);
    poll + ACK_IDLE_SLACK_MS
}

/// Every target that the figures in `r` can be held to. A missing part
/// adds nothing; a malformed figure is an error.
pub fn checks(r: &Value) -> Result<Vec<Check>, String> {
    let mut out = vec![];
    let mut hold = |path: &str, what: &str, limit: Limit| -> Result<(), String> {
        let path: Vec<&str> = path.split('.').collect();
        if let Some(f) = fig(r, &path)? {
            out.push(limit.check(what, &f));
        }
        Ok(())
    };
    let ack_idle = Limit::own(Tail, ack_idle_limit_ms(r), "ms");
    hold("basic.ack_ms", "ACK, idle", ack_idle)?;
    let residual = Limit::ns_as_ms(AbsMax, RESIDUAL_MAX_MS);
    hold(
        "basic.resume_residual_ns",
        "|guest - host| after a +90 s host resume",
        residual,
    )?;
    for (path, held, max, unit, what) in FIXED {
        hold(path, what, Limit::own(held, max, unit))?;
    }
    out.extend(clock_checks(r)?);
    out.extend(rates_checks(r)?);
    Ok(out)
}

/// `discipline` at each host rate (chrony's runs beside it are figures,
/// not held): |guest − host|, no step after the lock, the lock time, and
/// the set-back.
fn rates_checks(r: &Value) -> Result<Vec<Check>, String> {
    let runs = r.pointer("/rates/runs").and_then(Value::as_array);
    let mut out = vec![];
    for run in runs.into_iter().flatten() {
        if run.get("policy").and_then(Value::as_str) != Some("discipline") {
            continue;
        }
        let ppm = run.get("ppm").and_then(Value::as_f64).unwrap_or(f64::NAN);
        let max_ms = if ppm.abs() <= RATE_SLOW_PPM {
            RATE_SLOW_MAX_MS
        } else {
            RATE_FAST_MAX_MS
        };
        let at = format!("discipline, host {ppm:+} ppm");
        if let Some(f) = fig(run, &["residual_ns"])? {
            let held = Limit::ns_as_ms(AbsTail, max_ms);
            out.push(held.check(&format!("{at}: |guest - host|"), &f));
        }
        let number = |key: &str| run.get(key).and_then(Value::as_f64);
        if let Some(steps) = number("steps_after_lock") {
            out.push(Check::at_most(
                &format!("{at}: steps after the lock"),
                1,
                "",
                steps,
                0.0,
                "steps",
            ));
        }
        if let Some(hi) = run.pointer("/lock_s/1").and_then(Value::as_f64) {
            out.push(Check::at_most(
                &format!("{at}: DRIVER_OK -> locked"),
                1,
                "by",
                hi,
                LOCK_MAX_S,
                "s",
            ));
        }
        if let Some(n) = number("set_back_samples") {
            let what = format!("{at}: samples before a 40 s set-back is stepped");
            out.push(Check::at_most(
                &what,
                1,
                "",
                n,
                SET_BACK_MAX_SAMPLES,
                "samples",
            ));
        }
        if let Some(x) = number("after_set_back_ns") {
            let what = format!("{at}: |guest - host| 30 s after the set-back");
            out.push(Check::at_most(
                &what,
                1,
                "at",
                x.abs() / 1e6,
                RESIDUAL_MAX_MS,
                "ms",
            ));
        }
    }
    Ok(out)
}

/// Each clock policy's run: |guest − host| right after the resume, and over
/// the run for all but `step-on-request` (which leaves the drift alone
/// between requests).
fn clock_checks(r: &Value) -> Result<Vec<Check>, String> {
    let held = Limit::ns_as_ms(AbsTail, HELD_MAX_MS);
    let runs = r.pointer("/clock/runs").and_then(Value::as_array);
    let mut out = vec![];
    for run in runs.into_iter().flatten() {
        let policy = run.get("policy").and_then(Value::as_str).unwrap_or("?");
        if let Some(f) = fig(run, &["residual_ns"])? {
            if policy != "step-on-request" {
                out.push(held.check(&format!("clock, {policy}: |guest - host|"), &f));
            }
        }
        if let Some(x) = run.get("after_resume_ns").and_then(Value::as_f64) {
            let what = format!("clock, {policy}: |guest - host| right after the resume");
            let at = x.abs() / 1e6;
            out.push(Check::at_most(&what, 1, "at", at, RESIDUAL_MAX_MS, "ms"));
        }
    }
    Ok(out)
}
