//! Debian 12 with sysvinit + OpenRC (as Devuan): the agent supervised by
//! supervise-daemon (packaging/openrc/vmmci.initd), nothing vmmci-specific in
//! the shutdown runlevel: a power-off ends in the kernel's halt, which ends
//! the VM (as vmm does), a reboot in a reset. Debian's LSB shutdown scripts
//! are slow under TCG (about 20 s from stop to reset).

use std::time::Duration;

use vmmci_protocol::timeouts::SHUTDOWN_LONG;
use vmmci_rig::distro::{BootOptions, Init};
use vmmci_rig::restart;
use vmmci_rig::vm::Outcome;

use crate::common::*;
use crate::shutdown::*;

/// Stops: how many boots.
const OPENRC_STOPS: u32 = 3;

/// `vmctl stop` on OpenRC: REBOOT acknowledged, the agent reboots through
/// sysvinit, runlevel 6 runs to its end, only the REBOOT ACK is written to
/// COMMAND, the VM resets (clean stop), the file system is clean and a file
/// written just before the stop is whole.
pub fn vmctl_stop() {
    let _g = serial();
    let img = image_for(Init::OpenRc);
    let mut times = vec![];
    for i in 1..=OPENRC_STOPS {
        let d = boot(&img, BootOptions::new(&format!("openrc-stop-{i}")));
        check_booted_openrc(&d);
        let took = stop_and_check(&d, Init::OpenRc);
        eprintln!(
            "  openrc stop {i}: vmctl stop -> VM end {:.2}s (boot to ready {:.2}s)",
            took.as_secs_f64(),
            d.ready_at.as_secs_f64()
        );
        // Under TCG Debian's LSB shutdown scripts alone take ~20 s (forks are
        // slow), too close to the 30 s host-shutdown budget to assert it
        // without flaking; the bound is vmd's deadline for one `vmctl stop`
        // (the outcome would be LongTimeout past it). Reported against 30 s.
        assert!(
            took < SHUTDOWN_LONG,
            "stop {i} took {took:?}, over vmd's {SHUTDOWN_LONG:?}\n{}",
            d.dump()
        );
        times.push(took);
        d.discard();
    }
    eprintln!(
        "  openrc: {OPENRC_STOPS}/{OPENRC_STOPS} clean stops; {}; TCG",
        stop_times(&times)
    );
}

/// `poweroff` on OpenRC: runlevel 0 runs to its end (/ read-only, no
/// vmmci service in the shutdown runlevel), the kernel's final halt ends the
/// VM at once as vmm does (Halted), nothing at all is written to COMMAND,
/// the root file system is clean and a file written just before (no sync)
/// is whole.
pub fn poweroff_halts_and_ends_the_vm() {
    let _g = serial();
    let d = boot_checked(Init::OpenRc, BootOptions::new("openrc-poweroff"));
    poweroff_and_check(&d, Init::OpenRc);
    d.discard();
}

/// The agent killed with SIGKILL on OpenRC: supervise-daemon starts it again
/// (new pid, new handshake), and a `vmctl stop` right after is a clean stop,
/// acknowledged by the new agent.
pub fn agent_sigkill_respawned() {
    let _g = serial();
    let img = image_for(Init::OpenRc);
    let d = boot(&img, BootOptions::new("openrc-sigkill"));
    let pid0 = check_booted_openrc(&d);
    let nw = d.vm.n_status_writes();
    let watched = watch_the_restart(&d, Init::OpenRc);
    let t_kill = d.vm.elapsed();
    let out = sh(&d, &format!("kill -9 {pid0}"));
    assert!(out.is_empty(), "kill: {out}");
    wait_rehandshake(&d, nw, "respawned");
    let t_ok = d.vm.elapsed();
    // The watcher speaks on the console when it sees the new agent.
    let pid1 = restart::without_markers(&sh_any(&d, "pidof vmmci"));
    eprintln!(
        "  killed pid {pid0}; new pid {pid1} with DRIVER_OK {:.2}s after the kill",
        (t_ok - t_kill).as_secs_f64()
    );
    assert!(
        pid1 != pid0 && pid1.parse::<u32>().is_ok_and(|p| p > 1),
        "no new agent: {pid1:?}\n{}",
        d.dump()
    );
    assert_supervised(&d, &pid1, "the new agent is not supervised");
    let ev0 = d.vm.n_events();
    let from = d.vm.console_len();
    d.vm.vmctl_stop().expect("stop accepted");
    let e = end(&d, Duration::from_secs(150));
    assert_outcome(&d, &e, Outcome::CleanStop);
    assert_reboot_acked(&d, ev0);
    assert_acked_by_new_agent(&d, watched, "openrc-sigkill");
    assert_rebooted(&d, from, Init::OpenRc);
    assert_disk_clean(&d);
    assert_no_violations(&d);
    d.discard();
}
