//! Nanoseconds, the unit of the simulator's clocks and of the probe's
//! residuals, and the conversions the rig prints with.

use std::time::Duration;

/// One second in nanoseconds.
pub const SEC: i64 = 1_000_000_000;
/// One millisecond in nanoseconds.
pub const MS: i64 = 1_000_000;
/// One microsecond in nanoseconds.
pub const US: i64 = 1_000;

/// Nanoseconds as seconds.
pub fn secs(ns: i64) -> f64 {
    ns as f64 / SEC as f64
}

/// Nanoseconds as milliseconds.
pub fn millis(ns: i64) -> f64 {
    ns as f64 / MS as f64
}

/// Microseconds (systemd's `…TimestampMonotonic`) as seconds.
pub fn usecs_as_secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `b - a` in milliseconds, signed.
pub fn ms_between(a: Duration, b: Duration) -> f64 {
    ms(b) - ms(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(secs(-3 * SEC / 2), -1.5);
        assert_eq!(millis(2 * MS + 500 * US), 2.5);
        assert_eq!(usecs_as_secs(1_250_000), 1.25);
        let (a, b) = (Duration::from_millis(1500), Duration::from_millis(250));
        assert_eq!(ms(a), 1500.0);
        assert_eq!(ms_between(a, b), -1250.0);
    }
}
