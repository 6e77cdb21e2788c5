//! Host time from the time registers, and what one sample of it says about
//! the guest clock.
//!
//! Times are nanoseconds since the Unix epoch as `i64` (good until 2262;
//! vmd's 32-bit seconds end in 2106 anyway).

pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// vmd fills the registers from `gettimeofday()`: whole microseconds,
/// truncated. The true host time lies in `[t, t + 1 µs)`.
pub const HOST_RESOLUTION_NS: i64 = 1_000;

/// The host clock as read from TIME_SEC (0x18) and TIME_USEC (0x20).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTime {
    pub sec: u32,
    pub usec: u32,
}

/// Why a pair of time register values is not a usable host time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostTimeError {
    /// Seconds read 0: no snapshot, or the device is not answering.
    Zero,
    /// Microseconds out of range: the registers hold junk.
    UsecOutOfRange(u32),
    /// Earlier than this binary was built: no real host clock says that.
    BeforeBuild { sec: u32, not_before: u32 },
    /// More than [`MAX_AHEAD_OF_BUILD_SECS`] after the build: junk, not a
    /// host clock (vmd's 32-bit seconds would reach 2106).
    FarFuture { sec: u32, not_after: u32 },
}

/// How far past the agent's build a host time may be before it is junk.
pub const MAX_AHEAD_OF_BUILD_SECS: u32 = 30 * 365 * 86_400;

impl std::fmt::Display for HostTimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostTimeError::Zero => write!(
                f,
                "host time reads 0 (no snapshot, or device not answering)"
            ),
            HostTimeError::UsecOutOfRange(u) => {
                write!(f, "host microseconds {u} out of range (>= 1000000)")
            }
            HostTimeError::BeforeBuild { sec, not_before } => write!(
                f,
                "host time {sec} s is before this agent was built ({not_before} s)"
            ),
            HostTimeError::FarFuture { sec, not_after } => write!(
                f,
                "host time {sec} s is more than 30 years after this agent was built (> {not_after} s)"
            ),
        }
    }
}

impl std::error::Error for HostTimeError {}

impl HostTime {
    /// Check the raw register pair. `not_before` is a Unix time no real host
    /// clock can be earlier than (the agent passes its build time); nor can
    /// it be more than [`MAX_AHEAD_OF_BUILD_SECS`] later.
    pub fn validate(sec: u32, usec: u32, not_before: u32) -> Result<HostTime, HostTimeError> {
        if sec == 0 {
            return Err(HostTimeError::Zero);
        }
        if usec >= 1_000_000 {
            return Err(HostTimeError::UsecOutOfRange(usec));
        }
        if sec < not_before {
            return Err(HostTimeError::BeforeBuild { sec, not_before });
        }
        let not_after = not_before.saturating_add(MAX_AHEAD_OF_BUILD_SECS);
        if sec > not_after {
            return Err(HostTimeError::FarFuture { sec, not_after });
        }
        Ok(HostTime { sec, usec })
    }

    /// Nanoseconds since the epoch, at the start of the microsecond.
    pub const fn as_nanos(self) -> i64 {
        self.sec as i64 * NANOS_PER_SEC + self.usec as i64 * 1_000
    }
}

/// One reading of the host clock, bracketed by two reads of the guest clock
/// around the TIME_SEC read (the one that takes vmd's snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeSample {
    pub guest_before_ns: i64,
    pub host: HostTime,
    pub guest_after_ns: i64,
}

impl TimeSample {
    /// Time the TIME_SEC read took as seen by the guest. A guest clock that
    /// went backwards in between (a step by someone else) gives 0 here; the
    /// caller should drop such a sample, see [`TimeSample::is_ordered`].
    pub fn round_trip_ns(&self) -> i64 {
        self.guest_after_ns
            .saturating_sub(self.guest_before_ns)
            .max(0)
    }

    pub fn is_ordered(&self) -> bool {
        self.guest_after_ns >= self.guest_before_ns
    }

    /// Guest clock at the moment the host took its snapshot, best estimate:
    /// the midpoint of the bracket.
    pub fn guest_mid_ns(&self) -> i64 {
        self.guest_before_ns + self.round_trip_ns() / 2
    }

    /// Host time at the snapshot, best estimate: the middle of the truncated
    /// microsecond.
    pub fn host_mid_ns(&self) -> i64 {
        self.host.as_nanos() + HOST_RESOLUTION_NS / 2
    }

    /// Signed offset host − guest: how far to step the guest clock forward
    /// (negative: the guest is ahead).
    pub fn offset_ns(&self) -> i64 {
        self.host_mid_ns() - self.guest_mid_ns()
    }

    /// Bound on |true offset − [`offset_ns`]|: half the bracket plus half the
    /// host's microsecond.
    pub fn error_bound_ns(&self) -> i64 {
        rtt_half_up(self.round_trip_ns()) + HOST_RESOLUTION_NS / 2
    }

    pub fn drift(&self) -> Drift {
        Drift(self.offset_ns())
    }
}

/// Half of a non-negative round trip, rounded up, without overflow.
const fn rtt_half_up(rtt: i64) -> i64 {
    rtt / 2 + rtt % 2
}

/// A signed clock offset (host − guest) in nanoseconds, with the split the
/// old kernel driver published as `vmmci.drift_sec` / `vmmci.drift_nsec`.
/// Unlike that driver, both fields keep the sign: −0.3 s is (0, −300000000),
/// not (−1, 700000000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Drift(pub i64);

impl Drift {
    pub const fn sec(self) -> i64 {
        self.0 / NANOS_PER_SEC
    }
    pub const fn nsec(self) -> i64 {
        self.0 % NANOS_PER_SEC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILD: u32 = 1_750_000_000;

    #[test]
    fn validate_rejects_nonsense() {
        assert_eq!(HostTime::validate(0, 5, BUILD), Err(HostTimeError::Zero));
        assert_eq!(
            HostTime::validate(BUILD + 1, 1_000_000, BUILD),
            Err(HostTimeError::UsecOutOfRange(1_000_000))
        );
        assert_eq!(
            HostTime::validate(12, 0, BUILD),
            Err(HostTimeError::BeforeBuild {
                sec: 12,
                not_before: BUILD
            })
        );
        assert!(matches!(
            HostTime::validate(BUILD + MAX_AHEAD_OF_BUILD_SECS + 1, 0, BUILD),
            Err(HostTimeError::FarFuture { .. })
        ));
        assert!(HostTime::validate(BUILD + MAX_AHEAD_OF_BUILD_SECS, 0, BUILD).is_ok());
        let t = HostTime::validate(BUILD + 10, 999_999, BUILD).unwrap();
        assert_eq!(
            t.as_nanos(),
            (BUILD as i64 + 10) * NANOS_PER_SEC + 999_999_000
        );
        // The full u32 range of seconds (vmd's truncation) stays positive.
        assert!(
            HostTime {
                sec: u32::MAX,
                usec: 0
            }
            .as_nanos()
                > 0
        );
    }

    #[test]
    fn offset_is_host_minus_guest_at_bracket_midpoint() {
        let host = HostTime {
            sec: 2_000_000_000,
            usec: 250,
        };
        let host_ns = host.as_nanos();
        // Guest is 3 s behind; the read took 40 µs.
        let before = host_ns - 3 * NANOS_PER_SEC - 20_000;
        let s = TimeSample {
            guest_before_ns: before,
            host,
            guest_after_ns: before + 40_000,
        };
        assert_eq!(s.round_trip_ns(), 40_000);
        assert_eq!(s.offset_ns(), 3 * NANOS_PER_SEC + 500);
        assert_eq!(s.error_bound_ns(), 20_500);
        // Guest ahead gives a negative offset.
        let ahead = TimeSample {
            guest_before_ns: host_ns + 7_000,
            host,
            guest_after_ns: host_ns + 9_000,
        };
        assert_eq!(ahead.offset_ns(), -8_000 + 500);
    }

    #[test]
    fn backwards_bracket_is_flagged() {
        let host = HostTime {
            sec: 2_000_000_000,
            usec: 0,
        };
        let s = TimeSample {
            guest_before_ns: 10,
            host,
            guest_after_ns: 5,
        };
        assert!(!s.is_ordered());
        assert_eq!(s.round_trip_ns(), 0);
    }

    #[test]
    fn drift_split_keeps_sign_on_both_fields() {
        assert_eq!(
            (Drift(-300_000_000).sec(), Drift(-300_000_000).nsec()),
            (0, -300_000_000)
        );
        assert_eq!(
            (Drift(-1_300_000_000).sec(), Drift(-1_300_000_000).nsec()),
            (-1, -300_000_000)
        );
        assert_eq!(
            (Drift(2_000_000_001).sec(), Drift(2_000_000_001).nsec()),
            (2, 1)
        );
    }
}
