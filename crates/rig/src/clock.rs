//! Host-side half of the clock probe (`rig-clockprobe`): pair the guest's
//! (seconds, microseconds) writes to QUEUE_ADDRESS with the host time the
//! simulator recorded at the microseconds write.

use crate::units::{SEC, US};

/// One probe: the guest's clock when it sampled, and the host's simulated
/// clock when the second write arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSample {
    pub guest_ns: i64,
    pub host_ns: i64,
}

impl ProbeSample {
    /// guest − host. Biased slightly negative by the two writes' latency.
    pub fn residual_ns(&self) -> i64 {
        self.guest_ns - self.host_ns
    }
}

/// Pair `(host_ns, value)` writes: a seconds word (>= 1_000_000) followed by
/// a microseconds word (< 1_000_000). Anything that does not fit is skipped.
pub fn pair_probe_writes(writes: &[(i64, u32)]) -> Vec<ProbeSample> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < writes.len() {
        let (_, sec) = writes[i];
        let (host_ns, usec) = writes[i + 1];
        if sec >= 1_000_000 && usec < 1_000_000 {
            out.push(ProbeSample {
                guest_ns: sec as i64 * SEC + usec as i64 * US,
                host_ns,
            });
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

/// Residuals (guest − host, ns) of the probe samples after the first `skip`
/// writes (pass the length of `probe_writes()` before starting a probe run).
pub fn residuals_since(writes: &[(i64, u32)], skip: usize) -> Vec<i64> {
    pair_probe_writes(&writes[skip.min(writes.len())..])
        .iter()
        .map(|s| s.residual_ns())
        .collect()
}

/// Median of a list of residuals: the upper median, a measured residual
/// ([`crate::stats::upper_median`]).
pub fn median(v: &[i64]) -> Option<i64> {
    crate::stats::upper_median(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_residuals() {
        let host = 1_800_000_000_i64 * 1_000_000_000;
        let w = vec![
            (0, 42),               // stray small value: skipped
            (host, 1_799_999_910), // guest 90 s behind
            (host + 5_000, 250_000),
            (host + 1_000_000_000, 1_800_000_001),
            (host + 1_000_000_000 + 1_000, 0),
        ];
        let s = pair_probe_writes(&w);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].residual_ns(),
            -90 * 1_000_000_000 + 250_000_000 - 5_000
        );
        assert_eq!(s[1].residual_ns(), -1_000);
        assert_eq!(residuals_since(&w, 3).len(), 1);
        assert_eq!(median(&[3, 1, 2]), Some(2));
    }
}
