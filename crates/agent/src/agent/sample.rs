//! A precise host time sample and why one is refused: bracketed reads of
//! TIME_SEC (which takes vmd's snapshot), the tightest try wins, and tries
//! that disagree or never refresh are junk.

use vmmci_protocol::{HostTime, Register, TimeSample};
use vmmci_transport::RegisterIo;

use super::{Agent, AgentError};
use crate::report::fmt_bound;
use crate::world::{GuestClock, Power};

impl<B: RegisterIo, C: GuestClock, P: Power> Agent<B, C, P> {
    /// A precise host time sample: several bracketed reads of TIME_SEC
    /// (which takes vmd's snapshot) then TIME_USEC; the one with the
    /// smallest round trip wins.
    pub fn sample(&mut self) -> Result<TimeSample, AgentError> {
        let tries = self.config.sample_tries.max(1);
        let mut valid: Vec<TimeSample> = Vec::with_capacity(tries as usize);
        let mut last_error = None;
        for _ in 0..tries {
            let before = self.clock.now_ns();
            let sec = self.bar.read(Register::TimeSecLow)?;
            let after = self.clock.now_ns();
            let usec = self.bar.read(Register::TimeUsecLow)?;
            match HostTime::validate(sec, usec, self.config.not_before_sec) {
                Ok(host) => valid.push(TimeSample {
                    guest_before_ns: before,
                    host,
                    guest_after_ns: after,
                }),
                Err(e) => last_error = Some(e),
            }
        }
        valid.retain(TimeSample::is_ordered);
        let Some(best) = valid.iter().min_by_key(|s| s.round_trip_ns()).copied() else {
            return Err(match last_error {
                Some(last) => AgentError::BadHostTime { tries, last },
                None => AgentError::ClockUnordered,
            });
        };
        check_consistent(&valid, &best)?;
        Ok(best)
    }
}

/// Tries of one sample must tell the same story: a snapshot that never
/// changes while the guest clock runs is a stuck device, and offsets that
/// disagree beyond their error bounds are junk. Either way, no sample.
fn check_consistent(valid: &[TimeSample], best: &TimeSample) -> Result<(), AgentError> {
    let first = valid
        .iter()
        .map(|s| s.guest_before_ns)
        .min()
        .unwrap_or(best.guest_before_ns);
    let last = valid
        .iter()
        .map(|s| s.guest_after_ns)
        .max()
        .unwrap_or(best.guest_after_ns);
    let span = last - first;
    if valid.len() >= 2 && span > STALE_SPAN_NS && valid.iter().all(|s| s.host == best.host) {
        return Err(AgentError::StaleSnapshot {
            span_ms: span / 1_000_000,
        });
    }
    for s in valid {
        let spread = (s.offset_ns() - best.offset_ns()).abs();
        if spread > s.error_bound_ns() + best.error_bound_ns() + CONSISTENCY_SLACK_NS {
            return Err(AgentError::Inconsistent {
                spread: fmt_bound(spread),
            });
        }
    }
    Ok(())
}

/// Guest time over which a live host clock must have moved on.
const STALE_SPAN_NS: i64 = 2_000_000;
/// Allowance beyond the error bounds for rate differences within a sample.
const CONSISTENCY_SLACK_NS: i64 = 1_000_000;

#[cfg(test)]
#[path = "sample_tests.rs"]
mod tests;
