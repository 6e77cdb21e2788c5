//! The checks of a shutdown, by either init system: how the VM ended,
//! what reached COMMAND, and the init system's own shutdown on the console;
//! and a `vmctl stop` and a `poweroff` with all their checks.

use std::time::Duration;

use vmd_sim::{EventKind, VmEnd};
use vmmci_protocol::Command;
use vmmci_rig::distro::{self, Distro, Init};
use vmmci_rig::events::{is_reboot_ack, is_reboot_posted};
use vmmci_rig::vm::Ended;

use crate::common::*;

/// Nothing at all written to COMMAND since the `from`th write: no
/// power-down signal, not even a NONE.
pub fn assert_no_command_write(d: &Distro, from: usize, during: &str) {
    let writes = d.vm.command_writes_since(from);
    assert!(
        writes.is_empty(),
        "COMMAND written during {during}: {writes:?}\n{}",
        d.dump()
    );
}

/// Since the `from`th write, only the REBOOT ACK went to COMMAND (no
/// power-down signal on a stop).
pub fn assert_only_reboot_acks(d: &Distro, from: usize) {
    let writes = d.vm.command_writes_since(from);
    assert!(
        !writes.is_empty() && writes.iter().all(|&w| w == Command::REBOOT),
        "COMMAND writes since the stop, want only REBOOT ACKs (2): {writes:?}\n{}",
        d.dump()
    );
}

/// The VM ended at the guest's halt, as vmm ends it (HLT with interrupts
/// off): the console showed the halt, the end came with it, and vmd saw no
/// power-down signal and had nothing to acknowledge since the `ev0`th event.
pub fn assert_ended_at_the_halt(d: &Distro, e: &Ended, ev0: usize) {
    vmmci_rig::scenario::assert_ended_at_the_halt(d, e);
    let evs = d.vm.event_kinds_since(ev0);
    assert!(
        evs.ends_with(&[EventKind::GuestHalted, EventKind::Ended(VmEnd::Halted)]),
        "vmd's last words, want the halt and the end: {evs:?}\n{}",
        d.dump()
    );
    assert!(
        !evs.iter().any(|k| matches!(
            k,
            EventKind::GuestShutdown { .. } | EventKind::Ack { .. } | EventKind::AckIgnored { .. }
        )),
        "vmd saw a SHUTDOWN/REBOOT write: {evs:?}\n{}",
        d.dump()
    );
}

/// Console text from `from` on, without escapes and carriage returns.
pub fn console_since(d: &Distro, from: usize) -> String {
    let t = d.vm.console_text();
    let mut from = from.min(t.len());
    while !t.is_char_boundary(from) {
        from -= 1;
    }
    distro::clean(&t[from..])
}

/// The console since `from` shows `want`, in this order.
pub fn assert_in_order(d: &Distro, from: usize, want: &[&str]) {
    let text = console_since(d, from);
    let mut at = 0;
    for w in want {
        match text[at..].find(w) {
            Some(p) => at += p + w.len(),
            None => panic!(
                "console after the request lacks {w:?} (in order: {want:?})\n--- console since the request ---\n{}\n{}",
                &text[text.len().saturating_sub(8000)..],
                d.dump()
            ),
        }
    }
}

/// systemd's own shutdown ran to its end: the console shows the target
/// reached and systemd-shutdown's last steps, in order.
pub fn assert_systemd_shutdown(d: &Distro, from: usize, target: &str, last: &[&str]) {
    let reached = format!("Reached target {target}");
    let mut want = vec![
        reached.as_str(),
        "systemd-shutdown[1]: Syncing filesystems and block devices.",
        "systemd-shutdown[1]: Sending SIGTERM to remaining processes",
        "Remounting '/' read-only",
        "systemd-shutdown[1]: All filesystems unmounted.",
    ];
    want.extend(last);
    assert_in_order(d, from, &want);
}

/// sysvinit's runlevel 6 to its end. The agent is not stopped on the way
/// (sysinit runlevel, `keyword -shutdown`): sendsigs' final kill ends it.
pub const OPENRC_REBOOT: &[&str] = &[
    "INIT: Switching to runlevel: 6",
    "EXT4-fs (vda): re-mounted",
    "Will now restart.",
    "reboot: Restarting system",
];

/// The init system's reboot ran to its end (console since `from`).
pub fn assert_rebooted(d: &Distro, from: usize, init: Init) {
    match init {
        Init::Systemd => {
            assert_systemd_shutdown(d, from, "reboot.target", &["reboot: Restarting system"])
        }
        Init::OpenRc => assert_in_order(d, from, OPENRC_REBOOT),
    }
}

/// The console since `from` shows no stop of the agent (its unit, its
/// OpenRC service).
pub fn assert_agent_not_stopped(d: &Distro, from: usize, init: Init) {
    let text = console_since(d, from);
    let stops: &[&str] = match init {
        Init::Systemd => &[
            "Stopping vmmci",
            "Stopped vmmci",
            "Stopping OpenBSD vmd guest agent",
            "Stopped OpenBSD vmd guest agent",
        ],
        Init::OpenRc => &["Stopping vmmci"],
    };
    for s in stops {
        assert!(
            !text.contains(s),
            "the shutdown stopped the agent ({s:?} on the console)\n{}",
            d.dump()
        );
    }
}

/// REBOOT posted → acknowledged, from vmd's events since `ev0`.
pub fn ack_latency(d: &Distro, ev0: usize) -> Duration {
    let posted = d.vm.host_time_of(ev0, is_reboot_posted);
    let acked = d.vm.host_time_of(ev0, is_reboot_ack);
    match (posted, acked) {
        (Some(p), Some(a)) => a.saturating_sub(p),
        _ => panic!("REBOOT not posted and acknowledged\n{}", d.dump()),
    }
}

/// `vmctl stop` of a booted guest, with a file written just before it
/// (no sync): a clean stop, REBOOT acknowledged, only its ACK written to
/// COMMAND, the init system's reboot to its end, the file system clean, the
/// file whole, no access-rule violation. How long the stop took (`vmctl
/// stop` → the VM's end).
pub fn stop_and_check(d: &Distro, init: Init) -> Duration {
    let ev0 = d.vm.n_events();
    let w0 = d.vm.n_command_writes();
    write_unsynced(d, "/root/f");
    let from = d.vm.console_len();
    let t0 = d.vm.elapsed();
    d.vm.vmctl_stop().expect("stop accepted");
    let e = end(d, Duration::from_secs(150));
    let took = e.at.saturating_sub(t0);
    assert_outcome(d, &e, vmmci_rig::vm::Outcome::CleanStop);
    assert_reboot_acked(d, ev0);
    assert_only_reboot_acks(d, w0);
    assert_rebooted(d, from, init);
    assert_disk_clean(d);
    assert_file_whole(d, "/root/f");
    assert_no_violations(d);
    took
}

/// The stop times: listed, median and maximum (s), and the maximum's share
/// of vmd's host-shutdown budget.
pub fn stop_times(times: &[Duration]) -> String {
    let list: Vec<String> = times
        .iter()
        .map(|t| format!("{:.2}", t.as_secs_f64()))
        .collect();
    let (m, max) = vmmci_rig::stats::median_max(times).unwrap_or_default();
    format!(
        "vmctl stop -> VM end (s): [{}]; median {:.2}s, max {:.2}s ({:.0}% of vmd's 30 s \
         host-shutdown budget)",
        list.join(", "),
        m.as_secs_f64(),
        max.as_secs_f64(),
        100.0 * max.as_secs_f64() / HOST_SHUTDOWN_BUDGET.as_secs_f64()
    )
}

/// No vmmci hook in the shutdown path (systemd's system-shutdown/, OpenRC's
/// shutdown runlevel): a power-off ends in the kernel's halt, which ends
/// the VM as vmm does.
fn assert_no_shutdown_hook(d: &Distro, init: Init) {
    match init {
        Init::Systemd => {
            let hooks = sh(
                d,
                "ls -A /usr/lib/systemd/system-shutdown/ 2>/dev/null; true",
            );
            assert!(
                !hooks.contains("vmmci"),
                "a vmmci systemd-shutdown hook is installed: {hooks}"
            );
        }
        Init::OpenRc => {
            let lvl = sh(d, "ls /etc/runlevels/shutdown; ls /etc/init.d");
            assert!(
                !lvl.contains("vmmci-poweroff"),
                "a vmmci-poweroff service is installed: {lvl}"
            );
        }
    }
}

/// `poweroff` typed in the guest with a file written just before it (no
/// sync), with no vmmci hook in the shutdown path: the init system powers
/// off to its end (OpenRC: without stopping the agent), the kernel's final
/// halt ends the VM at once as vmm does, nothing at all is written to
/// COMMAND, the file system is clean, the file whole, no access-rule
/// violation. Prints how long it took.
pub fn poweroff_and_check(d: &Distro, init: Init) {
    assert_no_shutdown_hook(d, init);
    write_unsynced(d, "/root/f");
    let ev0 = d.vm.n_events();
    let w0 = d.vm.n_command_writes();
    let from = d.vm.console_len();
    let t0 = d.vm.elapsed();
    must(d.vm.send_console("poweroff"), "poweroff");
    let e = end(d, Duration::from_secs(150));
    assert_ended_at_the_halt(d, &e, ev0);
    match init {
        Init::Systemd => assert_systemd_shutdown(
            d,
            from,
            "poweroff.target",
            &["systemd-shutdown[1]: Powering off."],
        ),
        Init::OpenRc => {
            // `keyword -shutdown`: the agent lives to the end of the shutdown.
            assert_agent_not_stopped(d, from, Init::OpenRc);
            assert_in_order(
                d,
                from,
                &[
                    "INIT: Switching to runlevel: 0",
                    "EXT4-fs (vda): re-mounted",
                    "Will now halt.",
                    "reboot: System halted",
                ],
            );
        }
    }
    assert_no_command_write(d, w0, "a guest power-off");
    assert_disk_clean(d);
    assert_file_whole(d, "/root/f");
    assert_no_violations(d);
    eprintln!(
        "  {init:?} poweroff -> VM end {:.2}s (ended at the halt, {:.2}s), no COMMAND write",
        e.at.saturating_sub(t0).as_secs_f64(),
        e.at.as_secs_f64()
    );
}
