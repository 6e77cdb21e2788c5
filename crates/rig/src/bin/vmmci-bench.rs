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
//! TCG runs the guest several times slower than hardware and every register
//! access is a socket round trip: compare figures within one run.

use std::time::Duration;

use vmd_sim::{EventKind, VmmciCmd};
use vmmci_rig::clock::median;
use vmmci_rig::distro::{self, BootOptions, Image, Init};
use vmmci_rig::guest::{self, Booted, Guest};
use vmmci_rig::vm::Outcome;
use vmmci_rig::window::BootWindow;
use vmmci_rig::{artifacts, clock_compare, load, window, RigError};

const SEC: i64 = 1_000_000_000;

struct Args {
    json: Option<String>,
    stops: usize,
    resumes: usize,
    idle_secs: u64,
    kernel: String,
    clock_minutes: u64,
    /// Boots of each distro image for the boot window.
    window_boots: usize,
    /// Loaded `vmctl stop`s (one busybox boot each).
    load_stops: usize,
    /// `basic` (stops, resumes, idle), `clock`, `window` or `load`; all when unset.
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        json: None,
        stops: 20,
        resumes: 10,
        idle_secs: 60,
        kernel: "bookworm-cloud".into(),
        clock_minutes: 10,
        window_boots: 1,
        load_stops: 10,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--json" => a.json = Some(value()?),
            "--stops" => a.stops = value()?.parse().map_err(|e| format!("--stops: {e}"))?,
            "--resumes" => a.resumes = value()?.parse().map_err(|e| format!("--resumes: {e}"))?,
            "--idle-secs" => {
                a.idle_secs = value()?.parse().map_err(|e| format!("--idle-secs: {e}"))?
            }
            "--kernel" => a.kernel = value()?,
            "--clock-minutes" => {
                a.clock_minutes = value()?
                    .parse()
                    .map_err(|e| format!("--clock-minutes: {e}"))?
            }
            "--window-boots" => {
                a.window_boots = value()?
                    .parse()
                    .map_err(|e| format!("--window-boots: {e}"))?
            }
            "--load-stops" => {
                a.load_stops = value()?.parse().map_err(|e| format!("--load-stops: {e}"))?
            }
            "--only" => match value()?.as_str() {
                v @ ("basic" | "clock" | "window" | "load") => a.only = Some(v.to_string()),
                v => return Err(format!("--only basic, clock, window or load, not {v}")),
            },
            "-h" | "--help" => {
                println!("usage: vmmci-bench [--json FILE] [--stops 20] [--resumes 10] [--idle-secs 60] [--kernel bookworm-cloud] [--clock-minutes 10] [--window-boots 1] [--load-stops 10] [--only basic|clock|window|load]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// p-th percentile (nearest rank) of `v`, in whatever unit `v` has.
fn percentile(v: &[i64], p: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    Some(s[rank.min(s.len()) - 1])
}

struct StopRun {
    ack_ms: Vec<i64>,
    end_ms: Vec<i64>,
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
        run.ack_ms.push(ack.as_micros() as i64 / 1000);
        run.end_ms
            .push((ended.at.saturating_sub(asked)).as_millis() as i64);
        eprintln!(
            "stop {:>2}: ack {:>4} ms, VM ended {:>5} ms after vmctl stop",
            i + 1,
            run.ack_ms[i],
            run.end_ms[i]
        );
    }
    Ok(run)
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
        let r = b.probe(5)?;
        let m = median(&r).ok_or_else(|| RigError::Missing("no probe samples".into()))?;
        eprintln!(
            "resume {:>2}: residual guest − host {:+.3} ms",
            i + 1,
            m as f64 / 1e6
        );
        residuals.push(m);
    }
    Ok(residuals)
}

struct Idle {
    /// User CPU: the agent's own code.
    user_percent: f64,
    /// System CPU: the kernel's sysfs path and the port I/O itself, which
    /// under TCG includes the emulated device round trip.
    sys_percent: f64,
    rss_kib: i64,
    /// Register accesses per second (polls and drift samples): each one is
    /// a VM exit to vmd on a real host.
    accesses_per_sec: f64,
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
    let wall = start.elapsed().as_secs_f64();
    // USER_HZ is 100 on every Linux architecture's ABI.
    Ok(Idle {
        user_percent: (u1 - u0) as f64 / 100.0 / wall * 100.0,
        sys_percent: (s1 - s0) as f64 / 100.0 / wall * 100.0,
        rss_kib: rss,
        accesses_per_sec: (p1 - p0) as f64 / wall,
    })
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmmci-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("vmmci-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), RigError> {
    let mut json = vec![format!("\"kernel\": \"{}\"", args.kernel)];
    let want = |part: &str| args.only.as_deref().is_none_or(|o| o == part);
    if want("basic") {
        basic(args, &mut json)?;
    }
    if want("clock") && args.clock_minutes > 0 {
        let c = clock_compare::compare(&args.kernel, args.clock_minutes)?;
        c.print();
        json.push(c.json());
    }
    if want("window") && args.window_boots > 0 {
        boot_windows(args.window_boots, &mut json)?;
    }
    if want("load") && args.load_stops > 0 {
        ack_under_load(&args.kernel, args.load_stops, &mut json)?;
    }
    if let Some(path) = &args.json {
        let text = format!("{{\n  {}\n}}\n", json.join(",\n  "));
        std::fs::write(path, text).map_err(|e| RigError::Io(path.clone(), e))?;
        eprintln!("wrote {path}");
    }
    Ok(())
}

/// Stops, resumes, idle cost and size.
fn basic(args: &Args, json: &mut Vec<String>) -> Result<(), RigError> {
    let bin = artifacts::static_bin("vmmci")?;
    let size = std::fs::metadata(&bin)
        .map_err(|e| RigError::Io(bin.display().to_string(), e))?
        .len();
    eprintln!(
        "vmmci-bench on {} (agent defaults: poll 250 ms), {}",
        args.kernel,
        bin.display()
    );

    let s = stops(&args.kernel, args.stops)?;
    let b = guest::boot(&args.kernel, &Guest::agent().args("daemon"), "bench-clock")?;
    b.driver_ok(Duration::from_secs(60))?;
    let r = resumes(&b, args.resumes)?;
    let i = idle(&b, args.idle_secs)?;
    b.vm.kill();

    let abs: Vec<i64> = r.iter().map(|x| x.abs()).collect();
    let poll_ms = 250;
    let rows = [
        (
            "ACK latency median (ms)",
            median(&s.ack_ms).unwrap_or(0) as f64,
            format!("n={}", s.ack_ms.len()),
        ),
        (
            "ACK latency p99 (ms)",
            percentile(&s.ack_ms, 99.0).unwrap_or(0) as f64,
            format!("target <= poll {poll_ms} + 100"),
        ),
        (
            "vmctl stop -> VM end median (ms)",
            median(&s.end_ms).unwrap_or(0) as f64,
            "guest reset while stopping".into(),
        ),
        (
            "vmctl stop -> VM end max (ms)",
            *s.end_ms.iter().max().unwrap_or(&0) as f64,
            "vmd's deadline 120000".into(),
        ),
        (
            "residual after resume median (ms)",
            ms(median(&r).unwrap_or(0)),
            format!("n={}, target |x| <= 1", r.len()),
        ),
        (
            "residual after resume max |x| (ms)",
            ms(*abs.iter().max().unwrap_or(&0)),
            "guest − host, clock probe".into(),
        ),
        (
            "agent idle CPU, user (% of a core)",
            i.user_percent,
            format!("over {} s, target <= 0.1", args.idle_secs),
        ),
        (
            "agent idle CPU, system (% of a core)",
            i.sys_percent,
            "includes TCG's emulated port I/O".into(),
        ),
        ("agent RSS (KiB)", i.rss_kib as f64, "target <= 8192".into()),
        (
            "device accesses per second",
            i.accesses_per_sec,
            "polls + drift samples, idle".into(),
        ),
        (
            "static binary size (KiB)",
            size as f64 / 1024.0,
            "target <= 4096".into(),
        ),
    ];
    println!("\n{:<38} {:>12}  note", "figure", "value");
    for (name, value, note) in &rows {
        println!("{name:<38} {value:>12.3}  {note}");
    }
    json.push(format!(
        "\"poll_interval_ms\": {poll_ms},\n  \"ack_latency_ms\": {:?},\n  \"stop_to_end_ms\": {:?},\n  \"resume_residual_ns\": {:?},\n  \"idle_cpu_user_percent\": {:.4},\n  \"idle_cpu_system_percent\": {:.4},\n  \"rss_kib\": {},\n  \"accesses_per_sec\": {:.3},\n  \"binary_bytes\": {size}",
        s.ack_ms, s.end_ms, r, i.user_percent, i.sys_percent, i.rss_kib, i.accesses_per_sec
    ));
    Ok(())
}

/// Kernel start → DRIVER_OK in both Debian 12 images, beside the old
/// module's point; `n` boots of each.
fn boot_windows(n: usize, json: &mut Vec<String>) -> Result<(), RigError> {
    let mut all: Vec<BootWindow> = vec![];
    for init in [Init::Systemd, Init::OpenRc] {
        let img = Image::locate_init(init)?;
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
            all.push(w);
        }
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
    json.push(format!(
        "\"boot_window\": [\n    {}\n  ]",
        all.iter()
            .map(|w| w.json())
            .collect::<Vec<_>>()
            .join(",\n    ")
    ));
    Ok(())
}

/// `n` busybox boots, each with one busy loop per vCPU and a disk writer
/// running when `vmctl stop` comes: REBOOT posted → ACK.
fn ack_under_load(kernel: &str, n: usize, json: &mut Vec<String>) -> Result<(), RigError> {
    let mut acks = vec![];
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
            "loaded stop {:>2}: CPU {:.0}% busy, ack {:>4} ms, VM ended {:>5} ms after vmctl stop",
            i + 1,
            l.busy * 100.0,
            ack.as_millis(),
            stop.end.as_millis()
        );
        acks.push(ack);
    }
    let (m, max) = load::median_max(&acks).unwrap_or_default();
    println!("\n{:<38} {:>12}  note", "figure", "value");
    println!(
        "{:<38} {:>12.3}  n={n}, all clean stops, vmd allows 3000",
        "ACK under load median (ms)",
        m.as_secs_f64() * 1e3
    );
    println!(
        "{:<38} {:>12.3}  a busy loop per vCPU + dd with fsync",
        "ACK under load max (ms)",
        max.as_secs_f64() * 1e3
    );
    let ms: Vec<u128> = acks.iter().map(|a| a.as_millis()).collect();
    json.push(format!(
        "\"ack_under_load\": {{\"n\": {n}, \"clean_stops\": {n}, \"median_ms\": {:.1}, \"max_ms\": {:.1}, \"ack_ms\": {ms:?}}}",
        m.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    ));
    Ok(())
}
