//! COMMAND: the poll, the latch, the ACK, and the power path with its
//! "sync early, force late" deadlines. SYNCRTC is acknowledged before the
//! clock work, because vmd's SYNCRTC ACK wipes whatever else is pending.

use std::time::Duration;

use tracing::{info, warn};
use vmmci_protocol::{Command, Features, Register, ISR_CONFIG_CHANGE};
use vmmci_transport::RegisterIo;

use super::{Agent, AgentError, State};
use crate::discipline::ClockMode;
use crate::report::{CommandRecord, Handled, Outcome, StepCause};
use crate::world::{GuestClock, Power, PowerAction};

pub(super) struct PendingPower {
    pub(super) action: PowerAction,
    /// When it was acknowledged (monotonic).
    pub(super) started: Duration,
    pub(super) synced: bool,
    pub(super) forced: bool,
}

impl<B: RegisterIo, C: GuestClock, P: Power> Agent<B, C, P> {
    pub(super) fn poll_command(&mut self, now: Duration) -> Result<Option<Handled>, AgentError> {
        let raw = self.bar.read(Register::Command)?;
        self.polls += 1;
        if raw == Command::NONE {
            // The host cleared it (SYNCRTC acknowledged, or a fresh device):
            // the next command is new even if it has the same value.
            self.latched = None;
            self.last_unknown = None;
            return Ok(None);
        }
        if self.latched == Some(raw) {
            return Ok(None);
        }
        let at_ns = self.clock.now_ns();
        let command = match Command::from_raw(raw) {
            Ok(c) => c,
            Err(unknown) => {
                if self.last_unknown == Some(raw) {
                    return Ok(None);
                }
                self.last_unknown = Some(raw);
                self.commands.unknown += 1;
                if raw == u32::MAX {
                    warn!("COMMAND reads all ones: I/O decode off or device gone; ignoring");
                } else {
                    warn!("{unknown} in COMMAND: not acted on, not acknowledged");
                }
                let record = CommandRecord {
                    raw,
                    command: None,
                    at_ns,
                    acked: false,
                    outcome: Outcome::Ignored,
                };
                self.last_command = Some(record.clone());
                return Ok(Some(record));
            }
        };
        let (acked, outcome) = match command {
            // Returned above; kept total so no input can reach a panic.
            Command::None => return Ok(None),
            Command::Reboot => {
                self.commands.reboot += 1;
                self.handle_power(raw, PowerAction::Reboot, now)?
            }
            Command::Shutdown => {
                self.commands.shutdown += 1;
                self.handle_power(raw, PowerAction::Poweroff, now)?
            }
            Command::SyncRtc => {
                self.commands.syncrtc += 1;
                let (acked, outcome) = match self.ack_syncrtc(raw)? {
                    SyncRtcAck::Superseded => return self.poll_command(now),
                    SyncRtcAck::Wiped => (true, self.force_lost_stop(now)),
                    SyncRtcAck::Acked => (true, self.step_on_request()),
                    SyncRtcAck::NotNegotiated => (false, self.step_on_request()),
                };
                // vmd clears COMMAND on that ACK, so the next SYNCRTC is a
                // new request even before a poll sees NONE. Without ACK it
                // stays posted and must not be handled again.
                self.latched = (!acked).then_some(raw);
                (acked, outcome)
            }
        };
        info!(command = %command, acked, "{outcome}");
        let record = CommandRecord {
            raw,
            command: Some(command),
            at_ns,
            acked,
            outcome,
        };
        self.last_command = Some(record.clone());
        Ok(Some(record))
    }

    fn handle_power(
        &mut self,
        raw: u32,
        action: PowerAction,
        now: Duration,
    ) -> Result<(bool, Outcome), AgentError> {
        // Acknowledge first: vmd kills the VM 3 s after asking otherwise.
        let acked = self.ack(raw)?;
        self.latched = Some(raw);
        if self.pending_power.is_some() {
            return Ok((acked, Outcome::AlreadyStopping));
        }
        self.state = match action {
            PowerAction::Reboot => State::Rebooting,
            PowerAction::Poweroff => State::PoweringOff,
        };
        self.pending_power = Some(PendingPower {
            action,
            started: now,
            synced: false,
            forced: false,
        });
        match self.power.begin(action) {
            Ok(()) => Ok((acked, Outcome::PowerStarted(action))),
            Err(e) => {
                // Never an immediate hard reboot: the grace and the force
                // still give the guest its chance.
                warn!(
                    "{e}; syncing after {:?} and forcing {action} after {:?}",
                    self.config.grace, self.config.force_after
                );
                let reason = e.reason.clone();
                Ok((acked, Outcome::PowerNotStarted { action, reason }))
            }
        }
    }

    /// "Sync early": at the grace point, flush file systems with a bounded
    /// wait, so the data is on disk if the host gives up early.
    pub(super) fn sync_if_due(&mut self, now: Duration) -> Option<bool> {
        let grace = self.config.grace;
        let p = self.pending_power.as_mut()?;
        if p.synced || now.saturating_sub(p.started) < grace {
            return None;
        }
        p.synced = true;
        let action = p.action;
        warn!("{action} still under way {grace:?} after the ACK: syncing file systems");
        let done = self.power.sync_disks(SYNC_WAIT_AT_GRACE);
        if !done {
            warn!(
                "sync(2) still running after {SYNC_WAIT_AT_GRACE:?}; it goes on in the background"
            );
        }
        Some(done)
    }

    /// "Force late": shortly before vmd's long timeout would end the VM.
    pub(super) fn force_if_overdue(&mut self, now: Duration) -> Option<PowerAction> {
        let p = self.pending_power.as_ref()?;
        if p.forced || now.saturating_sub(p.started) < self.config.force_after {
            return None;
        }
        let action = p.action;
        warn!(
            "{action} still not done {:?} after the ACK; syncing and forcing it",
            self.config.force_after
        );
        self.force(action);
        Some(action)
    }

    fn force(&mut self, action: PowerAction) {
        if let Some(p) = self.pending_power.as_mut() {
            p.forced = true;
        }
        if !self.power.sync_disks(SYNC_WAIT_AT_FORCE) {
            warn!("sync(2) did not return within {SYNC_WAIT_AT_FORCE:?}; forcing anyway");
        }
        if let Err(e) = self.power.force(action) {
            warn!("{e}");
        }
    }

    /// Acknowledge SYNCRTC before the clock work: vmd's SYNCRTC ACK clears
    /// whatever is pending, so a REBOOT posted during a step would be wiped
    /// by a later ACK. SYNCRTC has no timer, so acknowledging early costs
    /// nothing. ISR (set by every post) tells whether the host posted in
    /// the one instant no ordering can close: between the last read of
    /// COMMAND and the ACK.
    fn ack_syncrtc(&mut self, raw: u32) -> Result<SyncRtcAck, AgentError> {
        if !self.features.contains(Features::ACK) {
            return Ok(SyncRtcAck::NotNegotiated);
        }
        self.bar.read(Register::Isr)?;
        if self.bar.read(Register::Command)? != raw {
            return Ok(SyncRtcAck::Superseded);
        }
        self.write(Register::Command, raw)?;
        let isr = self.bar.read(Register::Isr)?;
        if isr & u32::from(ISR_CONFIG_CHANGE) != 0
            && self.bar.read(Register::Command)? == Command::NONE
        {
            return Ok(SyncRtcAck::Wiped);
        }
        Ok(SyncRtcAck::Acked)
    }

    /// A stop that our SYNCRTC ACK wiped: vmd ends the VM 3 s after posting
    /// it and no ACK can re-arm its timer. Sync and reset inside those 3 s:
    /// a reset while vmd is stopping ends the VM as a clean stop.
    fn force_lost_stop(&mut self, now: Duration) -> Outcome {
        warn!("a stop posted while SYNCRTC was acknowledged was wiped by vmd; syncing and rebooting now");
        self.state = State::Rebooting;
        self.pending_power = Some(PendingPower {
            action: PowerAction::Reboot,
            started: now,
            synced: true,
            forced: true,
        });
        if !self.power.sync_disks(SYNC_WAIT_LOST_STOP) {
            warn!("sync(2) did not return within {SYNC_WAIT_LOST_STOP:?}; rebooting anyway");
        }
        if let Err(e) = self.power.force(PowerAction::Reboot) {
            warn!("{e}");
        }
        Outcome::LostStopForced
    }

    /// The clock work of a SYNCRTC, after its ACK. A failed step is tried
    /// again for a few polls instead of forgetting the request.
    fn step_on_request(&mut self) -> Outcome {
        if self.config.clock.mode == ClockMode::Off {
            return Outcome::StepRefused("[clock] mode is \"off\"".into());
        }
        let outcome = self.step(StepCause::Request);
        self.step_retries_left = match outcome {
            Outcome::StepRefused(_) => self.config.step_retries,
            _ => 0,
        };
        outcome
    }

    pub(super) fn retry_step(&mut self) -> Option<Outcome> {
        if self.step_retries_left == 0 || self.pending_power.is_some() {
            self.step_retries_left = 0;
            return None;
        }
        self.step_retries_left -= 1;
        let outcome = self.step(StepCause::Request);
        if matches!(outcome, Outcome::StepRefused(_)) {
            let left = self.step_retries_left;
            warn!("SYNCRTC step failed again ({outcome}); {left} tries left");
        } else {
            self.step_retries_left = 0;
            info!(command = %Command::SyncRtc, "on a later try: {outcome}");
        }
        if let Some(c) = self
            .last_command
            .as_mut()
            .filter(|c| c.command == Some(Command::SyncRtc))
        {
            c.outcome = outcome.clone();
        }
        Some(outcome)
    }

    /// Write `raw` back to COMMAND when ACK was negotiated.
    fn ack(&mut self, raw: u32) -> Result<bool, AgentError> {
        if !self.features.contains(Features::ACK) {
            return Ok(false);
        }
        self.write(Register::Command, raw)?;
        Ok(true)
    }
}

/// How the SYNCRTC acknowledgement went.
enum SyncRtcAck {
    Acked,
    /// ACK not negotiated: SYNCRTC stays posted.
    NotNegotiated,
    /// COMMAND changed before the ACK (a stop overwrote SYNCRTC): not
    /// acknowledged; handle the new command instead.
    Superseded,
    /// A stop came in the instant before the ACK and the ACK wiped it.
    Wiped,
}

pub(super) fn is_syncrtc(handled: Option<&Handled>) -> bool {
    handled.is_some_and(|h| {
        h.command == Some(Command::SyncRtc) && h.outcome != Outcome::LostStopForced
    })
}

/// How long the loop waits for sync(2) at the grace point: short, so the
/// agent keeps polling; the sync goes on in its thread.
const SYNC_WAIT_AT_GRACE: Duration = Duration::from_secs(1);
/// How long sync(2) gets before a forced reboot or power-off.
const SYNC_WAIT_AT_FORCE: Duration = Duration::from_secs(5);
/// Inside vmd's 3 s after a wiped stop.
const SYNC_WAIT_LOST_STOP: Duration = Duration::from_millis(1500);

#[cfg(test)]
#[path = "commands_tests.rs"]
mod tests;
