//! The clock policies side by side, for `vmmci-bench`: three guests at
//! once, each behind its own simulated host whose clock runs 50 ppm fast
//! with ±20 µs of read noise, and one +90 s suspend half way through:
//!
//! - `step-on-request`: a busybox guest, `--clock-mode step-on-request`;
//! - `discipline`: a busybox guest, `--clock-mode discipline`, defaults
//!   otherwise (a sample every 15 s);
//! - chrony: the Debian 12 image, chronyd with vmmci's SOCK refclock as its
//!   only source (a sample every 2 s), the agent at its defaults (it
//!   stands back for chronyd).
//!
//! All three start from a stepped clock (`vmmci sync`; chrony's makestep)
//! and get a minute to settle. Then, every 10 s, the clock probe measures
//! guest − host in each, independently of the agent and of chrony: three
//! points per probe, each an interval `[g_before − h, g_after − h]` (see
//! [`crate::clock`]), all kept in [`PolicyRun::points`].

use std::time::{Duration, Instant};

use vmd_sim::EventKind;

use crate::clock::{self, median, ProbeSample};
use crate::distro::{self, BootOptions, Distro, Image};
use crate::guest::{self, Booted, Guest, HostClockError};
use crate::units::SEC;
use crate::vm::Vm;
use crate::{artifacts, RigError};

const HOST: HostClockError = HostClockError {
    ppm: 50.0,
    jitter_ns: 20_000,
};
/// How often the clock probe measures each guest.
pub(crate) const EVERY: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(60);
const GUEST_PROBE: &str = "/usr/local/bin/rig-clockprobe";

/// One probe point of a run: when, and guest − host as an interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunPoint {
    /// Seconds since the measured run started.
    pub at_s: f64,
    pub point: ProbeSample,
}

impl RunPoint {
    /// Midpoint of guest − host, ns.
    pub fn mid_ns(&self) -> i64 {
        self.point.mid_ns()
    }
    /// Width of the interval, ns.
    pub fn width_ns(&self) -> i64 {
        self.point.width_ns()
    }
}

/// One policy's figures.
pub struct PolicyRun {
    pub name: &'static str,
    /// Every probe point of the run (three every 10 s), in order.
    pub points: Vec<RunPoint>,
    /// Right after the suspend's SYNCRTC was acknowledged: the midpoint of
    /// the narrowest point ([`clock::narrowest`]).
    pub after_resume_ns: Option<i64>,
    /// The points of that probe.
    pub after_resume_points: Vec<ProbeSample>,
    /// Steps the agent made during the run (requested + periodic).
    pub steps: u64,
    pub note: String,
}

pub struct Comparison {
    pub minutes: u64,
    pub runs: Vec<PolicyRun>,
}

/// A guest whose clock is measured: a busybox guest with the agent, or the
/// Debian 12 image (chrony).
pub(crate) enum Subject {
    Busybox(Booted),
    Distro(Distro),
}

impl Subject {
    /// A busybox guest with the agent (`args`), behind a host clock `host`,
    /// booted to DRIVER_OK.
    pub(crate) fn busybox(
        kernel: &str,
        args: Option<&str>,
        host: HostClockError,
        tag: &str,
    ) -> Result<Subject, RigError> {
        let mut g = Guest::agent().host_clock(host.ppm, host.jitter_ns);
        if let Some(a) = args {
            g = g.args(a);
        }
        let b = guest::boot(kernel, &g, tag)?;
        b.driver_ok(Duration::from_secs(60))?;
        Ok(Subject::Busybox(b))
    }

    /// The Debian 12 image behind a host clock `host`, chrony installed and
    /// started as a user has it (its SOCK refclock fed by the agent).
    pub(crate) fn chrony(host: HostClockError, tag: &str) -> Result<Subject, RigError> {
        let img = Image::locate()?;
        let probe_bin = artifacts::static_bin("rig-clockprobe")?;
        let mut o = BootOptions::new(tag);
        o.host_clock = host;
        o.prepare = Some(Box::new(move |disk| {
            distro::install_file(disk, &probe_bin, GUEST_PROBE)
        }));
        let d = distro::boot(&img, o)?;
        d.start_chrony_as_installed()?;
        Ok(Subject::Distro(d))
    }

    pub(crate) fn vm(&self) -> &Vm {
        match self {
            Subject::Busybox(b) => &b.vm,
            Subject::Distro(d) => &d.vm,
        }
    }
    fn probe_prog(&self) -> &'static str {
        match self {
            Subject::Busybox(_) => "rig-clockprobe",
            Subject::Distro(_) => GUEST_PROBE,
        }
    }
    /// The points of one probe.
    pub(crate) fn probe(&self) -> Result<Vec<ProbeSample>, RigError> {
        guest::probe_points(self.vm(), self.probe_prog(), 3)
    }
    pub(crate) fn status(&self) -> Result<vmmci_report::Status, RigError> {
        guest::agent_status(self.vm())
    }
    /// What the run ends with: chrony's reference and frequency, or the
    /// rate the agent learned.
    pub(crate) fn note(&self) -> Result<String, RigError> {
        Ok(match self {
            Subject::Distro(d) => d
                .sh(
                    "chronyc -n tracking | grep -E '^(Reference|Frequency)'",
                    Duration::from_secs(30),
                )?
                .replace('\n', "; "),
            Subject::Busybox(_) => {
                let c = self.status()?.clock;
                let tick = c
                    .tick_us
                    .map(|t| format!(", tick {t} µs"))
                    .unwrap_or_default();
                match c.learned_frequency_ppm {
                    Some(f) => format!("learned rate {f:+.3} ppm{tick}, {} slews", c.slews),
                    None => "no slewing".into(),
                }
            }
        })
    }

    pub(crate) fn steps(&self) -> Result<u64, RigError> {
        let st = self.status()?;
        Ok(st.clock.steps_requested + st.clock.steps_periodic)
    }
}

pub fn compare(kernel: &str, minutes: u64) -> Result<Comparison, RigError> {
    let busybox = |args: &str, tag: &str| -> Result<Subject, RigError> {
        let s = Subject::busybox(kernel, Some(args), HOST, tag)?;
        s.vm().run("vmmci sync", Duration::from_secs(30))?;
        Ok(s)
    };
    eprintln!("clock comparison: booting three guests (host clock +50 ppm, ±20 µs)");
    let step_on_request = busybox("daemon --clock-mode step-on-request", "cmp-step")?;
    let discipline = busybox("daemon --clock-mode discipline", "cmp-discipline")?;
    // As a user has it: chrony installed, the agent and chrony at defaults.
    let chrony = Subject::chrony(HOST, "cmp-chrony")?;
    let subjects = [
        ("step-on-request", step_on_request),
        ("discipline", discipline),
        ("chrony SOCK refclock", chrony),
    ];
    eprintln!("settling for {} s", SETTLE.as_secs());
    std::thread::sleep(SETTLE);
    let steps0: Vec<u64> = subjects
        .iter()
        .map(|(_, s)| s.steps())
        .collect::<Result<_, _>>()?;

    let start = Instant::now();
    let total = Duration::from_secs(minutes * 60);
    let suspend_at = total / 2;
    let mut points = vec![Vec::new(); subjects.len()];
    let mut after_resume = vec![None; subjects.len()];
    let mut after_resume_points = vec![Vec::new(); subjects.len()];
    let mut suspended = false;
    let mut next = start;
    while start.elapsed() < total {
        if !suspended && start.elapsed() >= suspend_at {
            suspended = true;
            let marks: Vec<usize> = subjects
                .iter()
                .map(|(_, s)| s.vm().with_vmd(|v| v.events().len()))
                .collect();
            for (_, s) in &subjects {
                s.vm().jump_host_clock(90 * SEC);
            }
            for (i, (name, s)) in subjects.iter().enumerate() {
                s.vm()
                    .wait_vmd("SYNCRTC acknowledged", Duration::from_secs(30), |v| {
                        v.events()[marks[i]..]
                            .iter()
                            .any(|e| matches!(e.kind, EventKind::RtcSyncAcked { .. }))
                    })?;
                let p = s.probe()?;
                eprintln!("  {name}: after the +90 s resume {}", clock::describe(&p));
                after_resume[i] = clock::narrowest(&p).map(|n| n.mid_ns());
                after_resume_points[i] = p;
            }
        }
        for (i, (name, s)) in subjects.iter().enumerate() {
            let at_s = start.elapsed().as_secs_f64();
            let p = s.probe()?;
            eprintln!(
                "  [{at_s:>4.0} s] {name:<22} guest − host {}",
                clock::describe(&p)
            );
            points[i].extend(p.into_iter().map(|point| RunPoint { at_s, point }));
        }
        next += EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let mut runs = Vec::new();
    for (i, (name, s)) in subjects.iter().enumerate() {
        let note = s.note()?;
        runs.push(PolicyRun {
            name,
            points: points[i].clone(),
            after_resume_ns: after_resume[i],
            after_resume_points: after_resume_points[i].clone(),
            steps: s.steps()? - steps0[i],
            note,
        });
    }
    for (_, s) in &subjects {
        s.vm().kill();
    }
    Ok(Comparison { minutes, runs })
}

impl PolicyRun {
    /// |midpoint| of every point.
    fn abs(&self) -> Vec<i64> {
        self.points.iter().map(|p| p.mid_ns().abs()).collect()
    }
    /// Median |guest − host| over every point's midpoint (not over the
    /// per-probe medians).
    pub fn median_abs_ns(&self) -> i64 {
        median(&self.abs()).unwrap_or(0)
    }
    /// 99th percentile of |midpoint| over every point.
    pub fn p99_abs_ns(&self) -> i64 {
        crate::stats::percentile(&self.abs(), 99.0).unwrap_or(0)
    }
    /// Largest |midpoint| over every point.
    pub fn max_abs_ns(&self) -> i64 {
        self.abs().into_iter().max().unwrap_or(0)
    }
    /// Largest |guest − host| any point allows: its interval's far end.
    pub fn max_bound_ns(&self) -> i64 {
        self.points
            .iter()
            .map(|p| p.point.max_abs_ns())
            .max()
            .unwrap_or(0)
    }
    /// Median width of the points' intervals.
    pub fn median_width_ns(&self) -> i64 {
        let w: Vec<i64> = self.points.iter().map(|p| p.width_ns()).collect();
        median(&w).unwrap_or(0)
    }
    /// Widest point's interval.
    pub fn max_width_ns(&self) -> i64 {
        self.points.iter().map(|p| p.width_ns()).max().unwrap_or(0)
    }
}

impl Comparison {
    pub fn print(&self) {
        println!(
            "\nclock policies: host clock +50 ppm (±20 µs read noise), {} min, +90 s suspend at {:.1} min;",
            self.minutes,
            self.minutes as f64 / 2.0
        );
        println!(
            "guest − host by the clock probe, 3 points every 10 s (|midpoint| over all points; \
             bound: the farthest end of any point's interval; width: the widest interval; ms)"
        );
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>13} {:>6}  note",
            "policy", "median", "p99", "max", "bound", "width", "after resume", "steps"
        );
        for r in &self.runs {
            println!(
                "{:<22} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>13} {:>6}  {}",
                r.name,
                r.median_abs_ns() as f64 / 1e6,
                r.p99_abs_ns() as f64 / 1e6,
                r.max_abs_ns() as f64 / 1e6,
                r.max_bound_ns() as f64 / 1e6,
                r.max_width_ns() as f64 / 1e6,
                r.after_resume_ns
                    .map(|x| format!("{:+.3}", x as f64 / 1e6))
                    .unwrap_or_else(|| "-".into()),
                r.steps,
                r.note
            );
        }
    }
}
