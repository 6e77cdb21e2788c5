//! Drift tracking: the history of host − guest offsets from periodic
//! samples, and the worst of the last hour.

use std::collections::VecDeque;
use std::time::Duration;

use vmmci_protocol::TimeSample;

/// One periodic measurement, as kept in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriftPoint {
    /// Guest wall time of the measurement (ns since the epoch).
    pub at_ns: i64,
    /// Host − guest, ns.
    pub offset_ns: i64,
    pub round_trip_ns: i64,
    pub error_bound_ns: i64,
}

impl From<&TimeSample> for DriftPoint {
    fn from(s: &TimeSample) -> Self {
        DriftPoint {
            at_ns: s.guest_mid_ns(),
            offset_ns: s.offset_ns(),
            round_trip_ns: s.round_trip_ns(),
            error_bound_ns: s.error_bound_ns(),
        }
    }
}

/// The last N drift points plus extremes over the agent's life.
#[derive(Clone, Debug)]
pub struct DriftTracker {
    capacity: usize,
    history: VecDeque<DriftPoint>,
    min_offset_ns: Option<i64>,
    max_offset_ns: Option<i64>,
    count: u64,
}

impl DriftTracker {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        DriftTracker {
            capacity,
            history: VecDeque::with_capacity(capacity),
            min_offset_ns: None,
            max_offset_ns: None,
            count: 0,
        }
    }

    pub fn record(&mut self, point: DriftPoint) {
        if self.history.len() == self.capacity {
            self.history.pop_front();
        }
        self.history.push_back(point);
        self.min_offset_ns = Some(
            self.min_offset_ns
                .map_or(point.offset_ns, |m| m.min(point.offset_ns)),
        );
        self.max_offset_ns = Some(
            self.max_offset_ns
                .map_or(point.offset_ns, |m| m.max(point.offset_ns)),
        );
        self.count += 1;
    }

    pub fn last(&self) -> Option<&DriftPoint> {
        self.history.back()
    }
    pub fn history(&self) -> impl Iterator<Item = &DriftPoint> {
        self.history.iter()
    }
    pub fn min_offset_ns(&self) -> Option<i64> {
        self.min_offset_ns
    }
    pub fn max_offset_ns(&self) -> Option<i64> {
        self.max_offset_ns
    }
    /// Samples taken over the agent's life (the history keeps the last N).
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// The worst offset (largest magnitude, with its sign) of the samples of
/// the last hour: the worst of each minute, 60 minutes kept.
#[derive(Clone, Debug, Default)]
pub struct WorstWindow {
    /// (minute of the agent's monotonic time, worst offset in it).
    minutes: VecDeque<(u64, i64)>,
}

impl WorstWindow {
    const MINUTES: u64 = 60;

    /// An offset measured at monotonic time `now`.
    pub fn record(&mut self, now: Duration, offset_ns: i64) {
        let minute = now.as_secs() / 60;
        while self
            .minutes
            .front()
            .is_some_and(|&(m, _)| m + Self::MINUTES <= minute)
        {
            self.minutes.pop_front();
        }
        match self.minutes.back_mut() {
            Some((m, worst)) if *m == minute => {
                if offset_ns.unsigned_abs() > worst.unsigned_abs() {
                    *worst = offset_ns;
                }
            }
            _ => self.minutes.push_back((minute, offset_ns)),
        }
    }

    /// The worst of the hour before the last record.
    pub fn worst(&self) -> Option<i64> {
        self.minutes
            .iter()
            .map(|&(_, w)| w)
            .max_by_key(|w| w.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(offset_ns: i64) -> DriftPoint {
        DriftPoint {
            at_ns: 0,
            offset_ns,
            round_trip_ns: 10,
            error_bound_ns: 5,
        }
    }

    #[test]
    fn keeps_last_n_and_lifetime_extremes() {
        let mut t = DriftTracker::new(3);
        for o in [5, -7, 2, 9, 1] {
            t.record(point(o));
        }
        let kept: Vec<i64> = t.history().map(|p| p.offset_ns).collect();
        assert_eq!(kept, vec![2, 9, 1]);
        assert_eq!(t.min_offset_ns(), Some(-7), "extremes outlive the history");
        assert_eq!(t.max_offset_ns(), Some(9));
        assert_eq!(t.count(), 5);
        assert_eq!(t.last().map(|p| p.offset_ns), Some(1));
    }

    #[test]
    fn zero_capacity_is_one() {
        let mut t = DriftTracker::new(0);
        t.record(point(1));
        t.record(point(2));
        assert_eq!(t.history().count(), 1);
    }

    #[test]
    fn worst_of_the_last_hour_with_its_sign() {
        let mut w = WorstWindow::default();
        assert_eq!(w.worst(), None);
        let min = |m: u64| Duration::from_secs(60 * m);
        w.record(min(0), 300);
        w.record(min(0) + Duration::from_secs(20), -900);
        w.record(min(30), 500);
        assert_eq!(w.worst(), Some(-900));
        // An hour on, the first minute has left the window.
        w.record(min(60), 10);
        assert_eq!(w.worst(), Some(500));
        w.record(min(200), -20);
        assert_eq!(w.worst(), Some(-20));
    }
}
