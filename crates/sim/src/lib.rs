//! An in-process simulator of OpenBSD vmd's vmmci device, held to
//! `docs/protocol.md`, quirks included.
//!
//! - [`Vmd`] is the device plus the vmd logic around it: the guest side is
//!   raw port accesses, [`Vmd::bar_read`]/[`Vmd::bar_in`]/[`Vmd::bar_write`]
//!   (offset within BAR0, 1/2/4 bytes), the host side is what vmctl and vmd
//!   do ([`Vmd::vmctl_stop`], [`Vmd::jump_host_clock`], [`Vmd::guest_reset`],
//!   ...).
//! - [`vmd_tables`] holds the model's numbers (register offsets, commands,
//!   status and feature bits, PCI ids, timeouts), transcribed from vmd's
//!   sources and not shared with `vmmci-protocol`, so the two can disagree.
//! - The model reports what it does to a [`VmdEvents`]; the default,
//!   [`Recorder`], keeps the log, the access violations and the guest's
//!   writes, read through [`Vmd::events`], [`Vmd::violations`], ...
//! - [`SimBar`] puts it behind the agent's
//!   [`RegisterIo`](vmmci_transport::RegisterIo), and can inject I/O faults.
//! - [`HostClock`] abstracts the host's realtime and monotonic clocks;
//!   tests drive a [`ManualClock`], the rig uses [`SystemClock`].
//!
//! Timers and the 1 s RTC tick run lazily, at the start of every access or
//! host call and in [`Vmd::poll`]: with a [`ManualClock`], advance it, then
//! poll. Every access that breaks the access rule (undecoded offset, wrong
//! width) is recorded in [`Vmd::violations`], even where vmd itself would
//! not care, so a test can catch an agent that breaks it.
//!
//! ```
//! use std::time::Duration;
//! use vmd_sim::{ManualClock, Vmd, VmdConfig, VmEnd};
//! use vmd_sim::vmd_tables::Reg;
//!
//! let clock = ManualClock::new(1_750_000_000_000_000_000);
//! let mut vmd = Vmd::new(VmdConfig::default(), Box::new(clock.clone()));
//! vmd.bar_write(Reg::DEVICE_STATUS, 1, 7);      // DRIVER_OK
//! vmd.vmctl_stop().unwrap();                   // posts REBOOT
//! clock.advance(Duration::from_secs(3));       // nobody acknowledges
//! vmd.poll();
//! assert_eq!(vmd.ended(), Some(VmEnd::AckTimeout));
//! ```

#![forbid(unsafe_code)]

mod bar;
mod clock;
mod device;
mod event;
mod recorder;
pub mod vmd_tables;

pub use bar::{FaultInjector, SimBar};
pub use clock::{HostClock, ManualClock, SkewedClock, SystemClock};
pub use device::{AccessTrigger, ArmedTimer, HostAction, StopRefused, TimerKind, Vmd, VmdConfig};
pub use event::{AccessViolation, Event, EventKind, ViolationReason, VmEnd};
pub use recorder::{Recorder, VmdEvents};
pub use vmd_tables::{Reg, VmmciCmd};
