//! What a sample does to the clock: a step on request, and the periodic
//! policy (`step-on-request` warns, `discipline` slews or steps, `off`).

use std::time::Duration;

use tracing::{info, warn};
use vmmci_protocol::TimeSample;
use vmmci_transport::RegisterIo;

use super::{duration_ns, Agent};
use crate::discipline::ClockMode;
use crate::drift::DriftPoint;
use crate::rate::Rate;
use crate::report::{fmt_bound, fmt_ns, ClockDecision, Outcome, StepCause, StepRecord};
use crate::world::{GuestClock, Power};

impl<B: RegisterIo, C: GuestClock, P: Power> Agent<B, C, P> {
    /// Step the guest clock to host time, as asked (`vmmci sync`). Never
    /// steps on a sample that does not validate; the reason is in the
    /// outcome.
    pub fn step_to_host(&mut self) -> Outcome {
        self.step(StepCause::Request)
    }

    /// What the clock policy does with a periodic sample.
    pub(super) fn apply_policy(
        &mut self,
        sample: &TimeSample,
        now: Duration,
    ) -> Option<ClockDecision> {
        let policy = self.config.clock;
        let offset = sample.offset_ns();
        let beyond = offset.abs() > duration_ns(policy.step_threshold)
            && offset.abs() > sample.error_bound_ns();
        let decision = match policy.mode {
            ClockMode::Off => None,
            ClockMode::StepOnRequest if beyond => {
                let first = self.clock_report.warning.is_none();
                let d = ClockDecision::Warned { offset_ns: offset };
                self.clock_report.warning = Some(d.to_string());
                if first {
                    warn!("{d}");
                }
                first.then_some(d)
            }
            ClockMode::StepOnRequest => {
                self.clock_report.warning = None;
                None
            }
            ClockMode::Discipline => Some(self.discipline(sample, beyond, now)),
        };
        if let Some(d) = &decision {
            self.clock_report.last_decision = Some(d.to_string());
        }
        decision
    }

    /// Another time daemon that has the clock: one fed or seen by name, or
    /// the kernel's sync flag (see [`SyncFlag`]).
    fn other_daemon(&mut self) -> Option<String> {
        let named = self
            .fed_daemon
            .clone()
            .or_else(|| self.clock.disciplined_by());
        let flag = self.clock.kernel_synchronised();
        match self.sync_flag.judge(named.is_some(), flag) {
            FlagSays::Nothing => named,
            FlagSays::Daemon => Some(KERNEL_SYNCHRONISED.to_string()),
            FlagSays::LeftBehind => {
                if let Some(by) = &self.clock_report.disciplined_by {
                    info!(
                        "{by} is gone and left the kernel clock marked synchronised: \
                         taken for its leftover until the kernel clears it"
                    );
                }
                None
            }
        }
    }

    fn discipline(&mut self, sample: &TimeSample, beyond: bool, now: Duration) -> ClockDecision {
        self.clock_report.warning = None;
        if let Some(by) = self.other_daemon() {
            self.servo.restart();
            self.clock_report.locked_since_ns = None;
            if self.clock_report.disciplined_by.as_deref() != Some(by.as_str()) {
                info!("{by} disciplines the clock: standing back (SYNCRTC still steps)");
            }
            self.hand_over_clock();
            self.clock_report.disciplined_by = Some(by.clone());
            return ClockDecision::StoodBack { by };
        }
        if self.clock_report.disciplined_by.take().is_some() {
            info!("no other time daemon now: disciplining the clock");
        }
        let at_start = self.servo.wants_startup_step(sample);
        if beyond || at_start {
            let offset = fmt_ns(sample.offset_ns());
            if beyond {
                warn!("clock off by {offset} with no SYNCRTC (a missed resume?): stepping");
            } else {
                info!("clock off by {offset} as discipline starts: stepping");
            }
            self.clock_report.locked_since_ns = None;
            return match self.step(StepCause::Periodic) {
                Outcome::Stepped(s) if beyond => ClockDecision::Stepped(s),
                Outcome::Stepped(s) => ClockDecision::SteppedAtStart(s),
                other => ClockDecision::Failed(other.to_string()),
            };
        }
        let offset = sample.offset_ns();
        let configured = self.config.sample_interval;
        let rate = Rate::split(self.servo.update(sample, now, configured));
        self.track_lock(sample);
        match self.clock.set_rate(rate) {
            Ok(()) => {
                self.slewing = true;
                self.clock_report.slews += 1;
                self.clock_report.frequency_ppm = Some(rate.total_ppm());
                self.clock_report.tick_us = rate.tick_changed().then_some(rate.tick_us);
                self.clock_report.learned_frequency_ppm = Some(self.servo.rate_ppm());
                ClockDecision::Slewed {
                    offset_ns: offset,
                    frequency_ppm: rate.total_ppm(),
                }
            }
            Err(e) => {
                self.servo.restart();
                self.clock_report.locked_since_ns = None;
                let d = ClockDecision::Failed(format!("cannot slew: {e}"));
                if self.clock_report.last_decision.as_deref() != Some(d.to_string().as_str()) {
                    warn!("{d}");
                }
                d
            }
        }
    }

    /// The lock as status shows it: since when (guest wall time).
    fn track_lock(&mut self, sample: &TimeSample) {
        match (self.servo.locked_at(), self.clock_report.locked_since_ns) {
            (Some(_), None) => {
                self.clock_report.locked_since_ns = Some(sample.guest_mid_ns());
                info!(
                    "clock locked to the host: offset {}, rate {:+.3} ppm",
                    fmt_ns(sample.offset_ns()),
                    self.servo.rate_ppm()
                );
            }
            (None, Some(_)) => self.clock_report.locked_since_ns = None,
            _ => {}
        }
    }

    /// On standing back after slewing, on leaving `discipline` and on exit:
    /// leave the kernel at the learned rate, without the part that was
    /// removing the last offset (up to ±10 %), and with the tick the kernel
    /// had when the agent started (a daemon that comes later, ntpd for one,
    /// knows only the frequency). A chronyd started meanwhile with no drift
    /// file takes the kernel's frequency for its own, and one with no
    /// reachable source never corrects it: the clock would run off by that
    /// much (43 s a day at 500 ppm). Not when the kernel's rate is no
    /// longer the one the agent set: the other daemon has already set its
    /// own.
    pub(super) fn hand_over_clock(&mut self) {
        if !std::mem::take(&mut self.slewing) {
            return;
        }
        let (Some(ours), Ok(now)) = (self.clock_report.frequency_ppm, self.clock.rate()) else {
            return;
        };
        // The kernel keeps ppm with a 16-bit fraction.
        if (now.total_ppm() - ours).abs() > 1.0 / 65_536.0 {
            return;
        }
        let learned = self.servo.rate_ppm();
        let rate = Rate::keeping_tick(learned, self.found_tick_us);
        match self.clock.set_rate(rate) {
            Ok(()) => {
                info!(
                    "rate correction left at {:+.3} ppm (learned {learned:+.3} ppm; was {ours:+.3} ppm)",
                    rate.total_ppm()
                );
                self.clock_report.frequency_ppm = Some(rate.total_ppm());
                self.clock_report.tick_us = rate.tick_changed().then_some(rate.tick_us);
            }
            Err(e) => warn!("could not leave the clock at its learned rate: {e}"),
        }
    }

    pub(super) fn step(&mut self, cause: StepCause) -> Outcome {
        let sample = match self.sample() {
            Ok(s) => s,
            Err(e) => return Outcome::StepRefused(e.to_string()),
        };
        let offset = sample.offset_ns();
        let bound = sample.error_bound_ns();
        if bound > MAX_STEP_ERROR_NS {
            return Outcome::StepRefused(format!(
                "host time too uncertain to step to (±{}; device reads are slow)",
                fmt_bound(bound)
            ));
        }
        if offset.abs() <= bound {
            return Outcome::AlreadyRight {
                offset_ns: offset,
                error_bound_ns: bound,
            };
        }
        let at_ns = self.clock.now_ns();
        if let Err(e) = self.clock.step(offset) {
            return Outcome::StepRefused(e.to_string());
        }
        // Measure what is left, so the record says how well the step did.
        let residual = self.sample().ok().map(|s| {
            self.drift.record(DriftPoint::from(&s));
            s.offset_ns()
        });
        self.clock_report.locked_since_ns = None;
        match cause {
            StepCause::Request => {
                // The host's clock jumped (a resume): nothing to learn across.
                self.servo.restart();
                self.clock_report.steps_requested += 1;
            }
            StepCause::Periodic => {
                self.servo.stepped(offset);
                self.clock_report.steps_periodic += 1;
            }
        }
        let record = StepRecord {
            cause,
            at_ns,
            delta_ns: offset,
            error_bound_ns: bound,
            residual_ns: residual,
        };
        self.last_step = Some(record);
        Outcome::Stepped(record)
    }
}

/// A sample less certain than this is not stepped to.
pub const MAX_STEP_ERROR_NS: i64 = 500_000_000;

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;

/// What `discipline` reports while the kernel's sync flag is its only sign
/// of another time daemon.
pub(super) const KERNEL_SYNCHRONISED: &str =
    "a time daemon (the kernel clock is marked synchronised)";

/// What the kernel's sync flag says about another time daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlagSays {
    /// Nothing beyond the daemon seen by name, if any.
    Nothing,
    /// A daemon the agent cannot see has marked the clock synchronised.
    Daemon,
    /// The flag is still clear, but the daemon seen until now is gone: it
    /// was left behind (said once).
    LeftBehind,
}

/// A clear `STA_UNSYNC` means a time daemon marked the clock
/// synchronised. It stays clear after that daemon is gone unless the
/// daemon sets it on its way out (a killed one cannot): the kernel sets it
/// only once its maximum error, which grows by 500 µs each second from
/// what the daemon last set, passes 16 s: up to about 9 hours. So a clear
/// flag counts for a daemon the agent cannot see only until a daemon it
/// did see (by name, or fed) goes away; then it is that daemon's leftover,
/// and counts again once the flag has been seen set. (An agent started
/// after such a daemon died has seen none, and still stands back until
/// the kernel sets the flag.)
#[derive(Debug, Default)]
pub(super) struct SyncFlag {
    /// A daemon was seen by name at the last look.
    seen: bool,
    /// The clear flag is a daemon's leftover.
    left_behind: bool,
}

impl SyncFlag {
    /// `named`: a daemon is seen by name now; `synchronised`: the flag is
    /// clear (`None`: the clock cannot tell).
    pub(super) fn judge(&mut self, named: bool, synchronised: Option<bool>) -> FlagSays {
        let clear = synchronised == Some(true);
        if !clear {
            self.left_behind = false;
        }
        let was_seen = std::mem::replace(&mut self.seen, named);
        if named {
            return FlagSays::Nothing;
        }
        if clear && was_seen && !self.left_behind {
            self.left_behind = true;
            return FlagSays::LeftBehind;
        }
        if clear && !self.left_behind {
            FlagSays::Daemon
        } else {
            FlagSays::Nothing
        }
    }
}
