//! What the agent shows: one status record, written atomically under
//! `/run/vmmci/` by the daemon and read back by `vmmci status`, which
//! renders it for a person, as JSON for scripts, or as the old kernel
//! driver's `vmmci.drift_sec` / `vmmci.drift_nsec` sysctl lines; the same
//! record as Prometheus metrics ([`metrics`]); and every time sample to
//! chronyd's SOCK refclock ([`chrony`]).

pub mod chrony;
pub mod clocksource;
pub mod hooks;
pub mod metrics;
mod render;
mod store;
mod timefmt;

use serde::{Deserialize, Serialize};
use vmmci_agent::{ClockReport, CommandRecord, DriftPoint, Snapshot, StepRecord};
use vmmci_protocol::{Drift, Features};

use crate::clocksource::{drift_rate_ppm, ClockSource};
pub use crate::hooks::{HookRunStatus, HooksStatus};

pub use render::{render_sysctl, render_text};
pub use store::{read_status, write_status, StatusError, DEFAULT_RUN_DIR, STATUS_FILE};
pub use timefmt::{rfc3339, rfc3339_secs};

/// The agent's state as the status file holds it. Times are ns since the
/// Unix epoch (guest clock); offsets are host − guest, ns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// `/proc/sys/kernel/random/boot_id` when written, so a latch from a
    /// previous boot is never trusted.
    pub boot_id: Option<String>,
    /// PCI address of the device, or `simulator`.
    pub device: String,
    pub state: String,
    pub features_offered: Vec<String>,
    pub features: Vec<String>,
    pub poll_interval_ms: u64,
    pub sample_interval_ms: u64,
    pub started_at_ns: i64,
    pub updated_at_ns: i64,
    pub polls: u64,
    pub last_command: Option<CommandStatus>,
    /// Last drift sample: host − guest.
    pub drift_ns: Option<i64>,
    pub round_trip_ns: Option<i64>,
    pub error_bound_ns: Option<i64>,
    pub drift_at_ns: Option<i64>,
    pub drift_min_ns: Option<i64>,
    pub drift_max_ns: Option<i64>,
    pub drift_samples: u64,
    /// The last drift points, oldest first.
    pub drift_history: Vec<DriftEntry>,
    pub last_step: Option<StepStatus>,
    /// The COMMAND value already handled (see the agent's latch).
    pub latched_command: Option<u32>,
    /// Why the last drift sample or device access failed, if it did.
    pub last_error: Option<String>,
    /// The clock policy and what it did.
    #[serde(default)]
    pub clock: ClockStatus,
    /// Commands seen since start, by kind.
    #[serde(default)]
    pub commands: CommandCounts,
    /// The guest's clock source and what to do about it.
    #[serde(default)]
    pub clock_source: Option<ClockSource>,
    /// The administrator's hooks: their last runs and what is wrong.
    #[serde(default)]
    pub hooks: HooksStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClockStatus {
    /// `step-on-request`, `discipline` or `off`.
    pub mode: String,
    pub step_threshold_ns: i64,
    /// The rate correction the agent last set, tick and frequency together
    /// (`discipline`).
    pub frequency_ppm: Option<f64>,
    /// The kernel's tick the agent set (µs), when not the default 10 000.
    pub tick_us: Option<i64>,
    /// The guest oscillator's rate error as the servo learned it …
    pub learned_frequency_ppm: Option<f64>,
    /// … and how far off that may be (one deviation).
    pub rate_error_ppm: Option<f64>,
    /// Since when (guest wall time, ns) the servo holds the clock locked.
    pub locked_since_ns: Option<i64>,
    /// The worst offset (host − guest) of the last hour's samples.
    pub worst_hour_ns: Option<i64>,
    pub steps_requested: u64,
    pub steps_periodic: u64,
    pub slews: u64,
    /// Another time daemon `discipline` stands back for.
    pub disciplined_by: Option<String>,
    pub last_decision: Option<String>,
    pub warning: Option<String>,
    /// The chrony SOCK refclock feed, when configured.
    pub chrony: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandCounts {
    pub reboot: u64,
    pub shutdown: u64,
    pub syncrtc: u64,
    pub unknown: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandStatus {
    pub name: String,
    pub raw: u32,
    pub at_ns: i64,
    pub acked: bool,
    pub outcome: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftEntry {
    pub at_ns: i64,
    pub offset_ns: i64,
    pub round_trip_ns: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStatus {
    /// `request` (SYNCRTC, `vmmci sync`) or `periodic` (`discipline`).
    #[serde(default)]
    pub cause: String,
    pub at_ns: i64,
    pub delta_ns: i64,
    pub error_bound_ns: i64,
    pub residual_ns: Option<i64>,
}

/// Facts about the process that the agent's snapshot does not carry.
#[derive(Clone, Debug, Default)]
pub struct ProcessInfo {
    pub device: String,
    pub started_at_ns: i64,
    pub now_ns: i64,
    pub boot_id: Option<String>,
    pub last_error: Option<String>,
    /// How the chrony feed is doing, when there is one.
    pub chrony: Option<String>,
    /// The clock source facts (the advice is added from the snapshot).
    pub clock_source: Option<ClockSource>,
    /// The hooks' last runs and problems.
    pub hooks: HooksStatus,
}

impl Status {
    pub fn from_snapshot(s: &Snapshot, p: &ProcessInfo) -> Status {
        let drift_history: Vec<DriftEntry> = s.drift_history.iter().map(DriftEntry::from).collect();
        // While `discipline` holds the offset near zero, the rate it
        // learned is the guest's drift.
        let drift_ppm = s
            .clock
            .learned_frequency_ppm
            .or_else(|| drift_rate_ppm(&drift_history, s.last_step.map(|st| st.at_ns)));
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            boot_id: p.boot_id.clone(),
            device: p.device.clone(),
            state: s.state.name().to_string(),
            features_offered: names(s.features_offered),
            features: names(s.features),
            poll_interval_ms: s.poll_interval.as_millis() as u64,
            sample_interval_ms: s.sample_interval.as_millis() as u64,
            started_at_ns: p.started_at_ns,
            updated_at_ns: p.now_ns,
            polls: s.polls,
            last_command: s.last_command.as_ref().map(CommandStatus::from),
            drift_ns: s.last_drift.map(|d| d.offset_ns),
            round_trip_ns: s.last_drift.map(|d| d.round_trip_ns),
            error_bound_ns: s.last_drift.map(|d| d.error_bound_ns),
            drift_at_ns: s.last_drift.map(|d| d.at_ns),
            drift_min_ns: s.drift_min_ns,
            drift_max_ns: s.drift_max_ns,
            drift_samples: s.drift_samples,
            drift_history,
            last_step: s.last_step.as_ref().map(StepStatus::from),
            latched_command: s.latched,
            last_error: p.last_error.clone().or_else(|| s.last_sample_error.clone()),
            clock: ClockStatus::new(&s.clock, p.chrony.clone()),
            commands: CommandCounts::from(&s.commands),
            clock_source: p.clock_source.clone().map(|c| c.advise(drift_ppm)),
            hooks: p.hooks.clone(),
        }
    }

    /// The last drift split as the old driver's sysctls, sign on both.
    pub fn drift(&self) -> Option<Drift> {
        self.drift_ns.map(Drift)
    }
}

fn names(features: Features) -> Vec<String> {
    features.names().iter().map(|n| n.to_string()).collect()
}

impl From<&CommandRecord> for CommandStatus {
    fn from(c: &CommandRecord) -> CommandStatus {
        CommandStatus {
            name: c.name(),
            raw: c.raw,
            at_ns: c.at_ns,
            acked: c.acked,
            outcome: c.outcome.to_string(),
        }
    }
}

impl From<&DriftPoint> for DriftEntry {
    fn from(d: &DriftPoint) -> DriftEntry {
        DriftEntry {
            at_ns: d.at_ns,
            offset_ns: d.offset_ns,
            round_trip_ns: d.round_trip_ns,
        }
    }
}

impl From<&StepRecord> for StepStatus {
    fn from(st: &StepRecord) -> StepStatus {
        StepStatus {
            cause: st.cause.name().to_string(),
            at_ns: st.at_ns,
            delta_ns: st.delta_ns,
            error_bound_ns: st.error_bound_ns,
            residual_ns: st.residual_ns,
        }
    }
}

impl ClockStatus {
    /// The clock policy's report, and how the chrony feed is doing.
    fn new(c: &ClockReport, chrony: Option<String>) -> ClockStatus {
        ClockStatus {
            mode: c.mode.name().to_string(),
            step_threshold_ns: c.step_threshold_ns,
            frequency_ppm: c.frequency_ppm,
            tick_us: c.tick_us,
            learned_frequency_ppm: c.learned_frequency_ppm,
            rate_error_ppm: c.rate_error_ppm,
            locked_since_ns: c.locked_since_ns,
            worst_hour_ns: c.worst_hour_ns,
            steps_requested: c.steps_requested,
            steps_periodic: c.steps_periodic,
            slews: c.slews,
            disciplined_by: c.disciplined_by.clone(),
            last_decision: c.last_decision.clone(),
            warning: c.warning.clone(),
            chrony,
        }
    }
}

impl From<&vmmci_agent::CommandCounts> for CommandCounts {
    fn from(c: &vmmci_agent::CommandCounts) -> CommandCounts {
        CommandCounts {
            reboot: c.reboot,
            shutdown: c.shutdown,
            syncrtc: c.syncrtc,
            unknown: c.unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vmmci_agent::{Outcome, PowerAction, State};
    use vmmci_protocol::Command;

    pub(crate) fn sample_status() -> Status {
        let snap = Snapshot {
            state: State::Rebooting,
            features_offered: Features(7),
            features: Features(7),
            poll_interval: Duration::from_millis(250),
            sample_interval: Duration::from_secs(15),
            last_command: Some(CommandRecord {
                raw: 2,
                command: Some(Command::Reboot),
                at_ns: 1_900_000_000_123_000_000,
                acked: true,
                outcome: Outcome::PowerStarted(PowerAction::Reboot),
            }),
            last_drift: Some(DriftPoint {
                at_ns: 1_900_000_000_000_000_000,
                offset_ns: -300_000_000,
                round_trip_ns: 40_000,
                error_bound_ns: 20_500,
            }),
            drift_min_ns: Some(-300_000_000),
            drift_max_ns: Some(1_000),
            drift_samples: 3,
            drift_history: vec![],
            last_step: None,
            latched: Some(2),
            polls: 17,
            last_sample_error: None,
            clock: vmmci_agent::ClockReport {
                mode: vmmci_agent::ClockMode::Discipline,
                step_threshold_ns: 128_000_000,
                frequency_ppm: Some(49.5),
                tick_us: None,
                learned_frequency_ppm: Some(50.1),
                rate_error_ppm: Some(0.4),
                locked_since_ns: Some(1_899_999_400_000_000_000),
                worst_hour_ns: Some(-310_000),
                steps_requested: 1,
                steps_periodic: 2,
                slews: 40,
                disciplined_by: None,
                last_decision: Some("slewing: offset +12.000 µs, frequency +49.500 ppm".into()),
                warning: None,
            },
            commands: vmmci_agent::CommandCounts {
                reboot: 1,
                shutdown: 0,
                syncrtc: 3,
                unknown: 0,
            },
        };
        let p = ProcessInfo {
            device: "0000:00:05.0".into(),
            started_at_ns: 1_899_999_000_000_000_000,
            now_ns: 1_900_000_001_000_000_000,
            boot_id: Some("b00t".into()),
            last_error: None,
            chrony: Some("sending to /run/chrony.vmmci.sock".into()),
            clock_source: Some(ClockSource {
                current: Some("refined-jiffies".into()),
                available: vec!["tsc".into(), "refined-jiffies".into()],
                hypervisor: Some("OpenBSDVMM58".into()),
                ..ClockSource::default()
            }),
            hooks: HooksStatus {
                runs: vec![HookRunStatus {
                    event: "before-reboot".into(),
                    program: "/etc/vmmci/hooks.d/before-reboot/10-drain".into(),
                    at_ns: 1_900_000_000_200_000_000,
                    duration_ms: 40,
                    exit_code: Some(0),
                    result: "exit 0".into(),
                    output: "drained\n".into(),
                    ..HookRunStatus::default()
                }],
                problems: vec!["after-step: [hooks] after_step program \"x\" not found".into()],
            },
        };
        Status::from_snapshot(&snap, &p)
    }

    #[test]
    fn snapshot_maps_to_status() {
        let s = sample_status();
        assert_eq!(s.state, "rebooting");
        assert_eq!(s.features, vec!["TIMESYNC", "ACK", "SYNCRTC"]);
        assert_eq!(s.poll_interval_ms, 250);
        let c = s.last_command.as_ref().unwrap();
        assert_eq!((c.name.as_str(), c.acked), ("REBOOT", true));
        assert_eq!(c.outcome, "reboot started through init");
        assert_eq!(
            s.drift().map(|d| (d.sec(), d.nsec())),
            Some((0, -300_000_000))
        );
        assert_eq!(s.latched_command, Some(2));
    }

    #[test]
    fn json_round_trip() {
        let s = sample_status();
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"drift_ns\":-300000000"), "{text}");
        let back: Status = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }
}
