//! How the VM ends: `vmctl stop` (clean, refused, frozen, forced, with a
//! reboot that hangs or freezes), a host SHUTDOWN, the guest's own
//! power-off and reboot, garbage in COMMAND, and the agent killed with a
//! REBOOT pending.

use std::time::Duration;

use vmmci_protocol::Command;
use vmmci_rig::events::{self, is_reboot_ack, is_shutdown_ack};
use vmmci_rig::guest::{Booted, Guest};
use vmmci_rig::image;
use vmmci_rig::restart;
use vmmci_rig::vm::{Ended, Outcome};

use crate::common::*;

fn assert_fs_clean_on_the_console(b: &Booted) {
    assert!(
        b.vm.console_text().contains("RIG: fs clean"),
        "{}",
        b.dump()
    );
}

/// After a power-off that began at `t0` ended in the guest's halt: print
/// `what` took, then the console said "RIG: fs clean", the data disk is
/// clean and the `file` written before is whole.
fn assert_clean_after_the_halt(b: &Booted, e: &Ended, t0: Duration, what: &str, file: &str) {
    eprintln!(
        "  {what} -> VM end {:.2}s (halt at {:.2}s)",
        (e.at - t0).as_secs_f64(),
        b.vm.halted_at().unwrap_or_default().as_secs_f64()
    );
    assert_fs_clean_on_the_console(b);
    assert_fsck_clean(b);
    assert_file_whole(b, file);
}

/// (c) vmctl stop: REBOOT, acked, the guest shuts down and resets; the
/// data written just before (no sync) is on disk, and the fs is clean.
pub fn vmctl_stop_clean(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::agent().with_disk(), "stop");
    driver_ok(&b);
    write_unsynced(&b, "/data/f");
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(150));
    assert_outcome(&b, &e, Outcome::CleanStop);
    eprintln!("  stop took {:.2}s", (e.at - t0).as_secs_f64());
    assert!(
        events::any(&b.vm.event_kinds_since(0), is_reboot_ack),
        "REBOOT not acknowledged\n{}",
        b.dump()
    );
    assert_fsck_clean(&b);
    assert_file_whole(&b, "/f");
    assert_fs_clean_on_the_console(&b);
}

/// SHUTDOWN from the host: the agent acknowledges it and powers off through
/// init; the guest's final halt ends the VM at once (as vmm does: HLT with
/// interrupts off), long before the 120 s after the ACK. Only the ACK is
/// written to COMMAND; the data disk is clean and a file written just before
/// (no sync) is whole.
pub fn host_shutdown_acked_then_the_halt_ends_the_vm() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), "shutdown");
    driver_ok(&b);
    write_unsynced(&b, "/data/g");
    let w0 = b.vm.n_command_writes();
    let t0 = b.vm.elapsed();
    b.vm.request_shutdown().expect("shutdown accepted");
    let e = end(&b, Duration::from_secs(150));
    assert!(
        events::any(&b.vm.event_kinds_since(0), is_shutdown_ack),
        "SHUTDOWN not acknowledged\n{}",
        b.dump()
    );
    assert_ended_at_the_halt(&b, &e);
    let writes = b.vm.command_writes_since(w0);
    assert!(
        !writes.is_empty() && writes.iter().all(|&w| w == Command::SHUTDOWN),
        "COMMAND writes after the request, want only the ACK (1): {writes:?}\n{}",
        b.dump()
    );
    let what = format!("SHUTDOWN (COMMAND writes {writes:?})");
    assert_clean_after_the_halt(&b, &e, t0, &what, "/g");
}

/// `poweroff` in the guest: the kernel's final halt ends the VM at once (as
/// vmm does), nothing at all is written to COMMAND, the data disk is clean
/// and a file written just before (no sync) is whole. (6.12 prints "Power
/// off not available: System halted instead".)
pub fn guest_poweroff(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::agent().with_disk(), "poweroff");
    driver_ok(&b);
    write_unsynced(&b, "/data/f");
    let w0 = b.vm.n_command_writes();
    let t0 = b.vm.elapsed();
    b.vm.send_console("poweroff").unwrap();
    let e = end(&b, Duration::from_secs(60));
    assert_ended_at_the_halt(&b, &e);
    let writes = b.vm.command_writes_since(w0);
    assert!(
        writes.is_empty(),
        "COMMAND written during a guest power-off: {writes:?}\n{}",
        b.dump()
    );
    let what = format!("[{kernel}] poweroff (no COMMAND write)");
    assert_clean_after_the_halt(&b, &e, t0, &what, "/f");
}

/// `reboot` in the guest: nothing written to COMMAND; QEMU exits on the reset.
pub fn guest_reboot_writes_nothing() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), "reboot");
    driver_ok(&b);
    let w0 = b.vm.n_command_writes();
    b.vm.send_console("reboot").unwrap();
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::GuestReset);
    let writes = b.vm.command_writes_since(w0);
    assert!(
        writes.is_empty(),
        "COMMAND written during a guest reboot: {writes:?}\n{}",
        b.dump()
    );
    assert_fsck_clean(&b);
}

/// kill -9 of the agent while REBOOT is pending: busybox init respawns it
/// and the new agent (a new pid) acknowledges the still-pending REBOOT.
pub fn agent_killed_with_reboot_pending() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), "kill9");
    driver_ok(&b);
    let pid = agent_pid(&b);
    must(
        b.vm.run(&format!("kill -STOP {pid}"), Duration::from_secs(20)),
        "stop agent",
    );
    b.vm.vmctl_stop().expect("stop accepted");
    let from = b.vm.console_len();
    let watch = restart::watcher_cmd("pidof vmmci", true, STATUS_FILE);
    must(
        b.vm.run(&format!("{watch} kill -9 {pid}"), Duration::from_secs(20)),
        "kill agent",
    );
    let e = end(&b, Duration::from_secs(150));
    assert_outcome(&b, &e, Outcome::CleanStop);
    assert_fsck_clean(&b);
    let (old, new) = assert_acked_by_new_agent(&b, from, "kill9");
    eprintln!("  REBOOT acknowledged by the respawned agent {new} (killed: {old})");
}

/// Garbage in COMMAND never causes an action; the next stop still works.
pub fn garbage_commands_ignored() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent(), "garbage");
    driver_ok(&b);
    for v in [7u32, 0xdead_beef] {
        b.vm.set_command_raw(v);
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            b.vm.ended().is_none(),
            "VM ended after COMMAND {v:#x}\n{}",
            b.dump()
        );
        let out = must(
            b.vm.run("echo alive", Duration::from_secs(20)),
            "console after garbage",
        );
        assert!(out.contains("alive"));
        assert!(
            !b.vm.console_text().contains("RIG: shutdown begin"),
            "garbage {v:#x} triggered a shutdown\n{}",
            b.dump()
        );
    }
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(150));
    assert_outcome(&b, &e, Outcome::CleanStop);
}

/// A frozen agent never acknowledges: vmd ends the VM after the 3 s ACK
/// timeout.
pub fn frozen_agent_ack_timeout() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent(), "frozen");
    driver_ok(&b);
    must(
        b.vm.run("kill -STOP $(pidof vmmci)", Duration::from_secs(20)),
        "freeze agent",
    );
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(30));
    assert_outcome(&b, &e, Outcome::AckTimeout);
    let dt = e.at.saturating_sub(t0);
    assert!(
        dt >= Duration::from_millis(2900) && dt < Duration::from_secs(5),
        "ack timeout after {dt:?}"
    );
}

/// The reboot command does nothing: "sync early, force late". The agent
/// syncs at the grace point and forces the reboot at `force_after`, before
/// vmd's long timeout (shortened here, with the agent's times to match).
pub fn stuck_reboot_synced_at_grace_forced_late() {
    let _g = serial();
    let mut g = Guest::agent()
        .with_disk()
        .args("daemon --poll-interval 100ms --grace 5s --force-after 15s");
    g.vmd.long_timeout = Duration::from_secs(40);
    let b = boot(BOOKWORM_CLOUD, g, "grace");
    driver_ok(&b);
    must(
        b.vm.run("rm /sbin/reboot; printf '#!/bin/sh\\necho RIG: fake reboot\\n' > /sbin/reboot; chmod +x /sbin/reboot; echo data > /data/h", Duration::from_secs(20)),
        "fake reboot",
    );
    let from = b.vm.console_len();
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let synced = must(
        b.vm.wait_console_from(from, "syncing file systems", Duration::from_secs(30)),
        "the sync at the grace point",
    );
    let forced = must(
        b.vm.wait_console_from(synced, "syncing and forcing it", Duration::from_secs(40)),
        "the force at force_after",
    );
    assert!(synced < forced);
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
    let dt = e.at.saturating_sub(t0);
    eprintln!("  forced reboot after {:.2}s", dt.as_secs_f64());
    assert!(
        dt >= Duration::from_secs(15),
        "reset before force_after: {dt:?}"
    );
    let d = b.disk.as_ref().unwrap();
    eprintln!(
        "  data disk after forced reboot: {}",
        must(image::superblock_state(d), "dumpe2fs")
    );
    // Synced before forcing: the data is there even if the journal is dirty.
    assert_eq!(must(image::read_file(d, "/h"), "read"), b"data\n");
}

/// The agent acknowledges and then stops dead (its reboot command freezes
/// it): vmd ends the VM when the long timeout (shortened here) runs out.
pub fn acked_but_no_reset_long_timeout() {
    let _g = serial();
    let mut g = Guest::agent();
    g.vmd.long_timeout = Duration::from_secs(10);
    let b = boot(BOOKWORM_CLOUD, g, "long");
    driver_ok(&b);
    must(
        b.vm.run("rm /sbin/reboot; printf '#!/bin/sh\\nkill -STOP $PPID\\n' > /sbin/reboot; chmod +x /sbin/reboot", Duration::from_secs(20)),
        "freezing reboot",
    );
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::LongTimeout);
    let dt = e.at.saturating_sub(t0);
    eprintln!("  long timeout after {:.2}s", dt.as_secs_f64());
    assert!(
        dt >= Duration::from_secs(10) && dt < Duration::from_secs(14),
        "{dt:?}"
    );
}

/// `vmctl stop -f` never involves vmmci: the VM is ended at once, the
/// agent never sees a command.
pub fn forced_stop_ends_at_once_without_vmmci() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent(), "force");
    driver_ok(&b);
    let n = b.vm.n_events();
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop_force();
    let e = end(&b, Duration::from_secs(10));
    assert_outcome(&b, &e, Outcome::Forced);
    assert!(
        e.at.saturating_sub(t0) < Duration::from_secs(2),
        "forced stop took {:?}",
        e.at - t0
    );
    let evs = b.vm.event_kinds_since(n);
    assert!(
        !evs.iter().any(|k| matches!(
            k,
            vmd_sim::EventKind::Posted { .. } | vmd_sim::EventKind::Ack { .. }
        )),
        "a forced stop must not go through vmmci: {evs:?}"
    );
}
