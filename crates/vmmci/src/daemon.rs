//! `vmmci daemon`: the agent loop against the real device, the real clock
//! and the real init system. The only place those are put together.

use std::path::Path;
use std::process::ExitCode;

use tracing::{info, warn};
use vmmci_actions::{HookedPower, Hooks, InitPower, SystemClock};
use vmmci_agent::{Agent, AgentConfig, GuestClock, Power};
use vmmci_report::ProcessInfo;
use vmmci_transport::RegisterIo;

mod hook_watch;
mod lock;
mod readiness;
mod reload;
mod reporter;
mod serving;
mod signals;

use lock::{previous_latch, single_instance};
use readiness::{notify_systemd, Watchdog};
use reload::{apply_flags, Reload};
use reporter::{clock_source_at_start, Reporter};
use serving::Serving;
use signals::Signals;

use crate::cli::DaemonArgs;
use crate::config::Config;
use crate::{device, CliError};

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Serve the device until SIGTERM or SIGINT.
pub fn run(
    config: Config,
    args: DaemonArgs,
    config_path: &Path,
    named: bool,
) -> Result<ExitCode, CliError> {
    let config = apply_flags(config, &args)?;
    let _lock = single_instance(&config.run_dir)?;
    let dev = device::open(&config.sysfs_root, config.device.as_deref())?;
    // The device is open and I/O decode on: from here the agent needs only
    // CAP_SYS_TIME and CAP_SYS_BOOT.
    if let Err(e) = vmmci_actions::privilege::drop_to_kept() {
        warn!("could not drop capabilities ({e}); running with those it was given");
    }
    info!(
        "vmmci {} on {} ({})",
        env!("CARGO_PKG_VERSION"),
        dev.pci.bdf,
        dev.pci.path.display()
    );
    let boot_id = boot_id();
    let latch = previous_latch(&config.run_dir, boot_id.as_deref());
    if let Some(raw) = latch {
        info!("a previous agent this boot already handled command {raw}; not acting on it again");
    }
    let hooks = Hooks::new(config.hooks.settings());
    let power = init_power(&config, &hooks);
    let agent = Agent::new(dev.bar, SystemClock, power, agent_config(&config)).with_latch(latch);
    let info = ProcessInfo {
        device: dev.pci.bdf.clone(),
        started_at_ns: SystemClock.now_ns(),
        boot_id,
        ..ProcessInfo::default()
    };
    let reporter = reporter(&config, info, &hooks);
    let signals = Signals::install()?;
    let reload = Reload::new(config_path, named, args, &config, &hooks);
    let reload =
        |agent: &mut Agent<_, _, _>, reporter: &mut Reporter| reload.apply(agent, reporter);
    serve(
        agent,
        reporter,
        &signals,
        &hooks,
        reload,
        config.release_on_exit,
    )
}

fn boot_id() -> Option<String> {
    let text = std::fs::read_to_string(BOOT_ID).ok()?;
    Some(text.trim().to_string())
}

/// The status file, metrics and chrony feed the configuration asks for,
/// with the hooks' runs and the clock source.
fn reporter(config: &Config, info: ProcessInfo, hooks: &Hooks) -> Reporter {
    let mut reporter = Reporter::new(config.run_dir.clone(), info);
    reporter.configure(config);
    reporter.show_hooks(hooks);
    reporter.watch_clock_source(clock_source_at_start());
    reporter
}

/// What the agent is told: the intervals, the power path's timing and the
/// clock policy.
pub fn agent_config(config: &Config) -> AgentConfig {
    AgentConfig {
        poll_interval: config.poll_interval,
        sample_interval: config.sample_interval,
        grace: config.grace,
        force_after: config.force_after,
        not_before_sec: crate::not_before_sec(),
        clock: config.clock.policy(),
        ..AgentConfig::default()
    }
}

/// The init system's reboot and power-off, behind the before-* hooks: both
/// run off the loop, after the ACK.
fn init_power(config: &Config, hooks: &Hooks) -> HookedPower<InitPower> {
    let init = InitPower::new(config.power.reboot.clone(), config.power.poweroff.clone());
    HookedPower::new(init, hooks.clone())
}

/// The loop: handshake, then tick at every deadline until a stop signal.
/// DRIVER_OK stays set on exit unless `release_on_exit`: a stop posted
/// while no agent runs then waits for the next one instead of ending the
/// VM at once.
fn serve<B: RegisterIo, C: GuestClock, P: Power>(
    agent: Agent<B, C, P>,
    reporter: Reporter,
    signals: &Signals,
    hooks: &Hooks,
    mut reload: impl FnMut(&mut Agent<B, C, P>, &mut Reporter),
    release_on_exit: bool,
) -> Result<ExitCode, CliError> {
    let mut serving = Serving::start(agent, reporter, hooks)?;
    notify_systemd("READY=1\nSTATUS=DRIVER_OK, polling");
    let mut watchdog = Watchdog::from_env();
    while !signals.stop_asked() {
        watchdog.feed();
        if signals.take_reload() {
            serving.reload(&mut reload);
        }
        let next = serving.tick();
        signals.sleep_until(next);
    }
    notify_systemd("STOPPING=1");
    serving.exit(release_on_exit);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
