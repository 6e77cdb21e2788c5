//! The status record as Prometheus metrics, in the text format that
//! node_exporter's textfile collector reads (`--collector.textfile.directory`,
//! Debian: /var/lib/prometheus/node-exporter). Written atomically, as the
//! collector asks, so a scrape never sees half a file.

use std::fmt::Write;
use std::path::Path;

use crate::store::write_atomic;
use crate::Status;

/// Every metric, with HELP and TYPE lines.
pub fn render_prometheus(s: &Status) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP vmmci_{name} {help}");
        let _ = writeln!(out, "# TYPE vmmci_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "vmmci_{name}{labels} {value}");
        }
    };
    let up = matches!(s.state.as_str(), "running" | "rebooting" | "powering-off");
    metric(
        "up",
        "gauge",
        "1 while the agent serves the vmmci device (DRIVER_OK).",
        &[("", u8::from(up).to_string())],
    );
    let info = format!(
        "{{version=\"{}\",device=\"{}\",state=\"{}\",clock_mode=\"{}\"}}",
        escape(&s.version),
        escape(&s.device),
        escape(&s.state),
        escape(&s.clock.mode)
    );
    metric(
        "info",
        "gauge",
        "The agent's version, device, state and clock mode.",
        &[(&info, "1".into())],
    );
    if let Some(c) = &s.clock_source {
        let labels = format!(
            "{{current=\"{}\",kvm_clock_offered=\"{}\"}}",
            escape(c.current.as_deref().unwrap_or("unknown")),
            c.kvm_clock_offered
        );
        metric(
            "clocksource_info",
            "gauge",
            "The guest's clock source and whether the host offers kvm-clock.",
            &[(&labels, "1".into())],
        );
        metric(
            "clocksource_advice",
            "gauge",
            "How many things `vmmci status` advises doing about the guest clock.",
            &[("", c.advice.len().to_string())],
        );
    }
    let secs = |ns: Option<i64>| ns.map(|n| format!("{:.9}", n as f64 * 1e-9));
    // The last sample's gauges, when there is one.
    for (name, help, value) in [
        (
            "clock_offset_seconds",
            "Host minus guest clock at the last sample (positive: the guest is behind).",
            secs(s.drift_ns),
        ),
        (
            "clock_error_bound_seconds",
            "Bound on the last sample's error: half its round trip plus the host's 1 us.",
            secs(s.error_bound_ns),
        ),
        (
            "sample_round_trip_seconds",
            "Guest time the last sample's host time read took.",
            secs(s.round_trip_ns),
        ),
        (
            "clock_frequency_ppm",
            "Rate correction the agent last set, tick and frequency together (discipline mode).",
            s.clock.frequency_ppm.map(|f| format!("{f:.3}")),
        ),
        (
            "clock_tick_microseconds",
            "The kernel tick the agent set, when not the default 10000 (discipline mode).",
            s.clock.tick_us.map(|t| t.to_string()),
        ),
        (
            "clock_learned_rate_ppm",
            "The guest oscillator's rate error against the host, as discipline learned it.",
            s.clock.learned_frequency_ppm.map(|f| format!("{f:.3}")),
        ),
        (
            "clock_locked",
            "1 while discipline holds the guest clock locked to the host's.",
            (s.clock.mode == "discipline")
                .then(|| u8::from(s.clock.locked_since_ns.is_some()).to_string()),
        ),
        (
            "clock_worst_offset_hour_seconds",
            "The worst host minus guest offset of the last hour's samples.",
            secs(s.clock.worst_hour_ns),
        ),
    ] {
        if let Some(v) = value {
            metric(name, "gauge", help, &[("", v)]);
        }
    }
    metric(
        "clock_samples_total",
        "counter",
        "Host time samples taken.",
        &[("", s.drift_samples.to_string())],
    );
    metric(
        "clock_steps_total",
        "counter",
        "Clock steps, by cause: request (SYNCRTC, vmmci sync) or periodic (discipline).",
        &[
            ("{cause=\"request\"}", s.clock.steps_requested.to_string()),
            ("{cause=\"periodic\"}", s.clock.steps_periodic.to_string()),
        ],
    );
    metric(
        "clock_slews_total",
        "counter",
        "Frequency corrections set (discipline mode).",
        &[("", s.clock.slews.to_string())],
    );
    metric(
        "clock_standing_back",
        "gauge",
        "1 while discipline stands back for another time daemon.",
        &[("", u8::from(s.clock.disciplined_by.is_some()).to_string())],
    );
    let c = &s.commands;
    metric(
        "commands_total",
        "counter",
        "Commands from the host, by kind (unknown: values that are not commands).",
        &[
            ("{command=\"reboot\"}", c.reboot.to_string()),
            ("{command=\"shutdown\"}", c.shutdown.to_string()),
            ("{command=\"syncrtc\"}", c.syncrtc.to_string()),
            ("{command=\"unknown\"}", c.unknown.to_string()),
        ],
    );
    metric(
        "status_updated_timestamp_seconds",
        "gauge",
        "When the agent last wrote this (Unix time, guest clock).",
        &[("", format!("{:.3}", s.updated_at_ns as f64 * 1e-9))],
    );
    out
}

/// Label values escape backslash, quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Write the metrics to `path` (a `.prom` file in the collector's
/// directory) atomically.
pub fn write_textfile(path: &Path, s: &Status) -> std::io::Result<()> {
    write_atomic(path, render_prometheus(s).as_bytes(), b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_line_parses_and_has_help_and_type() {
        let s = crate::tests::sample_status();
        let text = render_prometheus(&s);
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (name_labels, value) = line.rsplit_once(' ').unwrap();
            let name = name_labels.split('{').next().unwrap();
            assert!(typed.contains(name), "{name} has no TYPE line");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        for want in [
            "vmmci_up 1",
            "vmmci_clock_offset_seconds -0.300000000",
            "vmmci_clock_steps_total{cause=\"periodic\"} 2",
            "vmmci_clock_slews_total 40",
            "vmmci_clock_frequency_ppm 49.500",
            "vmmci_clock_learned_rate_ppm 50.100",
            "vmmci_clock_locked 1",
            "vmmci_clock_worst_offset_hour_seconds -0.000310000",
            "vmmci_commands_total{command=\"syncrtc\"} 3",
            "clock_mode=\"discipline\"",
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
    }

    #[test]
    fn labels_are_escaped_and_the_file_is_replaced_whole() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmmci.prom");
        let mut s = crate::tests::sample_status();
        write_textfile(&path, &s).unwrap();
        s.state = "released".into();
        write_textfile(&path, &s).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("vmmci_up 0"), "{text}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
