//! The real world behind the agent's traits, for `vmmci daemon` only:
//! [`SystemClock`] steps the guest's CLOCK_REALTIME, [`InitPower`] asks the
//! init system to reboot or power off and forces it with `reboot(2)` when
//! that does not work.

mod clock;
mod power;

pub use clock::SystemClock;
pub use power::{resolve_argv, InitPower, DEFAULT_POWEROFF, DEFAULT_REBOOT};
