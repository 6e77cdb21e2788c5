//! `vmmci daemon`: the agent loop against the real device, the real clock
//! and the real init system. The only place those are put together.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};
use vmmci_actions::clocksource::{
    self, HostCpuid, HypervisorFacts, PROC_CPUINFO, SYSFS_CLOCKSOURCE,
};
use vmmci_actions::{HookedPower, Hooks, InitPower, SystemClock};
use vmmci_agent::{Agent, AgentConfig, GuestClock, Power};
use vmmci_report::ProcessInfo;
use vmmci_transport::RegisterIo;

mod hook_watch;
mod lock;
mod readiness;
mod reporter;

use hook_watch::HookWatch;
use lock::{previous_latch, single_instance};
use readiness::{notify_systemd, Watchdog};
use reporter::Reporter;

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
    config.force_after = args.force_after.unwrap_or(config.force_after);
    config.release_on_exit |= args.release_on_exit;
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
    // The before-* hooks and the init command run off the loop, after the ACK.
    let hooks = Hooks::new(config.hooks.settings());
    let power = HookedPower::new(
        InitPower::new(config.power.reboot.clone(), config.power.poweroff.clone()),
        hooks.clone(),
    );
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
    reporter.show_hooks(&hooks);
    reporter.watch_clock_source(clock_source_at_start());
    let release_on_exit = config.release_on_exit;
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
    let reload = |agent: &mut Agent<_, _, HookedPower<InitPower>>, reporter: &mut Reporter| {
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
                hooks.configure(new.hooks.settings());
                *agent.power_mut() = HookedPower::new(
                    InitPower::new(new.power.reboot.clone(), new.power.poweroff.clone()),
                    hooks.clone(),
                );
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
        &hooks,
        reload,
        release_on_exit,
    )
}

/// The hypervisor's CPUID facts, once; a clock source that drifts badly is
/// said in the log at start (and stays in `vmmci status`).
fn clock_source_at_start() -> HypervisorFacts {
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

/// What the loop listens to: stop (SIGTERM, SIGINT) and reload (SIGHUP).
struct Signals<'a> {
    stop: &'a AtomicBool,
    hup: &'a AtomicBool,
}

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

/// The loop: handshake, then tick at every deadline until `stop` is set.
/// DRIVER_OK stays set on exit unless `release_on_exit`: a stop posted
/// while no agent runs then waits for the next one instead of ending the
/// VM at once.
fn serve<B: RegisterIo, C: GuestClock, P: Power>(
    mut agent: Agent<B, C, P>,
    mut reporter: Reporter,
    signals: Signals,
    hooks: &Hooks,
    mut reload: impl FnMut(&mut Agent<B, C, P>, &mut Reporter),
    release_on_exit: bool,
) -> Result<ExitCode, CliError> {
    let stop = signals.stop;
    let mut hook_watch = HookWatch::new(hooks);
    agent.handshake()?;
    reporter.write(&agent);
    notify_systemd("READY=1\nSTATUS=DRIVER_OK, polling");
    let mut watchdog = Watchdog::from_env();

    let start = Instant::now();
    let mut last_error: Option<String> = None;
    let mut last_report = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        watchdog.feed();
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
                    agent.set_fed_sample_interval(reporter.fed_sample_interval());
                }
                // After-step hooks in a thread; a hook run that ended is news.
                hook_watch.after_tick(&agent, &tick);
                let hook_news = hook_watch.news();
                if tick.handled.is_some()
                    || tick.sampled.is_some()
                    || tick.retried.is_some()
                    || tick.synced.is_some()
                    || tick.forced.is_some()
                    || report_due
                    || hook_news
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
    if release_on_exit {
        info!("stopping: writing device status 0 (release_on_exit)");
        if let Err(e) = agent.release() {
            warn!("could not release the device: {e}");
        }
    } else {
        info!("stopping: DRIVER_OK stays set; the next agent acknowledges a stop posted meanwhile");
        agent.exit();
    }
    reporter.write(&agent);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmd_sim::{SimBar, Vmd, VmdConfig};
    use vmmci_agent::fakes::{FakeGuestClock, PowerCall, RecordingPower};
    use vmmci_agent::PowerAction;
    use vmmci_protocol::{status, Command};
    use vmmci_report::read_status;

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
            Running::start_on(run_dir, vmd)
        }

        /// An agent on a simulator that may already have had one.
        fn start_on(run_dir: &Path, vmd: Arc<Mutex<Vmd>>) -> Running {
            Running::start_with(run_dir, vmd, Hooks::default(), read_only_clock())
        }

        /// With these hooks around the recording power switch, and this
        /// guest clock.
        fn start_with(
            run_dir: &Path,
            vmd: Arc<Mutex<Vmd>>,
            hooks: Hooks,
            clock: FakeGuestClock,
        ) -> Running {
            let bar = SimBar::new(vmd.clone());
            let power = RecordingPower::default();
            let config = Config {
                poll_interval: Duration::from_millis(10),
                ..Config::default()
            };
            let agent = Agent::new(
                bar.clone(),
                clock,
                HookedPower::new(power.clone(), hooks.clone()),
                agent_config(&config),
            );
            let mut reporter = Reporter::new(
                run_dir.to_path_buf(),
                ProcessInfo {
                    device: "simulator".into(),
                    ..ProcessInfo::default()
                },
            );
            // This machine's clock source, read only.
            reporter.watch_clock_source(HypervisorFacts::read(&HostCpuid));
            reporter.show_hooks(&hooks);
            reporter.configure(&Config {
                metrics: crate::config::MetricsConfig {
                    textfile: Some(run_dir.join("vmmci.prom")),
                },
                chrony: crate::config::ChronyConfig {
                    socket: Some(run_dir.join("chrony.sock")),
                    ..Default::default()
                },
                ..Config::default()
            });
            let (stop, hup) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let (s, h) = (stop.clone(), hup.clone());
            let thread = std::thread::spawn(move || {
                let reload =
                    |a: &mut Agent<SimBar, FakeGuestClock, HookedPower<RecordingPower>>,
                     _: &mut Reporter| {
                        let c = Config {
                            poll_interval: Duration::from_millis(30),
                            ..Config::default()
                        };
                        a.reconfigure(agent_config(&c));
                    };
                serve(
                    agent,
                    reporter,
                    Signals { stop: &s, hup: &h },
                    &hooks,
                    reload,
                    false,
                )
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
    /// follows, SIGHUP reloads, and a stop signal leaves DRIVER_OK set.
    #[test]
    fn the_loop_acks_reports_and_keeps_driver_ok_on_exit() {
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
        let source = s.clock_source.as_ref().expect("clock source reported");
        let kernel = std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .unwrap();
        assert_eq!(source.current.as_deref(), Some(kernel.trim()));

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
        let v = vmd.lock().unwrap();
        assert_eq!(v.device_status(), 0x7, "DRIVER_OK kept on exit");
        // Status 0 once: the first agent's fresh handshake, never on exit.
        assert_eq!(v.status_writes().iter().filter(|&&w| w == 0).count(), 1);
        drop(v);
        assert_eq!(read_status(dir.path()).unwrap().state, "exited");
        assert_eq!(
            power.calls(),
            vec![PowerCall::Begin(PowerAction::Reboot)],
            "acted once"
        );
    }

    /// Device errors are logged, the loop keeps going, and when the device
    /// answers again the handshake is redone without ever dropping
    /// DRIVER_OK (vmd would refuse a stop in that window).
    #[test]
    fn the_loop_recovers_from_device_errors_with_a_new_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let r = Running::start(dir.path());
        r.wait("the first handshake", |r| {
            r.vmd().status_writes().len() >= 4
        });
        r.bar.fail_next(5);
        r.wait("a second handshake", |r| r.vmd().status_writes().len() >= 5);
        assert!(driver_ok(&r));
        let writes = r.vmd().status_writes().to_vec();
        assert!(
            writes[4..].iter().all(|w| w & status::DRIVER_OK != 0),
            "DRIVER_OK dropped on the second handshake: {writes:x?}"
        );
        r.stop();
    }

    /// A stop posted while no agent runs (DRIVER_OK kept by the last one)
    /// stays pending, and the next agent acknowledges it.
    #[test]
    fn a_stop_posted_between_two_agents_is_acknowledged_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let r = Running::start(dir.path());
        r.wait("DRIVER_OK", driver_ok);
        let vmd = r.vmd.clone();
        r.stop();
        vmd.lock()
            .unwrap()
            .vmctl_stop()
            .expect("vmd accepts the stop");
        let next = Running::start_on(dir.path(), vmd);
        next.wait("the REBOOT to be handled", |r| !r.power.calls().is_empty());
        assert_eq!(next.vmd().ended(), None);
        assert!(next.vmd().events().iter().any(|e| matches!(
            e.kind,
            vmd_sim::EventKind::Ack {
                cmd: vmd_sim::VmmciCmd::Reboot,
                ..
            }
        )));
        next.stop();
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
        let mut n = chronyd.recv(&mut buf).expect("a sample within 10 s");
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
        // chrony wants several samples per poll: every 2 s while it listens.
        r.wait("the 2 s sample interval", |_| {
            read_status(dir.path()).is_ok_and(|s| s.sample_interval_ms == 2000)
        });
        n = chronyd.recv(&mut buf).expect("the next sample");
        assert_eq!(n, vmmci_report::chrony::SAMPLE_LEN);
        r.stop();
    }

    /// A hook script in `dir/<event>/<name>`.
    fn hook(dir: &Path, event: &str, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(event).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn hooks_in(dir: &Path, timeout: Duration) -> Hooks {
        Hooks::new(vmmci_actions::HookSettings {
            timeout,
            dir: Some(dir.to_path_buf()),
            ..Default::default()
        })
    }

    fn acked(r: &Running, pred: impl Fn(&vmd_sim::EventKind) -> bool) -> bool {
        r.vmd().events().iter().any(|e| pred(&e.kind))
    }

    fn reboot_acked(k: &vmd_sim::EventKind) -> bool {
        matches!(
            k,
            vmd_sim::EventKind::Ack {
                cmd: vmd_sim::VmmciCmd::Reboot,
                ..
            }
        )
    }

    /// A before-reboot hook that hangs delays neither the ACK nor the
    /// loop: a SYNCRTC posted while it hangs is acknowledged at once. It is
    /// killed at its limit, the next hook runs, then the init command; the
    /// runs (and a hook that is not executable) reach the status file.
    #[test]
    fn a_hanging_before_reboot_hook_delays_neither_the_ack_nor_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let hooks_dir = dir.path().join("hooks.d");
        let marker = dir.path().join("marker");
        hook(
            &hooks_dir,
            "before-reboot",
            "10-hang",
            "echo hanging; sleep 30",
        );
        let mark = format!(
            "echo \"$VMMCI_EVENT $VMMCI_COMMAND\" > {}",
            marker.display()
        );
        hook(&hooks_dir, "before-reboot", "20-mark", &mark);
        std::fs::write(hooks_dir.join("before-reboot/30-notes"), "not a hook").unwrap();
        let vmd = Arc::new(Mutex::new(Vmd::new(
            VmdConfig::default(),
            Box::new(vmd_sim::SystemClock),
        )));
        let hooks = hooks_in(&hooks_dir, Duration::from_secs(2));
        let r = Running::start_with(dir.path(), vmd, hooks, read_only_clock());
        r.wait("DRIVER_OK", driver_ok);

        r.vmd().vmctl_stop().unwrap();
        let asked = Instant::now();
        r.wait("the REBOOT's ACK", |r| acked(r, reboot_acked));
        let ack = asked.elapsed();
        assert!(ack < Duration::from_secs(1), "ACK took {ack:?}");
        assert!(r.vmd().request_syncrtc(), "vmd posts SYNCRTC");
        r.wait("the SYNCRTC's ACK", |r| {
            acked(r, |k| matches!(k, vmd_sim::EventKind::RtcSyncAcked { .. }))
        });
        assert!(
            r.power.calls().is_empty(),
            "SYNCRTC acknowledged while the hook hung, before the init command: {:?} after the stop",
            asked.elapsed()
        );

        r.wait("the reboot command", |r| !r.power.calls().is_empty());
        let began = asked.elapsed();
        assert!(
            began >= Duration::from_secs(2) && began < Duration::from_secs(6),
            "init command after {began:?}"
        );
        assert_eq!(r.power.calls(), vec![PowerCall::Begin(PowerAction::Reboot)]);
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            "before-reboot REBOOT\n"
        );
        r.wait("the runs in the status file", |_| {
            read_status(dir.path()).is_ok_and(|s| s.hooks.runs.len() == 2)
        });
        let s = read_status(dir.path()).unwrap();
        let (hang, mark) = (&s.hooks.runs[0], &s.hooks.runs[1]);
        assert!(hang.program.ends_with("10-hang") && hang.killed, "{hang:?}");
        assert_eq!((hang.output.as_str(), hang.exit_code), ("hanging\n", None));
        assert!(
            hang.duration_ms >= 2000 && hang.duration_ms < 4000,
            "{hang:?}"
        );
        assert!(
            mark.program.ends_with("20-mark") && mark.success(),
            "{mark:?}"
        );
        assert_eq!(s.hooks.problems.len(), 1, "{:?}", s.hooks.problems);
        assert!(s.hooks.problems[0].contains("30-notes is not executable"));
        assert_eq!(r.vmd().ended(), None, "vmd saw the ACK in time");
        r.stop();
    }

    /// A SYNCRTC step runs the after-step hooks with the step's facts; a
    /// hook that hangs there does not hold the loop either: a stop posted
    /// meanwhile is acknowledged and acted on at once.
    #[test]
    fn after_step_hooks_see_the_step_and_never_hold_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let hooks_dir = dir.path().join("hooks.d");
        let seen = dir.path().join("seen");
        let body = format!(
            "echo \"$VMMCI_EVENT $VMMCI_CAUSE $VMMCI_COMMAND $VMMCI_STEP_NS\" > {}; sleep 30",
            seen.display()
        );
        hook(&hooks_dir, "after-step", "10-note", &body);
        let vmd = Arc::new(Mutex::new(Vmd::new(
            VmdConfig::default(),
            Box::new(vmd_sim::SystemClock),
        )));
        // A guest clock 5 s behind this machine's (only the fake moves).
        let clock = FakeGuestClock::new(|| SystemClock.now_ns(), -5_000_000_000);
        let hooks = hooks_in(&hooks_dir, Duration::from_secs(3));
        let r = Running::start_with(dir.path(), vmd, hooks, clock.clone());
        r.wait("DRIVER_OK", driver_ok);
        assert!(r.vmd().request_syncrtc());
        r.wait("the after-step hook", |_| {
            std::fs::read_to_string(&seen).is_ok_and(|s| s.ends_with('\n'))
        });
        assert_eq!(clock.steps().len(), 1, "stepped once");
        let text = std::fs::read_to_string(&seen).unwrap();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields[..3], ["after-step", "request", "SYNCRTC"], "{text}");
        let step_ns: i64 = fields[3].parse().unwrap();
        assert_eq!(step_ns, clock.steps()[0]);
        assert!((step_ns - 5_000_000_000).abs() < 100_000_000, "{text}");

        // The hook still hangs: a stop is handled as if it did not.
        r.vmd().vmctl_stop().unwrap();
        let asked = Instant::now();
        r.wait("the reboot command", |r| !r.power.calls().is_empty());
        assert!(acked(&r, reboot_acked));
        assert!(
            asked.elapsed() < Duration::from_millis(1500),
            "the stop waited for the after-step hook: {:?}",
            asked.elapsed()
        );
        r.wait("the killed hook in the status file", |_| {
            read_status(dir.path()).is_ok_and(|s| s.hooks.runs.iter().any(|h| h.killed))
        });
        r.stop();
    }
}
