//! What a sample does to the clock: a step on request, and the periodic
//! policy (`step-on-request` warns, `discipline` slews or steps, `off`).

use std::time::Duration;

use tracing::{info, warn};
use vmmci_protocol::TimeSample;
use vmmci_transport::RegisterIo;

use super::{duration_ns, Agent};
use crate::discipline::ClockMode;
use crate::drift::DriftPoint;
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

    fn discipline(&mut self, sample: &TimeSample, beyond: bool, now: Duration) -> ClockDecision {
        self.clock_report.warning = None;
        if let Some(by) = self
            .fed_daemon
            .clone()
            .or_else(|| self.clock.disciplined_by())
        {
            self.servo.restart();
            if self.clock_report.disciplined_by.as_deref() != Some(by.as_str()) {
                info!("{by} disciplines the clock: standing back (SYNCRTC still steps)");
            }
            self.clock_report.disciplined_by = Some(by.clone());
            return ClockDecision::StoodBack { by };
        }
        if self.clock_report.disciplined_by.take().is_some() {
            info!("no other time daemon now: disciplining the clock");
        }
        if beyond {
            warn!(
                "clock off by {} with no SYNCRTC (a missed resume?): stepping",
                fmt_ns(sample.offset_ns())
            );
            return match self.step(StepCause::Periodic) {
                Outcome::Stepped(s) => ClockDecision::Stepped(s),
                other => ClockDecision::Failed(other.to_string()),
            };
        }
        let offset = sample.offset_ns();
        let frequency = self.servo.update(offset, now, self.sample_interval());
        match self.clock.set_frequency_ppm(frequency) {
            Ok(()) => {
                self.clock_report.slews += 1;
                self.clock_report.frequency_ppm = Some(frequency);
                self.clock_report.learned_frequency_ppm = Some(self.servo.frequency_ppm());
                ClockDecision::Slewed {
                    offset_ns: offset,
                    frequency_ppm: frequency,
                }
            }
            Err(e) => {
                self.servo.restart();
                let d = ClockDecision::Failed(format!("cannot slew: {e}"));
                if self.clock_report.last_decision.as_deref() != Some(d.to_string().as_str()) {
                    warn!("{d}");
                }
                d
            }
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
        self.servo.restart();
        match cause {
            StepCause::Request => self.clock_report.steps_requested += 1,
            StepCause::Periodic => self.clock_report.steps_periodic += 1,
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
