//! The vmmci device as OpenBSD's vmd implements it: PCI identity, register
//! block, feature and status bits, commands, and the arithmetic of a host
//! time sample. Pure: no I/O here, so both the agent and the simulator can
//! share one definition of the wire.
//!
//! The host side's behaviour is written down in `docs/protocol.md`;
//! names below follow vmd's `virtio.h` and the OpenBSD guest driver.

#![forbid(unsafe_code)]

mod command;
mod register;
mod time;

pub use command::{Command, UnknownCommand};
pub use register::{Register, Width};
pub use time::{
    Drift, HostTime, HostTimeError, TimeSample, HOST_RESOLUTION_NS, MAX_AHEAD_OF_BUILD_SECS,
    NANOS_PER_SEC,
};

/// PCI identity of the vmmci device (vmd's `pci.c`/`virtio.c`).
pub mod pci {
    /// OpenBSD's PCI vendor id.
    pub const VENDOR_ID: u16 = 0x0b5d;
    /// "VMM Control".
    pub const DEVICE_ID: u16 = 0x0777;
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x0b5d;
    /// The virtio device id of vmmci, carried as the subsystem id.
    pub const SUBSYSTEM_DEVICE_ID: u16 = 0xffff;
    /// Legacy virtio 0.9 (vmd gives its virtio 1.x devices revision 1).
    pub const REVISION: u8 = 0;
    /// Communications controller / other.
    pub const CLASS: u8 = 0x07;
    pub const SUBCLASS: u8 = 0x80;
    /// BAR0 is an I/O-port BAR of this size; there is no other BAR.
    pub const BAR0_SIZE: u32 = 0x1000;
    /// vmd's host bridge, at device 0.
    pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0666;
}

/// Feature bits offered at 0x00 and accepted at 0x04.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Features(pub u32);

impl Features {
    /// The host publishes its clock in the time registers.
    pub const TIMESYNC: Features = Features(1 << 0);
    /// The guest acknowledges SHUTDOWN/REBOOT by writing them back.
    pub const ACK: Features = Features(1 << 1);
    /// The host may send SYNCRTC after a host clock jump.
    pub const SYNCRTC: Features = Features(1 << 2);
    /// Everything this agent knows how to use.
    pub const SUPPORTED: Features = Features(0x7);
    pub const NONE: Features = Features(0);

    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn intersection(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }
    pub const fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }
    /// Names of the known bits that are set, for logs and status.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::TIMESYNC, "TIMESYNC"),
            (Self::ACK, "ACK"),
            (Self::SYNCRTC, "SYNCRTC"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.contains(*bit))
        .map(|(_, name)| name)
        .collect()
    }
}

impl std::fmt::Display for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self.names();
        if names.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", names.join("|"))
        }
    }
}

/// Virtio device status bits written at 0x12 (OR-ed during the handshake).
pub mod status {
    pub const RESET: u8 = 0;
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FAILED: u8 = 0x80;
}

/// ISR bit vmd sets when it posts a command (config change).
pub const ISR_CONFIG_CHANGE: u8 = 2;

/// vmd's deadlines, from `virtio.h`.
pub mod timeouts {
    use std::time::Duration;
    /// `VMMCI_TIMEOUT` / `_SHORT`: the guest must ACK within this, and a
    /// guest-initiated SHUTDOWN ends the VM after it.
    pub const ACK: Duration = Duration::from_secs(3);
    /// `VMMCI_SHUTDOWN_TIMEOUT` / `_LONG` since 2023 (30 s before 2019).
    pub const SHUTDOWN_LONG: Duration = Duration::from_secs(120);
    pub const SHUTDOWN_LONG_BEFORE_2019: Duration = Duration::from_secs(30);
    /// vmd sends SYNCRTC when host `time()` advanced by more than this
    /// between two RTC ticks.
    pub const RTC_DRIFT_SECS: i64 = 5;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_names_and_ops() {
        let offered = Features(0x7);
        assert_eq!(offered.names(), vec!["TIMESYNC", "ACK", "SYNCRTC"]);
        assert_eq!(offered.to_string(), "TIMESYNC|ACK|SYNCRTC");
        let accepted = Features(0x1).intersection(Features::SUPPORTED);
        assert!(!accepted.contains(Features::ACK));
        assert_eq!(Features::NONE.to_string(), "none");
        // Bits we do not know are never accepted.
        assert_eq!(
            Features(0xffff_fff8).intersection(Features::SUPPORTED),
            Features::NONE
        );
    }
}
