//! virtio.c `vmmci_ctl()` (the host posts a command), `vmmci_ack()` (the
//! guest writes COMMAND) and the one `vmmci.timeout` timer they arm.

use std::time::Duration;

use crate::event::EventKind;
use crate::recorder::VmdEvents;
use crate::vmd_tables::{features, status, VmmciCmd, ISR_CONFIG_CHANGE};

use super::{TimerKind, Vmd};

/// What `vmmci_ctl` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ctl {
    /// Returned −1: no DRIVER_OK.
    Refused,
    /// Equal to the pending command: nothing.
    AlreadyPending,
    Posted,
    /// SYNCRTC without the accepted feature.
    Skipped,
}

impl<E: VmdEvents> Vmd<E> {
    /// `vmmci_ctl(cmd)`.
    pub(super) fn ctl(&mut self, cmd: VmmciCmd, now: Duration) -> Ctl {
        if self.dev.status & status::DRIVER_OK == 0 {
            self.log(now, EventKind::CtlRefused { cmd });
            return Ctl::Refused;
        }
        if cmd.code() == self.dev.cmd {
            self.log(now, EventKind::CtlAlreadyPending { cmd });
            return Ctl::AlreadyPending;
        }
        match cmd {
            // No caller sends NONE; vmd does nothing with it.
            VmmciCmd::None => Ctl::AlreadyPending,
            VmmciCmd::Shutdown | VmmciCmd::Reboot => {
                // Overwrites whatever was pending, SYNCRTC included.
                self.post(cmd);
                let timer = self.config.ack_timeout;
                self.arm(TimerKind::Ack, now, timer);
                let timer = Some(timer);
                self.log(now, EventKind::Posted { cmd, timer });
                Ctl::Posted
            }
            VmmciCmd::SyncRtc => self.post_syncrtc(now),
        }
    }

    /// vmd tests the guest's features word as written, not an intersection.
    /// Like vmd, this also overwrites a pending SHUTDOWN/REBOOT (whose timer
    /// keeps running).
    fn post_syncrtc(&mut self, now: Duration) -> Ctl {
        if self.dev.guest_features & features::SYNCRTC == 0 {
            self.log(now, EventKind::RtcSyncSkipped);
            return Ctl::Skipped;
        }
        let cmd = VmmciCmd::SyncRtc;
        self.post(cmd);
        self.log(now, EventKind::Posted { cmd, timer: None });
        Ctl::Posted
    }

    /// Set the command, raise ISR and the interrupt.
    pub(super) fn post(&mut self, cmd: VmmciCmd) {
        self.raise(cmd.code());
    }

    pub(super) fn raise(&mut self, cmd: u32) {
        self.dev.cmd = cmd;
        self.dev.isr = ISR_CONFIG_CHANGE;
        self.dev.irq = true;
    }

    /// `vmmci_ack(value)`: a guest write to COMMAND.
    pub(super) fn ack(&mut self, value: u32, now: Duration) {
        let Some(cmd) = VmmciCmd::from_code(value) else {
            self.log(now, EventKind::IllegalRequest { value });
            return;
        };
        let nothing_pending = self.dev.cmd == VmmciCmd::None.code();
        match cmd {
            VmmciCmd::None => {}
            VmmciCmd::Shutdown if nothing_pending => {
                // A guest-initiated power-down (OpenBSD's driver writes it
                // at the end of its power-down; a Linux guest has no use
                // for it: its halt ends the VM, see guest_poweroff_halt).
                let t = self.config.ack_timeout;
                self.arm(TimerKind::PowerDown, now, t);
                self.log(now, EventKind::GuestShutdown { timeout: t });
            }
            VmmciCmd::Shutdown | VmmciCmd::Reboot => self.ack_stop(cmd, now),
            VmmciCmd::SyncRtc => {
                // vmd clears unconditionally, even a pending REBOOT.
                let was = self.dev.cmd;
                self.dev.cmd = VmmciCmd::None.code();
                self.log(now, EventKind::RtcSyncAcked { was });
            }
        }
    }

    /// SHUTDOWN or REBOOT written back: the ACK if it is the pending one.
    fn ack_stop(&mut self, cmd: VmmciCmd, now: Duration) {
        if cmd.code() == self.dev.cmd {
            // The command stays pending; each ACK re-arms the timer.
            let t = self.config.long_timeout;
            self.arm(TimerKind::Long, now, t);
            self.log(now, EventKind::Ack { cmd, long: t });
        } else {
            let pending = self.dev.cmd;
            self.log(now, EventKind::AckIgnored { cmd, pending });
        }
    }

    /// `evtimer_add`: vmd has one timer, re-adding replaces the deadline.
    fn arm(&mut self, kind: TimerKind, now: Duration, after: Duration) {
        self.dev.timer = Some((kind, now.saturating_add(after)));
    }
}

#[cfg(test)]
#[path = "vmmci_tests.rs"]
mod tests;
