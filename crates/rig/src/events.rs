//! What the simulated vmd saw, as the scenarios ask about it: predicates
//! over its events, and queries of a running VM's event log and of the
//! guest's writes to COMMAND.

use std::time::Duration;

use vmd_sim::VmmciCmd;
use vmd_sim::{Event, EventKind};

use crate::vm::Vm;

/// vmd posted REBOOT (a `vmctl stop`).
pub fn is_reboot_posted(k: &EventKind) -> bool {
    matches!(
        k,
        EventKind::Posted {
            cmd: VmmciCmd::Reboot,
            ..
        }
    )
}

/// The guest acknowledged REBOOT.
pub fn is_reboot_ack(k: &EventKind) -> bool {
    matches!(
        k,
        EventKind::Ack {
            cmd: VmmciCmd::Reboot,
            ..
        }
    )
}

/// The guest acknowledged SHUTDOWN.
pub fn is_shutdown_ack(k: &EventKind) -> bool {
    matches!(
        k,
        EventKind::Ack {
            cmd: VmmciCmd::Shutdown,
            ..
        }
    )
}

/// `vmctl stop` asked for a REBOOT.
pub fn is_reboot_stop(k: &EventKind) -> bool {
    matches!(
        k,
        EventKind::StopRequested {
            cmd: VmmciCmd::Reboot
        }
    )
}

/// vmd posted SYNCRTC.
pub fn is_syncrtc_posted(k: &EventKind) -> bool {
    matches!(
        k,
        EventKind::Posted {
            cmd: VmmciCmd::SyncRtc,
            ..
        }
    )
}

/// A SYNCRTC request while one was pending (vmd only logs it).
pub fn is_syncrtc_already_pending(k: &EventKind) -> bool {
    matches!(
        k,
        EventKind::CtlAlreadyPending {
            cmd: VmmciCmd::SyncRtc
        }
    )
}

/// The guest acknowledged a SYNCRTC.
pub fn is_rtc_sync_acked(k: &EventKind) -> bool {
    matches!(k, EventKind::RtcSyncAcked { .. })
}

/// vmd refused a `vmctl` request.
pub fn is_refused(k: &EventKind) -> bool {
    matches!(k, EventKind::CtlRefused { .. })
}

/// The VM ended.
pub fn is_ended(k: &EventKind) -> bool {
    matches!(k, EventKind::Ended(_))
}

/// Whether any event in `evs` is one `pred` picks.
pub fn any(evs: &[EventKind], pred: impl Fn(&EventKind) -> bool) -> bool {
    evs.iter().any(pred)
}

/// The simulator time of the first event in `evs` that `pred` picks.
pub fn first_at(evs: &[Event], pred: impl Fn(&EventKind) -> bool) -> Option<Duration> {
    evs.iter().find(|e| pred(&e.kind)).map(|e| e.at)
}

/// The queries; `from` counts from the start of the log, and one past its
/// end gives nothing (never a panic).
impl Vm {
    /// How many events vmd has logged.
    pub fn n_events(&self) -> usize {
        self.with_vmd(|v| v.events().len())
    }

    /// vmd's events from the `from`th on.
    pub fn events_since(&self, from: usize) -> Vec<Event> {
        self.with_vmd(|v| v.events()[from.min(v.events().len())..].to_vec())
    }

    /// The kinds of vmd's events from the `from`th on.
    pub fn event_kinds_since(&self, from: usize) -> Vec<EventKind> {
        self.events_since(from)
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    /// Host time (since QEMU was spawned) of the first event from the
    /// `from`th on that `pick` accepts.
    pub fn host_time_of(&self, from: usize, pick: impl Fn(&EventKind) -> bool) -> Option<Duration> {
        let evs = self.events_since(from);
        first_at(&evs, pick).map(|at| self.host_time_of_vmd(at))
    }

    /// Host time (since QEMU was spawned) of `at` on the simulator's clock,
    /// which starts a moment before QEMU's spawn: the difference is taken off.
    pub fn host_time_of_vmd(&self, at: Duration) -> Duration {
        let vmd_now = self.with_vmd(|v| v.elapsed());
        let offset = vmd_now.saturating_sub(self.elapsed());
        at.saturating_sub(offset)
    }

    /// How many times the guest has written COMMAND.
    pub fn n_command_writes(&self) -> usize {
        self.with_vmd(|v| v.command_writes().len())
    }

    /// The values of the guest's COMMAND writes from the `from`th on (see
    /// `Vmd::command_writes`).
    pub fn command_writes_since(&self, from: usize) -> Vec<u32> {
        self.with_vmd(|v| {
            v.command_writes()[from.min(v.command_writes().len())..]
                .iter()
                .map(|&(_, value)| value)
                .collect()
        })
    }

    /// How many status writes the guest has made.
    pub fn n_status_writes(&self) -> usize {
        self.with_vmd(|v| v.status_writes().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_pick_their_command() {
        let long = Duration::from_secs(120);
        let reboot_ack = EventKind::Ack {
            cmd: VmmciCmd::Reboot,
            long,
        };
        let shutdown_ack = EventKind::Ack {
            cmd: VmmciCmd::Shutdown,
            long,
        };
        assert!(is_reboot_ack(&reboot_ack) && !is_reboot_ack(&shutdown_ack));
        assert!(is_shutdown_ack(&shutdown_ack) && !is_shutdown_ack(&reboot_ack));
        let posted = |cmd| EventKind::Posted { cmd, timer: None };
        assert!(is_reboot_posted(&posted(VmmciCmd::Reboot)));
        assert!(!is_reboot_posted(&posted(VmmciCmd::SyncRtc)));
        assert!(is_syncrtc_posted(&posted(VmmciCmd::SyncRtc)));
        let evs = [
            Event {
                at: Duration::from_secs(1),
                kind: posted(VmmciCmd::Reboot),
            },
            Event {
                at: Duration::from_secs(2),
                kind: reboot_ack.clone(),
            },
        ];
        assert_eq!(first_at(&evs, is_reboot_ack), Some(Duration::from_secs(2)));
        assert_eq!(first_at(&evs, is_ended), None);
        assert!(any(&[reboot_ack], is_reboot_ack));
    }
}
