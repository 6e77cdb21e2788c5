//! `vmmci-bench`: figures for the agent on a real kernel in QEMU (TCG), with
//! the agent at its default settings. Not a test: it prints a table (and
//! JSON with `--json FILE`) and fails only when the rig itself fails.
//!
//! - ACK latency: `vmctl stop` to vmd's "ack received", over N boots.
//! - stop time: `vmctl stop` to the VM's end (guest reset while stopping).
//! - residual after resume: host clock +90 s, vmd's SYNCRTC, the agent's
//!   step; then guest − host measured by the clock probe, not the agent.
//! - idle CPU and RSS of the agent in the guest, device accesses per second.
//! - static binary size.
//! - clock policies side by side (`--clock-minutes`, 10 by default): three
//!   guests at once, each with a host clock 50 ppm fast (±20 µs read noise)
//!   and one +90 s suspend half way: `step-on-request` and `discipline`
//!   (busybox guests, agent defaults otherwise) and chronyd fed by the SOCK
//!   refclock (the Debian 12 image); guest − host measured every 10 s by
//!   the clock probe, not by the agent.
//! - boot window (`--window-boots`, 1 by default): in the Debian 12 images
//!   (systemd, and sysvinit + OpenRC), kernel start → DRIVER_OK (until then
//!   `vmctl stop` ends the VM at once) beside the moment the old kernel
//!   module would have claimed the device (a stand-in module listed in
//!   /etc/modules; see `vmmci_rig::window`).
//! - ACK under load (`--load-stops`, 10 by default): busybox guests with one
//!   busy loop per vCPU and a disk writer running, `vmctl stop`, REBOOT
//!   posted → ACK; every stop must be clean.
//!
//! - full-distro stops (`--distro-stops`, `--openrc-stops`,
//!   `--distro-load-stops`): `vmctl stop` in the Debian 12 images (systemd
//!   with the .deb, sysvinit + OpenRC), timed to the VM's end, the file
//!   system checked clean afterwards; and loaded stops through the unit.
//!
//! TCG runs the guest several times slower than hardware and every register
//! access is a socket round trip: compare figures within one run.
//!
//! Results: JSON with the git revision, the date, the kernels, QEMU's
//! version, the counts and every raw point (see `vmmci_rig::figures`). A
//! full run saves it as `bench/results/<UTC date>-<short rev>.json`, where
//! `vmmci-figures` makes the README's tables from the newest file; a run
//! with `--only` or `--short` saves there only with `--save`; `--json FILE`
//! writes FILE instead.
//!
//! `--short`: a few minutes of QEMU (5 stops, 3 resumes, 3 loaded stops, no
//! idle period), for `scripts/test`. `--check`: exit 1 when a figure misses
//! its target (`vmmci_rig::figures::checks`: the ACK within poll interval +
//! 100 ms idle and 3 s under load, |residual| after a resume ≤ 1 ms, ...);
//! any stop that does not end clean fails the run anyway.

use std::process::Command as Proc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use vmd_sim::{EventKind, VmmciCmd};
use vmmci_rig::clock::median;
use vmmci_rig::distro::{self, BootOptions, Image, Init};
use vmmci_rig::figures::{self, figure, signed_figure};
use vmmci_rig::guest::{self, Booted, Guest};
use vmmci_rig::image::{self, Kernel};
use vmmci_rig::vm::Outcome;
use vmmci_rig::window::BootWindow;
use vmmci_rig::{artifacts, clock_compare, load, window, RigError};

const SEC: i64 = 1_000_000_000;
const PARTS: [&str; 5] = ["basic", "clock", "window", "load", "distro"];

struct Args {
    json: Option<String>,
    save: bool,
    short: bool,
    check: bool,
    stops: usize,
    resumes: usize,
    idle_secs: u64,
    kernel: String,
    clock_minutes: u64,
    /// Boots of each distro image for the boot window.
    window_boots: usize,
    /// Loaded `vmctl stop`s (one busybox boot each).
    load_stops: usize,
    /// `vmctl stop`s in the Debian 12 systemd image, the OpenRC image, and
    /// loaded ones through the systemd unit (one boot each).
    distro_stops: usize,
    openrc_stops: usize,
    distro_load_stops: usize,
    /// Parts to run (`basic`, `clock`, `window`, `load`, `distro`); all when unset.
    only: Option<Vec<String>>,
}

const USAGE: &str = "usage: vmmci-bench [--json FILE] [--save] [--short] [--check] [--stops 20] [--resumes 10] \
[--idle-secs 60] [--kernel bookworm-cloud] [--clock-minutes 10] [--window-boots 2] [--load-stops 10] \
[--distro-stops 10] [--openrc-stops 3] [--distro-load-stops 3] [--only PART[,PART...]]
parts: basic (stops, resumes, idle), clock, window, load, distro
--short: --stops 5 --resumes 3 --idle-secs 0 --load-stops 3 --only basic,load (later flags override)
--check: exit 1 when a figure misses its target (vmmci_rig::figures::checks)
results: a full run writes bench/results/<UTC date>-<short rev>.json; a run with --only or
--short only with --save; --json FILE writes FILE too. Then: cargo run -p vmmci-rig --bin vmmci-figures";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        json: None,
        save: false,
        short: false,
        check: false,
        stops: 20,
        resumes: 10,
        idle_secs: 60,
        kernel: "bookworm-cloud".into(),
        clock_minutes: 10,
        window_boots: 2,
        load_stops: 10,
        distro_stops: 10,
        openrc_stops: 3,
        distro_load_stops: 3,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        macro_rules! num {
            ($field:ident) => {
                a.$field = value()?.parse().map_err(|e| format!("{flag}: {e}"))?
            };
        }
        match flag.as_str() {
            "--json" => a.json = Some(value()?),
            "--save" => a.save = true,
            "--check" => a.check = true,
            "--short" => {
                a.short = true;
                a.stops = 5;
                a.resumes = 3;
                a.idle_secs = 0;
                a.load_stops = 3;
                a.only = Some(vec!["basic".into(), "load".into()]);
            }
            "--stops" => num!(stops),
            "--resumes" => num!(resumes),
            "--idle-secs" => num!(idle_secs),
            "--kernel" => a.kernel = value()?,
            "--clock-minutes" => num!(clock_minutes),
            "--window-boots" => num!(window_boots),
            "--load-stops" => num!(load_stops),
            "--distro-stops" => num!(distro_stops),
            "--openrc-stops" => num!(openrc_stops),
            "--distro-load-stops" => num!(distro_load_stops),
            "--only" => {
                let v: Vec<String> = value()?.split(',').map(str::to_string).collect();
                if let Some(bad) = v.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    return Err(format!("--only: {bad} is not one of {}", PARTS.join(", ")));
                }
                a.only = Some(v);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(a)
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
        if ended.outcome != Outcome::CleanStop {
            return Err(RigError::Missing(format!(
                "stop {i} ended as {:?}: {}\n{}",
                ended.outcome,
                ended.why,
                b.dump()
            )));
        }
        let ack = b.vm.with_vmd(|v| {
            v.events()
                .iter()
                .find(|e| {
                    e.at >= asked_vmd
                        && matches!(
                            e.kind,
                            EventKind::Ack {
                                cmd: VmmciCmd::Reboot,
                                ..
                            }
                        )
                })
                .map(|e| e.at - asked_vmd)
        });
        let ack =
            ack.ok_or_else(|| RigError::Missing(format!("no ACK seen in stop {i}\n{}", b.dump())))?;
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

/// guest − host (ns) right after a resume: THE place that turns the clock
/// probe's samples into the one residual the bench records and `--check`
/// holds to ±1 ms. Today: the median of 5 probe residuals (guest's clock
/// minus the host time its write arrived, biased slightly negative by the
/// write's latency). When the probe gives bracketed points
/// [g_before − h, g_after − h], return the median of their midpoints here.
fn resume_residual_ns(b: &Booted) -> Result<i64, RigError> {
    let r = b.probe(5)?;
    median(&r).ok_or_else(|| RigError::Missing("no probe samples".into()))
}

/// Host clock +90 s, wait for the SYNCRTC to be acknowledged, probe.
fn resumes(b: &Booted, n: usize) -> Result<Vec<i64>, RigError> {
    let mut residuals = vec![];
    for i in 0..n {
        let from = b.vm.with_vmd(|v| v.events().len());
        b.vm.jump_host_clock(90 * SEC);
        b.vm.wait_vmd("SYNCRTC acknowledged", Duration::from_secs(30), |v| {
            v.events()[from..]
                .iter()
                .any(|e| matches!(e.kind, EventKind::RtcSyncAcked { .. }))
        })?;
        let m = resume_residual_ns(b)?;
        eprintln!(
            "resume {:>2}: residual guest − host {:+.3} ms",
            i + 1,
            m as f64 / 1e6
        );
        residuals.push(m);
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

impl Idle {
    fn percent(&self, ticks: i64) -> f64 {
        ticks as f64 / 100.0 / self.wall_s * 100.0
    }
}

/// The agent's CPU time over `secs` of idling, its RSS, and its poll rate,
/// all read inside the guest.
fn idle(b: &Booted, secs: u64) -> Result<Idle, RigError> {
    let read = |what: &str| -> Result<(i64, i64, i64, i64), RigError> {
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
            [user, sys, rss] => Ok((user, sys, rss, accesses)),
            _ => Err(RigError::Missing(format!(
                "{what}: cannot read the agent's stats: {out}"
            ))),
        }
    };
    let (u0, s0, _, p0) = read("before")?;
    let start = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (u1, s1, rss, p1) = read("after")?;
    Ok(Idle {
        user_ticks: u1 - u0,
        sys_ticks: s1 - s0,
        wall_s: start.elapsed().as_secs_f64(),
        rss_kib: rss,
        accesses: p1 - p0,
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmmci-bench: {e}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("vmmci-bench: {e}");
            std::process::exit(1);
        }
    }
}

/// stdout of a command, trimmed; `None` when it cannot run or fails.
fn output(prog: &str, args: &[&str]) -> Option<String> {
    let o = Proc::new(prog).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Where and on what the bench ran.
fn meta(args: &Args, parts: &[&str], r: &mut Map<String, Value>) -> Result<(), RigError> {
    let repo = artifacts::repo_root();
    let repo_s = repo.display().to_string();
    let git = |a: &[&str]| output("git", &[&["-C", repo_s.as_str()], a].concat());
    let rev = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let short = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_none_or(|s| !s.is_empty());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let qemu = artifacts::qemu()?;
    let qemu_version = output(&qemu.display().to_string(), &["--version"])
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let qemu_version = qemu_version
        .strip_prefix("QEMU emulator version ")
        .map_or(qemu_version.clone(), |v| format!("QEMU {v}"));
    let mut kernels = vec![];
    let busybox_parts: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| ["basic", "load", "clock"].contains(p))
        .collect();
    if !busybox_parts.is_empty() {
        let k = Kernel::from_cache(&artifacts::cache_dir(), &args.kernel)?;
        kernels.push(json!({
            "name": k.name,
            "version": k.version,
            "guest": "busybox initramfs",
            "used_by": busybox_parts,
        }));
    }
    for (init, used_by) in [
        (Init::Systemd, vec!["clock", "window", "distro"]),
        (Init::OpenRc, vec!["window", "distro"]),
    ] {
        let used_by: Vec<&str> = used_by.into_iter().filter(|p| parts.contains(p)).collect();
        if used_by.is_empty() {
            continue;
        }
        let img = Image::locate_init(init)?;
        let line = |k: &str| {
            img.manifest
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        kernels.push(json!({
            "name": format!("Debian 12 image, {}", line("init:")),
            "version": line("kernel:"),
            "guest": line("suite:"),
            "package": line("package:"),
            "used_by": used_by,
        }));
    }
    r.insert("schema".into(), json!(figures::SCHEMA));
    r.insert(
        "git".into(),
        json!({"rev": rev, "short": short, "dirty": dirty}),
    );
    r.insert("date".into(), json!(figures::utc(now)));
    r.insert(
        "host".into(),
        json!({
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": output("uname", &["-r"]).unwrap_or_default(),
        }),
    );
    r.insert("qemu".into(), json!(qemu_version));
    r.insert("kernels".into(), json!(kernels));
    r.insert(
        "counts".into(),
        json!({
            "parts": parts,
            "short": args.short,
            "stops": args.stops,
            "resumes": args.resumes,
            "idle_secs": args.idle_secs,
            "clock_minutes": args.clock_minutes,
            "window_boots": args.window_boots,
            "load_stops": args.load_stops,
            "distro_stops": args.distro_stops,
            "openrc_stops": args.openrc_stops,
            "distro_load_stops": args.distro_load_stops,
        }),
    );
    Ok(())
}

/// Runs the parts; `Ok(false)` when `--check` found a miss.
fn run(args: &Args) -> Result<bool, RigError> {
    let want = |part: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    };
    let parts: Vec<&str> = PARTS
        .iter()
        .copied()
        .filter(|p| want(p))
        .filter(|&p| match p {
            "clock" => args.clock_minutes > 0,
            "window" => args.window_boots > 0,
            "load" => args.load_stops > 0,
            "distro" => args.distro_stops + args.openrc_stops + args.distro_load_stops > 0,
            _ => true,
        })
        .collect();
    let mut r = Map::new();
    meta(args, &parts, &mut r)?;
    let started = std::time::Instant::now();
    if parts.contains(&"basic") {
        r.insert("poll_interval_ms".into(), json!(POLL_MS));
        r.insert("basic".into(), basic(args)?);
    }
    if parts.contains(&"clock") {
        let c = clock_compare::compare(&args.kernel, args.clock_minutes)?;
        c.print();
        r.insert("clock".into(), clock_json(&c));
    }
    if parts.contains(&"window") {
        r.insert("window".into(), boot_windows(args.window_boots)?);
    }
    if parts.contains(&"load") {
        r.insert(
            "load".into(),
            ack_under_load(&args.kernel, args.load_stops)?,
        );
    }
    if parts.contains(&"distro") {
        r.insert("distro".into(), distro_stops(args)?);
    }
    r.insert(
        "bench_seconds".into(),
        json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
    );
    let r = Value::Object(r);
    let text = serde_json::to_string_pretty(&r).expect("JSON of plain values") + "\n";
    let mut targets = vec![];
    if let Some(path) = &args.json {
        targets.push(std::path::PathBuf::from(path));
    }
    if args.save || (args.only.is_none() && !args.short && args.json.is_none()) {
        let dir = figures::results_dir(&artifacts::repo_root());
        std::fs::create_dir_all(&dir).map_err(|e| RigError::Io(dir.display().to_string(), e))?;
        let name = figures::result_file_name(
            r["date"].as_str().unwrap_or("unknown"),
            r["git"]["short"].as_str().unwrap_or("unknown"),
        );
        targets.push(dir.join(name));
    }
    for path in &targets {
        std::fs::write(path, &text).map_err(|e| RigError::Io(path.display().to_string(), e))?;
        eprintln!("wrote {}", path.display());
    }
    if !targets
        .iter()
        .any(|p| p.starts_with(figures::results_dir(&artifacts::repo_root())))
    {
        eprintln!("(not saved in bench/results: pass --save, or --json FILE)");
    }
    let checks = figures::checks(&r).map_err(RigError::Missing)?;
    println!("\n{:<58} {:>22} {:>16}  met", "target", "measured", "limit");
    for c in &checks {
        println!(
            "{:<58} {:>22} {:>16}  {}",
            c.what,
            c.measured,
            c.target,
            if c.ok { "yes" } else { "NO" }
        );
    }
    let misses = checks.iter().filter(|c| !c.ok).count();
    eprintln!(
        "vmmci-bench: {} s of QEMU, {} target(s), {misses} missed",
        r["bench_seconds"],
        checks.len()
    );
    if args.check && misses > 0 {
        eprintln!("vmmci-bench --check: {misses} target(s) missed");
        return Ok(false);
    }
    Ok(true)
}

/// The agent's default poll interval, which the ACK target is relative to.
const POLL_MS: u64 = 250;

/// Stops, resumes, idle cost and size.
fn basic(args: &Args) -> Result<Value, RigError> {
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
        let r: Vec<f64> = r.iter().map(|&x| x as f64).collect();
        out.insert("resume_residual_ns".into(), signed_figure("ns", &r));
        if args.idle_secs > 0 {
            let i = idle(&b, args.idle_secs)?;
            let round = |x: f64| (x * 1e4).round() / 1e4;
            out.insert(
                "idle".into(),
                json!({
                    "wall_s": round(i.wall_s),
                    "user_ticks": i.user_ticks,
                    "system_ticks": i.sys_ticks,
                    "accesses": i.accesses,
                    "user_hz": 100,
                }),
            );
            out.insert(
                "idle_cpu_user_percent".into(),
                figure("% of a core", &[round(i.percent(i.user_ticks))]),
            );
            out.insert(
                "idle_cpu_system_percent".into(),
                figure("% of a core", &[round(i.percent(i.sys_ticks))]),
            );
            out.insert("rss_kib".into(), figure("KiB", &[i.rss_kib as f64]));
            out.insert(
                "accesses_per_sec".into(),
                figure("1/s", &[round(i.accesses as f64 / i.wall_s)]),
            );
        }
        b.vm.kill();
    }
    out.insert("binary_bytes".into(), figure("bytes", &[size as f64]));
    Ok(Value::Object(out))
}

/// The clock comparison's points (the one place that reads
/// `clock_compare`'s results for the JSON).
fn clock_json(c: &clock_compare::Comparison) -> Value {
    let runs: Vec<Value> = c
        .runs
        .iter()
        .map(|r| {
            let pts: Vec<f64> = r.residuals_ns.iter().map(|&x| x as f64).collect();
            json!({
                "policy": r.name,
                "residual_ns": signed_figure("ns", &pts),
                "after_resume_ns": r.after_resume_ns,
                "steps": r.steps,
                "note": r.note,
            })
        })
        .collect();
    json!({
        "minutes": c.minutes,
        "host_ppm": 50,
        "jitter_ns": 20000,
        "every_s": 10,
        "suspend_s": 90,
        "runs": runs,
    })
}

/// Kernel start → DRIVER_OK in both Debian 12 images, beside the old
/// module's point; `n` boots of each.
fn boot_windows(n: usize) -> Result<Value, RigError> {
    let mut out = Map::new();
    let mut all: Vec<BootWindow> = vec![];
    for (key, init) in [("systemd", Init::Systemd), ("openrc", Init::OpenRc)] {
        let img = Image::locate_init(init)?;
        let mut ws = vec![];
        for i in 0..n {
            let mut o = BootOptions::new(&format!(
                "bench-window-{}-{i}",
                img.prompt().trim_end_matches("# ")
            ));
            o.prepare = Some(Box::new(window::prepare_module_stand_in));
            let d = distro::boot(&img, o)?;
            let w = window::measure(&d, init)?;
            eprintln!("boot window: {w}");
            d.vm.kill();
            d.discard();
            ws.push(w);
        }
        let pts = |f: &dyn Fn(&BootWindow) -> Option<f64>| -> Vec<f64> {
            ws.iter().filter_map(f).collect()
        };
        let boots: Vec<Value> = ws
            .iter()
            .map(|w| serde_json::from_str(&w.json()).expect("BootWindow::json is JSON"))
            .collect();
        out.insert(
            key.into(),
            json!({
                "driver_ok_s": figure("s", &pts(&|w| Some(w.driver_ok))),
                "agent_started_s": figure("s", &pts(&|w| w.agent_started)),
                "old_module_s": figure("s", &pts(&|w| w.module_loaded)),
                "boots": boots,
            }),
        );
        all.extend(ws);
    }
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
    println!(
        "\n{:<8} {:>14} {:>14} {:>16} {:>14}  note",
        "init", "DRIVER_OK (s)", "agent start", "old module (s)", "difference"
    );
    for w in &all {
        println!(
            "{:<8} {:>14.2} {:>14} {:>16} {:>14}  kernel start = 0 (QEMU -> kernel {:.2} s){}",
            w.init,
            w.driver_ok,
            opt(w.agent_started),
            opt(w.module_loaded),
            opt(w.vs_module()),
            w.qemu_to_kernel,
            w.modules_service_done.map_or(String::new(), |m| format!(
                "; systemd-modules-load done {m:.2} s"
            ))
        );
    }
    Ok(Value::Object(out))
}

/// `n` busybox boots, each with one busy loop per vCPU and a disk writer
/// running when `vmctl stop` comes: REBOOT posted → ACK.
fn ack_under_load(kernel: &str, n: usize) -> Result<Value, RigError> {
    let (mut acks, mut ends, mut busy) = (vec![], vec![], vec![]);
    for i in 0..n {
        let b = guest::boot(
            kernel,
            &Guest::agent().with_disk().args("daemon"),
            "bench-load",
        )?;
        b.driver_ok(Duration::from_secs(60))?;
        let l = load::start(&b.vm, "/data")?;
        let stop = load::stop_and_time(&b.vm, Duration::from_secs(150))?;
        if stop.ended.outcome != Outcome::CleanStop {
            return Err(RigError::Missing(format!(
                "loaded stop {i} ended as {:?}: {}\n{}",
                stop.ended.outcome,
                stop.ended.why,
                b.dump()
            )));
        }
        let ack = stop.ack.ok_or_else(|| {
            RigError::Missing(format!("no ACK seen in loaded stop {i}\n{}", b.dump()))
        })?;
        eprintln!(
            "loaded stop {:>2}: CPU {:.0}% busy, ack {:>8.3} ms, VM ended {:>9.3} ms after vmctl stop",
            i + 1,
            l.busy * 100.0,
            figures::ms(ack),
            figures::ms(stop.end)
        );
        acks.push(figures::ms(ack));
        ends.push(figures::ms(stop.end));
        busy.push((l.busy * 1000.0).round() / 10.0);
    }
    Ok(json!({
        "ack_ms": figure("ms", &acks),
        "stop_to_end_ms": figure("ms", &ends),
        "busy_percent": figure("%", &busy),
    }))
}

/// `vmctl stop`s in the Debian 12 images: systemd (`distro_stops`), OpenRC
/// (`openrc_stops`), and loaded ones through the systemd unit
/// (`distro_load_stops`). Each on a fresh boot; each must end clean, with a
/// clean file system.
fn distro_stops(args: &Args) -> Result<Value, RigError> {
    let mut out = Map::new();
    let runs = [
        ("systemd", Init::Systemd, args.distro_stops, false),
        ("openrc", Init::OpenRc, args.openrc_stops, false),
        ("systemd_load", Init::Systemd, args.distro_load_stops, true),
    ];
    for (key, init, n, loaded) in runs {
        if n == 0 {
            continue;
        }
        let img = Image::locate_init(init)?;
        let (mut acks, mut ends) = (vec![], vec![]);
        for i in 0..n {
            let d = distro::boot(&img, BootOptions::new(&format!("bench-{key}-{i}")))?;
            d.vm.wait_vmd("DRIVER_OK", Duration::from_secs(60), |v| {
                v.device_status() & vmmci_protocol::status::DRIVER_OK != 0
            })?;
            if loaded {
                load::start(&d.vm, "/root")?;
            }
            let stop = load::stop_and_time(&d.vm, Duration::from_secs(150))?;
            if stop.ended.outcome != Outcome::CleanStop {
                return Err(RigError::Missing(format!(
                    "{key} stop {i} ended as {:?}: {}\n{}",
                    stop.ended.outcome,
                    stop.ended.why,
                    d.dump()
                )));
            }
            let ack = stop.ack.ok_or_else(|| {
                RigError::Missing(format!("no ACK seen in {key} stop {i}\n{}", d.dump()))
            })?;
            let fsck = image::fsck(&d.disk)?;
            if !fsck.clean {
                return Err(RigError::Missing(format!(
                    "{key} stop {i}: e2fsck -fn not clean (exit {}):\n{}\n{}",
                    fsck.exit_code,
                    fsck.output,
                    d.dump()
                )));
            }
            eprintln!(
                "{key} stop {:>2}: ack {:>8.3} ms, VM ended {:>7.2} s after vmctl stop, file system clean",
                i + 1,
                figures::ms(ack),
                stop.end.as_secs_f64()
            );
            acks.push(figures::ms(ack));
            ends.push((stop.end.as_secs_f64() * 1e3).round() / 1e3);
            d.discard();
        }
        out.insert(format!("{key}_ack_ms"), figure("ms", &acks));
        out.insert(format!("{key}_stop_s"), figure("s", &ends));
    }
    Ok(Value::Object(out))
}
