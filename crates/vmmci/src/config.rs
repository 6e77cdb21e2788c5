//! `/etc/vmmci.toml`: every setting the daemon has, with defaults. Flags on
//! the command line override the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use vmmci_agent::{ClockMode, ClockPolicy};

pub const DEFAULT_CONFIG: &str = "/etc/vmmci.toml";

/// vmd kills a VM that does not acknowledge within 3 s; polling slower than
/// this could miss that.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(2);
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// vmd's long timeout after the ACK is 120 s (30 s before 2019): the
/// forced reboot must come before it, with time to reset.
pub const MAX_FORCE_AFTER: Duration = Duration::from_secs(115);

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

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerConfig {
    /// argv run for REBOOT (no shell).
    pub reboot: Vec<String>,
    /// argv run for SHUTDOWN (no shell).
    pub poweroff: Vec<String>,
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

pub const MIN_STEP_THRESHOLD: Duration = Duration::from_millis(1);
pub const MAX_STEP_THRESHOLD: Duration = Duration::from_secs(600);

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

impl Default for PowerConfig {
    fn default() -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        PowerConfig {
            reboot: owned(vmmci_actions::DEFAULT_REBOOT),
            poweroff: owned(vmmci_actions::DEFAULT_POWEROFF),
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str, why: String| {
            Err(ConfigError::Invalid {
                what: what.into(),
                why,
            })
        };
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
        let threshold = self.clock.step_threshold;
        if !(MIN_STEP_THRESHOLD..=MAX_STEP_THRESHOLD).contains(&threshold) {
            return invalid(
                "clock.step_threshold",
                format!("{threshold:?} is outside {MIN_STEP_THRESHOLD:?}..={MAX_STEP_THRESHOLD:?}"),
            );
        }
        if !(Duration::from_millis(500)..=self.sample_interval)
            .contains(&self.chrony.sample_interval)
        {
            return invalid(
                "chrony.sample_interval",
                format!(
                    "{:?} is outside 500ms..=sample_interval ({:?})",
                    self.chrony.sample_interval, self.sample_interval
                ),
            );
        }
        if let Some(sock) = &self.chrony.socket {
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
        if let Some(file) = &self.metrics.textfile {
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
        for (key, argv) in [
            ("power.reboot", &self.power.reboot),
            ("power.poweroff", &self.power.poweroff),
        ] {
            if argv.first().is_none_or(|p| p.is_empty()) {
                return invalid(key, "must name a program, e.g. [\"reboot\"]".into());
            }
        }
        self.validate_hooks()
    }

    fn validate_hooks(&self) -> Result<(), ConfigError> {
        use vmmci_actions::hooks::{MAX_HOOK_TIMEOUT, MIN_HOOK_TIMEOUT};
        let invalid = |what: &str, why: String| {
            Err(ConfigError::Invalid {
                what: what.into(),
                why,
            })
        };
        let h = &self.hooks;
        if !(MIN_HOOK_TIMEOUT..=MAX_HOOK_TIMEOUT).contains(&h.timeout) {
            return invalid(
                "hooks.timeout",
                format!(
                    "{:?} is outside {MIN_HOOK_TIMEOUT:?}..={MAX_HOOK_TIMEOUT:?}: a hook must end well inside \
                     vmd's budgets (about 30 s for a whole host shutdown, 120 s after the acknowledgement)",
                    h.timeout
                ),
            );
        }
        for (key, argv) in [
            ("hooks.before_reboot", &h.before_reboot),
            ("hooks.before_poweroff", &h.before_poweroff),
            ("hooks.after_step", &h.after_step),
        ] {
            if argv.first().is_some_and(|p| p.is_empty()) {
                return invalid(
                    key,
                    "must name a program, e.g. [\"/usr/local/sbin/my-hook\"], or be left out"
                        .into(),
                );
            }
        }
        if !h.dir.as_os_str().is_empty() && !h.dir.is_absolute() {
            return invalid(
                "hooks.dir",
                format!(
                    "{} is not an absolute path (\"\" turns the drop-in directories off)",
                    h.dir.display()
                ),
            );
        }
        Ok(())
    }
}

/// `250ms`, `15s`, `2m`, `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("invalid duration {text:?}: use a number with ms, s or m, e.g. \"250ms\"")
    })?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?}; use ms, s or m, e.g. \"250ms\""
            ))
        }
    };
    if !secs.is_finite() || secs > 86_400.0 {
        return Err(format!("invalid duration {text:?}: too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn de_mode<'de, D: Deserializer<'de>>(d: D) -> Result<ClockMode, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn de_socket<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").unwrap_err().contains("use a number"));
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.power.reboot, vec!["reboot"]);
    }

    #[test]
    fn full_file() {
        let c = Config::parse(
            r#"
device = "0000:00:05.0"
poll_interval = "100ms"
sample_interval = "30s"
grace = "40s"
force_after = "100s"
release_on_exit = true
run_dir = "/tmp/vmmci"
debug = true

[power]
reboot = ["/sbin/openrc-shutdown", "-r", "now"]
poweroff = ["/sbin/openrc-shutdown", "-p", "now"]

[clock]
mode = "discipline"
step_threshold = "500ms"

[chrony]
socket = "/run/chrony.vmmci.sock"

[metrics]
textfile = "/var/lib/prometheus/node-exporter/vmmci.prom"
"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.clock.mode, ClockMode::Discipline);
        assert_eq!(c.clock.step_threshold, Duration::from_millis(500));
        assert_eq!(
            c.chrony.socket.as_deref(),
            Some(Path::new("/run/chrony.vmmci.sock"))
        );
        assert!(c.metrics.textfile.is_some());
        assert_eq!(c.device.as_deref(), Some("0000:00:05.0"));
        assert_eq!(c.poll_interval, Duration::from_millis(100));
        assert_eq!(c.grace, Duration::from_secs(40));
        assert_eq!(c.force_after, Duration::from_secs(100));
        assert!(c.release_on_exit);
        assert_eq!(c.power.reboot, vec!["/sbin/openrc-shutdown", "-r", "now"]);
    }

    #[test]
    fn bad_file_names_the_line_and_the_key() {
        let err = Config::parse("debug = true\npoll_intervall = \"1s\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("poll_intervall"), "{err}");
        let err = Config::parse("\n\npoll_interval = \"fast\"\n").unwrap_err();
        assert!(
            err.contains("line 3") && err.contains("poll_interval"),
            "{err}"
        );
        assert!(err.contains("use a number"), "{err}");
        let err = Config::parse("[power]\nreboot = \"reboot\"\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("reboot"), "{err}");
        let err = Config::parse("[clock]\nmode = \"slew\"\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("discipline"),
            "{err}"
        );
    }

    #[test]
    fn values_that_would_break_vmd_deadlines_are_refused() {
        let slow = Config {
            poll_interval: Duration::from_secs(5),
            ..Config::default()
        };
        assert!(slow.validate().unwrap_err().to_string().contains("3 s"));
        let long = Config {
            force_after: Duration::from_secs(200),
            ..Config::default()
        };
        assert!(long.validate().unwrap_err().to_string().contains("120 s"));
        let late_sync = Config {
            grace: Duration::from_secs(111),
            ..Config::default()
        };
        let err = late_sync.validate().unwrap_err().to_string();
        assert!(
            err.contains("grace") && err.contains("before the force"),
            "{err}"
        );
        let empty = Config {
            power: PowerConfig {
                reboot: vec![],
                ..PowerConfig::default()
            },
            ..Config::default()
        };
        assert!(empty
            .validate()
            .unwrap_err()
            .to_string()
            .contains("power.reboot"));
        let mut c = Config::default();
        c.clock.step_threshold = Duration::ZERO;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("step_threshold"));
        let mut c = Config::default();
        c.metrics.textfile = Some("/var/lib/node-exporter/vmmci.txt".into());
        assert!(c.validate().unwrap_err().to_string().contains(".prom"));
        let mut c = Config::default();
        c.chrony.socket = Some("chrony.sock".into());
        assert!(c.validate().unwrap_err().to_string().contains("absolute"));
    }

    #[test]
    fn missing_file_defaults_only_when_not_named() {
        let missing = Path::new("/nonexistent/vmmci.toml");
        assert_eq!(Config::load(missing, false).unwrap(), Config::default());
        assert!(matches!(
            Config::load(missing, true),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn hooks_section() {
        let d = Config::default();
        assert_eq!(d.hooks.timeout, Duration::from_secs(5));
        assert_eq!(d.hooks.dir, Path::new("/etc/vmmci/hooks.d"));
        let s = d.hooks.settings();
        assert!(s.before_reboot.is_empty() && s.after_step.is_empty());
        assert_eq!(s.dir.as_deref(), Some(Path::new("/etc/vmmci/hooks.d")));

        let c = Config::parse(
            r#"
[hooks]
before_reboot = ["/usr/local/sbin/drain", "--fast"]
before_poweroff = ["logger", "powering off"]
after_step = ["/usr/local/sbin/note-step"]
timeout = "2s"
dir = "/srv/hooks"
"#,
        )
        .unwrap();
        c.validate().unwrap();
        let s = c.hooks.settings();
        assert_eq!(s.before_reboot, ["/usr/local/sbin/drain", "--fast"]);
        assert_eq!(s.before_poweroff, ["logger", "powering off"]);
        assert_eq!(s.after_step, ["/usr/local/sbin/note-step"]);
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!(s.dir.as_deref(), Some(Path::new("/srv/hooks")));
        let off = Config::parse("[hooks]\ndir = \"\"\n").unwrap();
        off.validate().unwrap();
        assert_eq!(
            off.hooks.settings().dir,
            None,
            "\"\" turns the directories off"
        );

        let err = Config::parse("[hooks]\nbefore_reboot = \"/x\"\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("before_reboot"),
            "{err}"
        );
        let err = Config::parse("[hooks]\nafter_stop = [\"/x\"]\n").unwrap_err();
        assert!(err.contains("after_stop"), "{err}");
    }

    #[test]
    fn hook_limits_stay_well_inside_vmds_budgets() {
        let with = |f: &dyn Fn(&mut HooksConfig)| {
            let mut c = Config::default();
            f(&mut c.hooks);
            c.validate().map_err(|e| e.to_string())
        };
        assert!(with(&|h| h.timeout = Duration::from_secs(20)).is_ok());
        assert!(with(&|h| h.timeout = Duration::from_millis(100)).is_ok());
        let err = with(&|h| h.timeout = Duration::from_secs(21)).unwrap_err();
        assert!(
            err.contains("hooks.timeout") && err.contains("30 s"),
            "{err}"
        );
        let err = with(&|h| h.timeout = Duration::ZERO).unwrap_err();
        assert!(err.contains("hooks.timeout"), "{err}");
        let err = with(&|h| h.after_step = vec![String::new()]).unwrap_err();
        assert!(
            err.contains("hooks.after_step") && err.contains("left out"),
            "{err}"
        );
        let err = with(&|h| h.dir = "hooks.d".into()).unwrap_err();
        assert!(
            err.contains("hooks.dir") && err.contains("absolute"),
            "{err}"
        );
    }
}
