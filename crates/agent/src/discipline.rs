//! The clock policy (`[clock] mode`) and the servo that slews the guest
//! clock onto the host's in `discipline` mode.
//!
//! The servo is a proportional-integral loop on the measured offset x
//! (host − guest) over the interval T since the last update. It sets the
//! kernel's frequency correction to
//!
//! ```text
//! F  ← F + Ki·x/T        (the integral: the oscillator's rate error)
//! u  =  F + Kp·x/T       (plus the part that removes x over the next T)
//! ```
//!
//! With Kp = 0.64 and Ki = 0.16 the closed loop x[k+1] = (1−Kp−Ki)·x[k] +
//! (rate error − F[k])·T has a double pole at 0.6: no overshoot, and each
//! sample interval leaves 0.6 of the error, so a 50 ppm oscillator is
//! learned within about ten samples. The kernel accepts ±500 ppm; beyond
//! that the output is clamped and the integral frozen (no wind-up).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What the agent does to the guest clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClockMode {
    /// Step only when the host sends SYNCRTC (the old driver's behaviour,
    /// but from the time registers); warn when a sample finds the clock
    /// far off with no request.
    #[default]
    StepOnRequest,
    /// Slew small offsets through the kernel's frequency correction, step
    /// large ones, both directions; stand back when another time daemon
    /// runs.
    Discipline,
    /// Never touch the clock (SYNCRTC is still acknowledged); only measure.
    Off,
}

impl ClockMode {
    pub fn name(self) -> &'static str {
        match self {
            ClockMode::StepOnRequest => "step-on-request",
            ClockMode::Discipline => "discipline",
            ClockMode::Off => "off",
        }
    }
}

impl fmt::Display for ClockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ClockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<ClockMode, String> {
        match s {
            "step-on-request" => Ok(ClockMode::StepOnRequest),
            "discipline" => Ok(ClockMode::Discipline),
            "off" => Ok(ClockMode::Off),
            other => Err(format!(
                "unknown clock mode {other:?}: use \"step-on-request\", \"discipline\" or \"off\""
            )),
        }
    }
}

/// The mode and its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockPolicy {
    pub mode: ClockMode,
    /// Offsets beyond this are stepped in `discipline` (slewing 128 ms at
    /// the kernel's 500 ppm limit already takes over four minutes) and
    /// warned about in `step-on-request`. ntpd's default.
    pub step_threshold: Duration,
}

impl Default for ClockPolicy {
    fn default() -> ClockPolicy {
        ClockPolicy {
            mode: ClockMode::StepOnRequest,
            step_threshold: DEFAULT_STEP_THRESHOLD,
        }
    }
}

pub const DEFAULT_STEP_THRESHOLD: Duration = Duration::from_millis(128);

/// The kernel's limit on the frequency correction (`MAXFREQ`).
pub const MAX_FREQUENCY_PPM: f64 = 500.0;
const PHASE_GAIN: f64 = 0.64;
const FREQUENCY_GAIN: f64 = 0.16;

/// The PI loop. Pure arithmetic: the agent feeds it offsets and sets the
/// frequency it returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Servo {
    /// The integral: the guest oscillator's rate error as learned so far,
    /// as a correction in ppm.
    frequency_ppm: f64,
    last_update: Option<Duration>,
}

impl Servo {
    /// Start from the correction the kernel already applies (left by an
    /// earlier agent or another daemon's drift file).
    pub fn new(frequency_ppm: f64) -> Servo {
        let f = if frequency_ppm.is_finite() {
            frequency_ppm
        } else {
            0.0
        };
        Servo {
            frequency_ppm: f.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM),
            last_update: None,
        }
    }

    /// The learned rate correction, ppm.
    pub fn frequency_ppm(&self) -> f64 {
        self.frequency_ppm
    }

    /// The frequency correction to set for `offset_ns` measured at
    /// monotonic time `now`. `nominal` is the interval assumed when there
    /// is no previous update.
    pub fn update(&mut self, offset_ns: i64, now: Duration, nominal: Duration) -> f64 {
        let interval = match self.last_update {
            Some(last) => now.saturating_sub(last),
            None => nominal,
        };
        self.last_update = Some(now);
        let t = interval.as_secs_f64().max(1.0);
        let x = offset_ns as f64 * 1e-9;
        let integral = (self.frequency_ppm + FREQUENCY_GAIN * x / t * 1e6)
            .clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM);
        let out = integral + PHASE_GAIN * x / t * 1e6;
        if out.abs() <= MAX_FREQUENCY_PPM {
            self.frequency_ppm = integral;
        }
        out.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM)
    }

    /// The clock was stepped, or someone else had it: the next offset is
    /// not the result of the last frequency set, so measure afresh.
    pub fn restart(&mut self) {
        self.last_update = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The servo against a clock model: the guest oscillator loses `rate`
    /// ppm against the host; every `t` seconds an offset is measured and
    /// the returned correction applies until the next one.
    fn run(rate_ppm: f64, start_offset_ns: i64, t: u64, samples: usize) -> (Servo, Vec<i64>) {
        let mut servo = Servo::new(0.0);
        let mut x = start_offset_ns as f64;
        let mut offsets = Vec::new();
        let interval = Duration::from_secs(t);
        for k in 0..samples {
            offsets.push(x as i64);
            let u = servo.update(x as i64, interval * k as u32, interval);
            x += (rate_ppm - u) * 1e3 * t as f64;
        }
        (servo, offsets)
    }

    #[test]
    fn learns_a_50_ppm_rate_error_and_holds_the_offset() {
        let (servo, offsets) = run(50.0, 0, 15, 60);
        assert!((servo.frequency_ppm() - 50.0).abs() < 0.5, "{servo:?}");
        let worst = offsets.iter().map(|x| x.abs()).max().unwrap();
        // The first interval drifts 0.75 ms before any correction.
        assert!(worst < 1_500_000, "worst {worst} ns: {offsets:?}");
        assert!(
            offsets[30..].iter().all(|x| x.abs() < 20_000),
            "{offsets:?}"
        );
    }

    #[test]
    fn removes_an_offset_in_either_direction_without_overshoot() {
        for start in [40_000_000_i64, -40_000_000] {
            let (_, offsets) = run(0.0, start, 15, 40);
            assert!(offsets.last().unwrap().abs() < 100_000, "{offsets:?}");
            assert!(
                offsets
                    .iter()
                    .all(|x| x.signum() == start.signum() || x.abs() < 2_000_000),
                "overshoot: {offsets:?}"
            );
        }
    }

    #[test]
    fn clamps_to_the_kernel_limit_without_winding_up() {
        let mut servo = Servo::new(0.0);
        let u = servo.update(120_000_000, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(u, MAX_FREQUENCY_PPM);
        assert_eq!(servo.frequency_ppm(), 0.0, "saturated: integral frozen");
        assert_eq!(Servo::new(f64::NAN).frequency_ppm(), 0.0);
        assert_eq!(Servo::new(9e9).frequency_ppm(), MAX_FREQUENCY_PPM);
    }

    #[test]
    fn modes_parse_by_name() {
        for m in [
            ClockMode::StepOnRequest,
            ClockMode::Discipline,
            ClockMode::Off,
        ] {
            assert_eq!(m.name().parse::<ClockMode>(), Ok(m));
        }
        assert!("slew"
            .parse::<ClockMode>()
            .unwrap_err()
            .contains("discipline"));
    }
}
