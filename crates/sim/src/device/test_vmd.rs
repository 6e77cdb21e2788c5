//! What every test of the device model starts from: a simulator on a
//! manual clock, driven the way the sysfs transport drives the device, by
//! raw (offset, size, value) accesses at offsets from [`Reg`], and the
//! few steps and checks the tests share, so each test reads as its scenario.

pub(super) use std::time::Duration;

pub(super) use crate::clock::{HostClock, ManualClock, NANOS_PER_SEC};
pub(super) use crate::event::{Event, EventKind, ViolationReason, VmEnd};
pub(super) use crate::vmd_tables::{Reg, VmmciCmd, ISR_CONFIG_CHANGE};

pub(super) use super::{ArmedTimer, StopRefused, TimerKind, Vmd, VmdConfig};

/// 2025-06-15 15:06:40.123456789 UTC.
pub(super) const T0: i64 = 1_750_000_000 * NANOS_PER_SEC + 123_456_789;
pub(super) const S: i64 = NANOS_PER_SEC;

/// The command codes as COMMAND holds them.
pub(super) const NONE: u32 = VmmciCmd::None.code();
pub(super) const SHUTDOWN: u32 = VmmciCmd::Shutdown.code();
pub(super) const REBOOT: u32 = VmmciCmd::Reboot.code();
pub(super) const SYNCRTC: u32 = VmmciCmd::SyncRtc.code();

/// A fresh vmd, nothing written yet, on a manual clock at [`T0`].
pub(super) fn sim() -> (Vmd, ManualClock) {
    sim_with(VmdConfig::default())
}

/// [`sim`] with another configuration.
pub(super) fn sim_with(config: VmdConfig) -> (Vmd, ManualClock) {
    let clock = ManualClock::new(T0);
    (Vmd::new(config, Box::new(clock.clone())), clock)
}

/// The OpenBSD driver's handshake, at natural widths.
pub(super) fn handshake(v: &mut Vmd, accept: u32) {
    v.bar_write(Reg::DEVICE_STATUS, 1, 0);
    v.bar_write(Reg::DEVICE_STATUS, 1, 1);
    v.bar_write(Reg::DEVICE_STATUS, 1, 1 | 2);
    let offered = v.bar_read(Reg::DEVICE_FEATURES, 4);
    v.bar_write(Reg::GUEST_FEATURES, 4, offered & accept);
    v.bar_write(Reg::DEVICE_STATUS, 1, 1 | 2 | 4);
}

/// A vmd whose guest finished the handshake (DRIVER_OK), accepting every
/// feature offered.
pub(super) fn ready() -> (Vmd, ManualClock) {
    ready_with(VmdConfig::default())
}

/// [`ready`] with another configuration.
pub(super) fn ready_with(config: VmdConfig) -> (Vmd, ManualClock) {
    let (mut v, c) = sim_with(config);
    handshake(&mut v, 0x7);
    (v, c)
}

/// [`ready`], then a `vmctl stop` vmd accepted: REBOOT pending, the 3 s
/// ACK timer armed, no time gone by.
pub(super) fn stop_posted() -> (Vmd, ManualClock) {
    let (mut v, c) = ready();
    v.vmctl_stop().unwrap();
    (v, c)
}

pub(super) fn read_cmd(v: &mut Vmd) -> u32 {
    v.bar_read(Reg::COMMAND, 4)
}

pub(super) fn ack(v: &mut Vmd, cmd: u32) {
    v.bar_write(Reg::COMMAND, 4, cmd);
}

pub(super) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The timer as [`Vmd::armed_timer`] reports it, at `deadline_s` seconds.
pub(super) fn armed(kind: TimerKind, deadline_s: f64) -> Option<ArmedTimer> {
    Some(ArmedTimer {
        kind,
        deadline: secs(deadline_s),
    })
}

/// Which timer is armed, if any.
pub(super) fn timer_kind(v: &Vmd) -> Option<TimerKind> {
    v.armed_timer().map(|t| t.kind)
}

/// Lets `s` seconds go by on the manual clock, then has vmd look at the
/// time, as the next access or host call would.
pub(super) fn run_for(v: &mut Vmd, c: &ManualClock, s: f64) {
    c.advance(secs(s));
    v.poll();
}

/// [`run_for`] `s` seconds, after which the VM still runs.
#[track_caller]
pub(super) fn assert_running_after(v: &mut Vmd, c: &ManualClock, s: f64) {
    run_for(v, c, s);
    assert_eq!(v.ended(), None);
}

/// [`run_for`] `s` seconds, after which the VM has ended as `end`.
#[track_caller]
pub(super) fn assert_ended_after(v: &mut Vmd, c: &ManualClock, s: f64, end: VmEnd) {
    run_for(v, c, s);
    assert_eq!(v.ended(), Some(end));
}

/// The last line of vmd's log.
pub(super) fn last_event(v: &Vmd) -> &Event {
    v.events().last().unwrap()
}

/// Why the last flagged access broke the access rule.
pub(super) fn last_violation(v: &Vmd) -> ViolationReason {
    v.violations().last().unwrap().reason
}

fn has_event(v: &Vmd, text: &str) -> bool {
    v.events().iter().any(|e| e.to_string().contains(text))
}

/// Some line of vmd's log contains `text`.
#[track_caller]
pub(super) fn assert_logged(v: &Vmd, text: &str) {
    assert!(has_event(v, text), "{text:?} not in {:#?}", v.events());
}

/// No line of vmd's log contains `text`.
#[track_caller]
pub(super) fn assert_not_logged(v: &Vmd, text: &str) {
    assert!(!has_event(v, text), "{text:?} in {:#?}", v.events());
}
