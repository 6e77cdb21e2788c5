//! The simulator's instrumentation, kept apart from the device model: the
//! model tells a [`VmdEvents`] what happened, the way rust-vmm's vm-superio
//! hands `SerialEvents` to its serial device, and [`Recorder`] keeps it all
//! for tests and the rig.

use std::fmt;
use std::time::Duration;

use crate::device::Vmd;
use crate::event::{AccessViolation, Event};

/// What the model reports as it runs. Times are host monotonic time since
/// [`Vmd::new`].
pub trait VmdEvents {
    /// One line of vmd's log.
    fn log(&mut self, event: Event);
    /// A guest access that broke the access rule. vmd does not care; the
    /// agent must not do it.
    fn violation(&mut self, violation: AccessViolation);
    /// The guest wrote device status; `status` is the byte vmd stored.
    fn status_write(&mut self, at: Duration, status: u8);
    /// The guest wrote QUEUE_ADDRESS (the rig's guest clock probe) when the
    /// host's realtime clock read `host_ns`.
    fn queue_address_write(&mut self, host_ns: i64, value: u32);
    /// The guest wrote `value` to COMMAND, before `vmmci_ack()` acts on it.
    fn command_write(&mut self, at: Duration, value: u32);
}

/// The default [`VmdEvents`]: keeps everything, in order, across VM
/// restarts. Read it through [`Vmd`]'s accessors ([`Vmd::events`], ...).
#[derive(Clone, Default)]
pub struct Recorder {
    events: Vec<Event>,
    violations: Vec<AccessViolation>,
    status_writes: Vec<u8>,
    status_writes_at: Vec<(Duration, u8)>,
    probe_writes: Vec<(i64, u32)>,
    command_writes: Vec<(Duration, u32)>,
}

impl VmdEvents for Recorder {
    fn log(&mut self, event: Event) {
        self.events.push(event);
    }

    fn violation(&mut self, violation: AccessViolation) {
        self.violations.push(violation);
    }

    fn status_write(&mut self, at: Duration, status: u8) {
        self.status_writes.push(status);
        self.status_writes_at.push((at, status));
    }

    fn queue_address_write(&mut self, host_ns: i64, value: u32) {
        self.probe_writes.push((host_ns, value));
    }

    fn command_write(&mut self, at: Duration, value: u32) {
        self.command_writes.push((at, value));
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("events", &self.events.len())
            .field("violations", &self.violations.len())
            .finish_non_exhaustive()
    }
}

/// What the [`Recorder`] saw.
impl Vmd {
    pub fn events(&self) -> &[Event] {
        &self.observer().events
    }

    /// Every access that broke the access rule, in order.
    pub fn violations(&self) -> &[AccessViolation] {
        &self.observer().violations
    }

    /// Every value the guest wrote to device status, in order (kept across
    /// a VM restart).
    pub fn status_writes(&self) -> &[u8] {
        &self.observer().status_writes
    }

    /// [`Vmd::status_writes`] with the time of each (since [`Vmd::new`]):
    /// e.g. when the guest's driver set DRIVER_OK.
    pub fn status_writes_at(&self) -> &[(Duration, u8)] {
        &self.observer().status_writes_at
    }

    /// Writes to QUEUE_ADDRESS: (host time at the write in ns, value).
    pub fn probe_writes(&self) -> &[(i64, u32)] {
        &self.observer().probe_writes
    }

    /// Every guest write to COMMAND while the VM ran, whatever its value (a
    /// NONE write leaves no line in the log): (time since [`Vmd::new`],
    /// value), in order, kept across a VM restart.
    pub fn command_writes(&self) -> &[(Duration, u32)] {
        &self.observer().command_writes
    }
}
