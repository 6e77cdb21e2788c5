//! What a configuration may hold: every limit that keeps the agent inside
//! vmd's deadlines, and paths the programs that read them can use. The
//! first value out of bounds is the error, named by its key.

use std::time::Duration;

use vmmci_actions::hooks::{MAX_HOOK_TIMEOUT, MIN_HOOK_TIMEOUT};

use super::{
    ChronyConfig, ClockConfig, Config, ConfigError, HooksConfig, MetricsConfig, PowerConfig,
    MAX_FORCE_AFTER, MAX_POLL_INTERVAL, MAX_STEP_THRESHOLD, MIN_POLL_INTERVAL, MIN_STEP_THRESHOLD,
};

fn invalid(what: &str, why: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        what: what.into(),
        why,
    })
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_timing()?;
        self.clock.validate()?;
        self.chrony.validate(self.sample_interval)?;
        self.metrics.validate()?;
        self.power.validate()?;
        self.hooks.validate()
    }

    /// The intervals and the power path's timing against vmd's deadlines.
    fn validate_timing(&self) -> Result<(), ConfigError> {
        if self.poll_interval > MAX_POLL_INTERVAL || self.poll_interval < MIN_POLL_INTERVAL {
            return invalid(
                "poll_interval",
                format!(
                    "{:?} is outside {:?}..={:?} (vmd kills a guest that does not acknowledge within 3 s)",
                    self.poll_interval, MIN_POLL_INTERVAL, MAX_POLL_INTERVAL
                ),
            );
        }
        if self.sample_interval < Duration::from_secs(1) {
            return invalid(
                "sample_interval",
                format!("{:?} is under 1 s", self.sample_interval),
            );
        }
        if self.force_after > MAX_FORCE_AFTER {
            return invalid(
                "force_after",
                format!(
                    "{:?} is over {:?}: vmd's long timeout (120 s) would end the VM first",
                    self.force_after, MAX_FORCE_AFTER
                ),
            );
        }
        if self.grace > self.force_after {
            return invalid(
                "grace",
                format!(
                    "{:?} is after force_after ({:?}): the sync must come before the force",
                    self.grace, self.force_after
                ),
            );
        }
        Ok(())
    }
}

impl ClockConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let threshold = self.step_threshold;
        if !(MIN_STEP_THRESHOLD..=MAX_STEP_THRESHOLD).contains(&threshold) {
            return invalid(
                "clock.step_threshold",
                format!("{threshold:?} is outside {MIN_STEP_THRESHOLD:?}..={MAX_STEP_THRESHOLD:?}"),
            );
        }
        Ok(())
    }
}

impl ChronyConfig {
    /// chrony's samples come at least as often as the agent's own.
    fn validate(&self, sample_interval: Duration) -> Result<(), ConfigError> {
        if !(Duration::from_millis(500)..=sample_interval).contains(&self.sample_interval) {
            return invalid(
                "chrony.sample_interval",
                format!(
                    "{:?} is outside 500ms..=sample_interval ({:?})",
                    self.sample_interval, sample_interval
                ),
            );
        }
        if let Some(sock) = &self.socket {
            if !sock.is_absolute() {
                return invalid(
                    "chrony.socket",
                    format!(
                        "{} is not an absolute path; use the path of chrony.conf's `refclock SOCK` line",
                        sock.display()
                    ),
                );
            }
        }
        Ok(())
    }
}

impl MetricsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(file) = &self.textfile {
            if !file.is_absolute() || file.extension().is_none_or(|e| e != "prom") {
                return invalid(
                    "metrics.textfile",
                    format!(
                        "{}: must be an absolute path ending in .prom (node_exporter's textfile collector reads only *.prom)",
                        file.display()
                    ),
                );
            }
        }
        Ok(())
    }
}

impl PowerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, argv) in [
            ("power.reboot", &self.reboot),
            ("power.poweroff", &self.poweroff),
        ] {
            if argv.first().is_none_or(|p| p.is_empty()) {
                return invalid(key, "must name a program, e.g. [\"reboot\"]".into());
            }
        }
        Ok(())
    }
}

impl HooksConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_HOOK_TIMEOUT..=MAX_HOOK_TIMEOUT).contains(&self.timeout) {
            return invalid(
                "hooks.timeout",
                format!(
                    "{:?} is outside {MIN_HOOK_TIMEOUT:?}..={MAX_HOOK_TIMEOUT:?}: a hook must end well inside \
                     vmd's budgets (about 30 s for a whole host shutdown, 120 s after the acknowledgement)",
                    self.timeout
                ),
            );
        }
        for (key, argv) in [
            ("hooks.before_reboot", &self.before_reboot),
            ("hooks.before_poweroff", &self.before_poweroff),
            ("hooks.after_step", &self.after_step),
        ] {
            if argv.first().is_some_and(|p| p.is_empty()) {
                return invalid(
                    key,
                    "must name a program, e.g. [\"/usr/local/sbin/my-hook\"], or be left out"
                        .into(),
                );
            }
        }
        if !self.dir.as_os_str().is_empty() && !self.dir.is_absolute() {
            return invalid(
                "hooks.dir",
                format!(
                    "{} is not an absolute path (\"\" turns the drop-in directories off)",
                    self.dir.display()
                ),
            );
        }
        Ok(())
    }
}
