//! What the agent acts on outside the device: the guest's clock and the
//! guest's power. Real implementations live in `vmmci-actions`; tests and
//! `vmmci simulate` use harmless ones, so nothing but `vmmci daemon` can
//! move this machine's clock or power it off.

use std::fmt;

use crate::rate::Rate;

/// The guest's CLOCK_REALTIME.
pub trait GuestClock {
    /// Nanoseconds since the Unix epoch.
    fn now_ns(&self) -> i64;
    /// Move the clock by `delta_ns` (positive: forward), in one atomic
    /// adjustment so that time spent before the call does not matter.
    fn step(&mut self, delta_ns: i64) -> Result<(), ClockError>;
    /// The kernel's rate correction now in effect: tick and frequency
    /// (`Rate::total_ppm`, positive: the clock runs faster than its
    /// oscillator).
    fn rate(&self) -> Result<Rate, ClockError> {
        Ok(Rate::NOMINAL)
    }
    /// Set that correction: how `discipline` slews, with no jump in time.
    fn set_rate(&mut self, rate: Rate) -> Result<(), ClockError> {
        let _ = rate;
        Err(ClockError::Failed("this clock cannot be slewed".into()))
    }
    /// Another time daemon that disciplines this clock, named, if one runs:
    /// `discipline` then stands back.
    fn disciplined_by(&self) -> Option<String> {
        None
    }
    /// Whether the kernel marks this clock synchronised (`STA_UNSYNC`
    /// clear), which only a time daemon does; `None`: cannot tell.
    fn kernel_synchronised(&self) -> Option<bool> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("not permitted to set the clock (needs root or CAP_SYS_TIME): {0}")]
    NotPermitted(String),
    #[error("setting the clock failed: {0}")]
    Failed(String),
}

/// What a power command asks of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerAction::Reboot => "reboot",
            PowerAction::Poweroff => "poweroff",
        })
    }
}

/// The guest's power, through its init system first and by force last.
pub trait Power {
    /// Start an orderly reboot or power-off through the init system and
    /// return once it is under way.
    fn begin(&mut self, action: PowerAction) -> Result<(), PowerError>;
    /// Flush file system buffers, waiting at most `wait` (a hung sync(2),
    /// e.g. on a dead network file system, must not stop the agent from
    /// serving the device). True if it finished in time.
    fn sync_disks(&mut self, wait: std::time::Duration) -> bool;
    /// The orderly path failed or did not finish in time: do it now, as the
    /// kernel's `orderly_reboot`/`orderly_poweroff` fallback does.
    fn force(&mut self, action: PowerAction) -> Result<(), PowerError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action} failed: {reason}")]
pub struct PowerError {
    pub action: PowerAction,
    pub reason: String,
}

impl<T: GuestClock + ?Sized> GuestClock for &mut T {
    fn now_ns(&self) -> i64 {
        (**self).now_ns()
    }
    fn step(&mut self, delta_ns: i64) -> Result<(), ClockError> {
        (**self).step(delta_ns)
    }
    fn rate(&self) -> Result<Rate, ClockError> {
        (**self).rate()
    }
    fn set_rate(&mut self, rate: Rate) -> Result<(), ClockError> {
        (**self).set_rate(rate)
    }
    fn disciplined_by(&self) -> Option<String> {
        (**self).disciplined_by()
    }
    fn kernel_synchronised(&self) -> Option<bool> {
        (**self).kernel_synchronised()
    }
}

impl<T: Power + ?Sized> Power for &mut T {
    fn begin(&mut self, action: PowerAction) -> Result<(), PowerError> {
        (**self).begin(action)
    }
    fn sync_disks(&mut self, wait: std::time::Duration) -> bool {
        (**self).sync_disks(wait)
    }
    fn force(&mut self, action: PowerAction) -> Result<(), PowerError> {
        (**self).force(action)
    }
}
