//! What every test of the device model starts from: a simulator on a
//! manual clock, driven the way the sysfs transport drives the device, by
//! raw (offset, size, value) accesses at offsets from [`Reg`].

pub(super) use std::time::Duration;

pub(super) use crate::clock::{HostClock, ManualClock, NANOS_PER_SEC};
pub(super) use crate::event::{EventKind, ViolationReason, VmEnd};
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

pub(super) fn sim() -> (Vmd, ManualClock) {
    let clock = ManualClock::new(T0);
    (
        Vmd::new(VmdConfig::default(), Box::new(clock.clone())),
        clock,
    )
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

pub(super) fn ready() -> (Vmd, ManualClock) {
    let (mut v, c) = sim();
    handshake(&mut v, 0x7);
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

pub(super) fn has_event(v: &Vmd, text: &str) -> bool {
    v.events().iter().any(|e| e.to_string().contains(text))
}
