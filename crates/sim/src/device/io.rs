//! What the guest's BAR0 accesses reach: virtio.c `vmmci_io()`.
//!
//! vmd decodes the exact offsets of [`Reg`] and ignores the access size: a
//! read gives the register's full 32-bit value (the guest's `inb` keeps the
//! low byte), a write hands over the whole EAX. Every access that breaks
//! the access rule is reported as a violation even so, so that a test
//! catches an agent that breaks it.

use std::time::Duration;

use crate::clock::NANOS_PER_SEC;
use crate::event::{AccessViolation, EventKind, ViolationReason};
use crate::recorder::VmdEvents;
use crate::vmd_tables::{pci, status, Reg, VmmciCmd};

use super::Vmd;

/// What one access of the guest's was, for the violation report.
#[derive(Clone, Copy)]
struct Access {
    offset: u64,
    size: u8,
    write: bool,
}

impl<E: VmdEvents> Vmd<E> {
    /// A guest `in` of `size` bytes at `offset` within BAR0, the guest's
    /// EAX holding `eax`. vmm(4) hands EAX to vmd in `vei_data` in both
    /// directions (`vmx_handle_inout()`) and copies it back after an `in`;
    /// `vmmci_io()` writes `*data` only for an offset it decodes, so an
    /// undecoded read gives the guest its own `eax` back. A dead VM reads
    /// all ones. The result is masked to `size`.
    pub fn bar_in(&mut self, offset: u64, size: u8, eax: u32) -> u32 {
        self.port_in(offset, size).unwrap_or(eax) & size_mask(size)
    }

    /// [`Vmd::bar_in`] for a caller that cannot say what the guest's EAX
    /// held (the sysfs transport, QEMU's proxy): the simulator takes the
    /// last value a read returned, so an undecoded read gives junk the way
    /// vmd does.
    pub fn bar_read(&mut self, offset: u64, size: u8) -> u32 {
        let mask = size_mask(size);
        match self.port_in(offset, size) {
            Some(value) => {
                self.guest_eax = value & mask;
                self.guest_eax
            }
            None => self.guest_eax & mask,
        }
    }

    /// A guest write of `size` bytes at `offset`. `value` is the whole EAX as
    /// vmd receives it: vmd ignores the size, so bits above `size` count.
    /// Writes to a dead VM are dropped and reported nowhere.
    pub fn bar_write(&mut self, offset: u64, size: u8, value: u32) {
        let Some(now) = self.begin_access(offset) else {
            return;
        };
        let access = Access {
            offset,
            size,
            write: true,
        };
        if let Some(reg) = self.decode(access, now) {
            self.write_reg(reg, value, now);
        }
    }

    /// `vmmci_io()`'s IN path: the value it puts in `*data`, or `None` where
    /// its `switch (reg)` has no case and `*data` keeps the guest's EAX.
    fn port_in(&mut self, offset: u64, size: u8) -> Option<u32> {
        let Some(now) = self.begin_access(offset) else {
            return Some(u32::MAX);
        };
        let access = Access {
            offset,
            size,
            write: false,
        };
        let reg = self.decode(access, now)?;
        Some(self.read_reg(reg))
    }

    /// Run what is due before an access; the time now, or `None` if the VM
    /// is gone (nothing answers the port).
    fn begin_access(&mut self, offset: u64) -> Option<Duration> {
        self.run_scheduled(offset);
        let now = self.running_now()?;
        self.accesses += 1;
        Some(now)
    }

    fn read_reg(&mut self, reg: Reg) -> u32 {
        match reg {
            Reg::DeviceFeatures => self.config.features,
            Reg::GuestFeatures => self.dev.guest_features,
            Reg::QueueAddress => self.dev.queue_address,
            Reg::QueueSize => 0,
            Reg::QueueSelect => u32::from(self.dev.queue_select),
            Reg::QueueNotify => u32::from(self.dev.queue_notify),
            Reg::DeviceStatus => u32::from(self.dev.status),
            Reg::Isr => {
                let isr = self.dev.isr;
                self.dev.isr = 0;
                self.dev.irq = false;
                u32::from(isr)
            }
            Reg::Command => self.dev.cmd,
            Reg::TimeSecLow => self.take_snapshot(),
            // vmd shifts the 64-bit value left by 32 into a 32-bit register.
            Reg::TimeSecHigh | Reg::TimeUsecHigh => 0,
            Reg::TimeUsecLow => self.dev.snap_usec,
        }
    }

    /// `gettimeofday(&v->time)`: the only read that takes a snapshot,
    /// truncated to whole µs; vmd stores `tv_sec` into a u32. The one host
    /// reading that carries the clock's read noise.
    fn take_snapshot(&mut self) -> u32 {
        let host = self.clock.realtime_read_ns().saturating_add(self.offset_ns);
        self.dev.snap_sec = host.div_euclid(NANOS_PER_SEC);
        self.dev.snap_usec = (host.rem_euclid(NANOS_PER_SEC) / 1_000) as u32;
        self.dev.snap_sec as u32
    }

    fn write_reg(&mut self, reg: Reg, value: u32, now: Duration) {
        match reg {
            Reg::DeviceFeatures | Reg::QueueSize | Reg::Isr => {
                self.log(now, EventKind::IllegalWrite { reg, value });
            }
            Reg::GuestFeatures => self.dev.guest_features = value,
            Reg::QueueAddress => {
                // "Stored, no effect" in vmd; the rig's guest clock probe
                // writes here, so the observer hears the host time of each.
                self.dev.queue_address = value;
                let host = self.host_now_ns();
                self.observer.queue_address_write(host, value);
            }
            Reg::QueueSelect => self.dev.queue_select = value as u16,
            Reg::QueueNotify => self.dev.queue_notify = value as u16,
            Reg::DeviceStatus => self.write_status(value, now),
            Reg::Command => {
                let at = self.since_origin(now);
                self.observer.command_write(at, value);
                self.ack(value, now);
            }
            Reg::TimeSecLow | Reg::TimeSecHigh | Reg::TimeUsecLow | Reg::TimeUsecHigh => {
                self.log(now, EventKind::IgnoredWrite { reg, value });
            }
        }
    }

    /// `dev->status = *data`: a `uint8_t`, so only the low byte is stored.
    fn write_status(&mut self, value: u32, now: Duration) {
        let written = value as u8;
        self.dev.status = written;
        let at = self.since_origin(now);
        self.observer.status_write(at, written);
        // Worth a line only when something outlives the "reset".
        let live =
            self.dev.cmd != VmmciCmd::None.code() || self.dev.isr != 0 || self.dev.timer.is_some();
        if written == status::RESET && live {
            let pending = self.dev.cmd;
            self.log(now, EventKind::StatusZero { pending });
        }
    }

    /// The register `vmmci_io()` decodes for `access`, reporting any rule
    /// the access breaks.
    fn decode(&mut self, access: Access, now: Duration) -> Option<Reg> {
        let in_bar = access.offset < u64::from(pci::IO_BAR_SIZE);
        let reg = Reg::at(access.offset).filter(|_| in_bar);
        let reason = if !in_bar {
            Some(ViolationReason::OutsideBar)
        } else if !is_port_size(access.size) {
            Some(ViolationReason::BadSize)
        } else {
            match reg {
                None => Some(ViolationReason::Undecoded),
                Some(r) if r.width() != access.size => Some(ViolationReason::WrongWidth {
                    reg: r,
                    natural: r.width(),
                }),
                Some(_) => None,
            }
        };
        if let Some(reason) = reason {
            self.report_violation(access, reason, now);
        }
        reg
    }

    fn report_violation(&mut self, access: Access, reason: ViolationReason, now: Duration) {
        let at = self.since_origin(now);
        self.observer.violation(AccessViolation {
            at,
            offset: access.offset,
            size: access.size,
            write: access.write,
            reason,
        });
    }
}

/// `inb`, `inw`, `inl`: the sizes one port access can have.
fn is_port_size(size: u8) -> bool {
    matches!(size, 1 | 2 | 4)
}

/// Bits one access of `size` bytes carries; an impossible size is taken as 4.
fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

#[cfg(test)]
#[path = "io_tests.rs"]
mod tests;
