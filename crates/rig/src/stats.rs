//! Statistics over raw points: every measured value is kept, nothing is
//! binned, so a figure is always computed from the points themselves.
//! The scenario tests, `clock`, `load` and the bench share these.

use std::time::Duration;

/// A value a statistic can be taken of: ordered, and with a mean of two
/// (for the median of an even count).
pub trait Point: Copy + Ord {
    /// The mean of `lo` and `hi` (`lo <= hi`), rounded down.
    fn mean_of_two(lo: Self, hi: Self) -> Self;
}

impl Point for i64 {
    fn mean_of_two(lo: i64, hi: i64) -> i64 {
        lo + (hi - lo) / 2
    }
}

impl Point for u64 {
    fn mean_of_two(lo: u64, hi: u64) -> u64 {
        lo + (hi - lo) / 2
    }
}

impl Point for Duration {
    fn mean_of_two(lo: Duration, hi: Duration) -> Duration {
        (lo + hi) / 2
    }
}

/// Raw points, sorted once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Points<T> {
    sorted: Vec<T>,
}

impl<T: Point> Points<T> {
    pub fn new(raw: &[T]) -> Points<T> {
        let mut sorted = raw.to_vec();
        sorted.sort_unstable();
        Points { sorted }
    }

    /// How many points.
    pub fn n(&self) -> usize {
        self.sorted.len()
    }

    /// The points, ascending.
    pub fn sorted(&self) -> &[T] {
        &self.sorted
    }

    pub fn min(&self) -> Option<T> {
        self.sorted.first().copied()
    }

    pub fn max(&self) -> Option<T> {
        self.sorted.last().copied()
    }

    /// The middle point; of an even count, the mean of the two middle ones.
    pub fn median(&self) -> Option<T> {
        let (s, n) = (&self.sorted, self.sorted.len());
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(s[n / 2]),
            _ => Some(T::mean_of_two(s[n / 2 - 1], s[n / 2])),
        }
    }

    /// The middle point; of an even count, the upper of the two middle
    /// ones: always a point that was measured, never a mean.
    pub fn upper_median(&self) -> Option<T> {
        self.sorted.get(self.sorted.len() / 2).copied()
    }

    /// The `p`-th percentile (0..=100) by nearest rank: a measured point.
    pub fn percentile(&self, p: f64) -> Option<T> {
        let n = self.sorted.len();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
        Some(self.sorted[rank.min(n) - 1])
    }
}

/// See [`Points::median`].
pub fn median<T: Point>(v: &[T]) -> Option<T> {
    Points::new(v).median()
}

/// See [`Points::upper_median`].
pub fn upper_median<T: Point>(v: &[T]) -> Option<T> {
    Points::new(v).upper_median()
}

/// See [`Points::percentile`].
pub fn percentile<T: Point>(v: &[T], p: f64) -> Option<T> {
    Points::new(v).percentile(p)
}

/// The median ([`Points::median`]) and the maximum; `None` when empty.
pub fn median_max<T: Point>(v: &[T]) -> Option<(T, T)> {
    let p = Points::new(v);
    Some((p.median()?, p.max()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3i64, 1, 2]), Some(2));
        assert_eq!(median(&[4i64, 1, 3, 2]), Some(2));
        assert_eq!(upper_median(&[4i64, 1, 3, 2]), Some(3));
        assert_eq!(upper_median(&[3i64, 1, 2]), Some(2));
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(100), ms(200)]), Some(ms(150)));
        assert_eq!(median::<i64>(&[]), None);
        assert_eq!(upper_median::<i64>(&[]), None);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[5i64, 7], 50.0), Some(5));
        assert_eq!(percentile::<i64>(&[], 50.0), None);
    }

    #[test]
    fn points_summary() {
        let p = Points::new(&[30u64, 10, 20]);
        assert_eq!(p.n(), 3);
        assert_eq!(p.sorted(), &[10, 20, 30]);
        assert_eq!((p.min(), p.max()), (Some(10), Some(30)));
        assert_eq!(median_max(&[1i64]), Some((1, 1)));
        assert_eq!(median_max::<i64>(&[]), None);
    }
}
