//! The vmmci device and the bits of vmd around it, as written down in
//! `docs/protocol.md` and numbered by [`crate::vmd_tables`]:
//!
//! - `io`: what the guest's BAR0 accesses reach, virtio.c `vmmci_io()`;
//! - `vmmci`: virtio.c `vmmci_ctl()`, `vmmci_ack()` and the one timer;
//! - `host`: what vmctl, vmm.c and vm.c do (stop, reset, halt);
//! - `rtc`: the 1 s RTC tick of mc146818.c and the timer's firing;
//! - `schedule`: a test hook that times host actions against guest accesses.
//!
//! Time-driven things (the timer, the 1 s RTC tick) are evaluated lazily: at
//! the start of every BAR access, every host call and [`Vmd::poll`], in the
//! order they were due. What the model does is reported to a [`VmdEvents`];
//! it keeps no log of its own.

mod host;
mod io;
mod rtc;
mod schedule;
mod vmmci;

#[cfg(test)]
mod test_vmd;

use std::fmt;
use std::time::Duration;

use crate::clock::{HostClock, NANOS_PER_SEC};
use crate::event::{Event, EventKind, VmEnd};
use crate::recorder::{Recorder, VmdEvents};
use crate::vmd_tables::{features, timeouts};

pub use schedule::{AccessTrigger, HostAction};

use schedule::Scheduled;

/// What the host offers and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmdConfig {
    /// Read at 0x00.
    pub features: u32,
    /// `VMMCI_TIMEOUT` / `_SHORT`.
    pub ack_timeout: Duration,
    /// `VMMCI_SHUTDOWN_TIMEOUT` / `_LONG`.
    pub long_timeout: Duration,
}

impl Default for VmdConfig {
    /// vmd since 2023: all three features, 3 s, 120 s.
    fn default() -> VmdConfig {
        VmdConfig {
            features: features::OFFERED,
            ack_timeout: timeouts::SHORT,
            long_timeout: timeouts::LONG,
        }
    }
}

impl VmdConfig {
    /// vmd up to 2019: a 30 s long timeout.
    pub fn before_2019() -> VmdConfig {
        VmdConfig {
            long_timeout: timeouts::LONG_BEFORE_2019,
            ..VmdConfig::default()
        }
    }
}

/// Which deadline vmd's single `vmmci.timeout` timer is running for. vmd has
/// one timer whose firing always ends the VM; the kind only names the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// Armed by `vmmci_ctl(SHUTDOWN|REBOOT)`: the guest must ACK.
    Ack,
    /// Armed (re-armed) by each matching ACK.
    Long,
    /// Armed by a guest SHUTDOWN write with nothing pending.
    PowerDown,
}

impl TimerKind {
    fn end(self) -> VmEnd {
        match self {
            TimerKind::Ack => VmEnd::AckTimeout,
            TimerKind::Long => VmEnd::LongTimeout,
            TimerKind::PowerDown => VmEnd::PowerDown,
        }
    }
}

/// The armed timer, for inspection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmedTimer {
    pub kind: TimerKind,
    /// Host monotonic time since [`Vmd::new`] at which it fires.
    pub deadline: Duration,
}

/// A non-forced stop or a SHUTDOWN request that did not go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopRefused {
    /// `vmmci_ctl` refused (no DRIVER_OK); vmd ended the VM at once
    /// ([`VmEnd::Refused`]).
    NoDriverOk,
    /// The VM had already ended.
    NotRunning(VmEnd),
}

impl fmt::Display for StopRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopRefused::NoDriverOk => {
                write!(
                    f,
                    "vmmci_ctl refused (guest has not set DRIVER_OK); VM ended at once"
                )
            }
            StopRefused::NotRunning(end) => write!(f, "VM is not running (ended: {end})"),
        }
    }
}

impl std::error::Error for StopRefused {}

/// The register file of one vmmci instance (vmd's `struct vmmci_dev` and
/// its `virtio_dev`). A restarted VM is a new vmd VM process, so it gets a
/// fresh one.
#[derive(Clone, Debug, Default)]
struct Device {
    guest_features: u32,
    queue_address: u32,
    // vmd keeps these in uint16_t fields.
    queue_select: u16,
    queue_notify: u16,
    // uint8_t in vmd: a wider write keeps the low byte.
    status: u8,
    isr: u8,
    irq: bool,
    /// The pending command: any u32 (the test hook may put garbage there).
    cmd: u32,
    /// The last `gettimeofday()` snapshot (zero before the first).
    snap_sec: i64,
    snap_usec: u32,
    /// (kind, absolute monotonic deadline).
    timer: Option<(TimerKind, Duration)>,
}

/// The simulated vmd: one VM's vmmci device plus the host side around it.
/// `E` hears what it does; the default, [`Recorder`], keeps it all.
pub struct Vmd<E: VmdEvents = Recorder> {
    config: VmdConfig,
    clock: Box<dyn HostClock>,
    /// Monotonic reading at [`Vmd::new`]; event times are relative to it.
    origin: Duration,
    /// Added to the clock's realtime (host clock steps).
    offset_ns: i64,
    dev: Device,
    /// vmd's `VM_STATE_SHUTDOWN`: a reset ends the VM instead of restarting.
    stopping: bool,
    ended: Option<VmEnd>,
    /// `rtc.now`: host `time()` at the last RTC tick.
    rtc_now_s: i64,
    /// Absolute monotonic time of the next RTC tick.
    next_tick: Duration,
    /// The guest's EAX as [`Vmd::bar_read`] imagines it: see there.
    guest_eax: u32,
    /// BAR accesses made while the VM was running: the clock of
    /// [`Vmd::schedule`].
    accesses: u64,
    /// Host actions a test has timed against the guest's accesses.
    scheduled: Vec<Scheduled>,
    observer: E,
}

impl<E: VmdEvents + fmt::Debug> fmt::Debug for Vmd<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vmd")
            .field("config", &self.config)
            .field("offset_ns", &self.offset_ns)
            .field("dev", &self.dev)
            .field("stopping", &self.stopping)
            .field("ended", &self.ended)
            .field("observer", &self.observer)
            .finish_non_exhaustive()
    }
}

impl Vmd {
    /// A VM that has just started: fresh device, no driver yet, and a
    /// [`Recorder`] listening.
    pub fn new(config: VmdConfig, clock: Box<dyn HostClock>) -> Vmd {
        Vmd::with_observer(config, clock, Recorder::default())
    }
}

impl<E: VmdEvents> Vmd<E> {
    /// [`Vmd::new`] reporting to `observer`.
    pub fn with_observer(config: VmdConfig, clock: Box<dyn HostClock>, observer: E) -> Vmd<E> {
        let origin = clock.monotonic();
        let rtc_now_s = clock.realtime_ns().div_euclid(NANOS_PER_SEC);
        Vmd {
            config,
            clock,
            origin,
            offset_ns: 0,
            dev: Device::default(),
            stopping: false,
            ended: None,
            rtc_now_s,
            next_tick: origin.saturating_add(timeouts::RTC_TICK),
            guest_eax: 0,
            accesses: 0,
            scheduled: Vec::new(),
            observer,
        }
    }

    // ---- inspection ----

    pub fn ended(&self) -> Option<VmEnd> {
        self.ended
    }

    pub fn pending_command(&self) -> u32 {
        self.dev.cmd
    }

    pub fn device_status(&self) -> u8 {
        self.dev.status
    }

    pub fn guest_features(&self) -> u32 {
        self.dev.guest_features
    }

    /// ISR without reading (and so without clearing) it.
    pub fn isr(&self) -> u8 {
        self.dev.isr
    }

    /// The device's INTA line: raised with a posted command, lowered by an
    /// ISR read.
    pub fn irq_asserted(&self) -> bool {
        self.dev.irq
    }

    /// Whether a non-forced stop (or SHUTDOWN request) is in progress.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    pub fn armed_timer(&self) -> Option<ArmedTimer> {
        self.dev.timer.map(|(kind, deadline)| ArmedTimer {
            kind,
            deadline: self.since_origin(deadline),
        })
    }

    /// Host `gettimeofday()` now: the clock's realtime plus the host offset.
    pub fn host_now_ns(&self) -> i64 {
        self.clock.realtime_ns().saturating_add(self.offset_ns)
    }

    /// Host monotonic time since [`Vmd::new`].
    pub fn elapsed(&self) -> Duration {
        self.since_origin(self.clock.monotonic())
    }

    /// BAR accesses made while the VM was running.
    pub fn accesses(&self) -> u64 {
        self.accesses
    }

    pub fn config(&self) -> &VmdConfig {
        &self.config
    }

    /// Whoever hears what the model does.
    pub fn observer(&self) -> &E {
        &self.observer
    }

    // ---- reporting ----

    /// A monotonic instant as time since [`Vmd::new`].
    fn since_origin(&self, at: Duration) -> Duration {
        at.saturating_sub(self.origin)
    }

    fn log(&mut self, at: Duration, kind: EventKind) {
        let at = self.since_origin(at);
        self.observer.log(Event { at, kind });
    }
}
