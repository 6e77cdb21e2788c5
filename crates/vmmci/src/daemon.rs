//! `vmmci daemon`: the agent loop against the real device, the real clock
//! and the real init system. The only place those are put together.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};
use vmmci_actions::{InitPower, SystemClock};
use vmmci_agent::{Agent, AgentConfig, GuestClock, Power};
use vmmci_report::{read_status, write_status, ProcessInfo, Status};
use vmmci_transport::RegisterIo;

use crate::cli::DaemonArgs;
use crate::config::Config;
use crate::{device, CliError};

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

pub fn run(mut config: Config, args: DaemonArgs) -> Result<ExitCode, CliError> {
    // Flags override the file.
    if let Some(d) = args.device.device {
        config.device = Some(d);
    }
    config.poll_interval = args.poll_interval.unwrap_or(config.poll_interval);
    config.sample_interval = args.sample_interval.unwrap_or(config.sample_interval);
    config.grace = args.grace.unwrap_or(config.grace);
    if let Some(dir) = args.run_dir {
        config.run_dir = dir;
    }
    config.validate()?;

    let dev = device::open(config.device.as_deref())?;
    info!(
        "vmmci {} on {} ({})",
        env!("CARGO_PKG_VERSION"),
        dev.pci.bdf,
        dev.pci.path.display()
    );
    let boot_id = std::fs::read_to_string(BOOT_ID)
        .ok()
        .map(|s| s.trim().to_string());
    let latch = previous_latch(&config.run_dir, boot_id.as_deref());
    if let Some(raw) = latch {
        info!("a previous agent this boot already handled command {raw}; not acting on it again");
    }
    let power = InitPower {
        reboot: config.power.reboot.clone(),
        poweroff: config.power.poweroff.clone(),
    };
    let agent = Agent::new(dev.bar, SystemClock, power, agent_config(&config)).with_latch(latch);
    let reporter = Reporter {
        run_dir: config.run_dir.clone(),
        info: ProcessInfo {
            device: dev.pci.bdf.clone(),
            started_at_ns: SystemClock.now_ns(),
            boot_id,
            ..ProcessInfo::default()
        },
        failing: false,
    };
    serve(agent, reporter)
}

pub fn agent_config(config: &Config) -> AgentConfig {
    AgentConfig {
        poll_interval: config.poll_interval,
        sample_interval: config.sample_interval,
        grace: config.grace,
        not_before_sec: crate::not_before_sec(),
        ..AgentConfig::default()
    }
}

/// The COMMAND value a previous agent handled this boot, from its status.
fn previous_latch(run_dir: &Path, boot_id: Option<&str>) -> Option<u32> {
    let old = read_status(run_dir).ok()?;
    (old.boot_id.is_some() && old.boot_id.as_deref() == boot_id).then_some(old.latched_command?)
}

/// Writes the status file; says once when it cannot, and keeps the agent
/// serving the device either way (status is a view, not the job).
struct Reporter {
    run_dir: std::path::PathBuf,
    info: ProcessInfo,
    failing: bool,
}

impl Reporter {
    fn write<B: RegisterIo, C: GuestClock, P: Power>(&mut self, agent: &Agent<B, C, P>) {
        self.info.now_ns = SystemClock.now_ns();
        let status = Status::from_snapshot(&agent.snapshot(), &self.info);
        match write_status(&self.run_dir, &status) {
            Ok(()) if self.failing => {
                info!("status is written again in {}", self.run_dir.display());
                self.failing = false;
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                warn!("{e}; status will be stale, the agent keeps serving the device");
                self.failing = true;
            }
            Err(_) => {}
        }
    }
}

fn serve<B: RegisterIo, C: GuestClock, P: Power>(
    mut agent: Agent<B, C, P>,
    mut reporter: Reporter,
) -> Result<ExitCode, CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| CliError::Failed(format!("cannot install signal handler: {e}")))?;
    }
    agent.handshake()?;
    reporter.write(&agent);

    let start = Instant::now();
    let mut last_error: Option<String> = None;
    let mut last_report = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let now = start.elapsed();
        let report_due = now.saturating_sub(last_report) >= agent.config().sample_interval;
        match agent.tick(now) {
            Ok(tick) => {
                if last_error.take().is_some() {
                    info!("device answers again");
                    reporter.info.last_error = None;
                }
                if tick.handled.is_some()
                    || tick.sampled.is_some()
                    || tick.forced.is_some()
                    || report_due
                {
                    reporter.write(&agent);
                    last_report = now;
                }
            }
            Err(e) => {
                // Log a failure once, not every poll, and keep trying: the
                // device may come back (hot-unplug, I/O decode toggled).
                let text = e.to_string();
                if last_error.as_deref() != Some(&text) {
                    error!("{text}");
                    reporter.info.last_error = Some(text.clone());
                    reporter.write(&agent);
                }
                last_error = Some(text);
            }
        }
        let deadline = agent.next_deadline(now);
        // Sleep in short slices so a stop signal is seen promptly.
        while !stop.load(Ordering::Relaxed) {
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(250)));
        }
    }
    info!("stopping: writing device status 0");
    if let Err(e) = agent.release() {
        warn!("could not release the device: {e}");
    }
    reporter.write(&agent);
    Ok(ExitCode::SUCCESS)
}
