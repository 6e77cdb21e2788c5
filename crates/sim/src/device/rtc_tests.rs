//! The RTC tick: host clock steps and the SYNCRTC they cause.

use crate::device::test_vmd::*;

#[test]
fn reboot_overwrites_a_pending_syncrtc_and_syncrtc_overwrites_reboot() {
    let (mut v, c) = ready();
    v.request_syncrtc();
    v.vmctl_stop().unwrap();
    assert_eq!(v.pending_command(), REBOOT);
    assert_eq!(timer_kind(&v), Some(TimerKind::Ack));
    // vmd's vmmci_ctl lets SYNCRTC replace REBOOT; the timer runs on.
    v.jump_host_clock(60 * S);
    run_for(&mut v, &c, 1.0);
    assert_eq!(v.pending_command(), SYNCRTC);
    assert_ended_after(&mut v, &c, 2.0, VmEnd::AckTimeout);
}

#[test]
fn forward_jump_of_90s_sends_syncrtc_at_the_next_tick() {
    let (mut v, c) = ready();
    run_for(&mut v, &c, 10.5);
    v.jump_host_clock(90 * S);
    assert_eq!(v.pending_command(), NONE);
    run_for(&mut v, &c, 0.5);
    assert_eq!(v.pending_command(), SYNCRTC);
    assert_logged(
        &v,
        "rtc_fire1: RTC clock drift (91s), requesting guest resync",
    );
    let drift = v
        .events()
        .iter()
        .find(|e| matches!(e.kind, EventKind::RtcDrift { .. }))
        .unwrap();
    assert_eq!(drift.at, secs(11.0));
    // Host time really moved.
    assert_eq!(v.host_now_ns(), T0 + 11 * S + 90 * S);
}

#[test]
fn backward_jump_of_40s_sends_no_syncrtc() {
    let (mut v, c) = ready();
    v.jump_host_clock(-40 * S);
    run_for(&mut v, &c, 5.0);
    assert_eq!(v.pending_command(), NONE);
    assert_logged(&v, "host time moved -39 s between ticks");
    assert_eq!(v.isr(), 0);
}

#[test]
fn small_forward_jump_of_3s_sends_no_syncrtc() {
    let (mut v, c) = ready();
    v.jump_host_clock(3 * S);
    run_for(&mut v, &c, 3.0);
    assert_eq!(v.pending_command(), NONE);
    assert_logged(&v, "host time moved +4 s");
}

#[test]
fn a_realtime_step_behind_vmds_back_is_seen_at_the_next_tick() {
    // A host suspend: realtime moves 10 min, monotonic only a little.
    let (mut v, c) = ready();
    run_for(&mut v, &c, 3.2);
    c.set_realtime_ns(c.realtime_ns() + 600 * S);
    run_for(&mut v, &c, 0.8);
    assert_eq!(v.pending_command(), SYNCRTC);
}

#[test]
fn a_long_quiet_stretch_is_caught_up_without_false_drift() {
    let (mut v, c) = ready();
    run_for(&mut v, &c, 86_400.0 * 365.0);
    assert_eq!(v.pending_command(), NONE);
    assert!(v.events().is_empty(), "{:?}", v.events());
    run_for(&mut v, &c, 1.0);
    assert!(v.events().is_empty());
}
