//! vmd's own numbers for the vmmci device, transcribed from OpenBSD's
//! sources, not taken from `vmmci-protocol`. The simulator's device model
//! uses only these, so a wrong constant on the agent's side is a
//! disagreement a test can see. `tests/agrees_with_protocol.rs` is the one
//! place where the two tables meet.
//!
//! Sources (OpenBSD `src`): `usr.sbin/vmd/virtio.c` (`virtio_init()`,
//! `vmmci_io()`, `vmmci_ctl()`, `vmmci_ack()`), `usr.sbin/vmd/virtio.h`,
//! `usr.sbin/vmd/mc146818.c` (`rtc_fire1()`), `sys/dev/pv/virtioreg.h`,
//! `sys/dev/pci/pcidevs.h`, `sys/dev/pci/pcireg.h`,
//! `sys/arch/amd64/include/vmmvar.h`. Decimal where the source is decimal.

use std::fmt;
use std::time::Duration;

/// PCI identity: the `pci_add_device()` call for "Virtio 0.9 VMM Control
/// Interface" in virtio.c `virtio_init()`, and the BAR `pci_add_bar()`
/// maps for it.
pub mod pci {
    /// `PCI_VENDOR_OPENBSD` (pcidevs.h).
    pub const VENDOR_ID: u16 = 0x0b5d;
    /// `PCI_PRODUCT_OPENBSD_CONTROL`, "VMM Control" (pcidevs.h).
    pub const DEVICE_ID: u16 = 0x0777;
    /// `PCI_VENDOR_OPENBSD` again, as the subsystem vendor.
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x0b5d;
    /// `PCI_PRODUCT_VIRTIO_VMMCI`, "private id" (virtioreg.h).
    pub const SUBSYSTEM_DEVICE_ID: u16 = 65535;
    /// The revision argument of `pci_add_device()`: 0, legacy virtio.
    pub const REVISION: u8 = 0;
    /// `PCI_CLASS_COMMUNICATIONS` (pcireg.h).
    pub const CLASS: u8 = 0x07;
    /// `PCI_SUBCLASS_COMMUNICATIONS_MISC` (pcireg.h).
    pub const SUBCLASS: u8 = 0x80;
    /// `VMM_PCI_IO_BAR_SIZE` (vmmvar.h): every I/O BAR `pci_add_bar()` maps.
    pub const IO_BAR_SIZE: u32 = 0x1000;
    /// `PCI_PRODUCT_OPENBSD_PCHB`, "VMM Host" (pcidevs.h), at device 0.
    pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0666;
}

/// A register vmd's `vmmci_io()` (virtio.c) decodes in BAR0; any other
/// offset falls through its `switch (reg)` untouched.
///
/// Offsets: the virtio 0.9 header is `VIRTIO_CONFIG_*` from virtioreg.h
/// (vmd's virtio.h renames QUEUE_ADDRESS to `VIRTIO_CONFIG_QUEUE_PFN`);
/// vmmci's own registers are `VIRTIO_CONFIG_DEVICE_CONFIG_NOMSI` + 0, 4, 8,
/// 12 and 16 in `vmmci_io()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reg {
    DeviceFeatures,
    GuestFeatures,
    QueueAddress,
    QueueSize,
    QueueSelect,
    QueueNotify,
    DeviceStatus,
    Isr,
    /// `DEVICE_CONFIG_NOMSI`: read `v->cmd`, write `vmmci_ack()`.
    Command,
    /// `+ 4`: `gettimeofday(&v->time)`, then `tv_sec`.
    TimeSecLow,
    /// `+ 8`: `tv_sec << 32` stored into 32 bits: always 0.
    TimeSecHigh,
    /// `+ 12`: `tv_usec` of the last snapshot.
    TimeUsecLow,
    /// `+ 16`: `tv_usec << 32`: always 0.
    TimeUsecHigh,
}

impl Reg {
    /// `VIRTIO_CONFIG_DEVICE_FEATURES`, 32 bit.
    pub const DEVICE_FEATURES: u64 = 0;
    /// `VIRTIO_CONFIG_GUEST_FEATURES`, 32 bit.
    pub const GUEST_FEATURES: u64 = 4;
    /// `VIRTIO_CONFIG_QUEUE_ADDRESS` (`_QUEUE_PFN` in vmd), 32 bit.
    pub const QUEUE_ADDRESS: u64 = 8;
    /// `VIRTIO_CONFIG_QUEUE_SIZE`, 16 bit.
    pub const QUEUE_SIZE: u64 = 12;
    /// `VIRTIO_CONFIG_QUEUE_SELECT`, 16 bit.
    pub const QUEUE_SELECT: u64 = 14;
    /// `VIRTIO_CONFIG_QUEUE_NOTIFY`, 16 bit.
    pub const QUEUE_NOTIFY: u64 = 16;
    /// `VIRTIO_CONFIG_DEVICE_STATUS`, 8 bit.
    pub const DEVICE_STATUS: u64 = 18;
    /// `VIRTIO_CONFIG_ISR_STATUS`, 8 bit.
    pub const ISR: u64 = 19;
    /// `VIRTIO_CONFIG_DEVICE_CONFIG_NOMSI`: where vmmci's config starts.
    const DEVICE_CONFIG_NOMSI: u64 = 20;
    pub const COMMAND: u64 = Self::DEVICE_CONFIG_NOMSI;
    pub const TIME_SEC_LOW: u64 = Self::DEVICE_CONFIG_NOMSI + 4;
    pub const TIME_SEC_HIGH: u64 = Self::DEVICE_CONFIG_NOMSI + 8;
    pub const TIME_USEC_LOW: u64 = Self::DEVICE_CONFIG_NOMSI + 12;
    pub const TIME_USEC_HIGH: u64 = Self::DEVICE_CONFIG_NOMSI + 16;

    pub const ALL: [Reg; 13] = [
        Reg::DeviceFeatures,
        Reg::GuestFeatures,
        Reg::QueueAddress,
        Reg::QueueSize,
        Reg::QueueSelect,
        Reg::QueueNotify,
        Reg::DeviceStatus,
        Reg::Isr,
        Reg::Command,
        Reg::TimeSecLow,
        Reg::TimeSecHigh,
        Reg::TimeUsecLow,
        Reg::TimeUsecHigh,
    ];

    pub const fn offset(self) -> u64 {
        match self {
            Reg::DeviceFeatures => Self::DEVICE_FEATURES,
            Reg::GuestFeatures => Self::GUEST_FEATURES,
            Reg::QueueAddress => Self::QUEUE_ADDRESS,
            Reg::QueueSize => Self::QUEUE_SIZE,
            Reg::QueueSelect => Self::QUEUE_SELECT,
            Reg::QueueNotify => Self::QUEUE_NOTIFY,
            Reg::DeviceStatus => Self::DEVICE_STATUS,
            Reg::Isr => Self::ISR,
            Reg::Command => Self::COMMAND,
            Reg::TimeSecLow => Self::TIME_SEC_LOW,
            Reg::TimeSecHigh => Self::TIME_SEC_HIGH,
            Reg::TimeUsecLow => Self::TIME_USEC_LOW,
            Reg::TimeUsecHigh => Self::TIME_USEC_HIGH,
        }
    }

    /// The natural width in bytes: the field sizes virtioreg.h gives the
    /// header, and 32 bits for vmmci's config words (`uint32_t *data`).
    /// vmd itself ignores the access size.
    pub const fn width(self) -> u8 {
        match self {
            Reg::DeviceStatus | Reg::Isr => 1,
            Reg::QueueSize | Reg::QueueSelect | Reg::QueueNotify => 2,
            _ => 4,
        }
    }

    /// The register `vmmci_io()` decodes at `offset`, if any.
    pub fn at(offset: u64) -> Option<Reg> {
        Self::ALL.into_iter().find(|r| r.offset() == offset)
    }

    /// The name in vmd's log lines and in docs/protocol.md.
    pub const fn name(self) -> &'static str {
        match self {
            Reg::DeviceFeatures => "DEVICE_FEATURES",
            Reg::GuestFeatures => "GUEST_FEATURES",
            Reg::QueueAddress => "QUEUE_ADDRESS",
            Reg::QueueSize => "QUEUE_SIZE",
            Reg::QueueSelect => "QUEUE_SELECT",
            Reg::QueueNotify => "QUEUE_NOTIFY",
            Reg::DeviceStatus => "DEVICE_STATUS",
            Reg::Isr => "ISR",
            Reg::Command => "COMMAND",
            Reg::TimeSecLow => "TIME_SEC",
            Reg::TimeSecHigh => "TIME_SEC_HIGH",
            Reg::TimeUsecLow => "TIME_USEC",
            Reg::TimeUsecHigh => "TIME_USEC_HIGH",
        }
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{:#04x}", self.name(), self.offset())
    }
}

/// vmd's `enum vmmci_cmd` (virtio.h), as `vmmci_ctl()` posts it and
/// `vmmci_ack()` switches on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmmciCmd {
    /// `VMMCI_NONE`.
    None = 0,
    /// `VMMCI_SHUTDOWN`.
    Shutdown = 1,
    /// `VMMCI_REBOOT`.
    Reboot = 2,
    /// `VMMCI_SYNCRTC`.
    SyncRtc = 3,
}

impl VmmciCmd {
    pub const ALL: [VmmciCmd; 4] = [
        VmmciCmd::None,
        VmmciCmd::Shutdown,
        VmmciCmd::Reboot,
        VmmciCmd::SyncRtc,
    ];

    /// The value in COMMAND.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The command `vmmci_ack()` has a case for; `None` for its `default:`.
    pub fn from_code(code: u32) -> Option<VmmciCmd> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    pub const fn name(self) -> &'static str {
        match self {
            VmmciCmd::None => "NONE",
            VmmciCmd::Shutdown => "SHUTDOWN",
            VmmciCmd::Reboot => "REBOOT",
            VmmciCmd::SyncRtc => "SYNCRTC",
        }
    }
}

impl fmt::Display for VmmciCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Device status bits, `VIRTIO_CONFIG_DEVICE_STATUS_*` (virtioreg.h).
/// `vmmci_ctl()` tests `DRIVER_OK`.
pub mod status {
    pub const RESET: u8 = 0;
    /// `VIRTIO_CONFIG_DEVICE_STATUS_ACK`.
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FAILED: u8 = 128;
}

/// `VIRTIO_CONFIG_ISR_CONFIG_CHANGE` (virtioreg.h): what `vmmci_ctl()`
/// puts in ISR when it posts a command.
pub const ISR_CONFIG_CHANGE: u8 = 2;

/// vmmci's feature bits, `VMMCI_F_*` (virtio.c, later virtio.h).
pub mod features {
    /// `VMMCI_F_TIMESYNC`.
    pub const TIMESYNC: u32 = 1 << 0;
    /// `VMMCI_F_ACK`.
    pub const ACK: u32 = 1 << 1;
    /// `VMMCI_F_SYNCRTC`: `vmmci_ctl()` posts SYNCRTC only if the guest
    /// accepted it.
    pub const SYNCRTC: u32 = 1 << 2;
    /// What `virtio_init()` offers: `VMMCI_F_TIMESYNC | VMMCI_F_ACK |
    /// VMMCI_F_SYNCRTC`.
    pub const OFFERED: u32 = TIMESYNC | ACK | SYNCRTC;
}

/// vmd's deadlines.
pub mod timeouts {
    use super::Duration;

    /// `VMMCI_TIMEOUT_SHORT` (virtio.h; `VMMCI_TIMEOUT` before 2025): the
    /// ACK timer `vmmci_ctl()` arms, and the one a guest's own SHUTDOWN
    /// write arms in `vmmci_ack()`.
    pub const SHORT: Duration = Duration::from_secs(3);
    /// `VMMCI_TIMEOUT_LONG` (virtio.h; `VMMCI_SHUTDOWN_TIMEOUT` from
    /// 2023): what a matching ACK re-arms the timer with.
    pub const LONG: Duration = Duration::from_secs(120);
    /// `VMMCI_SHUTDOWN_TIMEOUT` up to 2019 (virtio.h 1.35).
    pub const LONG_BEFORE_2019: Duration = Duration::from_secs(30);
    /// mc146818.c: `rtc_fire1()` re-arms itself every second.
    pub const RTC_TICK: Duration = Duration::from_secs(1);
    /// mc146818.c `rtc_fire1()`: `if (rtc.now - old > 5)` it logs the
    /// drift and calls `vmmci_ctl(VMMCI_SYNCRTC)`.
    pub const RTC_DRIFT_SECS: i64 = 5;
}
