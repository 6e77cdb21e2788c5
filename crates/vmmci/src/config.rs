//! `/etc/vmmci.toml`: every setting the daemon has, with defaults. Flags on
//! the command line override the file.

// By path: fuzz/fuzz_targets/config.rs includes this file by its own path.
#[path = "config/sections.rs"]
mod sections;
#[path = "config/validate.rs"]
mod validate;
#[path = "config/values.rs"]
mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sections::{ChronyConfig, ClockConfig, HooksConfig, MetricsConfig, PowerConfig};
use serde::Deserialize;
use values::de_duration;
pub use values::parse_duration;

pub const DEFAULT_CONFIG: &str = "/etc/vmmci.toml";

/// vmd kills a VM that does not acknowledge within 3 s; polling slower than
/// this could miss that.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(2);
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// vmd's long timeout after the ACK is 120 s (30 s before 2019): the
/// forced reboot must come before it, with time to reset.
pub const MAX_FORCE_AFTER: Duration = Duration::from_secs(115);
pub const MIN_STEP_THRESHOLD: Duration = Duration::from_millis(1);
pub const MAX_STEP_THRESHOLD: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// PCI address of the device; found by vendor/device id when unset.
    pub device: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub poll_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub sample_interval: Duration,
    /// How long after the ACK of a power command the agent syncs file
    /// systems if the guest is still up ("sync early").
    #[serde(deserialize_with = "de_duration")]
    pub grace: Duration,
    /// How long after the ACK the agent forces the reboot or power-off
    /// ("force late": shortly before vmd's 120 s).
    #[serde(deserialize_with = "de_duration")]
    pub force_after: Duration,
    /// Write device status 0 when the daemon exits. Off by default: vmd
    /// then refuses every stop and ends the VM at once, with no shutdown,
    /// until an agent runs again.
    pub release_on_exit: bool,
    pub run_dir: PathBuf,
    pub debug: bool,
    pub power: PowerConfig,
    pub clock: ClockConfig,
    pub chrony: ChronyConfig,
    pub metrics: MetricsConfig,
    pub hooks: HooksConfig,
    /// Where PCI devices are listed; from `--sysfs-root`, not the file.
    #[serde(skip)]
    pub sysfs_root: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device: None,
            poll_interval: Duration::from_millis(250),
            sample_interval: Duration::from_secs(15),
            grace: Duration::from_secs(25),
            force_after: Duration::from_secs(110),
            release_on_exit: false,
            run_dir: PathBuf::from(vmmci_report::DEFAULT_RUN_DIR),
            debug: false,
            power: PowerConfig::default(),
            clock: ClockConfig::default(),
            chrony: ChronyConfig::default(),
            metrics: MetricsConfig::default(),
            hooks: HooksConfig::default(),
            sysfs_root: PathBuf::from(vmmci_transport::discover::SYSFS_PCI_DEVICES),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

impl Config {
    /// Load `path`. A missing file at the default path means defaults; a
    /// missing file the user named is an error.
    pub fn load(path: &Path, named_by_user: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named_by_user => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parse TOML text; the error names the line, the column and the key.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| e.to_string().trim_end().to_string())
    }
}

#[cfg(test)]
#[path = "config/tests.rs"]
mod tests;
