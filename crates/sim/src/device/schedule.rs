//! A test hook, not part of vmd: host actions timed against the guest's own
//! accesses, so a test can put a host request between any two register
//! accesses of the agent (the host can act at any instant).

use crate::recorder::VmdEvents;
use crate::vmd_tables::Reg;

use super::Vmd;

/// Something vmd or vmctl does on its own, at a moment a test picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// [`Vmd::vmctl_stop`].
    VmctlStop,
    /// [`Vmd::request_shutdown`].
    RequestShutdown,
    /// [`Vmd::request_syncrtc`].
    RequestSyncRtc,
}

/// When a scheduled [`HostAction`] runs, counted in guest accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessTrigger {
    /// Just before the guest's next access once this many more accesses
    /// have completed (0: before the very next one).
    After(u64),
    /// Just before the guest's next access to this register (read or write).
    Before(Reg),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Scheduled {
    trigger: AccessTrigger,
    /// `accesses` when it was scheduled.
    base: u64,
    action: HostAction,
}

impl<E: VmdEvents> Vmd<E> {
    /// Run `action` at a moment defined by the guest's own accesses.
    pub fn schedule(&mut self, trigger: AccessTrigger, action: HostAction) {
        self.scheduled.push(Scheduled {
            trigger,
            base: self.accesses,
            action,
        });
    }

    /// Host actions scheduled and not yet run.
    pub fn scheduled(&self) -> usize {
        self.scheduled.len()
    }

    /// Run the actions due before an access at `offset`.
    pub(super) fn run_scheduled(&mut self, offset: u64) {
        if self.scheduled.is_empty() || self.ended.is_some() {
            return;
        }
        let (accesses, reg) = (self.accesses, Reg::at(offset));
        let (due, keep): (Vec<Scheduled>, Vec<Scheduled>) =
            self.scheduled.drain(..).partition(|s| match s.trigger {
                AccessTrigger::After(n) => accesses >= s.base.saturating_add(n),
                AccessTrigger::Before(r) => reg == Some(r),
            });
        self.scheduled = keep;
        for s in due {
            // A refused or repeated request is logged by the call itself.
            let _ = match s.action {
                HostAction::VmctlStop => self.vmctl_stop().is_ok(),
                HostAction::RequestShutdown => self.request_shutdown().is_ok(),
                HostAction::RequestSyncRtc => self.request_syncrtc(),
            };
        }
    }
}
