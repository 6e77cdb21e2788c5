//! The daemon's side of the hooks (`[hooks]`, `/etc/vmmci/hooks.d`): the
//! after-step hooks for each clock step the agent made, run in a thread so
//! the loop never waits for them, and the status record's view of every
//! hook run. The before-reboot and before-poweroff hooks run inside
//! [`vmmci_actions::HookedPower`], after the acknowledgement.

use vmmci_actions::hooks::{HookEnd, HookRun};
use vmmci_actions::{HookEvent, HookFacts, Hooks};
use vmmci_agent::{Agent, GuestClock, Power, StepCause, StepRecord, Tick};
use vmmci_report::{HookRunStatus, HooksStatus};
use vmmci_transport::RegisterIo;

pub(super) struct HookWatch {
    hooks: Hooks,
    last_step: Option<StepRecord>,
    seen: u64,
}

impl HookWatch {
    pub(super) fn new(hooks: &Hooks) -> HookWatch {
        HookWatch {
            hooks: hooks.clone(),
            last_step: None,
            seen: hooks.generation(),
        }
    }

    /// After a tick: when the agent stepped the clock (a SYNCRTC handled or
    /// retried, or `discipline`'s step), start the after-step hooks.
    pub(super) fn after_tick<B: RegisterIo, C: GuestClock, P: Power>(
        &mut self,
        agent: &Agent<B, C, P>,
        tick: &Tick,
    ) {
        if tick.handled.is_none() && tick.retried.is_none() && tick.clock.is_none() {
            return;
        }
        // The agent's last step, not the tick's records: a stop read in the
        // same tick replaces the SYNCRTC in `tick.handled`.
        let step = agent.snapshot().last_step;
        if step == self.last_step {
            return;
        }
        self.last_step = step;
        if let Some(st) = step {
            self.hooks.spawn(HookEvent::AfterStep, facts_of_step(&st));
        }
    }

    /// Whether a hook ran or its problems changed since the last call: the
    /// status is due.
    pub(super) fn news(&mut self) -> bool {
        let now = self.hooks.generation();
        let news = now != self.seen;
        self.seen = now;
        news
    }
}

/// In the daemon a requested step is the host's SYNCRTC (`vmmci sync`
/// runs its hooks itself).
fn facts_of_step(st: &StepRecord) -> HookFacts {
    let command = (st.cause == StepCause::Request).then_some("SYNCRTC");
    HookFacts::step(st, command)
}

/// The hooks as the status record shows them.
pub(super) fn status_of(hooks: &Hooks) -> HooksStatus {
    HooksStatus {
        runs: hooks.runs().iter().map(run_status).collect(),
        problems: hooks.problems(),
    }
}

fn run_status(r: &HookRun) -> HookRunStatus {
    HookRunStatus {
        event: r.event.name().into(),
        program: r.program.clone(),
        at_ns: r.at_ns,
        duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
        exit_code: match r.end {
            HookEnd::Exited(code) => Some(code),
            _ => None,
        },
        signal: match r.end {
            HookEnd::Signalled(sig) => Some(sig),
            HookEnd::Killed(_) => Some(libc::SIGKILL),
            _ => None,
        },
        killed: matches!(r.end, HookEnd::Killed(_)),
        error: match &r.end {
            HookEnd::NotStarted(why) => Some(why.clone()),
            _ => None,
        },
        result: r.end.to_string(),
        output: r.output.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_run_maps_to_its_status() {
        let run = |end| HookRun {
            event: HookEvent::BeforeReboot,
            program: "/x".into(),
            at_ns: 7,
            duration: Duration::from_millis(5001),
            end,
            output: "out\n".into(),
        };
        let s = run_status(&run(HookEnd::Killed(Duration::from_secs(5))));
        assert!(s.killed && s.signal == Some(libc::SIGKILL) && s.exit_code.is_none());
        assert_eq!(
            (
                s.event.as_str(),
                s.duration_ms,
                s.result.as_str(),
                s.output.as_str()
            ),
            ("before-reboot", 5001, "killed at its limit (5s)", "out\n")
        );
        let s = run_status(&run(HookEnd::Exited(0)));
        assert!(s.success() && !s.killed && s.error.is_none());
        let s = run_status(&run(HookEnd::NotStarted("gone".into())));
        assert_eq!(s.error.as_deref(), Some("gone"));
        assert!(!s.success());
    }

    #[test]
    fn a_requested_step_names_syncrtc_and_a_periodic_one_no_command() {
        let step = |cause| StepRecord {
            cause,
            at_ns: 0,
            delta_ns: -5,
            error_bound_ns: 1,
            residual_ns: None,
        };
        let f = facts_of_step(&step(StepCause::Request));
        assert_eq!(
            (f.command.as_deref(), f.cause.as_deref(), f.step_ns),
            (Some("SYNCRTC"), Some("request"), Some(-5))
        );
        let f = facts_of_step(&step(StepCause::Periodic));
        assert_eq!((f.command, f.cause.as_deref()), (None, Some("periodic")));
    }
}
