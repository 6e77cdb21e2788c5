//! End-to-end scenarios: a real Debian kernel in QEMU (TCG) with the
//! simulated vmd device, the static agent supervised by busybox init.
//!
//! Needs (never skipped; a missing piece fails with what to run):
//!   scripts/rig/install-deps.sh      (root: qemu-system-x86, busybox-static, e2fsprogs, ...)
//!   scripts/rig/fetch-kernels.sh     (kernels into ~/.cache/vmmci/kernels)
//!   scripts/rig/build-guest-bins.sh  (static vmmci + rig-clockprobe)
//! Run: scripts/rig/run-e2e.sh [filter]   (tests hold a lock: one QEMU at a time)
//!
//! Every test is listed here, under the name scripts and docs know it by;
//! the scenarios are in the modules, described there. Scenarios on
//! trixie's kernel run again after a guest kernel crash, within limits
//! (`vmmci_rig::rerun`).

mod boot;
mod clock;
mod common;
mod device;
mod hooks;
mod issue10;
mod load;
mod stop;

use common::{
    on_kernel, on_trixie, BOOKWORM_CLOUD, BOOKWORM_GENERIC, BULLSEYE_CLOUD, FORKY_CLOUD,
    TRIXIE_CLOUD,
};

// ------------------------------------------------------------- boot ----

#[test]
fn a_boot_agent_bookworm_cloud() {
    boot::boot_with_agent(BOOKWORM_CLOUD);
}

#[test]
fn a_boot_agent_bookworm_generic() {
    boot::boot_with_agent(BOOKWORM_GENERIC);
}

#[test]
fn a_boot_agent_trixie_cloud() {
    on_trixie("boot", || boot::boot_with_agent(TRIXIE_CLOUD));
}

#[test]
fn rig_no_agent_bookworm_cloud() {
    boot::boot_no_agent_probe(BOOKWORM_CLOUD);
}

#[test]
fn rig_no_agent_bookworm_generic() {
    boot::boot_no_agent_probe(BOOKWORM_GENERIC);
}

#[test]
fn rig_no_agent_trixie_cloud() {
    on_trixie("noagent", || boot::boot_no_agent_probe(TRIXIE_CLOUD));
}

#[test]
fn qemu_missing_is_an_error() {
    boot::qemu_missing_is_an_error();
}

// ---------------------------------------------------------- scenarios --

#[test]
fn b_no_agent_stop_refused() {
    boot::no_agent_stop_refused();
}

#[test]
fn c_vmctl_stop_clean() {
    stop::vmctl_stop_clean(BOOKWORM_CLOUD);
}

#[test]
fn c_vmctl_stop_clean_trixie() {
    on_trixie("stop", || stop::vmctl_stop_clean(TRIXIE_CLOUD));
}

#[test]
fn d_host_shutdown_acked_then_the_halt_ends_the_vm() {
    stop::host_shutdown_acked_then_the_halt_ends_the_vm();
}

#[test]
fn e_guest_poweroff_halts_and_ends_the_vm() {
    stop::guest_poweroff(BOOKWORM_CLOUD);
}

#[test]
fn e_guest_poweroff_halts_and_ends_the_vm_trixie() {
    on_trixie("poweroff", || stop::guest_poweroff(TRIXIE_CLOUD));
}

#[test]
fn f_guest_reboot_writes_nothing() {
    stop::guest_reboot_writes_nothing();
}

#[test]
fn g_host_clock_forward_syncrtc() {
    clock::host_clock_forward_syncrtc(BOOKWORM_CLOUD);
}

#[test]
fn h_host_clock_backward_explicit_syncrtc() {
    clock::host_clock_backward_explicit_syncrtc();
}

#[test]
fn i_agent_killed_with_reboot_pending() {
    stop::agent_killed_with_reboot_pending();
}

#[test]
fn j_garbage_commands_ignored() {
    stop::garbage_commands_ignored();
}

#[test]
fn k_status_json_drift() {
    clock::status_json_drift();
}

#[test]
fn json_i64_parses() {
    use clock::json_i64;
    assert_eq!(
        json_i64(r#"{"a":1,"drift_ns": -3000,"b":2}"#, "drift_ns"),
        Some(-3000)
    );
    assert_eq!(json_i64(r#"{"drift_ns":null}"#, "drift_ns"), None);
}

#[test]
fn l_frozen_agent_ack_timeout() {
    stop::frozen_agent_ack_timeout();
}

#[test]
fn m_stuck_reboot_synced_at_grace_forced_late() {
    stop::stuck_reboot_synced_at_grace_forced_late();
}

#[test]
fn n_acked_but_no_reset_long_timeout() {
    stop::acked_but_no_reset_long_timeout();
}

#[test]
fn o_forced_stop_ends_at_once_without_vmmci() {
    stop::forced_stop_ends_at_once_without_vmmci();
}

#[test]
fn p_device_removed_and_rescanned_agent_recovers() {
    device::device_removed_and_rescanned_agent_recovers();
}

#[test]
fn q_discipline_converges_from_any_start_and_follows_the_host() {
    clock::discipline_converges_from_any_start_and_follows_the_host();
}

// ------------------------------ issue 10 §4 and §5: the ACK under load ----
// (issue 10 §2 and §3, races and restarts: `issue10::*`)

#[test]
fn r_ack_under_load_10_stops() {
    load::ack_under_load_10_stops();
}

// ------------------------------------------------------ clock source ----

#[test]
fn r_clock_source_bookworm_cloud() {
    clock::clock_source_matches_the_kernel(BOOKWORM_CLOUD);
}

#[test]
fn r_clock_source_trixie_cloud() {
    on_trixie("clocksource", || {
        clock::clock_source_matches_the_kernel(TRIXIE_CLOUD)
    });
}

// ------------------------------------------------------------- hooks ----

#[test]
fn t_hooks_before_reboot_and_after_step() {
    hooks::hooks_before_reboot_and_after_step();
}

// ----------------------------------------------- 5.10 to the newest ----
// The same static agent on bullseye's 5.10 and forky's (testing's) newest
// kernel: the handshake, a clean stop with unsynced data on the disk, and
// a SYNCRTC step (also on trixie's 6.12).

#[test]
fn a_boot_agent_bullseye_cloud() {
    on_kernel(BULLSEYE_CLOUD, "boot", || {
        boot::boot_with_agent(BULLSEYE_CLOUD)
    });
}

#[test]
fn a_boot_agent_forky_cloud() {
    on_kernel(FORKY_CLOUD, "boot", || boot::boot_with_agent(FORKY_CLOUD));
}

#[test]
fn c_vmctl_stop_clean_bullseye() {
    on_kernel(BULLSEYE_CLOUD, "stop", || {
        stop::vmctl_stop_clean(BULLSEYE_CLOUD)
    });
}

#[test]
fn c_vmctl_stop_clean_forky() {
    on_kernel(FORKY_CLOUD, "stop", || stop::vmctl_stop_clean(FORKY_CLOUD));
}

#[test]
fn g_host_clock_forward_syncrtc_bullseye() {
    on_kernel(BULLSEYE_CLOUD, "clockfwd", || {
        clock::host_clock_forward_syncrtc(BULLSEYE_CLOUD)
    });
}

#[test]
fn g_host_clock_forward_syncrtc_trixie() {
    on_trixie("clockfwd", || {
        clock::host_clock_forward_syncrtc(TRIXIE_CLOUD)
    });
}

#[test]
fn g_host_clock_forward_syncrtc_forky() {
    on_kernel(FORKY_CLOUD, "clockfwd", || {
        clock::host_clock_forward_syncrtc(FORKY_CLOUD)
    });
}
