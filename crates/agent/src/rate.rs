//! The kernel's two knobs on the clock's rate, as one correction.
//!
//! Linux runs CLOCK_REALTIME (and CLOCK_MONOTONIC) at
//!
//! ```text
//! tick / 10 000  +  frequency · 10⁻⁶        (adjtimex(2): NTP second_length)
//! ```
//!
//! of the oscillator's rate: `tick` is the length of a USER_HZ (100 Hz)
//! tick in µs, 9 000 to 11 000 (±10 %); `frequency` is ppm, ±500
//! (`MAXFREQ`). The frequency alone cannot follow a clock more than 500 ppm
//! off (an old vmm host without kvm-clock, a guest left on
//! `refined-jiffies`); chrony on Linux sets both, and so does the agent: the
//! tick takes the correction in whole 100 ppm steps and the frequency the
//! rest, so it stays within ±50 ppm, where a time daemon that comes later
//! and knows only the frequency expects it.

/// What `adjtimex(2)` calls the tick: µs per USER_HZ tick.
pub const NOMINAL_TICK_US: i64 = 10_000;
/// The kernel refuses a tick outside 900 000/USER_HZ …
pub const MIN_TICK_US: i64 = 9_000;
/// … and 1 100 000/USER_HZ.
pub const MAX_TICK_US: i64 = 11_000;
/// One µs of tick, as a rate: 1/10 000.
pub const PPM_PER_TICK_US: f64 = 100.0;
/// The kernel's limit on the frequency (`MAXFREQ`).
pub const MAX_FREQUENCY_PPM: f64 = 500.0;
/// The most the two together correct, either way.
pub const MAX_RATE_PPM: f64 =
    (MAX_TICK_US - NOMINAL_TICK_US) as f64 * PPM_PER_TICK_US + MAX_FREQUENCY_PPM;

/// The kernel's rate correction: tick length and frequency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub tick_us: i64,
    pub frequency_ppm: f64,
}

impl Default for Rate {
    fn default() -> Rate {
        Rate::NOMINAL
    }
}

impl Rate {
    /// A kernel nobody has corrected.
    pub const NOMINAL: Rate = Rate {
        tick_us: NOMINAL_TICK_US,
        frequency_ppm: 0.0,
    };

    /// The correction `ppm` (positive: the clock runs faster), within what
    /// the kernel can do: whole 100 ppm steps of tick, the rest in the
    /// frequency. Beyond ±[`MAX_RATE_PPM`] it is the limit; not a number
    /// is no correction.
    pub fn split(ppm: f64) -> Rate {
        if !ppm.is_finite() {
            return Rate::NOMINAL;
        }
        let ppm = ppm.clamp(-MAX_RATE_PPM, MAX_RATE_PPM);
        let tick_us = (NOMINAL_TICK_US + (ppm / PPM_PER_TICK_US).round() as i64)
            .clamp(MIN_TICK_US, MAX_TICK_US);
        Rate::keeping_tick(ppm, tick_us)
    }

    /// The correction `ppm` with the tick left at `tick_us` (the one the
    /// kernel had before the agent changed it): the frequency takes what it
    /// can of the rest.
    pub fn keeping_tick(ppm: f64, tick_us: i64) -> Rate {
        let tick_us = tick_us.clamp(MIN_TICK_US, MAX_TICK_US);
        let tick_part = (tick_us - NOMINAL_TICK_US) as f64 * PPM_PER_TICK_US;
        let rest = if ppm.is_finite() {
            ppm - tick_part
        } else {
            0.0
        };
        Rate {
            tick_us,
            frequency_ppm: rest.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM),
        }
    }

    /// The whole correction, ppm.
    pub fn total_ppm(self) -> f64 {
        (self.tick_us - NOMINAL_TICK_US) as f64 * PPM_PER_TICK_US + self.frequency_ppm
    }

    /// The tick is not the kernel's default.
    pub fn tick_changed(self) -> bool {
        self.tick_us != NOMINAL_TICK_US
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_corrections_stay_in_the_frequency() {
        for ppm in [0.0, 12.5, -49.9, 49.99] {
            let r = Rate::split(ppm);
            assert_eq!(r.tick_us, NOMINAL_TICK_US, "{ppm}");
            assert_eq!(r.frequency_ppm, ppm);
            assert!(!r.tick_changed());
        }
    }

    #[test]
    fn large_corrections_go_to_the_tick_in_100_ppm_steps() {
        let r = Rate::split(20_000.0);
        assert_eq!(
            r,
            Rate {
                tick_us: 10_200,
                frequency_ppm: 0.0
            }
        );
        let r = Rate::split(-2_037.5);
        assert_eq!(r.tick_us, 9_980);
        assert!((r.frequency_ppm + 37.5).abs() < 1e-9, "{r:?}");
        assert!((r.total_ppm() + 2_037.5).abs() < 1e-9);
        assert!(r.tick_changed());
    }

    #[test]
    fn the_kernel_limits_hold_at_every_correction() {
        let mut ppm = -200_000.0;
        while ppm <= 200_000.0 {
            let r = Rate::split(ppm);
            assert!(
                (MIN_TICK_US..=MAX_TICK_US).contains(&r.tick_us),
                "{ppm}: {r:?}"
            );
            assert!(r.frequency_ppm.abs() <= MAX_FREQUENCY_PPM, "{ppm}: {r:?}");
            let want = ppm.clamp(-MAX_RATE_PPM, MAX_RATE_PPM);
            assert!((r.total_ppm() - want).abs() < 1e-6, "{ppm}: {r:?}");
            // Within the tick's range the frequency keeps to half a step.
            if ppm.abs() < 99_950.0 {
                assert!(r.frequency_ppm.abs() <= 50.0 + 1e-9, "{ppm}: {r:?}");
            }
            ppm += 123.25;
        }
        assert_eq!(MAX_RATE_PPM, 100_500.0);
        assert_eq!(Rate::split(f64::NAN), Rate::NOMINAL);
        assert_eq!(Rate::split(f64::INFINITY), Rate::NOMINAL);
    }

    #[test]
    fn keeping_a_tick_leaves_the_rest_to_the_frequency_within_its_limit() {
        let r = Rate::keeping_tick(50.0, NOMINAL_TICK_US);
        assert_eq!(
            r,
            Rate {
                tick_us: NOMINAL_TICK_US,
                frequency_ppm: 50.0
            }
        );
        // A 2 % clock handed back to a nominal tick: the frequency can
        // only take its limit.
        let r = Rate::keeping_tick(20_000.0, NOMINAL_TICK_US);
        assert_eq!(r.frequency_ppm, MAX_FREQUENCY_PPM);
        let r = Rate::keeping_tick(20_030.0, 10_200);
        assert!((r.frequency_ppm - 30.0).abs() < 1e-9);
        assert_eq!(Rate::keeping_tick(0.0, 50_000).tick_us, MAX_TICK_US);
    }
}
