//! The events hooks run at, what the configuration names for each, and
//! the facts a hook finds in its environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use vmmci_agent::{PowerAction, StepRecord};

use super::DEFAULT_HOOK_TIMEOUT;

/// When hooks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookEvent {
    /// The host sent REBOOT (`vmctl stop`): before the init command.
    BeforeReboot,
    /// The host sent SHUTDOWN: before the init command.
    BeforePoweroff,
    /// The agent stepped the clock (SYNCRTC, `vmmci sync`, `discipline`).
    AfterStep,
}

impl HookEvent {
    pub const ALL: [HookEvent; 3] = [
        HookEvent::BeforeReboot,
        HookEvent::BeforePoweroff,
        HookEvent::AfterStep,
    ];

    /// `VMMCI_EVENT`, and the name of the event's drop-in directory.
    pub fn name(self) -> &'static str {
        match self {
            HookEvent::BeforeReboot => "before-reboot",
            HookEvent::BeforePoweroff => "before-poweroff",
            HookEvent::AfterStep => "after-step",
        }
    }

    /// The `[hooks]` key of the event.
    pub fn key(self) -> &'static str {
        match self {
            HookEvent::BeforeReboot => "before_reboot",
            HookEvent::BeforePoweroff => "before_poweroff",
            HookEvent::AfterStep => "after_step",
        }
    }

    pub fn before(action: PowerAction) -> HookEvent {
        match action {
            PowerAction::Reboot => HookEvent::BeforeReboot,
            PowerAction::Poweroff => HookEvent::BeforePoweroff,
        }
    }
}

impl fmt::Display for HookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the hooks are: `[hooks]` of the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct HookSettings {
    /// argv run before a reboot the host asked for; empty: none.
    pub before_reboot: Vec<String>,
    /// argv run before a power-off the host asked for; empty: none.
    pub before_poweroff: Vec<String>,
    /// argv run after each clock step; empty: none.
    pub after_step: Vec<String>,
    /// How long each hook may run before its process group is killed.
    pub timeout: Duration,
    /// Where the drop-in directories are (`<dir>/<event>/`); `None`: none.
    pub dir: Option<PathBuf>,
}

/// No hooks at all (no drop-in directory either: the configuration's
/// default names [`DEFAULT_HOOK_DIR`](super::DEFAULT_HOOK_DIR)).
impl Default for HookSettings {
    fn default() -> Self {
        HookSettings {
            before_reboot: Vec::new(),
            before_poweroff: Vec::new(),
            after_step: Vec::new(),
            timeout: DEFAULT_HOOK_TIMEOUT,
            dir: None,
        }
    }
}

impl HookSettings {
    pub(super) fn argv(&self, event: HookEvent) -> &[String] {
        match event {
            HookEvent::BeforeReboot => &self.before_reboot,
            HookEvent::BeforePoweroff => &self.before_poweroff,
            HookEvent::AfterStep => &self.after_step,
        }
    }
}

/// The event's facts, as the hook's environment gets them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookFacts {
    /// `VMMCI_COMMAND`: the host command behind the event (REBOOT,
    /// SHUTDOWN, SYNCRTC); unset for a periodic step or `vmmci sync`.
    pub command: Option<String>,
    /// `VMMCI_STEP_NS`: the step, ns (positive: forward).
    pub step_ns: Option<i64>,
    /// `VMMCI_CAUSE`: `request` (SYNCRTC, `vmmci sync`) or `periodic`.
    pub cause: Option<String>,
}

impl HookFacts {
    /// A reboot or power-off the host asked for.
    pub fn power(action: PowerAction) -> HookFacts {
        HookFacts {
            command: Some(
                match action {
                    PowerAction::Reboot => "REBOOT",
                    PowerAction::Poweroff => "SHUTDOWN",
                }
                .into(),
            ),
            ..HookFacts::default()
        }
    }

    /// A clock step; `command` is the host's (SYNCRTC) when it asked.
    pub fn step(step: &StepRecord, command: Option<&str>) -> HookFacts {
        HookFacts {
            command: command.map(str::to_string),
            step_ns: Some(step.delta_ns),
            cause: Some(step.cause.name().into()),
        }
    }

    /// Every variable a hook may see: set, or removed (`None`) so that
    /// nothing leaks in from the agent's own environment.
    pub(super) fn env(&self, event: HookEvent) -> [(&'static str, Option<String>); 4] {
        [
            ("VMMCI_EVENT", Some(event.name().into())),
            ("VMMCI_COMMAND", self.command.clone()),
            ("VMMCI_STEP_NS", self.step_ns.map(|n| n.to_string())),
            ("VMMCI_CAUSE", self.cause.clone()),
        ]
    }
}
