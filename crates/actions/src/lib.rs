//! The real world behind the agent's traits, for `vmmci daemon` only:
//! [`SystemClock`] steps and slews the guest's CLOCK_REALTIME (and sees
//! other time daemons, [`time_daemons`]), [`InitPower`] asks the
//! init system to reboot or power off (or signals PID 1 when its command is
//! missing or fails), syncs and forces it with `reboot(2)` when that does
//! not finish in time, [`privilege`] drops what the daemon does not need,
//! and [`clocksource`] reads what the kernel and the CPU say about the clock.
//! [`hooks`] runs the administrator's programs around host events
//! ([`HookedPower`]: before a reboot or power-off, off the agent's loop).

mod clock;
pub mod clocksource;
pub mod hooks;
mod power;
pub mod privilege;
pub mod shutdown_state;
pub mod time_daemons;

pub use clock::SystemClock;
pub use hooks::{HookEvent, HookFacts, HookSettings, HookedPower, Hooks};
pub use power::{resolve_argv, InitPower, Pid1, DEFAULT_POWEROFF, DEFAULT_REBOOT};
