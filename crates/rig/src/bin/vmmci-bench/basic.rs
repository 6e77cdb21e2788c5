//! Part `basic`, on busybox guests: the ACK and the end of `vmctl stop`s,
//! the residual after host resumes, the agent's idle cost, and its size.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use vmd_sim::{EventKind, VmmciCmd};
use vmmci_rig::clock::{self, ProbeSample};
use vmmci_rig::figures::{self, figure, signed_figure};
use vmmci_rig::guest::{self, Booted, Guest};
use vmmci_rig::units::{millis, SEC};
use vmmci_rig::{artifacts, RigError};

use crate::clean_stop;
use crate::cli::Args;

/// The agent's default poll interval, which the ACK target is relative to.
pub const POLL_MS: u64 = 250;

/// Stops, resumes, idle cost and size.
pub fn measure(args: &Args) -> Result<Value, RigError> {
    let bin = artifacts::static_bin("vmmci")?;
    let size = std::fs::metadata(&bin)
        .map_err(|e| RigError::Io(bin.display().to_string(), e))?
        .len();
    eprintln!(
        "vmmci-bench on {} (agent defaults: poll {POLL_MS} ms), {}",
        args.kernel,
        bin.display()
    );

    let s = stops(&args.kernel, args.stops)?;
    let mut out = Map::new();
    out.insert("ack_ms".into(), figure("ms", &s.ack_ms));
    out.insert("stop_to_end_ms".into(), figure("ms", &s.end_ms));
    if args.resumes > 0 || args.idle_secs > 0 {
        let b = guest::boot(&args.kernel, &Guest::agent().args("daemon"), "bench-clock")?;
        b.driver_ok(Duration::from_secs(60))?;
        let r = resumes(&b, args.resumes)?;
        let mids: Vec<f64> = r.iter().map(|p| p.chosen.mid_ns() as f64).collect();
        let widths: Vec<f64> = r.iter().map(|p| p.chosen.width_ns() as f64).collect();
        out.insert("resume_residual_ns".into(), signed_figure("ns", &mids));
        out.insert("resume_width_ns".into(), figure("ns", &widths));
        let all: Vec<Vec<[i64; 2]>> = r
            .iter()
            .map(|p| p.all.iter().map(|s| [s.mid_ns(), s.width_ns()]).collect())
            .collect();
        out.insert("resume_probe_points".into(), json!(all));
        if args.idle_secs > 0 {
            idle(&b, args.idle_secs)?.insert_figures(&mut out);
        }
        b.vm.kill();
    }
    out.insert("binary_bytes".into(), figure("bytes", &[size as f64]));
    Ok(Value::Object(out))
}

struct StopRun {
    ack_ms: Vec<f64>,
    end_ms: Vec<f64>,
}

/// Boot, wait for DRIVER_OK, `vmctl stop`, and time the ACK and the end.
fn stops(kernel: &str, n: usize) -> Result<StopRun, RigError> {
    let mut run = StopRun {
        ack_ms: vec![],
        end_ms: vec![],
    };
    for i in 0..n {
        let b = guest::boot(kernel, &Guest::agent().args("daemon"), "bench-stop")?;
        b.driver_ok(Duration::from_secs(60))?;
        // Spread the requests over the poll phase: the agent polls right
        // after DRIVER_OK, so stopping at once would always hit one phase.
        std::thread::sleep(Duration::from_millis(1000 + (i as u64 * 53) % 250));
        let asked_vmd = b.vm.with_vmd(|v| v.elapsed());
        let asked = b.vm.elapsed();
        b.vm.vmctl_stop()
            .map_err(|e| RigError::Missing(format!("stop refused: {e}")))?;
        let ended = b.vm.wait_end(Duration::from_secs(150))?;
        let ack = reboot_ack(&b, asked_vmd);
        let ack = clean_stop::acked(&format!("stop {i}"), &ended, ack, || b.dump())?;
        run.ack_ms.push(figures::ms(ack));
        run.end_ms.push(figures::ms(ended.at.saturating_sub(asked)));
        eprintln!(
            "stop {:>2}: ack {:>8.3} ms, VM ended {:>9.3} ms after vmctl stop",
            i + 1,
            run.ack_ms[i],
            run.end_ms[i]
        );
    }
    Ok(run)
}

/// vmd's first ACK of REBOOT at or after `asked` (its own clock), as the
/// time since then.
fn reboot_ack(b: &Booted, asked: Duration) -> Option<Duration> {
    b.vm.with_vmd(|v| {
        v.events()
            .iter()
            .find(|e| {
                e.at >= asked
                    && matches!(
                        e.kind,
                        EventKind::Ack {
                            cmd: VmmciCmd::Reboot,
                            ..
                        }
                    )
            })
            .map(|e| e.at - asked)
    })
}

/// One resume's probe: every bracketed point [g_before − h, g_after − h],
/// and the one the bench records.
struct ResumeProbe {
    all: Vec<ProbeSample>,
    chosen: ProbeSample,
}

/// guest − host right after a resume: THE place that turns the clock
/// probe's points into the one the bench records and `--check` holds to
/// ±1 ms: of 5 points, the narrowest ([`clock::narrowest`]); its midpoint
/// and width are published, and every point in `resume_probe_points`.
fn resume_probe(b: &Booted) -> Result<ResumeProbe, RigError> {
    let all = b.probe_points(5)?;
    let chosen =
        clock::narrowest(&all).ok_or_else(|| RigError::Missing("no probe points".into()))?;
    Ok(ResumeProbe { all, chosen })
}

/// Host clock +90 s, wait for the SYNCRTC to be acknowledged, probe.
fn resumes(b: &Booted, n: usize) -> Result<Vec<ResumeProbe>, RigError> {
    let mut residuals = vec![];
    for i in 0..n {
        let from = b.vm.with_vmd(|v| v.events().len());
        b.vm.jump_host_clock(90 * SEC);
        b.vm.wait_vmd("SYNCRTC acknowledged", Duration::from_secs(30), |v| {
            v.events()[from..]
                .iter()
                .any(|e| matches!(e.kind, EventKind::RtcSyncAcked { .. }))
        })?;
        let p = resume_probe(b)?;
        eprintln!(
            "resume {:>2}: guest − host {:+.3} ms (width {:.3} ms); every point {}",
            i + 1,
            millis(p.chosen.mid_ns()),
            millis(p.chosen.width_ns()),
            clock::describe(&p.all)
        );
        residuals.push(p);
    }
    Ok(residuals)
}

/// The agent's CPU time (clock ticks, USER_HZ = 100 on every Linux ABI)
/// over an idle period, its RSS and the device accesses, read in the guest
/// and at the simulator.
struct Idle {
    /// User CPU: the agent's own code.
    user_ticks: i64,
    /// System CPU: the kernel's sysfs path and the port I/O itself, which
    /// under TCG includes the emulated device round trip.
    sys_ticks: i64,
    wall_s: f64,
    rss_kib: i64,
    /// Register accesses (polls and drift samples): each one is a VM exit
    /// to vmd on a real host.
    accesses: i64,
}

/// The agent's counters at one moment: user and system ticks, RSS (KiB),
/// and the device accesses so far.
struct AgentStat {
    user: i64,
    sys: i64,
    rss: i64,
    accesses: i64,
}

impl Idle {
    fn percent(&self, ticks: i64) -> f64 {
        ticks as f64 / 100.0 / self.wall_s * 100.0
    }

    /// The raw counts and the figures made of them, into `out`.
    fn insert_figures(&self, out: &mut Map<String, Value>) {
        let round = |x: f64| (x * 1e4).round() / 1e4;
        out.insert(
            "idle".into(),
            json!({
                "wall_s": round(self.wall_s),
                "user_ticks": self.user_ticks,
                "system_ticks": self.sys_ticks,
                "accesses": self.accesses,
                "user_hz": 100,
            }),
        );
        out.insert(
            "idle_cpu_user_percent".into(),
            figure("% of a core", &[round(self.percent(self.user_ticks))]),
        );
        out.insert(
            "idle_cpu_system_percent".into(),
            figure("% of a core", &[round(self.percent(self.sys_ticks))]),
        );
        out.insert("rss_kib".into(), figure("KiB", &[self.rss_kib as f64]));
        out.insert(
            "accesses_per_sec".into(),
            figure("1/s", &[round(self.accesses as f64 / self.wall_s)]),
        );
    }
}

/// The agent's CPU time over `secs` of idling, its RSS, and its poll rate,
/// all read inside the guest.
fn idle(b: &Booted, secs: u64) -> Result<Idle, RigError> {
    let before = agent_stat(b, "before")?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after = agent_stat(b, "after")?;
    Ok(Idle {
        user_ticks: after.user - before.user,
        sys_ticks: after.sys - before.sys,
        wall_s: start.elapsed().as_secs_f64(),
        rss_kib: after.rss,
        accesses: after.accesses - before.accesses,
    })
}

/// The agent's counters from /proc in the guest, and the simulator's
/// access count; `what` names the moment in an error.
fn agent_stat(b: &Booted, what: &str) -> Result<AgentStat, RigError> {
    let out = b.vm.run(
        "p=$(pidof vmmci); set -- $(cut -d' ' -f14,15 /proc/$p/stat); \
         echo RIGSTAT $1 $2 $(sed -n 's/^VmRSS:[^0-9]*\\([0-9]*\\).*/\\1/p' /proc/$p/status)",
        Duration::from_secs(30),
    )?;
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("RIGSTAT "))
        .unwrap_or("");
    let v: Vec<i64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let accesses = b.vm.with_vmd(|v| v.accesses()) as i64;
    match v[..] {
        [user, sys, rss] => Ok(AgentStat {
            user,
            sys,
            rss,
            accesses,
        }),
        _ => Err(RigError::Missing(format!(
            "{what}: cannot read the agent's stats: {out}"
        ))),
    }
}
