//! What the agent did, as records: the outcome of each command, each clock
//! step and policy decision, and the [`Snapshot`] the status report shows.
//! Plain data and its wording for people; no device access.

use std::time::Duration;

use vmmci_protocol::{Command, Features};

use crate::agent::State;
use crate::discipline::ClockMode;
use crate::drift::DriftPoint;
use crate::world::PowerAction;

/// What handling one command led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The init system was asked to reboot / power off.
    PowerStarted(PowerAction),
    /// Neither the init system's command nor PID 1 could be asked: the
    /// grace and the force still follow.
    PowerNotStarted { action: PowerAction, reason: String },
    /// A stop posted in the instant between reading SYNCRTC and
    /// acknowledging it was wiped by that acknowledgement (vmd clears
    /// whatever is pending): no ACK can stop vmd's 3 s timer now, so the
    /// agent synced and forced a reboot to end inside it.
    LostStopForced,
    /// A power command came while one was already under way: acknowledged,
    /// nothing new started.
    AlreadyStopping,
    /// The clock was stepped.
    Stepped(StepRecord),
    /// The clock was already within the sample's error bound.
    AlreadyRight { offset_ns: i64, error_bound_ns: i64 },
    /// Stepping was refused or failed; the clock was not changed.
    StepRefused(String),
    /// Not a command: logged, nothing done, not acknowledged.
    Ignored,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::PowerStarted(a) => write!(f, "{a} started through init"),
            Outcome::PowerNotStarted { action, reason } => write!(
                f,
                "{action} could not be started ({reason}); sync at the grace point, force later"
            ),
            Outcome::LostStopForced => write!(
                f,
                "a stop was wiped by the SYNCRTC acknowledgement; synced and forced a reboot"
            ),
            Outcome::AlreadyStopping => write!(f, "already stopping"),
            Outcome::Stepped(s) => write!(
                f,
                "clock stepped by {} (±{})",
                fmt_ns(s.delta_ns),
                fmt_bound(s.error_bound_ns)
            ),
            Outcome::AlreadyRight {
                offset_ns,
                error_bound_ns,
            } => write!(
                f,
                "clock already right (offset {} within ±{})",
                fmt_ns(*offset_ns),
                fmt_bound(*error_bound_ns)
            ),
            Outcome::StepRefused(why) => write!(f, "clock left alone: {why}"),
            Outcome::Ignored => write!(f, "ignored"),
        }
    }
}

/// Why the clock was stepped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepCause {
    /// The host sent SYNCRTC (or `vmmci sync` asked).
    Request,
    /// `discipline` found an offset beyond the step threshold with no
    /// request: a resume the agent missed, or someone set the clock.
    Periodic,
}

impl StepCause {
    pub fn name(self) -> &'static str {
        match self {
            StepCause::Request => "request",
            StepCause::Periodic => "periodic",
        }
    }
}

/// A step of the guest clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepRecord {
    pub cause: StepCause,
    /// Guest wall time just before the step.
    pub at_ns: i64,
    pub delta_ns: i64,
    pub error_bound_ns: i64,
    /// Offset measured right after the step, if that sample worked.
    pub residual_ns: Option<i64>,
}

/// A command the agent saw and what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    pub raw: u32,
    /// `None` for a value that is not a command.
    pub command: Option<Command>,
    /// Guest wall time it was seen.
    pub at_ns: i64,
    pub acked: bool,
    pub outcome: Outcome,
}

impl CommandRecord {
    pub fn name(&self) -> String {
        match self.command {
            Some(c) => c.name().to_string(),
            None => format!("{:#x}", self.raw),
        }
    }
}

/// A command handled during a tick.
pub type Handled = CommandRecord;

/// What the clock policy did with a periodic sample.
#[derive(Clone, Debug, PartialEq)]
pub enum ClockDecision {
    /// `discipline`: the rate correction (tick and frequency) was set to this.
    Slewed { offset_ns: i64, frequency_ppm: f64 },
    /// `discipline`: the offset was beyond the threshold.
    Stepped(StepRecord),
    /// `discipline`: the offset was beyond a millisecond as it started.
    SteppedAtStart(StepRecord),
    /// `discipline`: another time daemon has the clock.
    StoodBack { by: String },
    /// `step-on-request`: far off, and no request came (logged once).
    Warned { offset_ns: i64 },
    /// Slewing or stepping failed; the clock is as it was.
    Failed(String),
}

impl std::fmt::Display for ClockDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClockDecision::Slewed {
                offset_ns,
                frequency_ppm,
            } => write!(
                f,
                "slewing: offset {}, frequency {frequency_ppm:+.3} ppm",
                fmt_ns(*offset_ns)
            ),
            ClockDecision::Stepped(s) => write!(
                f,
                "stepped by {} with no SYNCRTC (beyond the step threshold)",
                fmt_ns(s.delta_ns)
            ),
            ClockDecision::SteppedAtStart(s) => write!(
                f,
                "stepped by {} as discipline started (beyond 1 ms)",
                fmt_ns(s.delta_ns)
            ),
            ClockDecision::StoodBack { by } => {
                write!(f, "standing back: {by} disciplines the clock")
            }
            ClockDecision::Warned { offset_ns } => write!(
                f,
                "clock is off by {} and the host did not ask for a step \
                 (a resume the agent missed?): run `vmmci sync`, or set [clock] mode = \"discipline\"",
                fmt_ns(*offset_ns)
            ),
            ClockDecision::Failed(why) => write!(f, "clock left alone: {why}"),
        }
    }
}

/// Commands seen over the agent's life, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandCounts {
    pub reboot: u64,
    pub shutdown: u64,
    pub syncrtc: u64,
    /// Values that are not commands.
    pub unknown: u64,
}

/// The clock policy's state, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClockReport {
    pub mode: ClockMode,
    pub step_threshold_ns: i64,
    /// The rate correction the agent last set, tick and frequency
    /// together (`discipline` only).
    pub frequency_ppm: Option<f64>,
    /// The tick it set, when not the kernel's default.
    pub tick_us: Option<i64>,
    /// The servo's learned rate correction …
    pub learned_frequency_ppm: Option<f64>,
    /// … and how far off it may be (one deviation), once measured.
    pub rate_error_ppm: Option<f64>,
    /// Guest wall time at which the servo locked, while it holds.
    pub locked_since_ns: Option<i64>,
    /// The worst offset measured in the last hour.
    pub worst_hour_ns: Option<i64>,
    pub steps_requested: u64,
    pub steps_periodic: u64,
    pub slews: u64,
    /// Who else disciplines the clock, when `discipline` stands back.
    pub disciplined_by: Option<String>,
    pub last_decision: Option<String>,
    /// A condition that needs a person (far off with no request).
    pub warning: Option<String>,
}

/// What one tick did.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    pub handled: Option<Handled>,
    pub sampled: Option<DriftPoint>,
    /// What the clock policy did with that sample.
    pub clock: Option<ClockDecision>,
    /// A SYNCRTC step that had failed was tried again.
    pub retried: Option<Outcome>,
    /// The grace point passed with the power action still under way:
    /// sync(2) was called (and finished in time, if true).
    pub synced: Option<bool>,
    /// The orderly power action ran out of time and was forced.
    pub forced: Option<PowerAction>,
}

/// Everything the status report shows, copied out of the agent.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub state: State,
    pub features_offered: Features,
    pub features: Features,
    pub poll_interval: Duration,
    pub sample_interval: Duration,
    pub last_command: Option<CommandRecord>,
    pub last_drift: Option<DriftPoint>,
    pub drift_min_ns: Option<i64>,
    pub drift_max_ns: Option<i64>,
    pub drift_samples: u64,
    pub drift_history: Vec<DriftPoint>,
    pub last_step: Option<StepRecord>,
    pub latched: Option<u32>,
    pub polls: u64,
    pub last_sample_error: Option<String>,
    pub clock: ClockReport,
    pub commands: CommandCounts,
}

/// A magnitude (round trip, error bound) for people: `40.000 µs`.
pub fn fmt_bound(ns: i64) -> String {
    fmt_ns(ns).trim_start_matches(['+', '-']).to_string()
}

/// Nanoseconds for people: `+1.234567 s`, `-12.3 ms`, `850 ns`.
pub fn fmt_ns(ns: i64) -> String {
    let a = ns.unsigned_abs();
    let sign = if ns < 0 { "-" } else { "+" };
    if a >= 1_000_000_000 {
        format!(
            "{sign}{}.{:06} s",
            a / 1_000_000_000,
            (a % 1_000_000_000) / 1_000
        )
    } else if a >= 1_000_000 {
        format!("{sign}{}.{:03} ms", a / 1_000_000, (a % 1_000_000) / 1_000)
    } else if a >= 1_000 {
        format!("{sign}{}.{:03} µs", a / 1_000, a % 1_000)
    } else {
        format!("{sign}{a} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmt_ns_reads_well() {
        assert_eq!(fmt_ns(1_234_567_890), "+1.234567 s");
        assert_eq!(fmt_ns(-12_300_000), "-12.300 ms");
        assert_eq!(fmt_ns(850), "+850 ns");
        assert_eq!(fmt_ns(-1_500), "-1.500 µs");
    }
}
