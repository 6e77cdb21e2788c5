//! The daemon's views: the status file, the metrics, chrony's refclock
//! socket. Each failure is said once, and none stops the agent serving the
//! device.

use std::path::PathBuf;

use tracing::{info, warn};
use vmmci_actions::clocksource::{
    self, HostCpuid, HypervisorFacts, PROC_CPUINFO, SYSFS_CLOCKSOURCE,
};
use vmmci_actions::{Hooks, SystemClock};
use vmmci_agent::{Agent, DriftPoint, GuestClock, Power};
use vmmci_report::chrony::ChronySock;
use vmmci_report::{metrics, write_status, ProcessInfo, Status};
use vmmci_transport::RegisterIo;

use crate::config::Config;

/// Writes the status file and the metrics, feeds chrony; says once when it
/// cannot, and keeps the agent serving the device either way (these are
/// views, not the job).
pub(super) struct Reporter {
    run_dir: PathBuf,
    pub(super) info: ProcessInfo,
    failing: bool,
    metrics: Option<PathBuf>,
    metrics_failing: bool,
    chrony: Option<ChronySock>,
    /// `[chrony] sample_interval`.
    chrony_every: std::time::Duration,
    /// Read at start; the clock source itself is read at every report.
    hypervisor: Option<HypervisorFacts>,
    /// The hooks whose runs and problems the status shows.
    hooks: Hooks,
}

impl Reporter {
    pub(super) fn new(run_dir: PathBuf, info: ProcessInfo) -> Reporter {
        Reporter {
            run_dir,
            info,
            failing: false,
            metrics: None,
            metrics_failing: false,
            chrony: None,
            chrony_every: std::time::Duration::from_secs(2),
            hypervisor: None,
            hooks: Hooks::default(),
        }
    }

    /// Show these hooks' runs and problems.
    pub(super) fn show_hooks(&mut self, hooks: &Hooks) {
        self.hooks = hooks.clone();
    }

    /// Report the guest's clock source (and what to do about it) too.
    pub(super) fn watch_clock_source(&mut self, hypervisor: HypervisorFacts) {
        self.hypervisor = Some(hypervisor);
    }

    /// Take the metrics path and the chrony socket from `config` (at start
    /// and on SIGHUP).
    pub(super) fn configure(&mut self, config: &Config) {
        self.metrics = config.metrics.textfile.clone();
        self.chrony_every = config.chrony.sample_interval;
        let socket = config.chrony.socket.as_deref();
        if self.chrony.as_ref().map(|c| c.path()) != socket {
            self.chrony = socket.map(ChronySock::new);
        }
        self.info.chrony = self.chrony.as_ref().map(|c| c.state().to_string());
    }

    /// Send a sample to chrony's refclock socket, when configured.
    pub(super) fn feed(&mut self, point: &DriftPoint) {
        let Some(chrony) = self.chrony.as_mut() else {
            return;
        };
        if let Some(state) = chrony.send(point) {
            if chrony.listening() || chrony.absent() {
                info!("chrony: {state}");
            } else {
                warn!("chrony: {state}");
            }
        }
        self.info.chrony = Some(chrony.state().to_string());
    }

    /// chronyd, when it listens on the refclock socket: it then has the
    /// clock (its own files may be hidden from this unit).
    /// How often to sample while chronyd listens, if it does.
    pub(super) fn fed_sample_interval(&self) -> Option<std::time::Duration> {
        self.fed_daemon().map(|_| self.chrony_every)
    }

    pub(super) fn fed_daemon(&self) -> Option<String> {
        let c = self.chrony.as_ref().filter(|c| c.listening())?;
        Some(format!("chronyd (fed through {})", c.path().display()))
    }

    pub(super) fn write<B: RegisterIo, C: GuestClock, P: Power>(&mut self, agent: &Agent<B, C, P>) {
        self.info.now_ns = SystemClock.now_ns();
        self.info.hooks = super::hook_watch::status_of(&self.hooks);
        if let Some(h) = &self.hypervisor {
            let (sysfs, cpuinfo) = (SYSFS_CLOCKSOURCE.as_ref(), PROC_CPUINFO.as_ref());
            self.info.clock_source = Some(clocksource::read(sysfs, cpuinfo, h));
        }
        let status = Status::from_snapshot(&agent.snapshot(), &self.info);
        if let Some(path) = &self.metrics {
            match metrics::write_textfile(path, &status) {
                Ok(()) => self.metrics_failing = false,
                Err(e) if !self.metrics_failing => {
                    warn!("cannot write metrics to {}: {e}", path.display());
                    self.metrics_failing = true;
                }
                Err(_) => {}
            }
        }
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

/// The hypervisor's CPUID facts, once; a clock source that drifts badly is
/// said in the log at start (and stays in `vmmci status`).
pub(super) fn clock_source_at_start() -> HypervisorFacts {
    let hypervisor = HypervisorFacts::read(&HostCpuid);
    let facts = clocksource::read(
        SYSFS_CLOCKSOURCE.as_ref(),
        PROC_CPUINFO.as_ref(),
        &hypervisor,
    );
    if facts.is_poor() {
        for advice in facts.advise(None).advice {
            warn!("{advice}");
        }
    }
    hypervisor
}
