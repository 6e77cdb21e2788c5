//! Issue 10 §3 on real systemd: the agent keeps DRIVER_OK when it exits
//! and when a new one starts, so a `vmctl stop` during a restart (an
//! upgrade's `systemctl restart`) is posted, waits for the new agent, and
//! is acknowledged by it; never refused (which ends the VM at once).

use std::time::Duration;

use vmd_sim::{AccessTrigger, HostAction, Reg};
use vmmci_rig::distro::{BootOptions, Init};
use vmmci_rig::events::{first_at, is_ended};
use vmmci_rig::restart::StatusWatch;
use vmmci_rig::units::ms_between;

use crate::common::*;
use crate::shutdown::*;

/// `systemctl restart vmmci.service` (SIGTERM to the agent, then a new
/// one: what a package upgrade does), and `vmctl stop` just before the
/// new agent reads the device features, i.e. inside its handshake:
/// posted (DRIVER_OK kept through the old agent's exit and the new
/// handshake), acknowledged within vmd's 3 s by the new agent's pid,
/// systemd's reboot runs to its end, clean stop, root file system
/// clean, no status write without DRIVER_OK after the first DRIVER_OK.
#[test]
fn r_systemctl_restart_with_vmctl_stop_inside_the_new_handshake() {
    let _g = serial();
    let d = boot_checked(Init::Systemd, BootOptions::new("restart-stop"));
    let ev0 = d.vm.n_events();
    let mut watch = StatusWatch::new(&d.vm);
    // Only a handshake reads the device features; the running agent
    // did at its start and never again, so this is the new agent's.
    d.vm.with_vmd(|v| {
        v.schedule(
            AccessTrigger::Before(Reg::DeviceFeatures),
            HostAction::VmctlStop,
        )
    });
    let from = watch_the_restart(&d, Init::Systemd);
    let t_sig = watch.poll(&d.vm);
    // Not through `sh`: the shell may not outlive the reboot this starts.
    d.vm.send_console("systemctl restart vmmci.service")
        .expect("console");
    let ended = watch.wait_end(&d.vm, Duration::from_secs(150));
    assert!(ended, "the VM did not end within 150 s\n{}", d.dump());
    let e = end(&d, Duration::from_secs(1));
    let tag = "restart-stop";
    let s = assert_stop_through_restart(&d, &e, ev0, tag);
    let (old, new) = assert_acked_by_new_agent(&d, from, tag);
    assert!(old > 1, "old agent {old} (MainPID)\n{}", d.dump());
    assert_rebooted(&d, from, Init::Systemd);
    assert_disk_clean(&d);
    assert_no_violations(&d);
    eprintln!(
        "  systemctl restart sent; stop inside the new handshake {:.0} ms later; new \
         DRIVER_OK {} ms after the restart; REBOOT ACK {:.0} ms after the stop by pid {new} \
         (old {old}); VM end {:.2} s after the stop",
        ms_between(t_sig, s.stop),
        watch
            .first_driver_ok()
            .map_or("?".into(), |t| format!("{:.0}", ms_between(t_sig, t))),
        ms_between(s.stop, s.ack),
        first_at(&s.events, is_ended).map_or(f64::NAN, |t| ms_between(s.stop, t) / 1e3)
    );
    d.discard();
}
