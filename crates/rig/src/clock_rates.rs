//! `discipline`, the default clock mode, across host clock rates, for
//! `vmmci-bench`: for each rate a busybox guest with the agent at its
//! defaults and, beside it on the same rate, the Debian 12 image with
//! chronyd fed by the agent's SOCK refclock (the agent stands back for it),
//! each behind its own simulated host whose clock runs that many ppm fast
//! (±20 µs of read noise):
//!
//! 1. **lock**: after DRIVER_OK the agent's status is read every second
//!    until it says locked; the time is bracketed by the last read that
//!    said not yet and the first that said locked;
//! 2. **hold**: every 10 s the clock probe measures guest − host in each
//!    guest, independently of the agent and of chrony, three points each
//!    ([`crate::clock`]); the agent's steps after the lock are counted;
//! 3. **set back**: the host clock goes back 40 s, which sends no SYNCRTC;
//!    how many of the agent's samples saw it before the step (its drift
//!    history: samples 30 s or more off), and guest − host by the probe
//!    30 s after the jump (the narrowest of three points).

use std::time::{Duration, Instant};

use crate::clock::{self, ProbeSample};
use crate::clock_compare::{RunPoint, Subject, EVERY};
use crate::guest::HostClockError;
use crate::units::SEC;
use crate::RigError;

/// The host clock rates of a full run, ppm: none, a laptop's, a slow one,
/// and two no frequency correction alone (±500 ppm) can follow.
pub const RATES_PPM: [f64; 5] = [0.0, 50.0, -200.0, 2_000.0, 20_000.0];
pub const JITTER_NS: i64 = 20_000;
pub const SET_BACK_NS: i64 = -40 * SEC;
/// How long after the set-back the probe looks.
const AFTER_SET_BACK: Duration = Duration::from_secs(30);
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Clone, Debug)]
pub struct RatesPlan {
    pub kernel: String,
    pub rates_ppm: Vec<f64>,
    pub minutes: u64,
    /// chronyd beside each agent guest.
    pub chrony: bool,
    /// Rates measured at once (each one or two VMs).
    pub batch: usize,
}

/// One guest's run at one rate.
pub struct RateRun {
    pub ppm: f64,
    /// `discipline` or `chrony SOCK refclock`.
    pub policy: &'static str,
    pub points: Vec<RunPoint>,
    /// DRIVER_OK → the agent's status says locked: [last read not yet,
    /// first read locked], s. `None` for chrony.
    pub lock_s: Option<(f64, f64)>,
    /// Steps of the agent from the lock to the set-back.
    pub steps_after_lock: Option<u64>,
    /// The agent's samples that saw the set-back before it was stepped.
    pub set_back_samples: Option<u64>,
    /// guest − host 30 s after the set-back (narrowest point), and its probe.
    pub after_set_back_ns: Option<i64>,
    pub after_set_back_points: Vec<ProbeSample>,
    pub note: String,
}

pub fn run(plan: &RatesPlan) -> Result<Vec<RateRun>, RigError> {
    let mut runs = Vec::new();
    for rates in plan.rates_ppm.chunks(plan.batch.max(1)) {
        runs.extend(run_batch(plan, rates)?);
    }
    Ok(runs)
}

struct Measured {
    ppm: f64,
    policy: &'static str,
    subject: Subject,
    driver_ok: Instant,
    lock_s: Option<(f64, f64)>,
    steps_at_lock: u64,
}

fn run_batch(plan: &RatesPlan, rates: &[f64]) -> Result<Vec<RateRun>, RigError> {
    let mut subjects = Vec::new();
    for &ppm in rates {
        let host = HostClockError {
            ppm,
            jitter_ns: JITTER_NS,
        };
        eprintln!("rates: booting the guests of a host {ppm:+} ppm fast");
        let tag = format!("rate{ppm:+}");
        let s = Subject::busybox(&plan.kernel, None, host, &tag)?;
        let mut m = Measured {
            ppm,
            policy: "discipline",
            subject: s,
            driver_ok: Instant::now(),
            lock_s: None,
            steps_at_lock: 0,
        };
        // Now, before the next guest boots beside it.
        m.lock_s = Some(lock_time(&m)?);
        m.steps_at_lock = m.subject.steps()?;
        eprintln!("  {ppm:+} ppm: locked {:?} s after DRIVER_OK", m.lock_s);
        subjects.push(m);
        if plan.chrony {
            let s = Subject::chrony(host, &format!("{tag}-chrony"))?;
            subjects.push(Measured {
                ppm,
                policy: "chrony SOCK refclock",
                subject: s,
                driver_ok: Instant::now(),
                lock_s: None,
                steps_at_lock: 0,
            });
        }
    }

    let mut points = vec![Vec::new(); subjects.len()];
    let start = Instant::now();
    let total = Duration::from_secs(plan.minutes * 60);
    let mut next = start;
    while start.elapsed() < total {
        for (i, m) in subjects.iter().enumerate() {
            let at_s = start.elapsed().as_secs_f64();
            let p = m.subject.probe()?;
            eprintln!(
                "  [{at_s:>4.0} s] {:+} ppm {:<22} guest − host {}",
                m.ppm,
                m.policy,
                clock::describe(&p)
            );
            points[i].extend(p.into_iter().map(|point| RunPoint { at_s, point }));
        }
        next += EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }

    let mut steps_before = Vec::new();
    for m in &subjects {
        steps_before.push(match m.policy {
            "discipline" => Some(m.subject.steps()?),
            _ => None,
        });
    }
    let jumped = Instant::now();
    for m in &subjects {
        m.subject.vm().jump_host_clock(SET_BACK_NS);
    }
    let mut set_back_samples = vec![None; subjects.len()];
    for (i, m) in subjects.iter().enumerate() {
        if let Some(before) = steps_before[i] {
            set_back_samples[i] = Some(samples_until_stepped(m, before)?);
        }
    }
    std::thread::sleep((jumped + AFTER_SET_BACK).saturating_duration_since(Instant::now()));

    let mut runs = Vec::new();
    for (i, m) in subjects.iter().enumerate() {
        let p = m.subject.probe()?;
        eprintln!(
            "  {:+} ppm {}: 30 s after the 40 s set-back {}",
            m.ppm,
            m.policy,
            clock::describe(&p)
        );
        let note = m.subject.note()?;
        runs.push(RateRun {
            ppm: m.ppm,
            policy: m.policy,
            points: std::mem::take(&mut points[i]),
            lock_s: m.lock_s,
            steps_after_lock: steps_before[i].map(|s| s - m.steps_at_lock),
            set_back_samples: set_back_samples[i],
            after_set_back_ns: clock::narrowest(&p).map(|n| n.mid_ns()),
            after_set_back_points: p,
            note,
        });
    }
    for m in &subjects {
        m.subject.vm().kill();
    }
    Ok(runs)
}

/// Read the status every second from DRIVER_OK until it says locked.
fn lock_time(m: &Measured) -> Result<(f64, f64), RigError> {
    let mut not_yet = 0.0;
    loop {
        let before = m.driver_ok.elapsed().as_secs_f64();
        let st = m.subject.status()?;
        if st.clock.locked_since_ns.is_some() {
            return Ok((not_yet, m.driver_ok.elapsed().as_secs_f64()));
        }
        not_yet = before;
        if m.driver_ok.elapsed() > LOCK_TIMEOUT {
            return Err(RigError::Missing(format!(
                "{:+} ppm: not locked {} s after DRIVER_OK: {:?}",
                m.ppm,
                LOCK_TIMEOUT.as_secs(),
                st.clock
            )));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Wait for the agent's step after the set-back; the samples that saw it
/// first (30 s or more off, in its drift history).
fn samples_until_stepped(m: &Measured, steps_before: u64) -> Result<u64, RigError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = m.subject.status()?;
        if st.clock.steps_requested + st.clock.steps_periodic > steps_before {
            let far = st
                .drift_history
                .iter()
                .filter(|d| d.offset_ns <= -30 * SEC)
                .count();
            return Ok(far as u64);
        }
        if Instant::now() > deadline {
            return Err(RigError::Missing(format!(
                "{:+} ppm: the 40 s set-back not stepped within 60 s: {:?}",
                m.ppm, st.clock
            )));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
