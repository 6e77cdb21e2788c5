//! Host-side half of the clock probe (`rig-clockprobe`): turn the guest's
//! writes to QUEUE_ADDRESS, each with the host time the simulator recorded
//! on its arrival, into bracketed points of guest − host.
//!
//! Per point the probe reads its clock (`g_before`), writes [`PROBE_MARK`]
//! (the host stamps it on arrival: `h`), reads its clock again (`g_after`),
//! then writes `g_before` (seconds, low 32 bits; nanoseconds) and
//! `g_after − g_before` (ns) as plain data. The write is synchronous (QEMU
//! waits for the simulator's reply before the guest goes on), so the stamp
//! fell between the two reads and guest − host at that moment lies in
//! `[g_before − h, g_after − h]`: nothing about the writes' latency is
//! assumed, it only widens the interval.

use crate::units::{millis, SEC};

/// The value the probe writes first in each point; the simulator's stamp of
/// this write is the point's host time. Not a plausible seconds value
/// (year 2072) nor nanoseconds (≥ 10⁹).
pub const PROBE_MARK: u32 = 0xc10c_4b1d;

/// The marker of the probe's warm-up point, which the host skips.
pub const PROBE_WARMUP: u32 = 0xc10c_0000;

/// What one point says about `|guest − host − target| ≤ bound`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The whole interval is within the bound: proven.
    Within,
    /// The whole interval is outside it: the clock is off.
    Outside,
    /// The interval straddles the bound: this point cannot tell.
    Unsure,
}

/// One bracketed point: guest − host lay in
/// [`lo_ns`](Self::lo_ns)`..=`[`hi_ns`](Self::hi_ns) when the host stamped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSample {
    /// The guest's clock just before the stamped write.
    pub guest_before_ns: i64,
    /// The guest's clock just after it returned.
    pub guest_after_ns: i64,
    /// The simulated host's clock when the write arrived.
    pub host_ns: i64,
}

impl ProbeSample {
    /// Lower end of guest − host: `g_before − h`.
    pub fn lo_ns(&self) -> i64 {
        self.guest_before_ns - self.host_ns
    }
    /// Upper end of guest − host: `g_after − h`.
    pub fn hi_ns(&self) -> i64 {
        self.guest_after_ns - self.host_ns
    }
    /// Midpoint of the interval: the best single figure for guest − host.
    pub fn residual_ns(&self) -> i64 {
        self.lo_ns() + self.width_ns() / 2
    }
    /// Midpoint (same as [`residual_ns`](Self::residual_ns)).
    pub fn mid_ns(&self) -> i64 {
        self.residual_ns()
    }
    /// Width of the interval, `g_after − g_before`: how much the point is
    /// unsure of (the stamped write's round trip as the guest saw it).
    pub fn width_ns(&self) -> i64 {
        self.guest_after_ns - self.guest_before_ns
    }
    /// The largest |guest − host| the point allows: `max(|lo|, |hi|)`.
    /// `≤ b` exactly when the whole interval lies within `±b`.
    pub fn max_abs_ns(&self) -> i64 {
        self.lo_ns().abs().max(self.hi_ns().abs())
    }
    /// Whether the whole interval lies within `target ± bound`: whatever the
    /// true guest − host in the interval, it is within `bound` of `target`.
    pub fn within(&self, target_ns: i64, bound_ns: i64) -> bool {
        self.lo_ns() >= target_ns - bound_ns && self.hi_ns() <= target_ns + bound_ns
    }
    /// [`Verdict::Within`] when [`within`](Self::within), [`Verdict::Outside`]
    /// when no value in the interval is within `target ± bound`.
    pub fn verdict(&self, target_ns: i64, bound_ns: i64) -> Verdict {
        if self.within(target_ns, bound_ns) {
            Verdict::Within
        } else if self.hi_ns() < target_ns - bound_ns || self.lo_ns() > target_ns + bound_ns {
            Verdict::Outside
        } else {
            Verdict::Unsure
        }
    }
}

/// The points in `(host_ns, value)` writes: [`PROBE_MARK`] (its host time is
/// the point's), then seconds, nanoseconds (< 10⁹) and width. Anything that
/// does not fit is skipped.
pub fn pair_probe_writes(writes: &[(i64, u32)]) -> Vec<ProbeSample> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 3 < writes.len() {
        let (host_ns, mark) = writes[i];
        let (sec, nsec, width) = (writes[i + 1].1, writes[i + 2].1, writes[i + 3].1);
        if mark == PROBE_MARK && sec != PROBE_MARK && (nsec as i64) < SEC {
            let before = sec as i64 * SEC + nsec as i64;
            out.push(ProbeSample {
                guest_before_ns: before,
                guest_after_ns: before + width as i64,
                host_ns,
            });
            i += 4;
        } else {
            i += 1;
        }
    }
    out
}

/// The points after the first `skip` writes (pass the length of
/// `probe_writes()` before starting a probe run).
pub fn points_since(writes: &[(i64, u32)], skip: usize) -> Vec<ProbeSample> {
    pair_probe_writes(&writes[skip.min(writes.len())..])
}

/// Midpoints (guest − host, ns) of the points after the first `skip` writes.
pub fn residuals_since(writes: &[(i64, u32)], skip: usize) -> Vec<i64> {
    points_since(writes, skip)
        .iter()
        .map(|s| s.residual_ns())
        .collect()
}

/// Median of a list of residuals: the upper median, a measured residual
/// ([`crate::stats::upper_median`]).
pub fn median(v: &[i64]) -> Option<i64> {
    crate::stats::upper_median(v)
}

/// Points taken to show `|guest − host − target| ≤ bound`: see
/// [`check_within`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithinCheck {
    pub target_ns: i64,
    pub bound_ns: i64,
    /// Points that must prove the bound.
    pub count: usize,
    /// Every point taken, in order.
    pub points: Vec<ProbeSample>,
}

impl WithinCheck {
    fn with(&self, v: Verdict) -> impl Iterator<Item = &ProbeSample> {
        self.points
            .iter()
            .filter(move |p| p.verdict(self.target_ns, self.bound_ns) == v)
    }
    /// Points whose whole interval lies within the bound.
    pub fn proven(&self) -> usize {
        self.with(Verdict::Within).count()
    }
    /// The first point wholly outside the bound: the clock is off.
    pub fn outside(&self) -> Option<&ProbeSample> {
        self.with(Verdict::Outside).next()
    }
    /// No point outside, and `count` proven.
    pub fn passed(&self) -> bool {
        self.outside().is_none() && self.proven() >= self.count
    }
    fn far(&self, p: &ProbeSample) -> i64 {
        (p.lo_ns() - self.target_ns)
            .abs()
            .max((p.hi_ns() - self.target_ns).abs())
    }
    /// Farthest interval end from the target among the proven points.
    pub fn proven_farthest_ns(&self) -> i64 {
        self.with(Verdict::Within)
            .map(|p| self.far(p))
            .max()
            .unwrap_or(0)
    }
    /// Largest |midpoint − target| over every point.
    pub fn max_mid_ns(&self) -> i64 {
        self.points
            .iter()
            .map(|p| (p.mid_ns() - self.target_ns).abs())
            .max()
            .unwrap_or(0)
    }
    /// Widest interval over every point.
    pub fn max_width_ns(&self) -> i64 {
        self.points.iter().map(|p| p.width_ns()).max().unwrap_or(0)
    }
    /// One line: the verdict's figures and every point.
    pub fn summary(&self) -> String {
        let ms = millis;
        format!(
            "{} of {} points proven within {:+.3} ± {:.3} ms (their farthest end {:.3} ms){}; \
             all points: max |midpoint − target| {:.3} ms, widest {:.3} ms: {}",
            self.proven(),
            self.points.len(),
            ms(self.target_ns),
            ms(self.bound_ns),
            ms(self.proven_farthest_ns()),
            match self.outside() {
                Some(p) => format!("; OUTSIDE: {:+.3}..{:+.3} ms", ms(p.lo_ns()), ms(p.hi_ns())),
                None => String::new(),
            },
            ms(self.max_mid_ns()),
            ms(self.max_width_ns()),
            describe(&self.points)
        )
    }
}

/// Take probe points (`probe(n)` returns `n` new ones) until `count` of
/// them prove guest − host within `target ± bound`: at most `rounds` rounds
/// of `count` points, `pause` apart, stopping early at a point wholly
/// outside.
///
/// Only a whole interval within the bound proves it (the true value can be
/// anywhere in `[lo, hi]`: a midpoint test would pass a clock off by up to
/// `bound + width / 2`, and a median would hide the worst point). A point
/// that straddles the bound (its write was delayed, so it is wide) proves
/// nothing either way: it is never counted, only measured again. So the
/// check passes only when `count` points show the clock within the bound
/// and none shows it outside.
pub fn check_within<E>(
    count: usize,
    target_ns: i64,
    bound_ns: i64,
    rounds: usize,
    pause: std::time::Duration,
    mut probe: impl FnMut(usize) -> Result<Vec<ProbeSample>, E>,
) -> Result<WithinCheck, E> {
    let mut c = WithinCheck {
        target_ns,
        bound_ns,
        count,
        points: Vec::new(),
    };
    for round in 0..rounds {
        if round > 0 {
            std::thread::sleep(pause);
        }
        c.points.extend(probe(count)?);
        if c.outside().is_some() || c.proven() >= count {
            break;
        }
    }
    Ok(c)
}

/// The narrowest of a probe's points: the write delayed least, the way
/// NTP's clock filter keeps the sample of least delay. Its midpoint is the
/// best single figure of guest − host, its width the uncertainty.
pub fn narrowest(points: &[ProbeSample]) -> Option<ProbeSample> {
    points.iter().min_by_key(|p| p.width_ns()).copied()
}

/// One line for a log: each point's midpoint and width, in ms.
pub fn describe(points: &[ProbeSample]) -> String {
    let each: Vec<String> = points
        .iter()
        .map(|p| format!("{:+.3} (w {:.3})", millis(p.mid_ns()), millis(p.width_ns())))
        .collect();
    format!("[{}] ms", each.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_midpoints_and_widths() {
        let host = 1_800_000_000_i64 * 1_000_000_000;
        let w = vec![
            (0, 42), // stray value: skipped
            // the warm-up point: skipped
            (host - 9, PROBE_WARMUP),
            (host - 8, 1_799_999_909),
            (host - 7, 999_000_000),
            (host - 6, 9_000_000),
            // guest 90 s behind, read 0.25 s into its second, 30 µs round trip
            (host, PROBE_MARK),
            (host + 1, 1_799_999_910),
            (host + 2, 250_000_000),
            (host + 3, 30_000),
            // a second later, 1 µs before the host, 2 µs round trip
            (host + 1_000_000_000, PROBE_MARK),
            (host + 1_000_000_001, 1_800_000_000),
            (host + 1_000_000_002, 999_999_000),
            (host + 1_000_000_003, 2_000),
            (host + 1_100_000_000, PROBE_MARK), // cut short: skipped
        ];
        let s = pair_probe_writes(&w);
        assert_eq!(s.len(), 2);
        let lo = -90 * 1_000_000_000 + 250_000_000;
        assert_eq!((s[0].lo_ns(), s[0].hi_ns()), (lo, lo + 30_000));
        assert_eq!(s[0].width_ns(), 30_000);
        assert_eq!(s[0].residual_ns(), lo + 15_000);
        assert_eq!(s[0].mid_ns(), s[0].residual_ns());
        assert_eq!((s[1].lo_ns(), s[1].hi_ns()), (-1_000, 1_000));
        assert_eq!(s[1].residual_ns(), 0);
        assert_eq!(s[1].max_abs_ns(), 1_000);
        assert!(s[1].within(0, 1_000));
        assert!(!s[1].within(0, 999));
        assert!(s[1].within(500, 1_500));
        assert!(!s[1].within(501, 1_500));
        assert_eq!(s[1].verdict(0, 1_000), Verdict::Within);
        assert_eq!(s[1].verdict(0, 999), Verdict::Unsure);
        assert_eq!(s[1].verdict(2_000, 999), Verdict::Outside);
        assert_eq!(s[1].verdict(-2_000, 1_000), Verdict::Unsure);
        assert_eq!(s[1].verdict(-2_001, 1_000), Verdict::Outside);
        assert_eq!(points_since(&w, 9).len(), 1);
        assert_eq!(residuals_since(&w, 9), vec![0]);
        assert_eq!(median(&[3, 1, 2]), Some(2));
        assert_eq!(describe(&s[1..]), "[+0.000 (w 0.002)] ms");
    }

    fn pt(lo: i64, hi: i64) -> ProbeSample {
        ProbeSample {
            guest_before_ns: 10_000 + lo,
            guest_after_ns: 10_000 + hi,
            host_ns: 10_000,
        }
    }

    #[test]
    fn check_within_counts_only_whole_intervals() {
        let run = |batches: Vec<Vec<ProbeSample>>| {
            let mut it = batches.into_iter();
            check_within(2, 0, 100, 3, std::time::Duration::ZERO, |n| {
                let b = it.next().unwrap_or_default();
                assert_eq!(n, 2);
                Ok::<_, ()>(b)
            })
            .unwrap()
        };
        // Proven at once.
        let c = run(vec![vec![pt(-10, 10), pt(90, 100)]]);
        assert!(c.passed());
        assert_eq!((c.proven(), c.points.len()), (2, 2));
        assert_eq!(c.proven_farthest_ns(), 100);
        // A wide point straddling the bound is measured again, not counted.
        let c = run(vec![
            vec![pt(-10, 10), pt(-50, 150)],
            vec![pt(0, 20), pt(-300, 300)],
        ]);
        assert!(c.passed());
        assert_eq!((c.proven(), c.points.len()), (2, 4));
        assert_eq!(c.max_width_ns(), 600);
        assert_eq!(c.max_mid_ns(), 50);
        // Never proven: fails.
        let c = run(vec![vec![pt(-200, 200)]; 3]);
        assert!(!c.passed());
        assert_eq!(c.points.len(), 3);
        // A point wholly outside fails at once, whatever else passed.
        let c = run(vec![vec![pt(0, 1), pt(101, 102)], vec![pt(0, 1)]]);
        assert!(!c.passed());
        assert_eq!(c.outside(), Some(&pt(101, 102)));
        assert_eq!(c.points.len(), 2);
        assert!(c.summary().contains("OUTSIDE: +0.000..+0.000 ms"));
        assert!(c.summary().starts_with("1 of 2 points proven"));
    }
}
