//! Commands the host posts in COMMAND (0x14).

/// A command vmd can post. Any other value in COMMAND is not a command and
/// must never cause an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    None,
    /// Power off (no vmd code path sends it today; the protocol allows it).
    /// Written by the guest with nothing pending, it is OpenBSD's power-down
    /// signal (vmd ends the VM 3 s later); a Linux guest never needs it, its
    /// halt (HLT with interrupts off) ends the VM at once.
    Shutdown,
    /// What `vmctl stop` sends: the guest reboots and vmd ends the VM on reset.
    Reboot,
    /// The host clock jumped; re-read it from the time registers.
    SyncRtc,
}

/// A COMMAND value that is not one of vmd's commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnknownCommand(pub u32);

impl std::fmt::Display for UnknownCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown command value {:#x}", self.0)
    }
}

impl std::error::Error for UnknownCommand {}

impl Command {
    pub const NONE: u32 = 0;
    pub const SHUTDOWN: u32 = 1;
    pub const REBOOT: u32 = 2;
    pub const SYNCRTC: u32 = 3;

    pub const fn raw(self) -> u32 {
        match self {
            Command::None => Self::NONE,
            Command::Shutdown => Self::SHUTDOWN,
            Command::Reboot => Self::REBOOT,
            Command::SyncRtc => Self::SYNCRTC,
        }
    }

    /// Exactly one of the four values; the full 32 bits must match, so a
    /// junk read whose low byte happens to be 2 is not a REBOOT.
    pub const fn from_raw(value: u32) -> Result<Command, UnknownCommand> {
        match value {
            Self::NONE => Ok(Command::None),
            Self::SHUTDOWN => Ok(Command::Shutdown),
            Self::REBOOT => Ok(Command::Reboot),
            Self::SYNCRTC => Ok(Command::SyncRtc),
            other => Err(UnknownCommand(other)),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Command::None => "NONE",
            Command::Shutdown => "SHUTDOWN",
            Command::Reboot => "REBOOT",
            Command::SyncRtc => "SYNCRTC",
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip() {
        for c in [
            Command::None,
            Command::Shutdown,
            Command::Reboot,
            Command::SyncRtc,
        ] {
            assert_eq!(Command::from_raw(c.raw()), Ok(c));
        }
    }

    #[test]
    fn anything_else_is_not_a_command() {
        for v in [4, 7, 0xdead_beef, 0xffff_ffff, 0x0000_0102, 0x1_0002] {
            assert_eq!(Command::from_raw(v), Err(UnknownCommand(v)));
        }
        assert_eq!(UnknownCommand(7).to_string(), "unknown command value 0x7");
    }
}
