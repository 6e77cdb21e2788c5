//! The real world behind the agent's traits, for `vmmci daemon` only:
//! [`SystemClock`] steps and slews the guest's CLOCK_REALTIME (and sees
//! other time daemons, [`time_daemons`]), [`InitPower`] asks the
//! init system to reboot or power off and forces it with `reboot(2)` when
//! that does not work, and [`privilege`] drops what the daemon does not need.

mod clock;
mod power;
pub mod privilege;
pub mod time_daemons;

pub use clock::SystemClock;
pub use power::{resolve_argv, InitPower, DEFAULT_POWEROFF, DEFAULT_REBOOT};
