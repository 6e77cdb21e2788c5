//! The loop that slews the guest clock onto the host's (`discipline`).
//!
//! It keeps two things apart, each taken straight from the samples:
//!
//! - **The rate.** Between two samples the agent knows the correction u it
//!   had set, how far the host clock moved (H) and how far the guest clock
//!   moved (G = H − Δx, x the offset host − guest). The oscillator needs the
//!   correction c with raw·(1 + c) = H, and the guest ran raw·(1 + u) = G,
//!   so c = (1 + u)·H/G − 1: right whatever u was, whether the loop was
//!   slewing hard or held at the kernel's limit (the integral of the PI loop
//!   this replaces froze while clamped, and learned nothing for minutes).
//!   The estimate is a one-dimensional Kalman filter over these
//!   measurements: each weighed by its uncertainty (the two samples' error
//!   bounds, plus noise the bracket cannot see, over H), the estimate's own
//!   uncertainty growing slowly with time (a host clock's rate wanders). A
//!   measurement more than five deviations away is set aside: one alone is
//!   a jump of the clock (set by hand, a host clock moved by less than
//!   vmd's 5 s), not a new rate; two in a row mean the rate changed, and
//!   the filter starts over from the second.
//! - **The phase.** u = c + 0.7·x/T removes 70 % of the offset over the
//!   next sample interval T, within what the kernel can do (±10 %, tick and
//!   frequency: [`crate::rate`]). Slewing a 50 ms offset takes about a
//!   second, not minutes at 500 ppm.
//!
//! The servo is **locked** once three samples in a row are within 250 µs
//! (or twice their error bound, if that is wider) with the rate measured;
//! it samples every 2 s until then and at the configured interval after,
//! and unlocks on an offset four times that, or a step.
//!
//! At start (the first three samples after the agent starts disciplining)
//! an offset beyond 1 ms is stepped, as chrony's `makestep` does: the clock
//! set from the RTC at boot is up to a second off, and a step during boot
//! harms no one.

use std::time::Duration;

use vmmci_protocol::TimeSample;

use crate::rate::MAX_RATE_PPM;

/// The part of the offset removed over each sample interval.
const PHASE_GAIN: f64 = 0.7;
/// Noise per sample beyond its error bound: the host's reading of its own
/// clock, a vCPU preempted between the guest's reads and vmd's.
const SAMPLE_NOISE_NS: f64 = 20_000.0;
/// How fast the rate is assumed to wander, ppm² per second: a host's
/// oscillator with the seasons, its ntpd's corrections.
const RATE_WANDER: f64 = 0.01;
/// A rate measurement this many deviations away starts the filter over.
const RATE_CHANGE_SIGMAS: f64 = 5.0;
/// Near: within this (or twice the sample's bound) …
const LOCK_NS: i64 = 250_000;
/// … this many samples in a row: locked.
const LOCK_SAMPLES: u32 = 3;
/// Beyond this many times "near": unlocked.
const UNLOCK_FACTOR: i64 = 4;
/// Sample interval until locked.
pub const FAST_INTERVAL: Duration = Duration::from_secs(2);
/// At start, offsets beyond this are stepped …
pub const STARTUP_STEP_NS: i64 = 1_000_000;
/// … for this many samples.
const STARTUP_SAMPLES: u32 = 3;

/// The servo. Pure arithmetic: the agent feeds it samples and sets the
/// correction it returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Servo {
    /// The oscillator's rate error, as the correction it needs (ppm).
    rate_ppm: f64,
    /// Its variance (ppm²); infinite until measured.
    rate_var: f64,
    /// The last sample and the correction set after it.
    last: Option<Last>,
    /// The last rate measurement was set aside as an outlier.
    outlier: bool,
    /// Samples left in which a startup step may come.
    startup_left: u32,
    /// Samples near zero in a row.
    near: u32,
    /// When it locked (the agent's monotonic time).
    locked_at: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Last {
    host_ns: i64,
    offset_ns: i64,
    bound_ns: i64,
    /// The correction in effect since that sample.
    applied_ppm: f64,
}

impl Servo {
    /// Start from the correction the kernel already applies (left by an
    /// earlier agent or another daemon's drift file).
    pub fn new(kernel_ppm: f64) -> Servo {
        let rate = if kernel_ppm.is_finite() {
            kernel_ppm.clamp(-MAX_RATE_PPM, MAX_RATE_PPM)
        } else {
            0.0
        };
        Servo {
            rate_ppm: rate,
            rate_var: f64::INFINITY,
            last: None,
            outlier: false,
            startup_left: STARTUP_SAMPLES,
            near: 0,
            locked_at: None,
        }
    }

    /// The learned correction for the oscillator's rate, ppm.
    pub fn rate_ppm(&self) -> f64 {
        self.rate_ppm
    }

    /// How far the learned rate may be off (one deviation), once measured.
    pub fn rate_error_ppm(&self) -> Option<f64> {
        self.rate_var.is_finite().then(|| self.rate_var.sqrt())
    }

    /// When the loop locked, if it holds.
    pub fn locked_at(&self) -> Option<Duration> {
        self.locked_at
    }

    /// The sample interval: fast until locked.
    pub fn interval(&self, configured: Duration) -> Duration {
        if self.locked_at.is_some() {
            configured
        } else {
            configured.min(FAST_INTERVAL)
        }
    }

    /// Whether this sample, early in the servo's life, should be stepped
    /// rather than slewed. Each call uses up one of the startup samples.
    pub fn wants_startup_step(&mut self, sample: &TimeSample) -> bool {
        if self.startup_left == 0 {
            return false;
        }
        self.startup_left -= 1;
        let x = sample.offset_ns().abs();
        x > STARTUP_STEP_NS && x > sample.error_bound_ns()
    }

    /// The correction to set after `sample`, taken at monotonic time `now`;
    /// `configured` is the sample interval once locked.
    pub fn update(&mut self, sample: &TimeSample, now: Duration, configured: Duration) -> f64 {
        let x = sample.offset_ns();
        let bound = sample.error_bound_ns();
        let host = sample.host_mid_ns();
        if let Some(last) = self.last {
            self.learn_rate(&last, host, x, bound);
        }
        self.track_lock(x, bound, now);
        let t = self.interval(configured).as_secs_f64().max(1.0);
        let u = (self.rate_ppm + PHASE_GAIN * x as f64 * 1e-9 / t * 1e6)
            .clamp(-MAX_RATE_PPM, MAX_RATE_PPM);
        self.last = Some(Last {
            host_ns: host,
            offset_ns: x,
            bound_ns: bound,
            applied_ppm: u,
        });
        u
    }

    /// Someone else had the clock, the host's clock jumped (SYNCRTC), or the
    /// correction could not be set: the next offset does not follow from the
    /// last correction. The rate learned so far is kept.
    pub fn restart(&mut self) {
        self.last = None;
        self.unlock();
    }

    /// The agent stepped the guest clock by `delta_ns` on its own (the
    /// host's clock did not move): the rate is still measured across the
    /// step, from the last sample as if it had been taken after it. At a
    /// fast rate the startup steps would otherwise cost three samples of
    /// learning.
    pub fn stepped(&mut self, delta_ns: i64) {
        if let Some(last) = &mut self.last {
            last.offset_ns -= delta_ns;
        }
        self.unlock();
    }

    fn unlock(&mut self) {
        self.near = 0;
        self.locked_at = None;
    }

    fn learn_rate(&mut self, last: &Last, host_ns: i64, x_ns: i64, bound_ns: i64) {
        let h = (host_ns - last.host_ns) as f64;
        let g = h - (x_ns - last.offset_ns) as f64;
        // Under half a second apart says little (the shortest configured
        // interval is 1 s, which jitter makes a little shorter or longer;
        // each measurement is weighed by its noise over H anyway); the guest
        // clock standing still or running backwards says the sample is junk.
        if h < 5e8 || g <= 0.0 {
            return;
        }
        let measured = ((1.0 + last.applied_ppm * 1e-6) * h / g - 1.0) * 1e6;
        if !measured.is_finite() {
            return;
        }
        let spread = (bound_ns + last.bound_ns) as f64 + 2.0 * SAMPLE_NOISE_NS;
        let noise = (spread / h * 1e6).powi(2);
        let predicted = self.rate_var + RATE_WANDER * h * 1e-9;
        let innovation = measured - self.rate_ppm;
        let outlier = innovation.powi(2) > RATE_CHANGE_SIGMAS.powi(2) * (predicted + noise);
        if predicted.is_finite() && outlier && !std::mem::replace(&mut self.outlier, true) {
            return;
        }
        self.outlier = false;
        if !predicted.is_finite() || outlier {
            self.rate_ppm = measured.clamp(-MAX_RATE_PPM, MAX_RATE_PPM);
            self.rate_var = noise;
            return;
        }
        let gain = predicted / (predicted + noise);
        self.rate_ppm = (self.rate_ppm + gain * innovation).clamp(-MAX_RATE_PPM, MAX_RATE_PPM);
        self.rate_var = (1.0 - gain) * predicted;
    }

    fn track_lock(&mut self, x_ns: i64, bound_ns: i64, now: Duration) {
        let near = LOCK_NS.max(2 * bound_ns);
        if x_ns.abs() <= near {
            self.near = self.near.saturating_add(1);
        } else {
            self.near = 0;
        }
        if self.locked_at.is_some() {
            if x_ns.abs() > UNLOCK_FACTOR * near {
                self.locked_at = None;
            }
        } else if self.near >= LOCK_SAMPLES && self.rate_var.is_finite() {
            self.locked_at = Some(now);
        }
    }
}

#[cfg(test)]
#[path = "servo_tests.rs"]
mod tests;
