//! The file's sections (`[power]`, `[clock]`, `[chrony]`, `[metrics]`,
//! `[hooks]`), their defaults, and the library settings each one becomes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use vmmci_agent::{ClockMode, ClockPolicy};

use super::values::{de_duration, de_mode, de_socket};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerConfig {
    /// argv run for REBOOT (no shell).
    pub reboot: Vec<String>,
    /// argv run for SHUTDOWN (no shell).
    pub poweroff: Vec<String>,
}

impl Default for PowerConfig {
    fn default() -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        PowerConfig {
            reboot: owned(vmmci_actions::DEFAULT_REBOOT),
            poweroff: owned(vmmci_actions::DEFAULT_POWEROFF),
        }
    }
}

/// `[clock]`: what the agent does to the guest clock.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    #[serde(deserialize_with = "de_mode")]
    pub mode: ClockMode,
    #[serde(deserialize_with = "de_duration")]
    pub step_threshold: Duration,
}

impl Default for ClockConfig {
    fn default() -> Self {
        let p = ClockPolicy::default();
        ClockConfig {
            mode: p.mode,
            step_threshold: p.step_threshold,
        }
    }
}

impl ClockConfig {
    pub fn policy(&self) -> ClockPolicy {
        ClockPolicy {
            mode: self.mode,
            step_threshold: self.step_threshold,
        }
    }
}

/// chrony's socket for the refclock the packages' chrony snippet sets up.
pub const DEFAULT_CHRONY_SOCKET: &str = "/run/chrony.vmmci.sock";

/// `[chrony]`: feed every sample to chronyd's SOCK refclock. On by default:
/// with no chronyd listening it costs nothing, and installing chrony with
/// the packaged snippet is then the only step.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChronyConfig {
    /// The path in chrony.conf's `refclock SOCK` line; `""` turns the feed off.
    #[serde(deserialize_with = "de_socket")]
    pub socket: Option<PathBuf>,
    /// How often to sample while chronyd listens: chrony wants several
    /// samples per poll of its refclock.
    #[serde(deserialize_with = "de_duration")]
    pub sample_interval: Duration,
}

impl Default for ChronyConfig {
    fn default() -> Self {
        ChronyConfig {
            socket: Some(PathBuf::from(DEFAULT_CHRONY_SOCKET)),
            sample_interval: Duration::from_secs(2),
        }
    }
}

/// `[metrics]`: Prometheus text for node_exporter's textfile collector.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A `.prom` file in the collector's directory.
    pub textfile: Option<PathBuf>,
}

/// `[hooks]`: the administrator's programs around host events: an argv
/// per event (no shell; bare names looked up like `[power]`'s), then the
/// executables in `<dir>/<event>/`, in name order.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Before a reboot the host asked for (REBOOT, `vmctl stop`).
    pub before_reboot: Vec<String>,
    /// Before a power-off the host asked for (SHUTDOWN).
    pub before_poweroff: Vec<String>,
    /// After each step of the clock (SYNCRTC, `vmmci sync`, `discipline`).
    pub after_step: Vec<String>,
    /// How long each hook may run before it is killed.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// The drop-in directories' parent; "" for none.
    pub dir: PathBuf,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            before_reboot: Vec::new(),
            before_poweroff: Vec::new(),
            after_step: Vec::new(),
            timeout: vmmci_actions::hooks::DEFAULT_HOOK_TIMEOUT,
            dir: PathBuf::from(vmmci_actions::hooks::DEFAULT_HOOK_DIR),
        }
    }
}

impl HooksConfig {
    pub fn settings(&self) -> vmmci_actions::HookSettings {
        vmmci_actions::HookSettings {
            before_reboot: self.before_reboot.clone(),
            before_poweroff: self.before_poweroff.clone(),
            after_step: self.after_step.clone(),
            timeout: self.timeout,
            dir: (!self.dir.as_os_str().is_empty()).then(|| self.dir.clone()),
        }
    }
}
