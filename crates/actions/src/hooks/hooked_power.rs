//! The before-reboot and before-poweroff hooks around the init system's
//! power commands.

use std::time::Duration;

use tracing::{info, warn};
use vmmci_agent::{Power, PowerAction, PowerError};

use super::{HookEvent, HookFacts, Hooks};

/// A [`Power`] that runs the before-reboot or before-poweroff hooks first.
/// The agent acknowledges the command before it calls [`Power::begin`];
/// `begin` here returns at once and runs the hooks and then the wrapped
/// power's own `begin` (the init command, PID 1's signal) in a thread, so
/// the agent keeps polling meanwhile (other commands, SYNCRTC, its grace
/// sync and force). With no hooks for the event, the wrapped `begin` runs
/// directly, as before.
#[derive(Clone)]
pub struct HookedPower<P> {
    inner: P,
    hooks: Hooks,
}

impl<P> HookedPower<P> {
    pub fn new(inner: P, hooks: Hooks) -> HookedPower<P> {
        HookedPower { inner, hooks }
    }
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<P: Power + Clone + Send + 'static> Power for HookedPower<P> {
    fn begin(&mut self, action: PowerAction) -> Result<(), PowerError> {
        let event = HookEvent::before(action);
        let planned = self.hooks.plan(event);
        if planned.is_empty() {
            return self.inner.begin(action);
        }
        info!(
            "{action}: running {} {event} hook(s) first, then the {action} command",
            planned.len()
        );
        let hooks = self.hooks.clone();
        let mut inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vmmci-{event}"))
            .spawn(move || {
                hooks.run_planned(event, planned, &HookFacts::power(action));
                if let Err(e) = inner.begin(action) {
                    warn!("{e}; the agent syncs at the grace point and forces the {action} later");
                }
            });
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                warn!("{event} hooks not run: cannot start a thread: {e}");
                self.inner.begin(action)
            }
        }
    }

    fn sync_disks(&mut self, wait: Duration) -> bool {
        self.inner.sync_disks(wait)
    }

    fn force(&mut self, action: PowerAction) -> Result<(), PowerError> {
        self.inner.force(action)
    }
}
