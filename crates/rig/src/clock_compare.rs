//! The clock policies side by side, for `vmmci-bench`: three guests at
//! once, each behind its own simulated host whose clock runs 50 ppm fast
//! with ±20 µs of read noise, and one +90 s suspend half way through:
//!
//! - `step-on-request`: a busybox guest, the agent at its defaults;
//! - `discipline`: a busybox guest, `--clock-mode discipline`, defaults
//!   otherwise (a sample every 15 s);
//! - chrony: the Debian 12 image, chronyd with vmmci's SOCK refclock as its
//!   only source (a sample every 2 s), the agent at `step-on-request`.
//!
//! All three start from a stepped clock (`vmmci sync`; chrony's makestep)
//! and get a minute to settle. Then, every 10 s, the clock probe measures
//! guest − host in each, independently of the agent and of chrony.

use std::time::{Duration, Instant};

use vmd_sim::EventKind;

use crate::clock::median;
use crate::distro::{self, BootOptions, Distro, Image};
use crate::guest::{self, Booted, Guest, HostClockError};
use crate::vm::Vm;
use crate::{artifacts, RigError};

const SEC: i64 = 1_000_000_000;
const HOST: HostClockError = HostClockError {
    ppm: 50.0,
    jitter_ns: 20_000,
};
const EVERY: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(60);
const GUEST_PROBE: &str = "/usr/local/bin/rig-clockprobe";

/// One policy's figures.
pub struct PolicyRun {
    pub name: &'static str,
    /// guest − host, ns, one probe median every 10 s.
    pub residuals_ns: Vec<i64>,
    /// Right after the suspend's SYNCRTC was acknowledged.
    pub after_resume_ns: Option<i64>,
    /// Steps the agent made during the run (requested + periodic).
    pub steps: u64,
    pub note: String,
}

pub struct Comparison {
    pub minutes: u64,
    pub runs: Vec<PolicyRun>,
}

enum Subject {
    Busybox(Booted),
    Distro(Distro),
}

impl Subject {
    fn vm(&self) -> &Vm {
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
    fn probe(&self) -> Result<i64, RigError> {
        let r = guest::probe(self.vm(), self.probe_prog(), 3)?;
        median(&r).ok_or_else(|| RigError::Missing("no probe samples".into()))
    }
    fn steps(&self) -> Result<u64, RigError> {
        let st = guest::agent_status(self.vm())?;
        Ok(st.clock.steps_requested + st.clock.steps_periodic)
    }
}

pub fn compare(kernel: &str, minutes: u64) -> Result<Comparison, RigError> {
    let busybox = |args: &str, tag: &str| -> Result<Subject, RigError> {
        let g = Guest::agent()
            .args(args)
            .host_clock(HOST.ppm, HOST.jitter_ns);
        let b = guest::boot(kernel, &g, tag)?;
        b.driver_ok(Duration::from_secs(60))?;
        b.vm.run("vmmci sync", Duration::from_secs(30))?;
        Ok(Subject::Busybox(b))
    };
    eprintln!("clock comparison: booting three guests (host clock +50 ppm, ±20 µs)");
    let step_on_request = busybox("daemon", "cmp-step")?;
    let discipline = busybox("daemon --clock-mode discipline", "cmp-discipline")?;
    let img = Image::locate()?;
    let probe_bin = artifacts::static_bin("rig-clockprobe")?;
    let mut o = BootOptions::new("cmp-chrony");
    o.host_clock = HOST;
    o.prepare = Some(Box::new(move |disk| {
        distro::install_file(disk, &probe_bin, GUEST_PROBE)
    }));
    let d = distro::boot(&img, o)?;
    // As a user has it: chrony installed, the agent and chrony at defaults.
    d.start_chrony_as_installed()?;
    let subjects = [
        ("step-on-request", step_on_request),
        ("discipline", discipline),
        ("chrony SOCK refclock", Subject::Distro(d)),
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
    let mut residuals = vec![Vec::new(); subjects.len()];
    let mut after_resume = vec![None; subjects.len()];
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
                let r = s.probe()?;
                eprintln!("  {name}: after the +90 s resume {:+.3} ms", r as f64 / 1e6);
                after_resume[i] = Some(r);
            }
        }
        for (i, (name, s)) in subjects.iter().enumerate() {
            let r = s.probe()?;
            eprintln!(
                "  [{:>4.0} s] {name:<22} guest − host {:+9.3} ms",
                start.elapsed().as_secs_f64(),
                r as f64 / 1e6
            );
            residuals[i].push(r);
        }
        next += EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let mut runs = Vec::new();
    for (i, (name, s)) in subjects.iter().enumerate() {
        let note = match s {
            Subject::Distro(d) => d
                .sh(
                    "chronyc -n tracking | grep -E '^(Reference|Frequency)'",
                    Duration::from_secs(30),
                )?
                .replace('\n', "; "),
            Subject::Busybox(_) => {
                let st = guest::agent_status(s.vm())?;
                match st.clock.learned_frequency_ppm {
                    Some(f) => format!("learned rate {f:+.3} ppm, {} slews", st.clock.slews),
                    None => "no slewing".into(),
                }
            }
        };
        runs.push(PolicyRun {
            name,
            residuals_ns: residuals[i].clone(),
            after_resume_ns: after_resume[i],
            steps: s.steps()? - steps0[i],
            note,
        });
    }
    for (_, s) in &subjects {
        s.vm().kill();
    }
    Ok(Comparison { minutes, runs })
}

/// p-th percentile (nearest rank).
fn percentile(v: &[i64], p: f64) -> i64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

impl PolicyRun {
    fn abs(&self) -> Vec<i64> {
        self.residuals_ns.iter().map(|x| x.abs()).collect()
    }
    pub fn median_abs_ns(&self) -> i64 {
        median(&self.abs()).unwrap_or(0)
    }
    pub fn p99_abs_ns(&self) -> i64 {
        percentile(&self.abs(), 99.0)
    }
    pub fn max_abs_ns(&self) -> i64 {
        self.abs().into_iter().max().unwrap_or(0)
    }
}

impl Comparison {
    pub fn print(&self) {
        println!(
            "\nclock policies: host clock +50 ppm (±20 µs read noise), {} min, +90 s suspend at {:.1} min;",
            self.minutes,
            self.minutes as f64 / 2.0
        );
        println!("guest − host by the clock probe every 10 s (|x|, ms)");
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>13} {:>6}  note",
            "policy", "median", "p99", "max", "after resume", "steps"
        );
        for r in &self.runs {
            println!(
                "{:<22} {:>9.3} {:>9.3} {:>9.3} {:>13} {:>6}  {}",
                r.name,
                r.median_abs_ns() as f64 / 1e6,
                r.p99_abs_ns() as f64 / 1e6,
                r.max_abs_ns() as f64 / 1e6,
                r.after_resume_ns
                    .map(|x| format!("{:+.3}", x as f64 / 1e6))
                    .unwrap_or_else(|| "-".into()),
                r.steps,
                r.note
            );
        }
    }

    pub fn json(&self) -> String {
        let runs: Vec<String> = self
            .runs
            .iter()
            .map(|r| {
                format!(
                    "{{\"policy\": \"{}\", \"median_abs_ns\": {}, \"p99_abs_ns\": {}, \"max_abs_ns\": {}, \"after_resume_ns\": {}, \"steps\": {}, \"residuals_ns\": {:?}}}",
                    r.name,
                    r.median_abs_ns(),
                    r.p99_abs_ns(),
                    r.max_abs_ns(),
                    r.after_resume_ns.map_or("null".into(), |x| x.to_string()),
                    r.steps,
                    r.residuals_ns
                )
            })
            .collect();
        format!(
            "\"clock\": {{\"host_ppm\": 50, \"jitter_ns\": 20000, \"minutes\": {}, \"runs\": [\n    {}\n  ]}}",
            self.minutes,
            runs.join(",\n    ")
        )
    }
}
