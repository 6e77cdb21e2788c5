//! Status for people and for sysctl-style readers.

use std::fmt::Write;

use vmmci_agent::{fmt_bound, fmt_ns};

use crate::{rfc3339, Status};

/// A few aligned lines for a person. `alive` says whether the process that
/// wrote the status still runs; `now_ns` dates the "ago" figures.
pub fn render_text(s: &Status, alive: bool, now_ns: i64) -> String {
    let mut out = String::new();
    let ago = |at: i64| format!("{} ({} ago)", rfc3339(at), fmt_age(now_ns - at));
    let running = if alive {
        format!("agent running (pid {})", s.pid)
    } else {
        format!("agent NOT running (pid {} is gone; status is stale)", s.pid)
    };
    let _ = writeln!(out, "vmmci {}: {running}", s.version);
    let _ = writeln!(out, "device:         {}", s.device);
    let _ = writeln!(out, "state:          {}", s.state);
    let _ = writeln!(
        out,
        "features:       {} (offered: {})",
        join_or_none(&s.features),
        join_or_none(&s.features_offered)
    );
    let _ = writeln!(
        out,
        "polling:        every {} ms, drift sample every {} s ({} polls)",
        s.poll_interval_ms,
        s.sample_interval_ms / 1000,
        s.polls
    );
    match &s.last_command {
        Some(c) => {
            let _ = writeln!(
                out,
                "last command:   {} at {}, {}: {}",
                c.name,
                ago(c.at_ns),
                if c.acked {
                    "acknowledged"
                } else {
                    "not acknowledged"
                },
                c.outcome
            );
        }
        None => {
            let _ = writeln!(out, "last command:   none since start");
        }
    }
    match (s.drift_ns, s.drift_at_ns) {
        (Some(d), Some(at)) => {
            let _ = writeln!(
                out,
                "drift:          {} host − guest, ±{}, round trip {}, at {}",
                fmt_ns(d),
                fmt_bound(s.error_bound_ns.unwrap_or(0)),
                fmt_bound(s.round_trip_ns.unwrap_or(0)),
                ago(at)
            );
            if let (Some(lo), Some(hi)) = (s.drift_min_ns, s.drift_max_ns) {
                let _ = writeln!(
                    out,
                    "drift range:    {} .. {} over {} samples",
                    fmt_ns(lo),
                    fmt_ns(hi),
                    s.drift_samples
                );
            }
        }
        _ => {
            let _ = writeln!(out, "drift:          not measured yet");
        }
    }
    render_clock(&mut out, s, &ago);
    render_clock_source(&mut out, s);
    match &s.last_step {
        Some(st) => {
            let residual = st
                .residual_ns
                .map(|r| format!(", residual {}", fmt_ns(r)))
                .unwrap_or_default();
            let cause = match st.cause.as_str() {
                "periodic" => " (no SYNCRTC: beyond the step threshold)",
                _ => "",
            };
            let _ = writeln!(
                out,
                "last step:      {} at {}{residual}{cause}",
                fmt_ns(st.delta_ns),
                ago(st.at_ns)
            );
        }
        None => {
            let _ = writeln!(out, "last step:      none since start");
        }
    }
    crate::hooks::render_hooks(&mut out, &s.hooks, ago);
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "last error:     {e}");
    }
    let _ = writeln!(out, "updated:        {}", ago(s.updated_at_ns));
    out
}

/// The clock source, what the host offers, and advice when it drifts.
fn render_clock_source(out: &mut String, s: &Status) {
    let Some(c) = &s.clock_source else {
        return;
    };
    let _ = writeln!(out, "clock source:   {}", c.summary());
    for a in &c.advice {
        let _ = writeln!(out, "ADVICE:         {a}");
    }
}

/// The clock policy: mode, what it did, and what needs a person.
fn render_clock(out: &mut String, s: &Status, ago: &dyn Fn(i64) -> String) {
    let c = &s.clock;
    if c.mode.is_empty() {
        return; // a status file from before the policy existed
    }
    let threshold = match c.mode.as_str() {
        "off" => String::new(),
        _ => format!(", step threshold {}", fmt_bound(c.step_threshold_ns)),
    };
    let _ = writeln!(
        out,
        "clock mode:     {}{threshold}; steps {} requested, {} periodic; {} slews",
        c.mode, c.steps_requested, c.steps_periodic, c.slews
    );
    if let Some(f) = c.frequency_ppm {
        let tick = c
            .tick_us
            .map(|t| format!(", tick {t} µs"))
            .unwrap_or_default();
        let learned = match (c.learned_frequency_ppm, c.rate_error_ppm) {
            (Some(l), Some(e)) => format!(" (learned rate {l:+.3} ±{e:.3} ppm)"),
            (Some(l), None) => format!(" (learned rate {l:+.3} ppm)"),
            _ => String::new(),
        };
        let _ = writeln!(out, "frequency:      {f:+.3} ppm{tick}{learned}");
    }
    if c.mode == "discipline" && c.disciplined_by.is_none() {
        let lock = match c.locked_since_ns {
            Some(at) => format!("locked since {}", ago(at)),
            None => "not locked yet (sampling every 2 s)".to_string(),
        };
        let worst = c
            .worst_hour_ns
            .map(|w| format!("; worst offset in the last hour {}", fmt_ns(w)))
            .unwrap_or_default();
        let _ = writeln!(out, "lock:           {lock}{worst}");
    }
    if let Some(d) = &c.last_decision {
        let _ = writeln!(out, "clock policy:   {d}");
    }
    if let Some(w) = &c.warning {
        let _ = writeln!(out, "WARNING:        {w}");
    }
    if let Some(feed) = &c.chrony {
        let _ = writeln!(out, "chrony:         {feed}");
    }
}

/// The old kernel driver's sysctls, `sysctl`'s `name = value` form. Both
/// fields keep the sign (−0.3 s is 0 and −300000000).
pub fn render_sysctl(s: &Status) -> Option<String> {
    let d = s.drift()?;
    Some(format!(
        "vmmci.drift_sec = {}\nvmmci.drift_nsec = {}\n",
        d.sec(),
        d.nsec()
    ))
}

fn join_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join("|")
    }
}

fn fmt_age(ns: i64) -> String {
    let s = ns.max(0) / 1_000_000_000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::sample_status;

    #[test]
    fn text_has_every_field_a_person_looks_for() {
        let s = sample_status();
        let text = render_text(&s, true, s.updated_at_ns + 2_000_000_000);
        for needle in [
            "agent running (pid",
            "device:         0000:00:05.0",
            "state:          rebooting",
            "TIMESYNC|ACK|SYNCRTC",
            "every 250 ms",
            "REBOOT at",
            "acknowledged: reboot started through init",
            "-300.000 ms host − guest",
            "round trip 40.000 µs",
            "last step:      none",
            "(2 s ago)",
            "clock mode:     discipline, step threshold 128.000 ms; steps 1 requested, 2 periodic; 40 slews",
            "frequency:      +49.500 ppm (learned rate +50.100 ±0.400 ppm)",
            "lock:           locked since 2030-03-17T17:36:40.000000Z (10 min 3 s ago); worst offset in the last hour -310.000 µs",
            "clock policy:   slewing",
            "chrony:         sending to /run/chrony.vmmci.sock",
            "clock source:   refined-jiffies (available: tsc refined-jiffies); hypervisor OpenBSDVMM58, kvm-clock not offered; TSC: no constant, no nonstop; drift +50.1 ppm",
            "ADVICE:         the guest clock runs on refined-jiffies, which drifts badly in a VM: select tsc",
            "hook:           before-reboot /etc/vmmci/hooks.d/before-reboot/10-drain: exit 0 after 40 ms, at",
            "  its output:   drained",
            "hook problem:   after-step: [hooks] after_step program \"x\" not found",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let stale = render_text(&s, false, s.updated_at_ns);
        assert!(stale.contains("NOT running"), "{stale}");
    }

    #[test]
    fn sysctl_keeps_the_sign_on_both_fields() {
        let s = sample_status();
        assert_eq!(
            render_sysctl(&s).unwrap(),
            "vmmci.drift_sec = 0\nvmmci.drift_nsec = -300000000\n"
        );
        let none = Status {
            drift_ns: None,
            ..s
        };
        assert_eq!(render_sysctl(&none), None);
    }
}
