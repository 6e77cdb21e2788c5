//! The servo against a model of two clocks: the host's, and the guest's
//! oscillator running `rate` ppm slow of it, corrected by what the servo
//! returns.

use super::*;
use vmmci_protocol::HostTime;

const START_NS: f64 = 1_800_000_000e9;

struct Model {
    host_ns: f64,
    guest_ns: f64,
    /// The correction the oscillator needs, ppm.
    rate_ppm: f64,
    /// The correction in effect, ppm.
    applied_ppm: f64,
    /// Read noise of the host clock, ± ns, from a fixed sequence.
    noise_ns: f64,
    k: u64,
}

impl Model {
    fn new(rate_ppm: f64, offset_ns: f64) -> Model {
        Model {
            host_ns: START_NS,
            guest_ns: START_NS - offset_ns,
            rate_ppm,
            applied_ppm: 0.0,
            noise_ns: 0.0,
            k: 0,
        }
    }

    fn advance(&mut self, host_s: f64) {
        let dt = host_s * 1e9;
        let raw = dt / (1.0 + self.rate_ppm * 1e-6);
        self.host_ns += dt;
        self.guest_ns += raw * (1.0 + self.applied_ppm * 1e-6);
    }

    /// A sample with a 20 µs round trip.
    fn sample(&mut self) -> TimeSample {
        self.k += 1;
        // A deterministic spread over [-noise, +noise].
        let jitter = ((self.k * 7919) % 201) as f64 / 100.0 - 1.0;
        let host = (self.host_ns + jitter * self.noise_ns) as i64;
        TimeSample {
            guest_before_ns: self.guest_ns as i64 - 10_000,
            host: HostTime {
                sec: (host / 1_000_000_000) as u32,
                usec: ((host % 1_000_000_000) / 1_000) as u32,
            },
            guest_after_ns: self.guest_ns as i64 + 10_000,
        }
    }

    /// Sample, correct, and let the servo's interval pass; the offsets seen.
    fn run(&mut self, servo: &mut Servo, seconds: f64, configured: Duration) -> Vec<i64> {
        let mut now = Duration::from_secs(100);
        let mut seen = vec![];
        let end = now + Duration::from_secs_f64(seconds);
        while now < end {
            let s = self.sample();
            seen.push(s.offset_ns());
            self.applied_ppm = servo.update(&s, now, configured);
            let t = servo.interval(configured);
            self.advance(t.as_secs_f64());
            now += t;
        }
        seen
    }
}

const FIFTEEN: Duration = Duration::from_secs(15);

fn worst(offsets: &[i64]) -> i64 {
    offsets.iter().map(|x| x.abs()).max().unwrap_or(0)
}

#[test]
fn learns_a_50_ppm_rate_locks_and_samples_slower() {
    let mut m = Model::new(50.0, 0.0);
    m.noise_ns = 20_000.0;
    let mut servo = Servo::new(0.0);
    assert_eq!(servo.interval(FIFTEEN), FAST_INTERVAL);
    let offsets = m.run(&mut servo, 600.0, FIFTEEN);
    assert!((servo.rate_ppm() - 50.0).abs() < 2.0, "{servo:?}");
    assert!(servo.locked_at().is_some(), "{offsets:?}");
    assert_eq!(servo.interval(FIFTEEN), FIFTEEN);
    let late = &offsets[offsets.len() - 20..];
    assert!(worst(late) < 100_000, "held within 100 µs: {late:?}");
}

#[test]
fn learns_and_locks_at_the_shortest_sample_interval() {
    // `sample_interval = "1s"`, the least the config allows; the host's
    // reads land a little either side of a second apart.
    let mut m = Model::new(50.0, 0.0);
    m.noise_ns = 20_000.0;
    let mut servo = Servo::new(0.0);
    let one = Duration::from_secs(1);
    let offsets = m.run(&mut servo, 300.0, one);
    assert!((servo.rate_ppm() - 50.0).abs() < 5.0, "{servo:?}");
    assert!(servo.locked_at().is_some(), "{offsets:?}");
}

#[test]
fn follows_any_rate_the_kernel_can_correct_without_a_large_offset() {
    for rate in [0.0, -200.0, 2_000.0, 20_000.0, -60_000.0] {
        let mut m = Model::new(rate, 0.0);
        let mut servo = Servo::new(0.0);
        let offsets = m.run(&mut servo, 900.0, FIFTEEN);
        // The first interval runs uncorrected: 2 s at the full rate.
        let r = rate * 1e-6;
        let first = (2e9 * (r / (1.0 + r)).abs()) as i64;
        assert!(worst(&offsets) <= first + 1_000, "{rate}: {offsets:?}");
        assert!(
            (servo.rate_ppm() - rate).abs() < 0.05,
            "{rate}: learned {}",
            servo.rate_ppm()
        );
        let late = &offsets[offsets.len() - 20..];
        assert!(worst(late) < 10_000, "{rate}: {late:?}");
        assert!(servo.locked_at().is_some(), "{rate}");
    }
}

#[test]
fn slews_50_ms_away_in_seconds_without_overshoot() {
    for start in [50_000_000.0, -120_000_000.0] {
        let mut m = Model::new(0.0, start);
        let mut servo = Servo::new(0.0);
        let offsets = m.run(&mut servo, 30.0, FIFTEEN);
        let within = offsets.iter().position(|x| x.abs() < 1_000_000).unwrap();
        assert!(
            within <= 6,
            "{start}: 1 ms after {within} samples: {offsets:?}"
        );
        assert!(
            offsets
                .iter()
                .all(|&x| x as f64 * start >= 0.0 || x.abs() < 100_000),
            "overshoot: {offsets:?}"
        );
    }
}

#[test]
fn learns_the_rate_while_held_at_the_kernel_limit() {
    // A 9.9 % clock and 100 ms to make up: the correction wants more than
    // the kernel's ±10.05 % and is clamped, yet the rate is measured.
    let mut m = Model::new(99_000.0, 100_000_000.0);
    let mut servo = Servo::new(0.0);
    let mut now = Duration::ZERO;
    let mut clamped = 0;
    for _ in 0..4 {
        let s = m.sample();
        m.applied_ppm = servo.update(&s, now, FIFTEEN);
        clamped += usize::from(m.applied_ppm == MAX_RATE_PPM);
        m.advance(2.0);
        now += FAST_INTERVAL;
    }
    assert!(clamped >= 2, "the test must hold the loop at its limit");
    assert!((servo.rate_ppm() - 99_000.0).abs() < 1.0, "{servo:?}");
}

#[test]
fn a_changed_rate_is_relearned() {
    let mut m = Model::new(50.0, 0.0);
    let mut servo = Servo::new(0.0);
    m.run(&mut servo, 600.0, FIFTEEN);
    m.rate_ppm = 80.0;
    let offsets = m.run(&mut servo, 600.0, FIFTEEN);
    assert!((servo.rate_ppm() - 80.0).abs() < 1.0, "{servo:?}");
    assert!(worst(&offsets) < 1_000_000, "{offsets:?}");
    assert!(
        worst(&offsets[offsets.len() - 10..]) < 20_000,
        "{offsets:?}"
    );
}

#[test]
fn a_jump_of_the_clock_is_not_taken_for_a_new_rate() {
    let mut m = Model::new(50.0, 0.0);
    let mut servo = Servo::new(0.0);
    m.run(&mut servo, 300.0, FIFTEEN);
    // Someone sets the guest clock 100 ms back.
    m.guest_ns -= 100_000_000.0;
    let offsets = m.run(&mut servo, 60.0, FIFTEEN);
    assert!((servo.rate_ppm() - 50.0).abs() < 1.0, "{servo:?}");
    assert!(worst(&offsets[offsets.len() - 3..]) < 10_000, "{offsets:?}");
}

#[test]
fn the_rate_is_measured_across_the_agents_own_step() {
    // 2 % off and 40 ms behind at the second sample: a startup step, yet
    // the third sample already knows the rate.
    let mut m = Model::new(20_000.0, 0.0);
    let mut servo = Servo::new(0.0);
    let mut now = Duration::ZERO;
    m.applied_ppm = servo.update(&m.sample(), now, FIFTEEN);
    m.advance(2.0);
    now += FAST_INTERVAL;
    let s = m.sample();
    assert!(servo.wants_startup_step(&s));
    let delta = s.offset_ns();
    m.guest_ns += delta as f64;
    servo.stepped(delta);
    m.advance(2.0);
    now += FAST_INTERVAL;
    servo.update(&m.sample(), now, FIFTEEN);
    assert!((servo.rate_ppm() - 20_000.0).abs() < 1.0, "{servo:?}");
}

#[test]
fn steps_only_early_and_only_beyond_a_millisecond_and_the_bound() {
    let mut servo = Servo::new(0.0);
    let mut m = Model::new(0.0, 500_000.0);
    assert!(!servo.wants_startup_step(&m.sample()), "0.5 ms: slewed");
    let mut m = Model::new(0.0, 50_000_000.0);
    assert!(servo.wants_startup_step(&m.sample()));
    assert!(servo.wants_startup_step(&m.sample()));
    assert!(!servo.wants_startup_step(&m.sample()), "three samples only");
    // A sample too uncertain to tell is not stepped to.
    let mut servo = Servo::new(0.0);
    let mut s = Model::new(0.0, 2_000_000.0).sample();
    s.guest_before_ns -= 10_000_000;
    s.guest_after_ns += 10_000_000;
    assert!(!servo.wants_startup_step(&s));
}

#[test]
fn a_restart_keeps_the_rate_and_unlocks() {
    let mut m = Model::new(50.0, 0.0);
    let mut servo = Servo::new(0.0);
    m.run(&mut servo, 300.0, FIFTEEN);
    assert!(servo.locked_at().is_some());
    let rate = servo.rate_ppm();
    servo.restart();
    assert_eq!(servo.rate_ppm(), rate);
    assert_eq!(servo.locked_at(), None);
    assert_eq!(servo.interval(FIFTEEN), FAST_INTERVAL);
}

#[test]
fn starts_from_the_kernel_correction_within_its_range() {
    assert_eq!(Servo::new(12.5).rate_ppm(), 12.5);
    assert_eq!(Servo::new(f64::NAN).rate_ppm(), 0.0);
    assert_eq!(Servo::new(9e9).rate_ppm(), MAX_RATE_PPM);
    assert_eq!(Servo::new(0.0).rate_error_ppm(), None);
}
