//! What the daemon's flags and SIGHUP do to the configuration: flags
//! override the file, at start and at every reload; a bad new file keeps
//! the old configuration, since the agent must keep serving.

use std::path::{Path, PathBuf};

use tracing::{info, warn};
use vmmci_actions::{HookedPower, Hooks, InitPower};
use vmmci_agent::{Agent, GuestClock};
use vmmci_transport::RegisterIo;

use super::reporter::Reporter;
use crate::cli::DaemonArgs;
use crate::config::Config;
use crate::CliError;

/// Flags override the file.
pub(super) fn apply_flags(mut config: Config, args: &DaemonArgs) -> Result<Config, CliError> {
    if let Some(d) = &args.device.device {
        config.device = Some(d.clone());
    }
    config.poll_interval = args.poll_interval.unwrap_or(config.poll_interval);
    config.sample_interval = args.sample_interval.unwrap_or(config.sample_interval);
    config.grace = args.grace.unwrap_or(config.grace);
    config.force_after = args.force_after.unwrap_or(config.force_after);
    config.release_on_exit |= args.release_on_exit;
    if let Some(dir) = &args.run_dir {
        config.run_dir = dir.clone();
    }
    config.clock.mode = args.clock_mode.unwrap_or(config.clock.mode);
    config.validate()?;
    Ok(config)
}

/// SIGHUP: the file read again, the flags on top. The device and the run
/// directory stay as they were at start.
pub(super) struct Reload {
    path: PathBuf,
    named: bool,
    args: DaemonArgs,
    sysfs_root: PathBuf,
    hooks: Hooks,
}

impl Reload {
    pub(super) fn new(
        path: &Path,
        named: bool,
        args: DaemonArgs,
        config: &Config,
        hooks: &Hooks,
    ) -> Reload {
        Reload {
            path: path.to_path_buf(),
            named,
            args,
            sysfs_root: config.sysfs_root.clone(),
            hooks: hooks.clone(),
        }
    }

    pub(super) fn apply<B: RegisterIo, C: GuestClock>(
        &self,
        agent: &mut Agent<B, C, HookedPower<InitPower>>,
        reporter: &mut Reporter,
    ) {
        let new = match self.load() {
            Ok(new) => new,
            Err(e) => {
                warn!("SIGHUP: {e}; keeping the old configuration");
                return;
            }
        };
        agent.reconfigure(super::agent_config(&new));
        reporter.configure(&new);
        self.hooks.configure(new.hooks.settings());
        *agent.power_mut() = super::init_power(&new, &self.hooks);
        info!(
            "SIGHUP: configuration reloaded from {} (device and run_dir need a restart)",
            self.path.display()
        );
    }

    fn load(&self) -> Result<Config, CliError> {
        let file = Config::load(&self.path, self.named)?;
        let config = Config {
            sysfs_root: self.sysfs_root.clone(),
            ..file
        };
        apply_flags(config, &self.args)
    }
}
