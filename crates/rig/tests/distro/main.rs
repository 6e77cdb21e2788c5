//! Full-distro tests (issue 4): Debian 12 with systemd as PID 1 and the
//! vmmci .deb installed as `dpkg -i` leaves it (unit, udev rule), booted in
//! QEMU (TCG) with the simulated vmd device; and the same
//! with sysvinit + OpenRC and packaging/openrc/ (tests `o_*`). Each boot runs
//! on a fresh copy of the image's root file system, checked on the host
//! afterwards (`e2fsck -fn`, `debugfs`).
//!
//! Needs (never skipped; a missing piece fails with what to run):
//!   scripts/rig/install-deps.sh, scripts/rig/fetch-kernels.sh
//!   deb=$(scripts/package/deb | tail -n1)                        (root, both:)
//!   scripts/package/distro-image --deb "$deb"                    -> target/distro
//!   scripts/package/distro-image --init openrc --deb "$deb"      -> target/distro-openrc
//! Images: $VMMCI_DISTRO_DIR, $VMMCI_DISTRO_OPENRC_DIR (defaults above).
//! Console logs: target/rig-work/distro-*.log (a failing test also leaves
//! its disk copy, distro-*.ext4).
//! Run: cargo test -p vmmci-rig --test distro -- --test-threads=1 --nocapture
//!
//! Every test is listed here, under the name scripts and docs know it by;
//! the scenarios are in the modules, described there.

mod chrony;
mod common;
mod issue10_restart;
mod lifetime;
mod openrc;
mod shutdown;
mod standback;
mod systemd;
mod timedaemons;

// ----------------------------------------------------------- systemd ----

#[test]
fn a_udev_rule_starts_the_service() {
    systemd::udev_rule_starts_the_service();
}

#[test]
fn b_vmctl_stop_10_boots() {
    systemd::vmctl_stop_10_boots();
}

#[test]
fn c_guest_poweroff_halts_and_ends_the_vm() {
    systemd::guest_poweroff_halts_and_ends_the_vm();
}

#[test]
fn d_agent_sigkill_restarted() {
    systemd::agent_sigkill_restarted();
}

#[test]
fn e_vmctl_stop_while_agent_dead() {
    systemd::vmctl_stop_while_agent_dead();
}

// ------------------------------------------------------------ chrony ----

#[test]
fn tracking_parses() {
    use chrony::tracking;
    let t = "Reference ID    : 564D4D00 (VMM)\nSystem time     : 0.000012345 seconds slow of NTP time\nFrequency       : 49.875 ppm slow\n";
    assert_eq!(tracking(t), Some((-0.000012345, -49.875)));
    assert_eq!(tracking("506 Cannot talk to daemon"), None);
}

#[test]
fn f_chrony_selects_the_vmmci_refclock_and_converges() {
    chrony::chrony_selects_the_vmmci_refclock_and_converges();
}

// ------------------------------------------------------------ OpenRC ----

#[test]
fn o_openrc_vmctl_stop() {
    openrc::vmctl_stop();
}

#[test]
fn o_openrc_poweroff_halts_and_ends_the_vm() {
    openrc::poweroff_halts_and_ends_the_vm();
}

#[test]
fn o_openrc_agent_sigkill_respawned() {
    openrc::agent_sigkill_respawned();
}

// ------------------------- the agent's lifetime, boot window, load ----
// (issue 10 §3, an agent restart under a stop: `issue10_restart::*`)

#[test]
fn g_guest_reboot_then_vmctl_stop_acknowledged() {
    lifetime::guest_reboot_then_vmctl_stop_acknowledged();
}

#[test]
fn h_stop_hangs_synced_at_grace_forced_before_long_timeout() {
    lifetime::stop_hangs_synced_at_grace_forced_before_long_timeout();
}

#[test]
fn i_boot_window_and_stop_under_load() {
    lifetime::boot_window_and_stop_under_load();
}

#[test]
fn o_openrc_guest_reboot_then_vmctl_stop_acknowledged() {
    lifetime::openrc_guest_reboot_then_vmctl_stop_acknowledged();
}

// ------------------------------------------ standing back (hardened unit) ----

#[test]
fn a_chronyd_with_unreachable_servers_and_no_refclock_holds_the_agent_back() {
    standback::a_chronyd_with_unreachable_servers_and_no_refclock_holds_the_agent_back();
}

#[test]
fn b_chronyd_killed_pid_file_left_the_agent_disciplines_at_the_next_sample() {
    standback::b_chronyd_killed_pid_file_left_the_agent_disciplines_at_the_next_sample();
}

#[test]
fn c_discipline_stands_back_for_every_time_daemon() {
    timedaemons::discipline_stands_back_for_every_time_daemon();
}
