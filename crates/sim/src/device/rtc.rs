//! Time passing: the timer's firing and mc146818.c's 1 s RTC tick
//! (`rtc_fire1()`), run lazily in the order they were due.

use std::time::Duration;

use crate::clock::{duration_ns, NANOS_PER_SEC};
use crate::event::EventKind;
use crate::recorder::VmdEvents;
use crate::vmd_tables::{timeouts, VmmciCmd};

use super::Vmd;

impl<E: VmdEvents> Vmd<E> {
    /// Run what is due by now: the 1 s RTC tick (once per elapsed monotonic
    /// second; it compares host `time()`, offset included, with the previous
    /// tick and sends SYNCRTC only when it advanced by more than 5 s) and the
    /// timer (its firing ends the VM).
    pub fn poll(&mut self) {
        self.advance();
    }

    /// Run the timer and RTC ticks due by now, in order; return now.
    pub(super) fn advance(&mut self) -> Duration {
        let now = self.clock.monotonic();
        let host_now = self.host_now_ns();
        while self.ended.is_none() {
            let timer = self.dev.timer.filter(|&(_, deadline)| deadline <= now);
            let tick_due = self.next_tick <= now;
            match timer {
                Some((kind, deadline)) if !tick_due || deadline < self.next_tick => {
                    self.end(kind.end(), deadline);
                }
                _ if tick_due => self.run_ticks(now, host_now),
                _ => break,
            }
        }
        now
    }

    /// Run the first due RTC tick, then skip the rest of the due ones.
    ///
    /// Host time at a past tick is reconstructed as `host_now − (now − tick)`,
    /// so a step that happened since the last tick shows at the first one
    /// and every later catch-up tick sees exactly +1 s: they cannot send
    /// SYNCRTC, so they are skipped in one go (no loop over a long sleep).
    fn run_ticks(&mut self, now: Duration, host_now: i64) {
        let host_at =
            |tick: Duration| host_now.saturating_sub(duration_ns(now.saturating_sub(tick)));
        let tick = self.next_tick;
        self.rtc_tick(tick, host_at(tick));
        let rest = now.saturating_sub(tick).as_secs();
        let last = tick.saturating_add(Duration::from_secs(rest));
        if rest > 0 {
            self.rtc_now_s = host_at(last).div_euclid(NANOS_PER_SEC);
        }
        self.next_tick = last.saturating_add(timeouts::RTC_TICK);
    }

    /// `rtc_fire1`: `old = rtc.now; time(&rtc.now); if (rtc.now - old > 5)
    /// vmmci_ctl(VMMCI_SYNCRTC);` so only a forward step is noticed.
    fn rtc_tick(&mut self, at: Duration, host_ns: i64) {
        let now_s = host_ns.div_euclid(NANOS_PER_SEC);
        let delta = now_s.saturating_sub(self.rtc_now_s);
        self.rtc_now_s = now_s;
        if delta > timeouts::RTC_DRIFT_SECS {
            self.log(at, EventKind::RtcDrift { secs: delta });
            // The tick ignores vmmci_ctl's answer.
            self.ctl(VmmciCmd::SyncRtc, at);
        } else if !(0..=1).contains(&delta) {
            self.log(at, EventKind::RtcNoResync { secs: delta });
        }
    }
}

#[cfg(test)]
#[path = "rtc_tests.rs"]
mod tests;
