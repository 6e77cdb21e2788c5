//! `vmmci_ctl()`, `vmmci_ack()` and the timer, through host calls and raw COMMAND writes.

use crate::device::test_vmd::*;

#[test]
fn stop_posts_reboot_and_ack_within_3s_arms_the_long_timer() {
    let (mut v, c) = ready();
    assert_eq!(v.vmctl_stop(), Ok(()));
    assert!(v.stopping());
    assert_eq!(v.pending_command(), REBOOT);
    assert!(v.irq_asserted());
    assert_eq!(v.armed_timer(), armed(TimerKind::Ack, 3.0));
    // ISR reads 2 once, then 0.
    assert_eq!(v.bar_read(Reg::ISR, 1), 2);
    assert_eq!(v.bar_read(Reg::ISR, 1), 0);
    assert!(!v.irq_asserted());
    c.advance(secs(2.5));
    assert_eq!(read_cmd(&mut v), REBOOT);
    ack(&mut v, REBOOT);
    assert_eq!(v.armed_timer(), armed(TimerKind::Long, 122.5));
    // The command stays pending after the ACK.
    assert_eq!(v.pending_command(), REBOOT);
    assert_running_after(&mut v, &c, 10.0);
    assert_logged(
        &v,
        "vmmci: ack received for REBOOT, long timer armed (120 s)",
    );
}

#[test]
fn no_ack_ends_at_3s_not_before() {
    let (mut v, c) = stop_posted();
    assert_running_after(&mut v, &c, 2.999);
    assert_ended_after(&mut v, &c, 0.001, VmEnd::AckTimeout);
    let last = last_event(&v);
    assert_eq!(last.at, secs(3.0));
    assert_eq!(last.to_string(), "VM ended: ack timeout");
    // An ACK that arrives late finds a dead device.
    ack(&mut v, REBOOT);
    assert_eq!(v.ended(), Some(VmEnd::AckTimeout));
}

#[test]
fn late_ack_is_too_late_even_when_noticed_at_the_same_access() {
    let (mut v, c) = stop_posted();
    c.advance(secs(3.5));
    // The timer fired at 3 s; this write comes after it.
    ack(&mut v, REBOOT);
    assert_eq!(v.ended(), Some(VmEnd::AckTimeout));
    assert_not_logged(&v, "ack received");
}

#[test]
fn ack_then_no_reset_ends_after_the_long_timeout() {
    let (mut v, c) = stop_posted();
    c.advance(secs(1.0));
    ack(&mut v, REBOOT);
    assert_running_after(&mut v, &c, 119.999);
    assert_ended_after(&mut v, &c, 0.001, VmEnd::LongTimeout);
    assert_eq!(last_event(&v).at, secs(121.0));
}

#[test]
fn repeated_acks_rearm_the_long_timer() {
    let (mut v, c) = stop_posted();
    ack(&mut v, REBOOT);
    c.advance(secs(100.0));
    ack(&mut v, REBOOT);
    assert_running_after(&mut v, &c, 100.0);
    assert_ended_after(&mut v, &c, 20.0, VmEnd::LongTimeout);
    assert_eq!(last_event(&v).at, secs(220.0));
}

#[test]
fn pre_2019_long_timeout_is_30s() {
    let (mut v, c) = ready_with(VmdConfig::before_2019());
    v.vmctl_stop().unwrap();
    ack(&mut v, REBOOT);
    assert_ended_after(&mut v, &c, 30.0, VmEnd::LongTimeout);
}

#[test]
fn guest_shutdown_with_nothing_pending_powers_down_after_3s() {
    let (mut v, c) = ready();
    c.advance(secs(5.0));
    ack(&mut v, SHUTDOWN);
    assert_eq!(timer_kind(&v), Some(TimerKind::PowerDown));
    assert_logged(&v, "guest requested shutdown, timer armed (3 s)");
    assert_running_after(&mut v, &c, 2.9);
    assert_ended_after(&mut v, &c, 0.1, VmEnd::PowerDown);
}

#[test]
fn host_shutdown_then_guest_shutdown_write_is_an_ack_not_a_power_down() {
    // With SHUTDOWN pending, the guest's power-down write matches it:
    // vmd re-arms the long timer instead of the 3 s one.
    let (mut v, c) = ready();
    v.request_shutdown().unwrap();
    assert_eq!(v.pending_command(), SHUTDOWN);
    ack(&mut v, SHUTDOWN);
    c.advance(secs(5.0));
    ack(&mut v, SHUTDOWN);
    assert_running_after(&mut v, &c, 5.0);
    assert_eq!(timer_kind(&v), Some(TimerKind::Long));
    assert_ended_after(&mut v, &c, 115.0, VmEnd::LongTimeout);
}

#[test]
fn reboot_write_with_nothing_pending_is_ignored() {
    let (mut v, c) = ready();
    ack(&mut v, REBOOT);
    assert_eq!(v.armed_timer(), None);
    assert_logged(&v, "REBOOT written while 0x0 pending, not an ack, ignored");
    assert_running_after(&mut v, &c, 500.0);
}

#[test]
fn syncrtc_only_with_the_accepted_feature() {
    let (mut v, _) = sim();
    handshake(&mut v, 0x3);
    assert!(!v.request_syncrtc());
    assert_eq!(v.pending_command(), NONE);
    assert_logged(&v, "RTC sync skipped");

    // A second VM, on its own clock: the last check advances that one.
    let (mut v, c) = ready();
    assert!(v.request_syncrtc());
    assert_eq!(v.pending_command(), SYNCRTC);
    assert_eq!(v.isr(), ISR_CONFIG_CHANGE);
    assert_eq!(v.armed_timer(), None);
    // Already pending: not posted again, still true.
    assert!(v.request_syncrtc());
    assert_logged(&v, "SYNCRTC already pending");
    assert_running_after(&mut v, &c, 1000.0);
}

#[test]
fn syncrtc_without_driver_ok_is_refused() {
    let (mut v, _) = sim();
    v.bar_write(Reg::GUEST_FEATURES, 4, 7);
    v.bar_write(Reg::DEVICE_STATUS, 1, 3);
    assert!(!v.request_syncrtc());
    assert_eq!(v.pending_command(), NONE);
    // Unlike a stop, a refused SYNCRTC does not end the VM.
    assert_eq!(v.ended(), None);
}

#[test]
fn syncrtc_ack_clears_the_pending_command() {
    let (mut v, _) = ready();
    v.request_syncrtc();
    assert_eq!(read_cmd(&mut v), SYNCRTC);
    ack(&mut v, SYNCRTC);
    assert_eq!(v.pending_command(), NONE);
    assert_eq!(read_cmd(&mut v), NONE);
    // Cleared, so the next request posts again.
    assert!(v.request_syncrtc());
    assert_eq!(v.pending_command(), SYNCRTC);
}

#[test]
fn stop_when_reboot_is_already_pending_is_a_no_op() {
    let (mut v, c) = ready();
    v.set_command_raw(REBOOT);
    assert_eq!(v.bar_read(Reg::ISR, 1), 2);
    v.vmctl_stop().unwrap();
    // Nothing posted: no ISR, no timer; vmd waits for a reset forever.
    assert_eq!(v.isr(), 0);
    assert_eq!(v.armed_timer(), None);
    assert_logged(&v, "REBOOT already pending, nothing done");
    assert_running_after(&mut v, &c, 600.0);
    v.guest_reset();
    assert_eq!(v.ended(), Some(VmEnd::CleanStop));
}

#[test]
fn garbage_commands() {
    let (mut v, c) = ready();
    v.set_command_raw(0xdead_beef);
    assert_eq!(read_cmd(&mut v), 0xdead_beef);
    assert_eq!(v.isr(), 2);
    assert_eq!(v.armed_timer(), None);
    ack(&mut v, 7);
    assert_logged(&v, "vmmci_ack: illegal request 7");
    assert_eq!(v.pending_command(), 0xdead_beef);
    // Acknowledging garbage is not possible: it is an illegal request.
    ack(&mut v, 0xdead_beef);
    assert_eq!(v.armed_timer(), None);
    assert_running_after(&mut v, &c, 500.0);
}
