//! The host's clocks as the simulator sees them.
//!
//! vmd reads two clocks: `CLOCK_REALTIME` (`gettimeofday()` for the time
//! registers, `time()` for the RTC tick) and a monotonic clock (libevent's
//! timers: the ACK/long timeouts and the 1 s RTC tick). Tests drive both by
//! hand with [`ManualClock`]; the end-to-end rig uses [`SystemClock`].

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of host time.
pub trait HostClock: Send {
    /// Host `CLOCK_REALTIME` in ns since the epoch, BEFORE the simulator's own
    /// host offset ([`crate::Vmd::jump_host_clock`]) is applied.
    fn realtime_ns(&self) -> i64;
    /// One reading of realtime as a program on the host gets it (vmd's
    /// `gettimeofday()` for the time registers): [`Self::realtime_ns`] plus
    /// whatever noise the clock has.
    fn realtime_read_ns(&mut self) -> i64 {
        self.realtime_ns()
    }
    /// Monotonic time since an arbitrary origin.
    fn monotonic(&self) -> Duration;
}

/// The real clocks: [`SystemTime`] and [`Instant`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl HostClock for SystemClock {
    fn realtime_ns(&self) -> i64 {
        // A clock set before 1970 is legal; keep the sign instead of failing.
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        }
    }

    fn monotonic(&self) -> Duration {
        // One origin per process, so every SystemClock agrees.
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

#[derive(Debug)]
struct ManualState {
    realtime_ns: i64,
    monotonic: Duration,
}

/// A clock that only moves when told to. Clones share one state, so a test
/// keeps a clone to drive the clock a [`crate::Vmd`] owns.
#[derive(Clone, Debug)]
pub struct ManualClock {
    state: Arc<Mutex<ManualState>>,
}

impl ManualClock {
    /// Realtime starts at `start_realtime_ns`, monotonic at 0.
    pub fn new(start_realtime_ns: i64) -> ManualClock {
        ManualClock {
            state: Arc::new(Mutex::new(ManualState {
                realtime_ns: start_realtime_ns,
                monotonic: Duration::ZERO,
            })),
        }
    }

    /// Let time pass: moves realtime and monotonic together.
    pub fn advance(&self, by: Duration) {
        let mut s = self.lock();
        s.realtime_ns = s.realtime_ns.saturating_add(duration_ns(by));
        s.monotonic = s.monotonic.saturating_add(by);
    }

    /// Step realtime only (a host suspend, an ntpd step done behind vmd's
    /// back); monotonic does not move.
    pub fn set_realtime_ns(&self, realtime_ns: i64) {
        self.lock().realtime_ns = realtime_ns;
    }

    fn lock(&self) -> MutexGuard<'_, ManualState> {
        // A panicking test thread must not take the clock down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl HostClock for ManualClock {
    fn realtime_ns(&self) -> i64 {
        self.lock().realtime_ns
    }

    fn monotonic(&self) -> Duration {
        self.lock().monotonic
    }
}

/// A host clock that is not perfect: it runs `ppm` parts per million fast
/// (negative: slow) against the clock it wraps, and every reading carries up
/// to ±`jitter_ns` of noise. Real hosts run some tens of ppm off true time
/// and their readings wobble; with this, drift is something the guest has
/// to correct, not a constant offset. The rate error accumulates over the
/// wrapped clock's monotonic time, so a [`ManualClock`] drives it too.
pub struct SkewedClock {
    inner: Box<dyn HostClock>,
    ppm: f64,
    jitter_ns: i64,
    origin: Duration,
    /// xorshift64 state: deterministic noise, no dependency.
    noise: u64,
}

impl SkewedClock {
    pub fn new(inner: Box<dyn HostClock>, ppm: f64, jitter_ns: i64) -> SkewedClock {
        let origin = inner.monotonic();
        SkewedClock {
            inner,
            ppm,
            jitter_ns: jitter_ns.max(0),
            origin,
            noise: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Rate error accumulated so far, ns (without the jitter).
    pub fn skew_ns(&self) -> i64 {
        let elapsed = self.inner.monotonic().saturating_sub(self.origin);
        (elapsed.as_secs_f64() * self.ppm * 1e3) as i64
    }

    /// Uniform in [−jitter, +jitter].
    fn jitter(&mut self) -> i64 {
        if self.jitter_ns == 0 {
            return 0;
        }
        let mut x = self.noise;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.noise = x;
        let span = 2 * self.jitter_ns as u64 + 1;
        (x % span) as i64 - self.jitter_ns
    }
}

impl HostClock for SkewedClock {
    fn realtime_ns(&self) -> i64 {
        self.inner.realtime_ns().saturating_add(self.skew_ns())
    }
    fn realtime_read_ns(&mut self) -> i64 {
        self.realtime_ns().saturating_add(self.jitter())
    }
    fn monotonic(&self) -> Duration {
        self.inner.monotonic()
    }
}

pub(crate) const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A duration in ns, saturated to `i64` (292 years).
pub(crate) fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_advance_moves_both_set_moves_realtime_only() {
        let c = ManualClock::new(1_000);
        let shared = c.clone();
        c.advance(Duration::from_millis(1500));
        assert_eq!(shared.realtime_ns(), 1_000 + 1_500_000_000);
        assert_eq!(shared.monotonic(), Duration::from_millis(1500));
        c.set_realtime_ns(-5);
        assert_eq!(shared.realtime_ns(), -5);
        assert_eq!(shared.monotonic(), Duration::from_millis(1500));
    }

    #[test]
    fn skewed_clock_gains_its_ppm_and_jitters_within_bounds() {
        let base = ManualClock::new(1_000_000_000_000);
        let mut c = SkewedClock::new(Box::new(base.clone()), 50.0, 100_000);
        base.advance(Duration::from_secs(600));
        // 600 s at +50 ppm: 30 ms ahead.
        assert_eq!(c.realtime_ns() - base.realtime_ns(), 30_000_000);
        let reads: Vec<i64> = (0..1000)
            .map(|_| c.realtime_read_ns() - c.realtime_ns())
            .collect();
        assert!(reads.iter().all(|j| j.abs() <= 100_000));
        assert!(reads.iter().any(|j| *j > 50_000) && reads.iter().any(|j| *j < -50_000));
        let mut slow = SkewedClock::new(Box::new(base.clone()), -20.0, 0);
        base.advance(Duration::from_secs(100));
        assert_eq!(slow.realtime_read_ns() - base.realtime_ns(), -2_000_000);
    }

    #[test]
    fn system_clock_is_sane() {
        let c = SystemClock;
        // Later than 2020-01-01.
        assert!(c.realtime_ns() > 1_577_836_800 * 1_000_000_000);
        let a = c.monotonic();
        let b = c.monotonic();
        assert!(b >= a);
    }
}
