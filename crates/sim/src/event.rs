//! What the simulated vmd did and saw: its log, how the VM ended, and every
//! guest access that broke the access rule.

use std::fmt;
use std::time::Duration;

use crate::vmd_tables::{Reg, VmmciCmd};

/// How the VM ended. vmd never restarts a VM that ended one of these ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmEnd {
    /// The guest reset (rebooted) while a stop was in progress.
    CleanStop,
    /// SHUTDOWN/REBOOT posted and not acknowledged within the ACK timeout.
    AckTimeout,
    /// Acknowledged, but no reset within the long timeout after the last ACK.
    LongTimeout,
    /// The guest wrote SHUTDOWN with nothing pending; vmd ended it 3 s later.
    PowerDown,
    /// The guest executed HLT with interrupts off (how a Linux power-off or
    /// halt ends without ACPI): vmm(4) returns EIO, the vcpu fails and vmd
    /// ends the VM at once, stopping or not. vmd logs a failed vcpu.
    Halted,
    /// A non-forced stop before the guest set DRIVER_OK: vmd ends it at once.
    Refused,
    /// `vmctl stop -f`.
    Forced,
}

impl fmt::Display for VmEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmEnd::CleanStop => "clean stop (guest reset while stopping)",
            VmEnd::AckTimeout => "ack timeout",
            VmEnd::LongTimeout => "long timeout (acknowledged, but no reset)",
            VmEnd::PowerDown => "guest power-down",
            VmEnd::Halted => "guest halted with interrupts off: vcpu failed (vmm EIO)",
            VmEnd::Refused => "stop refused (no DRIVER_OK), ended at once",
            VmEnd::Forced => "forced stop",
        })
    }
}

/// One line of the simulated vmd's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Host monotonic time since [`crate::Vmd::new`]. Timer and RTC tick
    /// events carry the time they were due, not the time they were noticed.
    pub at: Duration,
    pub kind: EventKind,
}

/// Display is the log line; `{:#}` prefixes the time.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            write!(f, "[{:>10.3}] {}", self.at.as_secs_f64(), self.kind)
        } else {
            write!(f, "{}", self.kind)
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A write vmd logs as illegal (device features, queue size, ISR).
    IllegalWrite { reg: Reg, value: u32 },
    /// A write to a time register; vmd drops it without a word.
    IgnoredWrite { reg: Reg, value: u32 },
    /// A COMMAND write that is not one of the four commands.
    IllegalRequest { value: u32 },
    /// Status 0 written while a command, ISR or timer was live: vmd only
    /// stores the 0, they all survive.
    StatusZero { pending: u32 },
    /// `vmmci_ctl` posted a command; `timer` is the ACK timeout it armed.
    Posted {
        cmd: VmmciCmd,
        timer: Option<Duration>,
    },
    /// `vmmci_ctl` refused: no DRIVER_OK.
    CtlRefused { cmd: VmmciCmd },
    /// `vmmci_ctl` with the pending command: nothing done, no timer.
    CtlAlreadyPending { cmd: VmmciCmd },
    /// SYNCRTC requested but the guest did not accept the feature.
    RtcSyncSkipped,
    /// Test hook: a raw value put in COMMAND.
    RawCommand { value: u32 },
    /// The guest wrote back the pending SHUTDOWN/REBOOT.
    Ack { cmd: VmmciCmd, long: Duration },
    /// SHUTDOWN/REBOOT written that matches nothing: vmd does nothing.
    AckIgnored { cmd: VmmciCmd, pending: u32 },
    /// SHUTDOWN written with nothing pending: the guest is powering down.
    GuestShutdown { timeout: Duration },
    /// SYNCRTC written: vmd clears the pending command, whatever it was.
    RtcSyncAcked { was: u32 },
    /// Non-forced stop: VM marked stopping, command about to be sent.
    StopRequested { cmd: VmmciCmd },
    /// A second non-forced stop while one is in progress.
    AlreadyStopping,
    /// The host clock was stepped by this much.
    ClockJump { delta_ns: i64 },
    /// The RTC tick saw host `time()` advance by more than 5 s.
    RtcDrift { secs: i64 },
    /// The RTC tick saw an odd step that vmd does not act on.
    RtcNoResync { secs: i64 },
    /// The guest reset with no stop in progress: vmd restarts the VM.
    GuestReset,
    /// The guest executed HLT with interrupts off: vmm(4) fails the vcpu
    /// run with EIO. Always followed by [`EventKind::Ended`]`(`[`VmEnd::Halted`]`)`.
    GuestHalted,
    /// The VM is gone.
    Ended(VmEnd),
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::IllegalWrite { reg, value } => {
                write!(f, "vmmci: illegal write {value:#x} to {}", reg.name())
            }
            EventKind::IgnoredWrite { reg, value } => {
                write!(f, "vmmci: write {value:#x} to {} ignored (read-only)", reg.name())
            }
            EventKind::IllegalRequest { value } => write!(f, "vmmci_ack: illegal request {value}"),
            EventKind::StatusZero { pending } => write!(
                f,
                "vmmci: guest wrote status 0; no real reset, pending command {pending:#x}, ISR and timers survive"
            ),
            EventKind::Posted { cmd, timer: Some(t) } => write!(
                f,
                "vmmci_ctl: {cmd} posted, ISR=2, ack timer armed ({})",
                secs(*t)
            ),
            EventKind::Posted { cmd, timer: None } => {
                write!(f, "vmmci_ctl: {cmd} posted, ISR=2, no timer")
            }
            EventKind::CtlRefused { cmd } => {
                write!(f, "vmmci_ctl: {cmd} refused, guest has not set DRIVER_OK")
            }
            EventKind::CtlAlreadyPending { cmd } => {
                write!(f, "vmmci_ctl: {cmd} already pending, nothing done")
            }
            EventKind::RtcSyncSkipped => {
                write!(f, "vmmci_ctl: RTC sync skipped (guest does not support RTC sync)")
            }
            EventKind::RawCommand { value } => {
                write!(f, "test: COMMAND set to {value:#x}, ISR=2, no timer")
            }
            EventKind::Ack { cmd, long } => write!(
                f,
                "vmmci: ack received for {cmd}, long timer armed ({})",
                secs(*long)
            ),
            EventKind::AckIgnored { cmd, pending } => write!(
                f,
                "vmmci_ack: {cmd} written while {pending:#x} pending, not an ack, ignored"
            ),
            EventKind::GuestShutdown { timeout } => write!(
                f,
                "vmmci_ack: guest requested shutdown, timer armed ({})",
                secs(*timeout)
            ),
            EventKind::RtcSyncAcked { was } => write!(
                f,
                "vmmci_ack: guest acknowledged RTC sync request, pending command {was:#x} cleared"
            ),
            EventKind::StopRequested { cmd } => {
                write!(f, "vmd: VM marked stopping, sending {cmd}")
            }
            EventKind::AlreadyStopping => {
                write!(f, "vmd: VM already stopping, nothing sent")
            }
            EventKind::ClockJump { delta_ns } => write!(
                f,
                "host: clock stepped by {:+.3} s",
                *delta_ns as f64 / 1e9
            ),
            EventKind::RtcDrift { secs } => write!(
                f,
                "rtc_fire1: RTC clock drift ({secs}s), requesting guest resync"
            ),
            EventKind::RtcNoResync { secs } => write!(
                f,
                "rtc_fire1: host time moved {secs:+} s between ticks, no forward jump of more than 5 s, no resync"
            ),
            EventKind::GuestReset => write!(f, "vmd: VM reset, restarting (fresh vmmci device)"),
            EventKind::GuestHalted => {
                write!(f, "vcpu_run_loop: vcpu run failed (EIO): guest HLT with interrupts off")
            }
            EventKind::Ended(end) => write!(f, "VM ended: {end}"),
        }
    }
}

/// "3 s", or "2.500 s" for a fractional timeout.
fn secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

/// Why an access broke the access rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationReason {
    /// Past the end of BAR0: not even vmmci's port range.
    OutsideBar,
    /// Not 1, 2 or 4 bytes.
    BadSize,
    /// vmd decodes nothing here: a read returns the guest's stale EAX.
    Undecoded,
    /// A decoded register, but not at its natural width (`natural` bytes).
    WrongWidth { reg: Reg, natural: u8 },
}

impl fmt::Display for ViolationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViolationReason::OutsideBar => write!(f, "outside BAR0"),
            ViolationReason::BadSize => write!(f, "access size is not 1, 2 or 4 bytes"),
            ViolationReason::Undecoded => {
                write!(
                    f,
                    "undecoded offset (vmd leaves the guest's EAX as it was: junk)"
                )
            }
            ViolationReason::WrongWidth { reg, natural } => {
                write!(f, "{} is {natural} byte(s) wide", reg.name())
            }
        }
    }
}

/// One access that broke the access rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessViolation {
    /// Host monotonic time since [`crate::Vmd::new`].
    pub at: Duration,
    pub offset: u64,
    pub size: u8,
    pub write: bool,
    pub reason: ViolationReason,
}

impl fmt::Display for AccessViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} byte(s) at {:#x}: {}",
            if self.write { "write" } else { "read" },
            self.size,
            self.offset,
            self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_read_like_vmd() {
        let ack = EventKind::Ack {
            cmd: VmmciCmd::Reboot,
            long: Duration::from_secs(120),
        };
        assert_eq!(
            ack.to_string(),
            "vmmci: ack received for REBOOT, long timer armed (120 s)"
        );
        let end = Event {
            at: Duration::from_millis(3000),
            kind: EventKind::Ended(VmEnd::AckTimeout),
        };
        assert_eq!(end.to_string(), "VM ended: ack timeout");
        assert_eq!(format!("{end:#}"), "[     3.000] VM ended: ack timeout");
        assert_eq!(
            EventKind::Ended(VmEnd::Halted).to_string(),
            "VM ended: guest halted with interrupts off: vcpu failed (vmm EIO)"
        );
        assert_eq!(
            EventKind::RtcDrift { secs: 91 }.to_string(),
            "rtc_fire1: RTC clock drift (91s), requesting guest resync"
        );
        assert_eq!(
            EventKind::Posted {
                cmd: VmmciCmd::Reboot,
                timer: Some(Duration::from_millis(2500))
            }
            .to_string(),
            "vmmci_ctl: REBOOT posted, ISR=2, ack timer armed (2.500 s)"
        );
        assert_eq!(
            EventKind::ClockJump {
                delta_ns: -40_000_000_000
            }
            .to_string(),
            "host: clock stepped by -40.000 s"
        );
    }

    #[test]
    fn violation_lines() {
        let v = AccessViolation {
            at: Duration::ZERO,
            offset: 0x12,
            size: 4,
            write: true,
            reason: ViolationReason::WrongWidth {
                reg: Reg::DeviceStatus,
                natural: 1,
            },
        };
        assert_eq!(
            v.to_string(),
            "write of 4 byte(s) at 0x12: DEVICE_STATUS is 1 byte(s) wide"
        );
    }
}
