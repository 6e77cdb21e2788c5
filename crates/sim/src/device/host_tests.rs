//! Stops, resets and halts: what vmctl, vmm.c and vm.c do around the device.

use crate::device::test_vmd::*;

#[test]
fn stop_before_driver_ok_is_refused_and_ends_the_vm() {
    let (mut v, _) = sim();
    v.bar_write(Reg::DEVICE_STATUS, 1, 1 | 2);
    assert_eq!(v.vmctl_stop(), Err(StopRefused::NoDriverOk));
    assert_eq!(v.ended(), Some(VmEnd::Refused));
    assert_logged(&v, "REBOOT refused");
    assert_eq!(v.bar_read(Reg::COMMAND, 4), 0xffff_ffff);
    assert_eq!(v.vmctl_stop(), Err(StopRefused::NotRunning(VmEnd::Refused)));
}

#[test]
fn ack_then_reset_is_a_clean_stop() {
    let (mut v, c) = stop_posted();
    c.advance(secs(0.2));
    ack(&mut v, REBOOT);
    c.advance(secs(30.0));
    v.guest_reset();
    assert_eq!(v.ended(), Some(VmEnd::CleanStop));
    assert_eq!(v.armed_timer(), None);
}

#[test]
fn a_halt_while_stopping_ends_the_vm_at_once_as_a_failed_vcpu() {
    // A guest that halts instead of rebooting on `vmctl stop`: the VM
    // ends at the HLT, not at the long timeout, and not as a clean stop.
    let (mut v, c) = stop_posted();
    ack(&mut v, REBOOT);
    c.advance(secs(7.0));
    v.guest_poweroff_halt();
    assert_eq!(v.ended(), Some(VmEnd::Halted));
    assert_eq!(v.armed_timer(), None);
    assert!(!v.irq_asserted());
    let last: Vec<_> = v.events().iter().rev().take(2).collect();
    assert_eq!(last[0].kind, EventKind::Ended(VmEnd::Halted));
    assert_eq!(last[1].kind, EventKind::GuestHalted);
    assert_eq!(last[0].at, secs(7.0));
    assert_logged(&v, "guest HLT with interrupts off");
    // Nothing later changes how it ended.
    run_for(&mut v, &c, 200.0);
    v.guest_reset();
    v.guest_poweroff_halt();
    assert_eq!(v.ended(), Some(VmEnd::Halted));
    assert_eq!(v.vmctl_stop(), Err(StopRefused::NotRunning(VmEnd::Halted)));
}

#[test]
fn a_halt_with_nothing_going_on_ends_the_vm_at_once() {
    // A Linux `poweroff` or `halt` on vmd (no ACPI): no write to COMMAND
    // is needed for the VM to end, and no timer is involved.
    let (mut v, c) = ready();
    c.advance(secs(30.0));
    v.guest_poweroff_halt();
    assert_eq!(v.ended(), Some(VmEnd::Halted));
    assert!(v.command_writes().is_empty());
    assert_eq!(last_event(&v).at, secs(30.0));
}

#[test]
fn a_halt_ends_the_vm_before_the_power_down_timer_fires() {
    // A guest SHUTDOWN write arms the 3 s kill; the halt 1 s later ends
    // the VM then, as Halted: the write bought nothing.
    let (mut v, c) = ready();
    ack(&mut v, SHUTDOWN);
    assert_eq!(timer_kind(&v), Some(TimerKind::PowerDown));
    c.advance(secs(1.0));
    v.guest_poweroff_halt();
    assert_eq!(v.ended(), Some(VmEnd::Halted));
    assert_ended_after(&mut v, &c, 5.0, VmEnd::Halted);
}

#[test]
fn a_halt_without_driver_ok_ends_the_vm_too() {
    // vmm ends it, not vmmci: no agent is needed.
    let (mut v, _c) = sim();
    v.guest_poweroff_halt();
    assert_eq!(v.ended(), Some(VmEnd::Halted));
}

#[test]
fn guest_reset_during_power_down_restarts_the_vm() {
    let (mut v, c) = ready();
    ack(&mut v, SHUTDOWN);
    v.guest_reset();
    assert_running_after(&mut v, &c, 10.0);
    assert_eq!(v.armed_timer(), None);
}

#[test]
fn a_second_stop_sends_nothing() {
    let (mut v, c) = stop_posted();
    c.advance(secs(2.0));
    v.vmctl_stop().unwrap();
    assert_logged(&v, "already stopping");
    // The first ACK timer was not re-armed.
    assert_eq!(v.armed_timer().map(|t| t.deadline), Some(secs(3.0)));
}

#[test]
fn reset_without_a_stop_restarts_with_a_fresh_device() {
    let (mut v, c) = ready();
    v.jump_host_clock(7 * S);
    v.request_syncrtc();
    v.bar_read(Reg::TIME_SEC_LOW, 4);
    v.guest_reset();
    assert_eq!(v.ended(), None);
    assert_eq!(v.pending_command(), NONE);
    assert_eq!(v.device_status(), 0);
    assert_eq!(v.guest_features(), 0);
    assert_eq!(v.isr(), 0);
    assert_eq!(v.bar_read(Reg::TIME_USEC_LOW, 4), 0);
    assert_eq!(v.host_now_ns(), T0 + 7 * S);
    assert_logged(&v, "VM reset, restarting");
    // The new VM needs a new handshake before a stop is accepted.
    c.advance(secs(1.0));
    assert_eq!(v.vmctl_stop(), Err(StopRefused::NoDriverOk));
}

#[test]
fn forced_stop_never_touches_vmmci() {
    let (mut v, _) = ready();
    v.vmctl_stop_force();
    assert_eq!(v.ended(), Some(VmEnd::Forced));
    assert_eq!(v.pending_command(), NONE);
}

#[test]
fn events_are_timestamped_and_ordered() {
    let (mut v, c) = ready();
    c.advance(secs(1.5));
    v.vmctl_stop().unwrap();
    run_for(&mut v, &c, 10.0);
    let times: Vec<_> = v.events().iter().map(|e| e.at).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    assert_eq!(last_event(&v).at, secs(4.5));
    assert_eq!(v.elapsed(), secs(11.5));
}
