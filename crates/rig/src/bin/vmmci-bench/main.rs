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
//! - discipline across host rates (`--rates-minutes`, 10 by default): for
//!   host clocks 0, +50, −200, +2,000 and +20,000 ppm fast, a busybox guest
//!   with the agent at its defaults and chronyd beside it (the Debian 12
//!   image, SOCK refclock): time to lock, guest − host every 10 s by the
//!   clock probe, steps after the lock, then the host clock set back 40 s
//!   (no SYNCRTC): the agent's samples until its step, and the offset 30 s
//!   on (`vmmci_rig::clock_rates`).
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
//! idle period, 2 minutes of `discipline` behind a host 20,000 ppm fast),
//! for `scripts/test`. `--check`: exit 1 when a figure misses
//! its target (`vmmci_rig::figures::checks`: the ACK within poll interval +
//! 100 ms idle and 3 s under load, |residual| after a resume ≤ 1 ms, ...);
//! any stop that does not end clean fails the run anyway.
//!
//! One file per part: `basic.rs`, `clock.rs`, `rates.rs`, `window.rs`, `load.rs`,
//! `distro.rs`; the command line in `cli.rs`, the results file in
//! `record.rs`, what every timed stop must show in `clean_stop.rs`.

mod basic;
mod clean_stop;
mod cli;
mod clock;
mod distro;
mod load;
mod rates;
mod record;
mod window;

use std::time::Instant;

use serde_json::{json, Map, Value};
use vmmci_rig::{figures, RigError};

use cli::Args;

fn main() {
    let args = match cli::parse() {
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

/// Runs the parts; `Ok(false)` when `--check` found a miss.
fn run(args: &Args) -> Result<bool, RigError> {
    let parts = args.parts();
    let mut r = Map::new();
    record::meta(args, &parts, &mut r)?;
    let started = Instant::now();
    for &part in &parts {
        let figures = measure(part, args)?;
        r.insert(part.into(), figures);
    }
    if parts.contains(&"basic") {
        r.insert("poll_interval_ms".into(), json!(basic::POLL_MS));
    }
    r.insert(
        "bench_seconds".into(),
        json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
    );
    let r = Value::Object(r);
    record::save(args, &r)?;
    let misses = print_checks(&r)?;
    if args.check && misses > 0 {
        eprintln!("vmmci-bench --check: {misses} target(s) missed");
        return Ok(false);
    }
    Ok(true)
}

/// One part's figures, as its JSON object.
fn measure(part: &str, args: &Args) -> Result<Value, RigError> {
    match part {
        "basic" => basic::measure(args),
        "clock" => clock::measure(&args.kernel, args.clock_minutes),
        "rates" => rates::measure(&args.rates_plan()),
        "window" => window::measure(args.window_boots),
        "load" => load::measure(&args.kernel, args.load_stops),
        "distro" => distro::measure(args),
        other => unreachable!("{other} is not in cli::PARTS"),
    }
}

/// The table of targets held against `r`, and the count missed.
fn print_checks(r: &Value) -> Result<usize, RigError> {
    let checks = figures::checks(r).map_err(RigError::Missing)?;
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
    Ok(misses)
}
