//! The host side: what vmctl asks for, what vmm.c and vm.c do on a stop, a
//! guest reset or a failed vcpu, and the host's clock being stepped.

use std::time::Duration;

use crate::clock::NANOS_PER_SEC;
use crate::event::{EventKind, VmEnd};
use crate::recorder::VmdEvents;
use crate::vmd_tables::{timeouts, VmmciCmd};

use super::vmmci::Ctl;
use super::{Device, StopRefused, Vmd};

impl<E: VmdEvents> Vmd<E> {
    /// `vmctl stop` (not forced): mark the VM stopping and send REBOOT. If
    /// vmmci refuses (no DRIVER_OK) the VM process exits at once.
    pub fn vmctl_stop(&mut self) -> Result<(), StopRefused> {
        self.host_stop(VmmciCmd::Reboot)
    }

    /// `vmctl stop -f`: the VM is ended at once; vmmci is not involved.
    pub fn vmctl_stop_force(&mut self) {
        if let Some(now) = self.running_now() {
            self.end(VmEnd::Forced, now);
        }
    }

    /// `vmmci_ctl(SHUTDOWN)` through the VM process's `IMSG_VMDOP_VM_SHUTDOWN`
    /// path. No vmd code path sends it today. Handled like a stop: the VM is
    /// marked stopping (so a reset ends it) and a refusal ends it at once.
    pub fn request_shutdown(&mut self) -> Result<(), StopRefused> {
        self.host_stop(VmmciCmd::Shutdown)
    }

    /// `vmmci_ctl(SYNCRTC)`. True if SYNCRTC is pending afterwards; false
    /// (and an event) without DRIVER_OK or without the accepted feature.
    pub fn request_syncrtc(&mut self) -> bool {
        let Some(now) = self.running_now() else {
            return false;
        };
        matches!(
            self.ctl(VmmciCmd::SyncRtc, now),
            Ctl::Posted | Ctl::AlreadyPending
        )
    }

    /// Test hook: put any value in COMMAND and raise ISR, arming no timer.
    pub fn set_command_raw(&mut self, value: u32) {
        if let Some(now) = self.running_now() {
            self.raise(value);
            self.log(now, EventKind::RawCommand { value });
        }
    }

    /// Step the host clock (suspend/resume, an ntpd step). Only the RTC tick
    /// notices, and only a forward step: see [`Vmd::poll`].
    pub fn jump_host_clock(&mut self, delta_ns: i64) {
        // Ticks due before the step must see the old clock.
        let now = self.advance();
        self.offset_ns = self.offset_ns.saturating_add(delta_ns);
        self.log(now, EventKind::ClockJump { delta_ns });
    }

    /// The guest reset (reboot, triple fault). While stopping, vmd ends the
    /// VM; otherwise it restarts it, and the new VM process has a fresh
    /// device and RTC. The host clock offset and the observer stay.
    pub fn guest_reset(&mut self) {
        let Some(now) = self.running_now() else {
            return;
        };
        if self.stopping {
            self.end(VmEnd::CleanStop, now);
            return;
        }
        self.log(now, EventKind::GuestReset);
        self.dev = Device::default();
        self.guest_eax = 0;
        self.rtc_now_s = self.host_now_ns().div_euclid(NANOS_PER_SEC);
        self.next_tick = now.saturating_add(timeouts::RTC_TICK);
    }

    /// The guest executed HLT with interrupts off: how a Linux power-off or
    /// halt ends on vmd, which has no ACPI (`stop_this_cpu()`: `cli; hlt`).
    /// vmm(4)'s `vmx_handle_hlt`/`svm_handle_hlt` return EIO, vmd's vcpu
    /// loop fails and the VM is ended at once, not restarted, whether or not
    /// a stop is in progress, whatever timer is armed and whether or not the
    /// guest wrote anything to COMMAND ([`VmEnd::Halted`]; vmd logs a failed
    /// vcpu, not a clean stop).
    pub fn guest_poweroff_halt(&mut self) {
        if let Some(now) = self.running_now() {
            self.log(now, EventKind::GuestHalted);
            self.end(VmEnd::Halted, now);
        }
    }

    /// Run what is due; the time now, or `None` once the VM has ended.
    pub(super) fn running_now(&mut self) -> Option<Duration> {
        let now = self.advance();
        self.ended.is_none().then_some(now)
    }

    /// vmm.c's TERMINATE_VM_REQUEST, then the VM process's `vmmci_ctl`.
    fn host_stop(&mut self, cmd: VmmciCmd) -> Result<(), StopRefused> {
        let now = self.advance();
        if let Some(end) = self.ended {
            return Err(StopRefused::NotRunning(end));
        }
        if self.stopping {
            // vmm.c sends nothing while VM_STATE_SHUTDOWN is set.
            self.log(now, EventKind::AlreadyStopping);
            return Ok(());
        }
        self.stopping = true;
        self.log(now, EventKind::StopRequested { cmd });
        if self.ctl(cmd, now) == Ctl::Refused {
            // vm.c: `if (vmmci_ctl(...) == -1) _exit(0);`
            self.end(VmEnd::Refused, now);
            return Err(StopRefused::NoDriverOk);
        }
        Ok(())
    }

    /// The VM is gone: no timer, no interrupt, and nothing answers.
    pub(super) fn end(&mut self, end: VmEnd, at: Duration) {
        self.ended = Some(end);
        self.dev.timer = None;
        self.dev.irq = false;
        self.log(at, EventKind::Ended(end));
    }
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
