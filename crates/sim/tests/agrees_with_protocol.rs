//! The one place where the agent's wire definitions (`vmmci-protocol`) and
//! the simulator's own transcription of vmd (`vmd_sim::vmd_tables`) meet.
//! Everywhere else each side uses only its own table, so a constant that is
//! wrong on one side fails here, and in the agent's tests against the
//! simulator, instead of being shared by both.

use vmd_sim::vmd_tables::{features, pci, status, timeouts, Reg, VmmciCmd, ISR_CONFIG_CHANGE};
use vmmci_protocol as protocol;
use vmmci_protocol::{Command, Features, Register};

/// Each of the simulator's constants equals the agent's, named on failure.
macro_rules! agree {
    ($($ours:expr => $theirs:expr),+ $(,)?) => {
        $(assert_eq!($ours, $theirs, "{}", stringify!($ours));)+
    };
}

#[test]
fn every_register_has_the_same_offset_width_and_name() {
    assert_eq!(Reg::ALL.len(), Register::ALL.len());
    for theirs in Register::ALL {
        let ours = Reg::at(theirs.offset())
            .unwrap_or_else(|| panic!("vmd decodes nothing at {theirs}'s offset"));
        assert_eq!(ours.name(), theirs.name(), "at {:#x}", theirs.offset());
        assert_eq!(
            usize::from(ours.width()),
            theirs.width().bytes(),
            "{theirs}'s width"
        );
    }
    for ours in Reg::ALL {
        assert!(
            Register::at(ours.offset()).is_some(),
            "{ours} unknown to the agent"
        );
    }
}

#[test]
fn every_command_has_the_same_code_and_name() {
    assert_eq!(VmmciCmd::ALL.len(), 4);
    for ours in VmmciCmd::ALL {
        let theirs = Command::from_raw(ours.code())
            .unwrap_or_else(|e| panic!("{ours} is not a command to the agent: {e}"));
        assert_eq!(theirs.name(), ours.name());
        assert_eq!(theirs.raw(), ours.code());
    }
    let codes = [
        Command::NONE,
        Command::SHUTDOWN,
        Command::REBOOT,
        Command::SYNCRTC,
    ];
    for code in codes {
        assert!(
            VmmciCmd::from_code(code).is_some(),
            "vmd has no command {code}"
        );
    }
}

#[test]
fn status_and_isr_bits_agree() {
    agree!(
        status::RESET => protocol::status::RESET,
        status::ACKNOWLEDGE => protocol::status::ACKNOWLEDGE,
        status::DRIVER => protocol::status::DRIVER,
        status::DRIVER_OK => protocol::status::DRIVER_OK,
        status::FAILED => protocol::status::FAILED,
        ISR_CONFIG_CHANGE => protocol::ISR_CONFIG_CHANGE,
    );
}

#[test]
fn feature_bits_agree() {
    agree!(
        features::TIMESYNC => Features::TIMESYNC.0,
        features::ACK => Features::ACK.0,
        features::SYNCRTC => Features::SYNCRTC.0,
        // The agent supports exactly what vmd offers.
        features::OFFERED => Features::SUPPORTED.0,
    );
}

#[test]
fn pci_identity_agrees() {
    agree!(
        pci::VENDOR_ID => protocol::pci::VENDOR_ID,
        pci::DEVICE_ID => protocol::pci::DEVICE_ID,
        pci::SUBSYSTEM_VENDOR_ID => protocol::pci::SUBSYSTEM_VENDOR_ID,
        pci::SUBSYSTEM_DEVICE_ID => protocol::pci::SUBSYSTEM_DEVICE_ID,
        pci::REVISION => protocol::pci::REVISION,
        pci::CLASS => protocol::pci::CLASS,
        pci::SUBCLASS => protocol::pci::SUBCLASS,
        pci::IO_BAR_SIZE => protocol::pci::BAR0_SIZE,
        pci::HOST_BRIDGE_DEVICE_ID => protocol::pci::HOST_BRIDGE_DEVICE_ID,
    );
}

#[test]
fn timeouts_agree() {
    agree!(
        timeouts::SHORT => protocol::timeouts::ACK,
        timeouts::LONG => protocol::timeouts::SHUTDOWN_LONG,
        timeouts::LONG_BEFORE_2019 => protocol::timeouts::SHUTDOWN_LONG_BEFORE_2019,
        timeouts::RTC_DRIFT_SECS => protocol::timeouts::RTC_DRIFT_SECS,
    );
}
