//! `vmmci daemon`: the agent loop against the real device, the real clock
//! and the real init system. The only place those are put together.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};
use vmmci_actions::{InitPower, SystemClock};
use vmmci_agent::{Agent, AgentConfig, DriftPoint, GuestClock, Power};
use vmmci_report::chrony::ChronySock;
use vmmci_report::{metrics, read_status, write_status, ProcessInfo, Status};
use vmmci_transport::RegisterIo;

use crate::cli::DaemonArgs;
use crate::config::Config;
use crate::{device, CliError};

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Flags override the file.
fn apply_flags(mut config: Config, args: &DaemonArgs) -> Result<Config, CliError> {
    if let Some(d) = &args.device.device {
        config.device = Some(d.clone());
    }
    config.poll_interval = args.poll_interval.unwrap_or(config.poll_interval);
    config.sample_interval = args.sample_interval.unwrap_or(config.sample_interval);
    config.grace = args.grace.unwrap_or(config.grace);
    if let Some(dir) = &args.run_dir {
        config.run_dir = dir.clone();
    }
    config.clock.mode = args.clock_mode.unwrap_or(config.clock.mode);
    config.validate()?;
    Ok(config)
}

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
    let mut reporter = Reporter::new(
        config.run_dir.clone(),
        ProcessInfo {
            device: dev.pci.bdf.clone(),
            started_at_ns: SystemClock.now_ns(),
            boot_id,
            ..ProcessInfo::default()
        },
    );
    reporter.configure(&config);
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGHUP, &hup),
    ] {
        signal_hook::flag::register(sig, Arc::clone(flag))
            .map_err(|e| CliError::Failed(format!("cannot install signal handler: {e}")))?;
    }
    let sysfs_root = config.sysfs_root.clone();
    let reload = |agent: &mut Agent<_, _, InitPower>, reporter: &mut Reporter| {
        // A bad new config keeps the old one: the agent must keep serving.
        let loaded = Config::load(config_path, named)
            .map_err(CliError::from)
            .and_then(|c| {
                apply_flags(
                    Config {
                        sysfs_root: sysfs_root.clone(),
                        ..c
                    },
                    &args,
                )
            });
        match loaded {
            Ok(new) => {
                agent.reconfigure(agent_config(&new));
                reporter.configure(&new);
                *agent.power_mut() = InitPower {
                    reboot: new.power.reboot.clone(),
                    poweroff: new.power.poweroff.clone(),
                };
                info!(
                    "SIGHUP: configuration reloaded from {} (device and run_dir need a restart)",
                    config_path.display()
                );
            }
            Err(e) => warn!("SIGHUP: {e}; keeping the old configuration"),
        }
    };
    serve(
        agent,
        reporter,
        Signals {
            stop: &stop,
            hup: &hup,
        },
        reload,
    )
}

/// What the loop listens to: stop (SIGTERM, SIGINT) and reload (SIGHUP).
struct Signals<'a> {
    stop: &'a AtomicBool,
    hup: &'a AtomicBool,
}

/// Hold `run_dir/lock` for the life of the daemon: two agents polling one
/// device would both act on a command. A run directory that cannot be
/// written (read-only or full /run) only costs this check, not the service.
fn single_instance(run_dir: &Path) -> Result<Option<std::fs::File>, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let opened = std::fs::create_dir_all(run_dir).and_then(|_| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(run_dir.join("lock"))
    });
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            warn!(
                "cannot create {}/lock ({e}); not checking for a second agent",
                run_dir.display()
            );
            return Ok(None);
        }
    };
    // SAFETY: flock on a valid, owned file descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = read_status(run_dir)
            .map(|s| format!(" (pid {})", s.pid))
            .unwrap_or_default();
        return Err(CliError::Failed(format!(
            "another vmmci daemon is running{pid} (it holds {}/lock); stop it first",
            run_dir.display()
        )));
    }
    Ok(Some(file))
}

pub fn agent_config(config: &Config) -> AgentConfig {
    AgentConfig {
        poll_interval: config.poll_interval,
        sample_interval: config.sample_interval,
        grace: config.grace,
        not_before_sec: crate::not_before_sec(),
        clock: config.clock.policy(),
        ..AgentConfig::default()
    }
}

/// The COMMAND value a previous agent handled this boot, from its status.
fn previous_latch(run_dir: &Path, boot_id: Option<&str>) -> Option<u32> {
    let old = read_status(run_dir).ok()?;
    (old.boot_id.is_some() && old.boot_id.as_deref() == boot_id).then_some(old.latched_command?)
}

/// Writes the status file and the metrics, feeds chrony; says once when it
/// cannot, and keeps the agent serving the device either way (these are
/// views, not the job).
struct Reporter {
    run_dir: std::path::PathBuf,
    info: ProcessInfo,
    failing: bool,
    metrics: Option<std::path::PathBuf>,
    metrics_failing: bool,
    chrony: Option<ChronySock>,
}

impl Reporter {
    fn new(run_dir: std::path::PathBuf, info: ProcessInfo) -> Reporter {
        Reporter {
            run_dir,
            info,
            failing: false,
            metrics: None,
            metrics_failing: false,
            chrony: None,
        }
    }

    /// Take the metrics path and the chrony socket from `config` (at start
    /// and on SIGHUP).
    fn configure(&mut self, config: &Config) {
        self.metrics = config.metrics.textfile.clone();
        let socket = config.chrony.socket.as_deref();
        if self.chrony.as_ref().map(|c| c.path()) != socket {
            self.chrony = socket.map(ChronySock::new);
        }
        self.info.chrony = self.chrony.as_ref().map(|c| c.state().to_string());
    }

    /// Send a sample to chrony's refclock socket, when configured.
    fn feed(&mut self, point: &DriftPoint) {
        let Some(chrony) = self.chrony.as_mut() else {
            return;
        };
        if let Some(state) = chrony.send(point) {
            if chrony.listening() {
                info!("chrony: {state}");
            } else {
                warn!("chrony: {state}");
            }
        }
        self.info.chrony = Some(chrony.state().to_string());
    }

    /// chronyd, when it listens on the refclock socket: it then has the
    /// clock (its own files may be hidden from this unit).
    fn fed_daemon(&self) -> Option<String> {
        let c = self.chrony.as_ref().filter(|c| c.listening())?;
        Some(format!("chronyd (fed through {})", c.path().display()))
    }

    fn write<B: RegisterIo, C: GuestClock, P: Power>(&mut self, agent: &Agent<B, C, P>) {
        self.info.now_ns = SystemClock.now_ns();
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

/// The loop: handshake, then tick at every deadline until `stop` is set,
/// then release the device.
fn serve<B: RegisterIo, C: GuestClock, P: Power>(
    mut agent: Agent<B, C, P>,
    mut reporter: Reporter,
    signals: Signals,
    mut reload: impl FnMut(&mut Agent<B, C, P>, &mut Reporter),
) -> Result<ExitCode, CliError> {
    let stop = signals.stop;
    agent.handshake()?;
    reporter.write(&agent);
    notify_systemd("READY=1\nSTATUS=DRIVER_OK, polling");

    let start = Instant::now();
    let mut last_error: Option<String> = None;
    let mut last_report = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        if signals.hup.swap(false, Ordering::Relaxed) {
            reload(&mut agent, &mut reporter);
            reporter.write(&agent);
        }
        let now = start.elapsed();
        let report_due = now.saturating_sub(last_report) >= agent.config().sample_interval;
        // After a failure the device may be a new one (unplugged and back,
        // decode toggled): handshake again before going on, so vmd sees
        // DRIVER_OK and does not refuse the next stop.
        let result = match last_error {
            Some(_) => agent.handshake().and_then(|_| agent.tick(now)),
            None => agent.tick(now),
        };
        match result {
            Ok(tick) => {
                if last_error.take().is_some() {
                    info!("device answers again; handshake redone");
                    reporter.info.last_error = None;
                }
                if let Some(point) = &tick.sampled {
                    reporter.feed(point);
                    agent.set_fed_daemon(reporter.fed_daemon());
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
                // Log a failure once, not every poll, and keep trying.
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
        // Sleep in short slices so a signal is seen promptly.
        while !stop.load(Ordering::Relaxed) && !signals.hup.load(Ordering::Relaxed) {
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(250)));
        }
    }
    notify_systemd("STOPPING=1");
    info!("stopping: writing device status 0");
    if let Err(e) = agent.release() {
        warn!("could not release the device: {e}");
    }
    reporter.write(&agent);
    Ok(ExitCode::SUCCESS)
}

/// Tell systemd (`Type=notify`) how the service is doing; nothing without
/// `NOTIFY_SOCKET`.
fn notify_systemd(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        let path = path.to_string_lossy();
        if let Err(e) = notify_at(&path, state) {
            warn!("cannot notify systemd at {path}: {e}");
        }
    }
}

/// The sd_notify protocol is one datagram to a path or an abstract socket
/// (`@name`), so no crate is needed.
fn notify_at(path: &str, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmd_sim::{SimBar, Vmd, VmdConfig};
    use vmmci_agent::fakes::{FakeGuestClock, PowerCall, RecordingPower};
    use vmmci_agent::PowerAction;
    use vmmci_protocol::{status, Command};

    /// The guest clock: this machine's, read only (a test never steps it).
    fn read_only_clock() -> FakeGuestClock {
        let clock = FakeGuestClock::new(|| SystemClock.now_ns(), 0);
        clock.refuse_steps(true);
        clock
    }

    /// The daemon loop in a thread, on real time, against the simulator,
    /// with a read-only guest clock and a recording power switch. SIGHUP
    /// (the `hup` flag) "reloads" a 30 ms poll interval.
    struct Running {
        vmd: Arc<Mutex<Vmd>>,
        bar: SimBar,
        power: RecordingPower,
        stop: Arc<AtomicBool>,
        hup: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<Result<ExitCode, String>>>,
    }

    impl Running {
        fn start(run_dir: &Path) -> Running {
            let vmd = Arc::new(Mutex::new(Vmd::new(
                VmdConfig::default(),
                Box::new(vmd_sim::SystemClock),
            )));
            let bar = SimBar::new(vmd.clone());
            let power = RecordingPower::default();
            let config = Config {
                poll_interval: Duration::from_millis(10),
                ..Config::default()
            };
            let agent = Agent::new(
                bar.clone(),
                read_only_clock(),
                power.clone(),
                agent_config(&config),
            );
            let mut reporter = Reporter::new(
                run_dir.to_path_buf(),
                ProcessInfo {
                    device: "simulator".into(),
                    ..ProcessInfo::default()
                },
            );
            reporter.configure(&Config {
                metrics: crate::config::MetricsConfig {
                    textfile: Some(run_dir.join("vmmci.prom")),
                },
                chrony: crate::config::ChronyConfig {
                    socket: Some(run_dir.join("chrony.sock")),
                },
                ..Config::default()
            });
            let (stop, hup) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let (s, h) = (stop.clone(), hup.clone());
            let thread = std::thread::spawn(move || {
                let reload = |a: &mut Agent<SimBar, FakeGuestClock, RecordingPower>,
                              _: &mut Reporter| {
                    let c = Config {
                        poll_interval: Duration::from_millis(30),
                        ..Config::default()
                    };
                    a.reconfigure(agent_config(&c));
                };
                serve(agent, reporter, Signals { stop: &s, hup: &h }, reload)
                    .map_err(|e| e.to_string())
            });
            Running {
                vmd,
                bar,
                power,
                stop,
                hup,
                thread: Some(thread),
            }
        }

        fn vmd(&self) -> std::sync::MutexGuard<'_, Vmd> {
            self.vmd.lock().unwrap()
        }

        fn wait(&self, what: &str, cond: impl Fn(&Running) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !cond(self) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        fn stop(mut self) {
            self.stop.store(true, Ordering::Relaxed);
            let thread = self.thread.take().unwrap();
            assert!(thread.join().unwrap().is_ok());
        }
    }

    fn driver_ok(r: &Running) -> bool {
        r.vmd().device_status() & status::DRIVER_OK != 0
    }

    /// A stop is acknowledged well within vmd's 3 s, the status file
    /// follows, SIGHUP reloads, and a stop signal releases the device.
    #[test]
    fn the_loop_acks_reports_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let r = Running::start(dir.path());
        r.wait("DRIVER_OK", driver_ok);
        r.vmd().vmctl_stop().unwrap();
        let asked = Instant::now();
        r.wait("the REBOOT to be handled", |r| !r.power.calls().is_empty());
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "ACK took {:?}",
            asked.elapsed()
        );
        std::thread::sleep(Duration::from_millis(3100));
        assert_eq!(r.vmd().ended(), None, "vmd saw the ACK in time");
        r.wait("the status file", |_| {
            read_status(dir.path())
                .ok()
                .and_then(|s| s.last_command)
                .is_some_and(|c| c.raw == Command::REBOOT)
        });
        let s = read_status(dir.path()).unwrap();
        assert_eq!(s.state, "rebooting");
        assert!(s.drift_ns.is_some(), "drift sampled at start");
        assert_eq!(s.latched_command, Some(Command::REBOOT));

        let prom = std::fs::read_to_string(dir.path().join("vmmci.prom")).unwrap();
        for want in ["vmmci_up 1", "vmmci_commands_total{command=\"reboot\"} 1"] {
            assert!(prom.contains(want), "{want} not in\n{prom}");
        }
        let chrony = s.clock.chrony.unwrap_or_default();
        assert!(chrony.contains("is chronyd running"), "{chrony}");

        r.hup.store(true, Ordering::Relaxed);
        r.wait("the reload", |_| {
            read_status(dir.path()).is_ok_and(|s| s.poll_interval_ms == 30)
        });

        let (vmd, power) = (r.vmd.clone(), r.power.clone());
        r.stop();
        assert_eq!(vmd.lock().unwrap().device_status(), 0, "released");
        assert_eq!(read_status(dir.path()).unwrap().state, "released");
        assert_eq!(
            power.calls(),
            vec![PowerCall::Begin(PowerAction::Reboot)],
            "acted once"
        );
    }

    /// Device errors are logged, the loop keeps going, and when the device
    /// answers again the handshake is redone.
    #[test]
    fn the_loop_recovers_from_device_errors_with_a_new_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let r = Running::start(dir.path());
        r.wait("the first handshake", |r| {
            r.vmd().status_writes().len() >= 4
        });
        r.bar.fail_next(5);
        r.wait("a second handshake", |r| r.vmd().status_writes().len() >= 8);
        assert!(driver_ok(&r));
        r.stop();
    }

    /// A run directory that cannot be written costs the status file, not
    /// the service: a stop is still acknowledged and acted on.
    #[test]
    fn an_unwritable_run_dir_does_not_stop_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "not a directory").unwrap();
        let r = Running::start(&blocked.join("vmmci"));
        r.wait("DRIVER_OK", driver_ok);
        r.vmd().vmctl_stop().unwrap();
        r.wait("the stop to be handled", |r| !r.power.calls().is_empty());
        assert_eq!(r.power.calls(), vec![PowerCall::Begin(PowerAction::Reboot)]);
        r.stop();
    }

    /// Every sample reaches chrony's refclock socket as a sock_sample.
    #[test]
    fn samples_reach_the_chrony_socket() {
        let dir = tempfile::tempdir().unwrap();
        let chronyd =
            std::os::unix::net::UnixDatagram::bind(dir.path().join("chrony.sock")).unwrap();
        chronyd
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let r = Running::start(dir.path());
        let mut buf = [0u8; 64];
        let n = chronyd.recv(&mut buf).expect("a sample within 10 s");
        assert_eq!(n, vmmci_report::chrony::SAMPLE_LEN);
        let magic = i32::from_ne_bytes(buf[36..40].try_into().unwrap());
        assert_eq!(magic, vmmci_report::chrony::SOCK_MAGIC);
        let offset = f64::from_ne_bytes(buf[16..24].try_into().unwrap());
        assert!(
            offset.abs() < 0.1,
            "host and guest share this machine's clock: {offset}"
        );
        r.wait("status to say so", |_| {
            read_status(dir.path())
                .ok()
                .and_then(|s| s.clock.chrony)
                .is_some_and(|c| c.starts_with("sending"))
        });
        r.stop();
    }

    #[test]
    fn readiness_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify_at(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_latch_is_trusted_only_from_this_boot() {
        let dir = tempfile::tempdir().unwrap();
        let old = Status {
            boot_id: Some("boot-a".into()),
            latched_command: Some(2),
            ..Status::default()
        };
        vmmci_report::write_status(dir.path(), &old).unwrap();
        assert_eq!(previous_latch(dir.path(), Some("boot-a")), Some(2));
        assert_eq!(previous_latch(dir.path(), Some("boot-b")), None);
        assert_eq!(previous_latch(dir.path(), None), None);
        assert_eq!(
            previous_latch(&dir.path().join("none"), Some("boot-a")),
            None
        );
    }
}
