//! The register block in BAR0 (legacy virtio layout, no MSI-X).
//!
//! vmd decodes only these exact offsets; a read anywhere else returns the
//! guest's own stale EAX. So the only way to touch the device is through a
//! [`Register`], which carries its offset and its natural width.

/// Access width in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    Byte = 1,
    Word = 2,
    Dword = 4,
}

impl Width {
    pub const fn bytes(self) -> usize {
        self as usize
    }
    /// Mask of the bits one access of this width carries.
    pub const fn mask(self) -> u32 {
        match self {
            Width::Byte => 0xff,
            Width::Word => 0xffff,
            Width::Dword => 0xffff_ffff,
        }
    }
    pub const fn from_bytes(n: usize) -> Option<Width> {
        match n {
            1 => Some(Width::Byte),
            2 => Some(Width::Word),
            4 => Some(Width::Dword),
            _ => None,
        }
    }
}

/// One decoded register of the vmmci BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Register {
    DeviceFeatures,
    GuestFeatures,
    QueueAddress,
    QueueSize,
    QueueSelect,
    QueueNotify,
    DeviceStatus,
    Isr,
    Command,
    /// Reading it takes the host's `gettimeofday()` snapshot.
    TimeSecLow,
    /// Always 0 (a shift bug in vmd truncates it).
    TimeSecHigh,
    /// Microseconds of the last snapshot.
    TimeUsecLow,
    TimeUsecHigh,
}

impl Register {
    pub const DEVICE_FEATURES: u64 = 0x00;
    pub const GUEST_FEATURES: u64 = 0x04;
    pub const QUEUE_ADDRESS: u64 = 0x08;
    pub const QUEUE_SIZE: u64 = 0x0c;
    pub const QUEUE_SELECT: u64 = 0x0e;
    pub const QUEUE_NOTIFY: u64 = 0x10;
    pub const DEVICE_STATUS: u64 = 0x12;
    pub const ISR: u64 = 0x13;
    pub const COMMAND: u64 = 0x14;
    pub const TIME_SEC_LOW: u64 = 0x18;
    pub const TIME_SEC_HIGH: u64 = 0x1c;
    pub const TIME_USEC_LOW: u64 = 0x20;
    pub const TIME_USEC_HIGH: u64 = 0x24;

    pub const ALL: [Register; 13] = [
        Register::DeviceFeatures,
        Register::GuestFeatures,
        Register::QueueAddress,
        Register::QueueSize,
        Register::QueueSelect,
        Register::QueueNotify,
        Register::DeviceStatus,
        Register::Isr,
        Register::Command,
        Register::TimeSecLow,
        Register::TimeSecHigh,
        Register::TimeUsecLow,
        Register::TimeUsecHigh,
    ];

    pub const fn offset(self) -> u64 {
        match self {
            Register::DeviceFeatures => Self::DEVICE_FEATURES,
            Register::GuestFeatures => Self::GUEST_FEATURES,
            Register::QueueAddress => Self::QUEUE_ADDRESS,
            Register::QueueSize => Self::QUEUE_SIZE,
            Register::QueueSelect => Self::QUEUE_SELECT,
            Register::QueueNotify => Self::QUEUE_NOTIFY,
            Register::DeviceStatus => Self::DEVICE_STATUS,
            Register::Isr => Self::ISR,
            Register::Command => Self::COMMAND,
            Register::TimeSecLow => Self::TIME_SEC_LOW,
            Register::TimeSecHigh => Self::TIME_SEC_HIGH,
            Register::TimeUsecLow => Self::TIME_USEC_LOW,
            Register::TimeUsecHigh => Self::TIME_USEC_HIGH,
        }
    }

    /// The register's natural width. vmd itself ignores the width, but a
    /// 4-byte write at 0x12 would spill into ISR and COMMAND on a host that
    /// honoured it, so status and ISR are single bytes.
    pub const fn width(self) -> Width {
        match self {
            Register::DeviceStatus | Register::Isr => Width::Byte,
            Register::QueueSize | Register::QueueSelect | Register::QueueNotify => Width::Word,
            _ => Width::Dword,
        }
    }

    /// The register decoded at `offset`, if vmd decodes that offset.
    pub fn at(offset: u64) -> Option<Register> {
        Self::ALL.into_iter().find(|r| r.offset() == offset)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Register::DeviceFeatures => "DEVICE_FEATURES",
            Register::GuestFeatures => "GUEST_FEATURES",
            Register::QueueAddress => "QUEUE_ADDRESS",
            Register::QueueSize => "QUEUE_SIZE",
            Register::QueueSelect => "QUEUE_SELECT",
            Register::QueueNotify => "QUEUE_NOTIFY",
            Register::DeviceStatus => "DEVICE_STATUS",
            Register::Isr => "ISR",
            Register::Command => "COMMAND",
            Register::TimeSecLow => "TIME_SEC",
            Register::TimeSecHigh => "TIME_SEC_HIGH",
            Register::TimeUsecLow => "TIME_USEC",
            Register::TimeUsecHigh => "TIME_USEC_HIGH",
        }
    }
}

impl std::fmt::Display for Register {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{:#04x}", self.name(), self.offset())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_only_decoded_offsets_resolve() {
        for r in Register::ALL {
            assert_eq!(Register::at(r.offset()), Some(r));
        }
        for off in [0x01, 0x15, 0x16, 0x17, 0x19, 0x1b, 0x28, 0xfff] {
            assert_eq!(Register::at(off), None, "offset {off:#x}");
        }
    }

    #[test]
    fn natural_widths() {
        assert_eq!(Register::Command.width(), Width::Dword);
        assert_eq!(Register::TimeSecLow.width(), Width::Dword);
        assert_eq!(Register::DeviceStatus.width(), Width::Byte);
        assert_eq!(Register::Isr.width(), Width::Byte);
        assert_eq!(Register::QueueSelect.width(), Width::Word);
        assert_eq!(Width::from_bytes(3), None);
        assert_eq!(Width::Word.mask(), 0xffff);
    }
}
