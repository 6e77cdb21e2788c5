//! Debian 12 with systemd as PID 1 and the vmmci .deb installed as `dpkg
//! -i` leaves it: the udev rule, `vmctl stop`, the guest's power-off, and
//! the agent killed (and a stop while it is dead).

use std::time::{Duration, Instant};

use vmd_sim::EventKind;
use vmmci_rig::distro::{self, BootOptions, Init};
use vmmci_rig::events::{first_at, is_reboot_ack};
use vmmci_rig::vm::Outcome;

use crate::common::*;
use crate::shutdown::*;

/// The udev rule alone starts the agent: with the unit's multi-user.target
/// want removed (as `systemctl disable vmmci` would), vmmci.service is still
/// running after boot, wanted by the device unit and by nothing else.
pub fn udev_rule_starts_the_service() {
    let _g = serial();
    let img = image();
    let t0 = Instant::now();
    let mut o = BootOptions::new("udev");
    o.prepare = Some(Box::new(|disk| {
        let link = "/etc/systemd/system/multi-user.target.wants/vmmci.service";
        let p = disk.display().to_string();
        let before = distro::host_tool("debugfs", &["-R", &format!("stat {link}"), &p])?;
        if before.contains("File not found") {
            return Err(vmmci_rig::RigError::Missing(format!(
                "the image has no {link}: the package did not enable the unit"
            )));
        }
        distro::host_tool("debugfs", &["-w", "-R", &format!("rm {link}"), &p])?;
        Ok(())
    }));
    let d = boot(&img, o);
    let unit = check_booted(&d);
    let enabled = sh(&d, "systemctl is-enabled vmmci.service || true");
    assert_eq!(
        enabled,
        "disabled",
        "the want was not removed\n{}",
        d.dump()
    );
    let wanted_by = sh(&d, "systemctl show -p WantedBy --value vmmci.service");
    assert_eq!(
        wanted_by.trim(),
        unit,
        "vmmci.service must be wanted by the device unit only\n{}",
        d.dump()
    );
    let rdeps = sh(
        &d,
        "systemctl list-dependencies --reverse --plain --no-legend vmmci.service",
    );
    eprintln!("  reverse dependencies:\n{rdeps}");
    assert!(
        !rdeps.contains("multi-user.target"),
        "multi-user.target still wants vmmci.service:\n{rdeps}"
    );
    let journal = sh(&d, "journalctl -b -u vmmci.service --no-pager -o cat");
    assert!(
        journal.contains("DRIVER_OK"),
        "the agent's journal:\n{journal}\n{}",
        d.dump()
    );
    // And it stops the machine cleanly.
    let from = d.vm.console_len();
    d.vm.vmctl_stop().expect("stop accepted");
    let e = end(&d, Duration::from_secs(150));
    assert_outcome(&d, &e, Outcome::CleanStop);
    assert_rebooted(&d, from, Init::Systemd);
    assert_disk_clean(&d);
    eprintln!("  a_udev: {:.1}s", t0.elapsed().as_secs_f64());
    d.discard();
}

/// `vmctl stop`, 10 boots: systemd's real shutdown, a clean stop (reset
/// while stopping), only the REBOOT ACK written to COMMAND, a clean file
/// system, and a file written just before the stop (no sync) whole on disk.
pub fn vmctl_stop_10_boots() {
    let _g = serial();
    let img = image();
    let t_all = Instant::now();
    let mut times = vec![];
    for i in 1..=10 {
        let t_boot = Instant::now();
        let d = boot(&img, BootOptions::new(&format!("stop-{i:02}")));
        check_booted(&d);
        let took = stop_and_check(&d, Init::Systemd);
        eprintln!(
            "  stop {i:2}: vmctl stop -> VM end {:.2}s (boot to ready {:.2}s, boot total {:.1}s)",
            took.as_secs_f64(),
            d.ready_at.as_secs_f64(),
            t_boot.elapsed().as_secs_f64()
        );
        assert!(
            took < HOST_SHUTDOWN_BUDGET,
            "stop {i} took {took:?}, over vmd's host-shutdown budget {HOST_SHUTDOWN_BUDGET:?}\n{}",
            d.dump()
        );
        times.push(took);
        d.discard();
    }
    eprintln!(
        "  10/10 clean stops; {}; all 10 boots {:.1}s",
        stop_times(&times),
        t_all.elapsed().as_secs_f64()
    );
}

/// `poweroff` in the guest: systemd powers off to its end (no vmmci hook
/// in system-shutdown/), the kernel's final halt ends the VM at once as vmm
/// does (HLT with interrupts off: Halted, not a power-down timer), nothing
/// at all is written to COMMAND, the root file system is clean and a file
/// written just before (no sync) is whole.
pub fn guest_poweroff_halts_and_ends_the_vm() {
    let _g = serial();
    let d = boot_checked(Init::Systemd, BootOptions::new("poweroff"));
    poweroff_and_check(&d, Init::Systemd);
    d.discard();
}

/// The agent killed with SIGKILL: systemd restarts it (a new pid, a new
/// handshake), and a `vmctl stop` right after is handled by the new agent:
/// clean stop.
pub fn agent_sigkill_restarted() {
    let _g = serial();
    let d = boot_checked(Init::Systemd, BootOptions::new("sigkill"));
    let pid0 = sh(&d, "systemctl show -p MainPID --value vmmci.service");
    assert!(pid0.parse::<u32>().is_ok_and(|p| p > 1), "MainPID {pid0:?}");
    let nw = d.vm.n_status_writes();
    let watched = watch_the_restart(&d, Init::Systemd);
    let t_kill = d.vm.elapsed();
    let out = sh(&d, "systemctl kill -s KILL vmmci.service");
    assert!(out.is_empty(), "systemctl kill: {out}");
    wait_rehandshake(&d, nw, "restarted");
    let t_ok = d.vm.elapsed();
    let show = sh(
        &d,
        "systemctl show -p MainPID,NRestarts,ActiveState,SubState vmmci.service",
    );
    let ev0 = d.vm.n_events();
    let from = d.vm.console_len();
    let t0 = d.vm.elapsed();
    d.vm.vmctl_stop().expect("stop accepted");
    let field = |k: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    eprintln!(
        "  killed pid {pid0} at {:.2}s; new DRIVER_OK {:.2}s later; {}",
        t_kill.as_secs_f64(),
        (t_ok - t_kill).as_secs_f64(),
        show.replace('\n', " ")
    );
    let pid1 = field("MainPID");
    assert!(
        pid1 != pid0 && pid1.parse::<u32>().is_ok_and(|p| p > 1),
        "no new agent: {show}\n{}",
        d.dump()
    );
    assert_eq!(field("NRestarts"), "1", "{show}");
    assert_eq!(field("ActiveState"), "active", "{show}");
    let e = end(&d, Duration::from_secs(150));
    assert_outcome(&d, &e, Outcome::CleanStop);
    eprintln!(
        "  vmctl stop -> VM end {:.2}s",
        e.at.saturating_sub(t0).as_secs_f64()
    );
    assert_reboot_acked(&d, ev0);
    assert_acked_by_new_agent(&d, watched, "sigkill");
    assert_rebooted(&d, from, Init::Systemd);
    assert_disk_clean(&d);
    assert_no_violations(&d);
    d.discard();
}

/// Harder: `vmctl stop` while the agent is dead (killed, not yet restarted).
/// vmd still has DRIVER_OK (a killed agent resets nothing), so it posts
/// REBOOT and gives 3 s for the ACK: systemd's restart (RestartSec=200ms)
/// and the new agent's handshake must fit, and the new agent handles the
/// command that was pending when it started.
pub fn vmctl_stop_while_agent_dead() {
    let _g = serial();
    let d = boot_checked(Init::Systemd, BootOptions::new("stop-agent-dead"));
    let nw = d.vm.n_status_writes();
    let ev0 = d.vm.n_events();
    let from = watch_the_restart(&d, Init::Systemd);
    let out = sh(&d, "systemctl kill -s KILL vmmci.service");
    assert!(out.is_empty(), "systemctl kill: {out}");
    let t0 = d.vm.elapsed();
    d.vm.vmctl_stop()
        .expect("stop accepted (DRIVER_OK survives the agent)");
    let e = end(&d, Duration::from_secs(150));
    assert_outcome(&d, &e, Outcome::CleanStop);
    let writes = d.vm.with_vmd(|v| v.status_writes().to_vec());
    assert_rehandshake(&d, &writes, nw);
    let evs = d.vm.events_since(ev0);
    let acked_at = first_at(&evs, is_reboot_ack);
    let posted_at = first_at(&evs, |k| matches!(k, EventKind::Posted { .. }));
    let (Some(a), Some(p)) = (acked_at, posted_at) else {
        panic!("REBOOT posted and acknowledged\n{}", d.dump());
    };
    eprintln!(
        "  stop with the agent dead: ACK {:.2}s after REBOOT (vmd allows 3 s), VM end {:.2}s after the stop",
        a.saturating_sub(p).as_secs_f64(),
        e.at.saturating_sub(t0).as_secs_f64()
    );
    assert_acked_by_new_agent(&d, from, "stop-agent-dead");
    assert_rebooted(&d, from, Init::Systemd);
    assert_disk_clean(&d);
    d.discard();
}
