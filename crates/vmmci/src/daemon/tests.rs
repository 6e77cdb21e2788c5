use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmd_sim::{SimBar, Vmd, VmdConfig};
use vmmci_actions::clocksource::{HostCpuid, HypervisorFacts};
use vmmci_agent::fakes::{FakeGuestClock, PowerCall, RecordingPower};
use vmmci_agent::{ClockMode, PowerAction};
use vmmci_protocol::{status, Command};
use vmmci_report::read_status;

use super::*;

/// The guest clock: this machine's, read only (a test never steps it).
fn read_only_clock() -> FakeGuestClock {
    let clock = FakeGuestClock::new(|| SystemClock.now_ns(), 0);
    clock.refuse_steps(true);
    clock
}

/// vmd on this machine's clock.
fn real_time_vmd() -> Arc<Mutex<Vmd>> {
    Arc::new(Mutex::new(Vmd::new(
        VmdConfig::default(),
        Box::new(vmd_sim::SystemClock),
    )))
}

/// The daemon loop in a thread, on real time, against the simulator,
/// with a read-only guest clock and a recording power switch. SIGHUP
/// (the `hup` flag) "reloads" a 30 ms poll interval.
struct Running {
    vmd: Arc<Mutex<Vmd>>,
    bar: SimBar,
    power: RecordingPower,
    signals: Signals,
    thread: Option<std::thread::JoinHandle<Result<ExitCode, String>>>,
}

impl Running {
    fn start(run_dir: &Path) -> Running {
        Running::start_on(run_dir, real_time_vmd())
    }

    /// An agent on a simulator that may already have had one.
    fn start_on(run_dir: &Path, vmd: Arc<Mutex<Vmd>>) -> Running {
        Running::start_with(
            run_dir,
            vmd,
            Hooks::default(),
            read_only_clock(),
            ClockMode::default(),
        )
    }

    /// With these hooks around the recording power switch, and this
    /// guest clock.
    fn start_with(
        run_dir: &Path,
        vmd: Arc<Mutex<Vmd>>,
        hooks: Hooks,
        clock: FakeGuestClock,
        mode: ClockMode,
    ) -> Running {
        let bar = SimBar::new(vmd.clone());
        let power = RecordingPower::default();
        let mut config = Config {
            poll_interval: Duration::from_millis(10),
            ..Config::default()
        };
        config.clock.mode = mode;
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
        let signals = Signals::default();
        let heard = signals.clone();
        let thread = std::thread::spawn(move || {
            let reload = |a: &mut Agent<SimBar, FakeGuestClock, HookedPower<RecordingPower>>,
                          _: &mut Reporter| {
                let c = Config {
                    poll_interval: Duration::from_millis(30),
                    ..Config::default()
                };
                a.reconfigure(agent_config(&c));
            };
            serve(agent, reporter, &heard, &hooks, reload, false).map_err(|e| e.to_string())
        });
        Running {
            vmd,
            bar,
            power,
            signals,
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
        self.signals.stop.store(true, Ordering::Relaxed);
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
    let kernel =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap();
    assert_eq!(source.current.as_deref(), Some(kernel.trim()));

    let prom = std::fs::read_to_string(dir.path().join("vmmci.prom")).unwrap();
    for want in ["vmmci_up 1", "vmmci_commands_total{command=\"reboot\"} 1"] {
        assert!(prom.contains(want), "{want} not in\n{prom}");
    }
    let chrony = s.clock.chrony.unwrap_or_default();
    assert!(chrony.contains("is chronyd running"), "{chrony}");

    r.signals.hup.store(true, Ordering::Relaxed);
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
    let chronyd = std::os::unix::net::UnixDatagram::bind(dir.path().join("chrony.sock")).unwrap();
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
    let vmd = real_time_vmd();
    let hooks = hooks_in(&hooks_dir, Duration::from_secs(2));
    let r = Running::start_with(
        dir.path(),
        vmd,
        hooks,
        read_only_clock(),
        ClockMode::default(),
    );
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
    let vmd = real_time_vmd();
    // A guest clock 5 s behind this machine's (only the fake moves), left
    // alone until the host asks.
    let clock = FakeGuestClock::new(|| SystemClock.now_ns(), -5_000_000_000);
    let hooks = hooks_in(&hooks_dir, Duration::from_secs(3));
    let r = Running::start_with(
        dir.path(),
        vmd,
        hooks,
        clock.clone(),
        ClockMode::StepOnRequest,
    );
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
