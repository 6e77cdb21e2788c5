//! Issue 10 §4 and §5: the agent starts as early as it can (until
//! DRIVER_OK a `vmctl stop` ends the VM at once), lives to the very end of
//! every shutdown (so a stop during a guest-initiated reboot is
//! acknowledged, and its grace sync and force can fire), and acknowledges
//! within vmd's 3 s under load. Also the boot window, beside the point
//! where the old kernel module would have claimed the device.

use std::time::Duration;

use vmmci_rig::distro::{self, BootOptions, Distro, Init};
use vmmci_rig::events::{is_reboot_ack, is_reboot_posted};
use vmmci_rig::image;
use vmmci_rig::units;
use vmmci_rig::vm::{Ended, Outcome};

use crate::common::*;
use crate::shutdown::*;

/// The unit as systemd loaded it: no default dependencies, nothing that
/// stops it at shutdown, and started before basic.target (a unit with
/// default dependencies cannot be). Prints its ordering.
fn assert_unit_lives_through_shutdown(d: &Distro) {
    let show = sh(
        d,
        "systemctl show -p DefaultDependencies,IgnoreOnIsolate,Conflicts,Before,After,Requires,BindsTo,PartOf vmmci.service",
    );
    eprintln!("  vmmci.service: {}", show.replace('\n', "; "));
    let prop = |k: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(prop("DefaultDependencies"), "no", "{show}");
    for k in ["Conflicts", "Before", "Requires", "BindsTo", "PartOf"] {
        let v = prop(k);
        for t in [
            "shutdown.target",
            "umount.target",
            "final.target",
            "tmp.mount",
            "var.mount",
        ] {
            assert!(
                !v.split_whitespace().any(|u| u == t),
                "vmmci.service {k}={v}: the shutdown would stop it\n{show}"
            );
        }
    }
    for t in ["sysinit.target", "basic.target", "local-fs.target"] {
        assert!(
            !prop("After").split_whitespace().any(|u| u == t),
            "vmmci.service is ordered after {t}: it starts later than it needs to\n{show}"
        );
    }
    let mono = |unit: &str, p: &str| -> u64 {
        sh(d, &format!("systemctl show -p {p} --value {unit}"))
            .parse()
            .unwrap_or(0)
    };
    let started = mono("vmmci.service", "InactiveExitTimestampMonotonic");
    let basic = mono("basic.target", "ActiveEnterTimestampMonotonic");
    eprintln!(
        "  vmmci.service started at {:.2} s, basic.target reached at {:.2} s (guest clock)",
        units::usecs_as_secs(started),
        units::usecs_as_secs(basic)
    );
    assert!(
        started > 0 && started < basic,
        "vmmci.service started at {started} µs, not before basic.target ({basic} µs)\n{}",
        d.dump()
    );
}

/// Boot options that put the stand-in for the old vmmci.ko in /etc/modules
/// (see `vmmci_rig::window`), for a boot whose window is measured.
fn with_module_stand_in(tag: &str) -> BootOptions {
    let mut o = BootOptions::new(tag);
    o.prepare = Some(Box::new(vmmci_rig::window::prepare_module_stand_in));
    o
}

/// When systemd's early units became active, in the guest's clock.
fn print_boot_timeline(d: &Distro) {
    let units = [
        "systemd-journald.service",
        "systemd-udevd.service",
        "systemd-udev-trigger.service",
        "systemd-modules-load.service",
        "local-fs.target",
        "systemd-tmpfiles-setup.service",
        "sysinit.target",
        "basic.target",
        "vmmci.service",
    ];
    let out = sh(
        d,
        &format!(
            "systemctl show -p Id,ActiveEnterTimestampMonotonic {}",
            units.join(" ")
        ),
    );
    let marks: Vec<String> = out
        .split("\n\n")
        .filter_map(|block| {
            let get = |k: &str| block.lines().find_map(|l| l.strip_prefix(k));
            let us: u64 = get("ActiveEnterTimestampMonotonic=")?.trim().parse().ok()?;
            Some(format!("{} {:.2}", get("Id=")?, units::usecs_as_secs(us)))
        })
        .collect();
    eprintln!("  boot timeline (s, guest clock): {}", marks.join(", "));
}

/// Print the boot window (kernel start → DRIVER_OK) beside the point where
/// the old kernel module would have claimed the device, and return it.
fn boot_window(d: &Distro, init: Init) -> vmmci_rig::window::BootWindow {
    if init == Init::Systemd {
        print_boot_timeline(d);
    }
    let w = match vmmci_rig::window::measure(d, init) {
        Ok(w) => w,
        Err(e) => panic!("boot window: {e}\n{}", d.dump()),
    };
    eprintln!("  boot window: {w}");
    eprintln!("  boot window (json): {}", w.json());
    assert!(
        w.driver_ok > 0.0 && w.driver_ok < 120.0,
        "kernel start → DRIVER_OK {:.2} s\n{}",
        w.driver_ok,
        d.dump()
    );
    if let Some(j) = w.driver_ok_journal {
        // The agent logs DRIVER_OK right after writing it: the two clocks
        // agree to well under a second, or the kernel-start estimate is off.
        assert!(
            (j - w.driver_ok).abs() < 1.0,
            "DRIVER_OK at {:.3} s (host) but {j:.3} s in the agent's journal\n{}",
            w.driver_ok,
            d.dump()
        );
    }
    w
}

/// Boot the systemd image with the module stand-in, check the boot, print
/// its boot window and check the unit lives through a shutdown.
fn boot_measured(tag: &str) -> Distro {
    let d = boot_checked(Init::Systemd, with_module_stand_in(tag));
    boot_window(&d, Init::Systemd);
    assert_unit_lives_through_shutdown(&d);
    d
}

/// A guest-initiated `reboot` typed on the console with a file written
/// just before (no sync), then `vmctl stop` 0.5 s later (a host shutdown
/// that comes while the guest reboots): a clean stop (the guest's own
/// reboot resets the VM while it is stopping). The end, REBOOT posted →
/// acknowledged, and vmd's first event and the console offset before the
/// reboot.
fn guest_reboot_then_vmctl_stop(d: &Distro) -> (Ended, Duration, usize, usize) {
    write_unsynced(d, "/root/f");
    let ev0 = d.vm.n_events();
    let from = d.vm.console_len();
    must(d.vm.send_console("reboot"), "reboot");
    std::thread::sleep(Duration::from_millis(500));
    d.vm.vmctl_stop()
        .expect("stop accepted (DRIVER_OK is never cleared)");
    let e = end(d, Duration::from_secs(150));
    assert_outcome(d, &e, Outcome::CleanStop);
    let ack = ack_latency(d, ev0);
    (e, ack, ev0, from)
}

/// After [`guest_reboot_then_vmctl_stop`]: the REBOOT acknowledged within
/// vmd's 3 s by the agent the shutdown did not stop, the init system's
/// reboot to its end, the file system clean, the file whole, no access-rule
/// violation. `extra` runs after the agent check (OpenRC's).
fn assert_reboot_then_stop(d: &Distro, init: Init, from: usize, ack: Duration, extra: impl Fn()) {
    assert!(ack < ACK_DEADLINE, "ACK after {ack:?}\n{}", d.dump());
    assert_agent_not_stopped(d, from, init);
    extra();
    assert_rebooted(d, from, init);
    assert_disk_clean(d);
    assert_file_whole(d, "/root/f");
    assert_no_violations(d);
}

/// The guest's own reboot, then `vmctl stop`, with systemd: the agent,
/// still running because the shutdown does not stop it, acknowledges the
/// REBOOT (see [`guest_reboot_then_vmctl_stop`]). Also prints the boot window.
pub fn guest_reboot_then_vmctl_stop_acknowledged() {
    let _g = serial();
    let d = boot_measured("reboot-then-stop");
    let (_, ack, _, from) = guest_reboot_then_vmctl_stop(&d);
    eprintln!(
        "  REBOOT during the guest's own reboot: acknowledged {:.3} s after it was posted",
        ack.as_secs_f64()
    );
    assert_reboot_then_stop(&d, Init::Systemd, from, ack, || {});
    d.discard();
}

/// OpenRC: the agent is in the sysinit runlevel with `keyword -shutdown`.
/// Prints the boot window beside the `modules` service; then a `reboot`
/// typed in the guest and `vmctl stop` 0.5 s later: runlevel 6 does not
/// stop the agent, it acknowledges the REBOOT, the reboot resets the VM
/// while it is stopping (clean stop), the file system is clean and a file
/// written just before (no sync) is whole.
pub fn openrc_guest_reboot_then_vmctl_stop_acknowledged() {
    let _g = serial();
    let d = boot_checked(
        Init::OpenRc,
        with_module_stand_in("openrc-reboot-then-stop"),
    );
    boot_window(&d, Init::OpenRc);
    let lvl = sh(&d, "ls /etc/runlevels/sysinit");
    assert!(
        lvl.split_whitespace().any(|s| s == "vmmci"),
        "vmmci not in the sysinit runlevel: {lvl}\n{}",
        d.dump()
    );
    let (e, ack, ev0, from) = guest_reboot_then_vmctl_stop(&d);
    eprintln!(
        "  openrc: REBOOT during the guest's own reboot acknowledged {:.3} s after it was posted; \
         VM end {:.2} s after the stop",
        ack.as_secs_f64(),
        e.at.as_secs_f64()
            - d.vm
                .host_time_of(ev0, is_reboot_posted)
                .unwrap_or_default()
                .as_secs_f64()
    );
    assert_reboot_then_stop(&d, Init::OpenRc, from, ack, || {
        let text = console_since(&d, from);
        assert!(
            text.contains("Will now restart.") || !text.contains("reboot: Restarting system"),
            "the VM reset before runlevel 6 had run (no \"Will now restart.\"): a reboot(2) \
             cut the shutdown short. sysvinit's reboot(8) in runlevel 0 or 6 does not go \
             through shutdown(8) but syncs and calls reboot(2) at once, so the agent must not \
             run it while a shutdown is under way\n{}",
            d.dump()
        );
    });
    d.discard();
}

/// Read `path` from a copy of `disk` after replaying its journal (what the
/// next boot would see), for a disk left by a forced reboot.
fn read_after_recovery(d: &Distro, path: &str) -> Vec<u8> {
    let copy = d.disk.with_extension("recovered.ext4");
    must(distro::sparse_copy(&d.disk, &copy), "copy the disk");
    // -p: replay the journal and fix what is safe; exit 1/2 mean "fixed".
    let out = std::process::Command::new("e2fsck")
        .arg("-fp")
        .arg(&copy)
        .output();
    let note = match &out {
        Ok(o) => format!(
            "exit {:?}: {}{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("{e}"),
    };
    eprintln!("  e2fsck -fp on a copy (journal replay): {}", note.trim());
    let got = must(image::read_file(&copy, path), "debugfs cat after recovery");
    let _ = std::fs::remove_file(&copy);
    got
}

/// A unit whose stop hangs for 200 s (ExecStop=/bin/sleep 200,
/// TimeoutStopSec=300), then `vmctl stop`: the agent acknowledges, syncs at
/// the grace point (25 s after the power command) while systemd still
/// waits for the unit, and forces the reboot itself shortly before vmd's
/// long timeout (110 s after the ACK, < 120 s): a clean stop, not a long
/// timeout. A file written just before the stop (no sync) is whole on disk.
pub fn stop_hangs_synced_at_grace_forced_before_long_timeout() {
    let _g = serial();
    let d = boot_checked(Init::Systemd, BootOptions::new("stop-hangs"));
    let active = sh(
        &d,
        "printf '%s\\n' '[Unit]' 'Description=rig: a service whose stop hangs for 200 s' \
         '[Service]' 'Type=oneshot' 'RemainAfterExit=yes' 'ExecStart=/bin/true' \
         'ExecStop=/bin/sleep 200' 'TimeoutStopSec=300' > /etc/systemd/system/rig-hang.service \
         && systemctl daemon-reload && systemctl start rig-hang.service \
         && systemctl is-active rig-hang.service",
    );
    assert!(active.ends_with("active"), "rig-hang.service: {active}");
    // The agent's log lines on the console, as they happen (the journal is
    // in memory and gone after the reset).
    let fwd = sh(
        &d,
        "mkdir -p /etc/systemd/journald.conf.d && \
         printf '[Journal]\\nForwardToConsole=yes\\nMaxLevelConsole=info\\n' \
         > /etc/systemd/journald.conf.d/zz-rig-console.conf && \
         systemctl restart systemd-journald && systemctl is-active systemd-journald",
    );
    assert!(fwd.ends_with("active"), "journald: {fwd}");
    write_unsynced(&d, "/root/f");
    let ev0 = d.vm.n_events();
    let from = d.vm.console_len();
    d.vm.vmctl_stop().expect("stop accepted");
    let e = end(&d, Duration::from_secs(180));
    let ack =
        d.vm.host_time_of(ev0, is_reboot_ack)
            .unwrap_or_else(|| panic!("REBOOT not acknowledged\n{}", d.dump()));
    let since_ack = |t: Duration| t.as_secs_f64() - ack.as_secs_f64();
    // The agent's own lines, as journald forwards them: "vmmci[PID]: …".
    let agent_says = |what: &'static str| {
        move |l: &str| {
            let l = l.to_lowercase();
            l.contains("vmmci[") && l.contains(what) && !l.contains("syncrtc")
        }
    };
    let synced = vmmci_rig::window::console_line_where(&d.vm, from, agent_says("syncing"))
        .map(|(a, _)| since_ack(a));
    let forced = vmmci_rig::window::console_line_where(&d.vm, from, agent_says("forc"))
        .map(|(a, _)| since_ack(a));
    let ended = since_ack(e.at);
    eprintln!(
        "  after the ACK: sync logged at {}, force logged at {}, VM end at {ended:.2} s \
         (grace 25 s, force_after 110 s, vmd's long timeout 120 s)",
        synced.map_or("-".into(), |s| format!("{s:.2} s")),
        forced.map_or("-".into(), |s| format!("{s:.2} s")),
    );
    eprintln!(
        "  root file system after the forced reboot: {}",
        must(image::superblock_state(&d.disk), "dumpe2fs")
    );
    assert_outcome(&d, &e, Outcome::CleanStop);
    assert_agent_not_stopped(&d, from, Init::Systemd);
    let console = console_since(&d, from);
    assert!(
        console.contains("rig: a service whose stop hangs"),
        "the hanging stop never showed on the console\n{}",
        d.dump()
    );
    let Some(synced) = synced else {
        panic!(
            "no \"syncing\" line from the agent on the console\n{}",
            d.dump()
        );
    };
    assert!(
        (24.5..=30.0).contains(&synced),
        "the agent synced {synced:.2} s after the ACK, not at the grace point (25 s)\n{}",
        d.dump()
    );
    assert!(
        (105.0..120.0).contains(&ended),
        "the VM ended {ended:.2} s after the ACK: the force must come shortly before vmd's 120 s\n{}",
        d.dump()
    );
    let got = read_after_recovery(&d, "/root/f");
    assert_whole(&d, "/root/f after the forced reboot", &got);
    d.discard();
}

/// The boot window, then `vmctl stop` with the guest under load: one busy
/// loop per vCPU and a disk writer (dd with fsync, in a loop) started from
/// the root shell. The agent (Nice=, CPUWeight=, IOWeight= in the unit)
/// acknowledges within vmd's 3 s, the stop is clean and the file system too.
pub fn boot_window_and_stop_under_load() {
    let _g = serial();
    let d = boot_measured("load");
    let prio = sh(
        &d,
        "p=$(systemctl show -p MainPID --value vmmci.service); \
         echo nice=$(cut -d' ' -f19 /proc/$p/stat) \
         cpu.weight=$(cat /sys/fs/cgroup/system.slice/vmmci.service/cpu.weight 2>/dev/null)",
    );
    eprintln!("  agent priority: {prio}");
    let load = must(vmmci_rig::load::start(&d.vm, "/root"), "load");
    eprintln!("  load: {load:?}");
    assert!(
        load.spinners >= load.cpus && load.writers >= 1 && load.busy > 0.9,
        "the load is not running: {load:?}\n{}",
        d.dump()
    );
    let ev0 = d.vm.n_events();
    let from = d.vm.console_len();
    let stop = must(
        vmmci_rig::load::stop_and_time(&d.vm, Duration::from_secs(150)),
        "stop under load",
    );
    eprintln!(
        "  under load: ACK {} after REBOOT, VM end {:.2} s after vmctl stop",
        stop.ack
            .map_or("never".into(), |a| format!("{:.3} s", a.as_secs_f64())),
        stop.end.as_secs_f64()
    );
    assert_outcome(&d, &stop.ended, Outcome::CleanStop);
    assert!(
        stop.ack.is_some_and(|a| a < ACK_DEADLINE),
        "ACK under load: {:?}\n{}",
        stop.ack,
        d.dump()
    );
    assert_reboot_acked(&d, ev0);
    assert_rebooted(&d, from, Init::Systemd);
    assert_disk_clean(&d);
    d.discard();
}
