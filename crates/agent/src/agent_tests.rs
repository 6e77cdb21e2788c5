//! The agent against the vmd simulator, with a fake guest clock and a
//! recording power switch: every command, the quirks, and bad input.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmd_sim::{ManualClock, SimBar, VmEnd, Vmd, VmdConfig};
use vmmci_protocol::{status, Command, Features, Register, NANOS_PER_SEC};
use vmmci_transport::{RegisterIo, TransportError};

use super::*;
use crate::fakes::{FakeGuestClock, PowerCall, RecordingPower};
use crate::world::{GuestClock, PowerAction};

const HOST_START_NS: i64 = 1_900_000_000 * NANOS_PER_SEC;

struct Rig {
    host: ManualClock,
    vmd: Arc<Mutex<Vmd>>,
    clock: FakeGuestClock,
    power: RecordingPower,
}

impl Rig {
    fn new(features: u32, guest_offset_ns: i64) -> Self {
        Rig::with_host(features, guest_offset_ns, 0.0, 0)
    }

    /// The simulated host's clock runs `ppm` fast against the guest's
    /// oscillator, with ±`jitter_ns` of read noise.
    fn with_host(features: u32, guest_offset_ns: i64, ppm: f64, jitter_ns: i64) -> Self {
        let host = ManualClock::new(HOST_START_NS);
        let config = VmdConfig {
            features,
            ..VmdConfig::default()
        };
        let host_clock = vmd_sim::SkewedClock::new(Box::new(host.clone()), ppm, jitter_ns);
        let vmd = Arc::new(Mutex::new(Vmd::new(config, Box::new(host_clock))));
        let clock = {
            let h = host.clone();
            FakeGuestClock::new(move || vmd_sim::HostClock::realtime_ns(&h), guest_offset_ns)
        };
        Rig {
            host,
            vmd,
            clock,
            power: RecordingPower::default(),
        }
    }

    fn agent(&self) -> Agent<SimBar, FakeGuestClock, RecordingPower> {
        let config = AgentConfig {
            not_before_sec: 1_800_000_000,
            ..AgentConfig::default()
        };
        Agent::new(
            SimBar::new(self.vmd.clone()),
            self.clock.clone(),
            self.power.clone(),
            config,
        )
    }

    fn vmd(&self) -> std::sync::MutexGuard<'_, Vmd> {
        self.vmd.lock().unwrap()
    }

    /// Let host time pass and vmd's timers and RTC tick run.
    fn advance(&self, d: Duration) {
        self.host.advance(d);
        self.vmd().poll();
    }

    fn calls(&self) -> Vec<PowerCall> {
        self.power.calls()
    }

    fn assert_no_violations(&self) {
        let vmd = self.vmd();
        assert!(
            vmd.violations().is_empty(),
            "access rule broken: {:?}",
            vmd.violations()
        );
    }
}

fn started(
    features: u32,
    guest_offset_ns: i64,
) -> (Rig, Agent<SimBar, FakeGuestClock, RecordingPower>) {
    let rig = Rig::new(features, guest_offset_ns);
    let mut agent = rig.agent();
    agent.handshake().unwrap();
    (rig, agent)
}

#[test]
fn handshake_follows_the_openbsd_driver() {
    let (rig, agent) = started(0x7, 0);
    assert_eq!(agent.state(), State::Running);
    assert_eq!(agent.features(), Features(0x7));
    let vmd = rig.vmd();
    let s = |bits: &[u8]| bits.iter().fold(0, |a, b| a | b);
    assert_eq!(
        vmd.status_writes(),
        &[
            status::RESET,
            status::ACKNOWLEDGE,
            s(&[status::ACKNOWLEDGE, status::DRIVER]),
            s(&[status::ACKNOWLEDGE, status::DRIVER, status::DRIVER_OK])
        ]
    );
    assert_eq!(vmd.guest_features(), 0x7);
    drop(vmd);
    rig.assert_no_violations();
}

#[test]
fn handshake_accepts_only_what_is_offered_and_known() {
    // An older vmd without ACK and SYNCRTC, plus an unknown bit.
    let (rig, agent) = started(0x1 | 0x100, 0);
    assert_eq!(agent.features(), Features::TIMESYNC);
    assert_eq!(rig.vmd().guest_features(), 0x1);
}

#[test]
fn vmctl_stop_is_acked_then_reboots_once() {
    let (rig, mut agent) = started(0x7, 0);
    rig.vmd().vmctl_stop().unwrap();
    rig.advance(Duration::from_millis(250));
    let tick = agent.tick(Duration::from_millis(250)).unwrap();
    let handled = tick.handled.expect("REBOOT handled");
    assert_eq!(handled.command, Some(Command::Reboot));
    assert!(handled.acked);
    assert_eq!(handled.outcome, Outcome::PowerStarted(PowerAction::Reboot));
    assert_eq!(agent.state(), State::Rebooting);
    // The latched REBOOT must not fire twice.
    for i in 2..10 {
        rig.advance(Duration::from_millis(250));
        assert!(agent
            .tick(Duration::from_millis(250 * i))
            .unwrap()
            .handled
            .is_none());
    }
    assert_eq!(rig.calls(), vec![PowerCall::Begin(PowerAction::Reboot)]);
    // Past vmd's 3 s ACK deadline the VM is still alive: the ACK re-armed the long timer.
    rig.advance(Duration::from_secs(5));
    assert_eq!(rig.vmd().ended(), None);
    rig.vmd().guest_reset();
    assert_eq!(rig.vmd().ended(), Some(VmEnd::CleanStop));
    rig.assert_no_violations();
}

#[test]
fn a_restarted_agent_handles_a_command_pending_before_it_started() {
    let rig = Rig::new(0x7, 0);
    let mut first = rig.agent();
    first.handshake().unwrap();
    rig.vmd().vmctl_stop().unwrap();
    drop(first); // killed before it polled
    rig.advance(Duration::from_millis(500));
    let mut second = rig.agent();
    second.handshake().unwrap(); // status 0 does not clear the pending command
    let handled = second
        .tick(Duration::ZERO)
        .unwrap()
        .handled
        .expect("pending REBOOT handled");
    assert_eq!(handled.command, Some(Command::Reboot));
    assert_eq!(rig.calls(), vec![PowerCall::Begin(PowerAction::Reboot)]);
    rig.advance(Duration::from_secs(4));
    assert_eq!(rig.vmd().ended(), None, "acked within vmd's 3 s");
}

#[test]
fn a_restarted_agent_with_the_latch_does_not_act_twice() {
    let (rig, mut agent) = started(0x7, 0);
    rig.vmd().vmctl_stop().unwrap();
    agent.tick(Duration::ZERO).unwrap();
    let latched = agent.latched();
    assert_eq!(latched, Some(Command::REBOOT));
    let mut again = rig.agent().with_latch(latched);
    again.handshake().unwrap();
    assert!(again.tick(Duration::ZERO).unwrap().handled.is_none());
    assert_eq!(rig.calls().len(), 1);
}

#[test]
fn shutdown_is_acked_then_powers_off() {
    let (rig, mut agent) = started(0x7, 0);
    rig.vmd().request_shutdown().unwrap();
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    assert_eq!(handled.command, Some(Command::Shutdown));
    assert!(handled.acked);
    assert_eq!(rig.calls(), vec![PowerCall::Begin(PowerAction::Poweroff)]);
    assert_eq!(agent.state(), State::PoweringOff);
}

#[test]
fn power_down_signal_after_host_shutdown_ends_the_vm_in_3s_not_120s() {
    let (rig, mut agent) = started(0x7, 0);
    rig.vmd().request_shutdown().unwrap();
    agent.tick(Duration::ZERO).unwrap();
    rig.advance(Duration::from_secs(10));
    // The guest's shutdown reaches its end and signals.
    agent.notify_poweroff().unwrap();
    rig.advance(Duration::from_millis(2900));
    assert_eq!(rig.vmd().ended(), None);
    rig.advance(Duration::from_millis(200));
    assert_eq!(rig.vmd().ended(), Some(VmEnd::PowerDown));
    rig.assert_no_violations();
}

#[test]
fn power_down_signal_with_nothing_pending() {
    let (rig, mut agent) = started(0x7, 0);
    agent.notify_poweroff().unwrap();
    rig.advance(Duration::from_millis(3100));
    assert_eq!(rig.vmd().ended(), Some(VmEnd::PowerDown));
}

#[test]
fn without_ack_feature_nothing_is_written_back() {
    let (rig, mut agent) = started(0x1, 0);
    rig.vmd().vmctl_stop().unwrap();
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    assert!(!handled.acked);
    assert_eq!(rig.calls(), vec![PowerCall::Begin(PowerAction::Reboot)]);
    // vmd gives up after 3 s, as it would with the OpenBSD driver.
    rig.advance(Duration::from_millis(3100));
    assert_eq!(rig.vmd().ended(), Some(VmEnd::AckTimeout));
}

#[test]
fn syncrtc_steps_the_clock_to_host_time_then_acks() {
    // Guest 2 s behind; the host resumes from a 90 s suspend.
    let (rig, mut agent) = started(0x7, -2 * NANOS_PER_SEC);
    rig.vmd().jump_host_clock(90 * NANOS_PER_SEC);
    rig.advance(Duration::from_secs(1));
    assert_eq!(
        rig.vmd().pending_command(),
        Command::SYNCRTC,
        "vmd's RTC rule sent SYNCRTC"
    );
    let handled = agent.tick(Duration::from_secs(1)).unwrap().handled.unwrap();
    assert_eq!(handled.command, Some(Command::SyncRtc));
    assert!(handled.acked);
    let Outcome::Stepped(step) = handled.outcome else {
        panic!("not stepped: {:?}", handled.outcome)
    };
    assert!(
        (step.delta_ns - 92 * NANOS_PER_SEC).abs() < 10_000,
        "delta {}",
        step.delta_ns
    );
    let residual = agent.clock().now_ns() - rig.vmd().host_now_ns();
    assert!(
        residual.abs() < 10_000,
        "guest − host after step: {residual} ns"
    );
    assert_eq!(
        rig.vmd().pending_command(),
        Command::NONE,
        "ACK cleared SYNCRTC"
    );
    assert_eq!(rig.clock.steps().len(), 1);
    rig.assert_no_violations();
}

#[test]
fn syncrtc_steps_backwards_too() {
    let (rig, mut agent) = started(0x7, 40 * NANOS_PER_SEC);
    assert!(rig.vmd().request_syncrtc());
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    let Outcome::Stepped(step) = handled.outcome else {
        panic!("{:?}", handled.outcome)
    };
    assert!((step.delta_ns + 40 * NANOS_PER_SEC).abs() < 10_000);
}

#[test]
fn a_second_syncrtc_after_the_first_is_handled_again() {
    let (rig, mut agent) = started(0x7, 0);
    for round in 0..2 {
        rig.clock.set_offset_ns(-5 * NANOS_PER_SEC);
        assert!(rig.vmd().request_syncrtc(), "round {round}");
        let handled = agent.tick(Duration::ZERO).unwrap().handled;
        assert!(
            matches!(handled.map(|h| h.outcome), Some(Outcome::Stepped(_))),
            "round {round}"
        );
    }
}

#[test]
fn syncrtc_with_clock_already_right_does_not_step() {
    let (rig, mut agent) = started(0x7, 0);
    assert!(rig.vmd().request_syncrtc());
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    assert!(
        matches!(handled.outcome, Outcome::AlreadyRight { .. }),
        "{:?}",
        handled.outcome
    );
    assert!(rig.clock.steps().is_empty());
}

#[test]
fn syncrtc_when_the_clock_cannot_be_set_acks_and_says_why() {
    let (rig, mut agent) = started(0x7, -3 * NANOS_PER_SEC);
    rig.clock.refuse_steps(true);
    assert!(rig.vmd().request_syncrtc());
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    assert!(handled.acked);
    let Outcome::StepRefused(why) = handled.outcome else {
        panic!()
    };
    assert!(why.contains("CAP_SYS_TIME"), "{why}");
}

/// A device whose time registers hold whatever the test says, optionally
/// a sequence of seconds, and whose reads take `read_time` of host time.
struct BadTime<B> {
    inner: B,
    sec: Option<u32>,
    usec: Option<u32>,
    secs: Vec<u32>,
    read_time: Option<(ManualClock, Duration)>,
}

impl<B> BadTime<B> {
    fn new(inner: B, sec: Option<u32>, usec: Option<u32>) -> Self {
        BadTime {
            inner,
            sec,
            usec,
            secs: vec![],
            read_time: None,
        }
    }
}

impl<B: RegisterIo> RegisterIo for BadTime<B> {
    fn read(&mut self, reg: Register) -> Result<u32, TransportError> {
        if let Some((clock, d)) = &self.read_time {
            clock.advance(*d);
        }
        let real = self.inner.read(reg)?;
        Ok(match reg {
            Register::TimeSecLow if !self.secs.is_empty() => self.secs.remove(0),
            Register::TimeSecLow => self.sec.unwrap_or(real),
            Register::TimeUsecLow => self.usec.unwrap_or(real),
            _ => real,
        })
    }
    fn write(&mut self, reg: Register, value: u32) -> Result<(), TransportError> {
        self.inner.write(reg, value)
    }
}

#[test]
fn syncrtc_never_steps_to_nonsense() {
    for (sec, usec, why) in [
        (Some(0), None, "reads 0"),
        (None, Some(1_000_000), "out of range"),
        (Some(12), None, "before this agent was built"),
    ] {
        let rig = Rig::new(0x7, -3 * NANOS_PER_SEC);
        let bar = BadTime::new(SimBar::new(rig.vmd.clone()), sec, usec);
        let config = AgentConfig {
            not_before_sec: 1_800_000_000,
            ..AgentConfig::default()
        };
        let mut agent = Agent::new(bar, rig.clock.clone(), rig.power.clone(), config);
        agent.handshake().unwrap();
        assert!(rig.vmd().request_syncrtc());
        let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
        let Outcome::StepRefused(text) = &handled.outcome else {
            panic!("{why}: {:?}", handled.outcome)
        };
        assert!(text.contains(why), "{text}");
        assert!(handled.acked, "acknowledged all the same");
        assert!(rig.clock.steps().is_empty(), "{why}: clock changed");
        assert_eq!(rig.vmd().pending_command(), Command::NONE);
    }
}

#[test]
fn unknown_commands_are_logged_once_and_never_acted_on() {
    let (rig, mut agent) = started(0x7, 0);
    for junk in [7, 0xdead_beef] {
        rig.vmd().set_command_raw(junk);
        let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
        assert_eq!(handled.command, None);
        assert!(!handled.acked);
        assert_eq!(handled.outcome, Outcome::Ignored);
        assert!(
            agent.tick(Duration::ZERO).unwrap().handled.is_none(),
            "logged once"
        );
        assert_eq!(rig.vmd().pending_command(), junk, "not acknowledged");
    }
    assert!(rig.calls().is_empty());
    assert!(rig.clock.steps().is_empty());
    // The next real stop still works.
    rig.vmd().vmctl_stop().unwrap();
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    assert_eq!(handled.command, Some(Command::Reboot));
    rig.assert_no_violations();
}

#[test]
fn all_ones_command_is_not_a_command() {
    let (rig, mut agent) = started(0x7, 0);
    rig.vmd().set_command_raw(u32::MAX);
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    assert_eq!(handled.outcome, Outcome::Ignored);
    assert!(rig.calls().is_empty());
}

#[test]
fn init_that_cannot_be_asked_is_forced_at_once() {
    let rig = Rig {
        power: RecordingPower::failing(),
        ..Rig::new(0x7, 0)
    };
    let mut agent = rig.agent();
    agent.handshake().unwrap();
    rig.vmd().vmctl_stop().unwrap();
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    assert!(matches!(
        handled.outcome,
        Outcome::PowerForced {
            action: PowerAction::Reboot,
            ..
        }
    ));
    assert_eq!(
        rig.calls(),
        vec![
            PowerCall::Begin(PowerAction::Reboot),
            PowerCall::Sync,
            PowerCall::Force(PowerAction::Reboot)
        ]
    );
}

#[test]
fn a_stuck_shutdown_is_synced_signalled_and_forced_after_the_grace_period() {
    let (rig, mut agent) = started(0x7, 0);
    let grace = agent.config().grace;
    rig.vmd().request_shutdown().unwrap();
    agent.tick(Duration::ZERO).unwrap();
    let before = grace - Duration::from_millis(1);
    assert_eq!(agent.tick(before).unwrap().forced, None);
    assert_eq!(
        agent.tick(grace).unwrap().forced,
        Some(PowerAction::Poweroff)
    );
    assert_eq!(
        rig.calls(),
        vec![
            PowerCall::Begin(PowerAction::Poweroff),
            PowerCall::Sync,
            PowerCall::Force(PowerAction::Poweroff)
        ]
    );
    assert!(
        agent.tick(grace * 2).unwrap().forced.is_none(),
        "forced once"
    );
    // The power-down signal went out with the force.
    rig.advance(Duration::from_millis(3100));
    assert_eq!(rig.vmd().ended(), Some(VmEnd::PowerDown));
}

#[test]
fn drift_is_sampled_on_schedule_with_sign_host_minus_guest() {
    let (rig, mut agent) = started(0x7, -2 * NANOS_PER_SEC);
    let first = agent
        .tick(Duration::ZERO)
        .unwrap()
        .sampled
        .expect("first sample at start");
    assert!(
        (first.offset_ns - 2 * NANOS_PER_SEC).abs() < 10_000,
        "{}",
        first.offset_ns
    );
    assert!(first.round_trip_ns >= 0 && first.error_bound_ns >= 500);
    assert!(agent
        .tick(Duration::from_secs(14))
        .unwrap()
        .sampled
        .is_none());
    rig.clock.set_offset_ns(NANOS_PER_SEC / 2);
    let second = agent
        .tick(Duration::from_secs(15))
        .unwrap()
        .sampled
        .expect("due at 15 s");
    assert!((second.offset_ns + NANOS_PER_SEC / 2).abs() < 10_000);
    let snap = agent.snapshot();
    assert_eq!(snap.drift_samples, 2);
    assert!(snap.drift_min_ns.unwrap() < 0 && snap.drift_max_ns.unwrap() > 0);
    rig.assert_no_violations();
}

#[test]
fn next_deadline_is_the_poll_or_the_sample_whichever_is_first() {
    let (_rig, mut agent) = started(0x7, 0);
    agent.tick(Duration::ZERO).unwrap();
    let poll = agent.config().poll_interval;
    assert_eq!(agent.next_deadline(Duration::ZERO), poll);
    let near_sample = Duration::from_secs(15) - poll / 2;
    assert_eq!(agent.next_deadline(near_sample), Duration::from_secs(15));
}

#[test]
fn release_writes_status_zero_and_keeps_the_pending_command() {
    let (rig, mut agent) = started(0x7, 0);
    rig.vmd().set_command_raw(Command::REBOOT);
    agent.release().unwrap();
    assert_eq!(agent.state(), State::Released);
    assert_eq!(rig.vmd().device_status(), 0);
    assert_eq!(
        rig.vmd().pending_command(),
        Command::REBOOT,
        "no real reset in vmd"
    );
}

#[test]
fn device_errors_reach_the_caller() {
    let (rig, mut agent) = started(0x7, 0);
    rig.vmd().vmctl_stop_force();
    let err = agent.tick(Duration::ZERO).unwrap_err();
    assert!(
        matches!(err, AgentError::Transport(TransportError::Gone(_))),
        "{err}"
    );
    assert!(rig.calls().is_empty());
}

#[test]
fn all_ones_features_mean_no_device() {
    let rig = Rig::new(u32::MAX, 0);
    let err = rig.agent().handshake().unwrap_err();
    assert!(err.to_string().contains("I/O decode"), "{err}");
}

#[test]
fn fmt_ns_reads_well() {
    assert_eq!(fmt_ns(1_234_567_890), "+1.234567 s");
    assert_eq!(fmt_ns(-12_300_000), "-12.300 ms");
    assert_eq!(fmt_ns(850), "+850 ns");
    assert_eq!(fmt_ns(-1_500), "-1.500 µs");
}

#[test]
fn syncrtc_without_ack_feature_is_handled_once() {
    // TIMESYNC|SYNCRTC but no ACK: the command stays posted in vmd.
    let (rig, mut agent) = started(0x5, -3 * NANOS_PER_SEC);
    assert!(rig.vmd().request_syncrtc());
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    assert!(!handled.acked);
    assert!(matches!(handled.outcome, Outcome::Stepped(_)));
    for _ in 0..3 {
        assert!(agent.tick(Duration::ZERO).unwrap().handled.is_none());
    }
    assert_eq!(rig.clock.steps().len(), 1, "stepped once");
    assert_eq!(rig.vmd().pending_command(), Command::SYNCRTC);
}

fn agent_over<B: RegisterIo>(rig: &Rig, bar: B) -> Agent<B, FakeGuestClock, RecordingPower> {
    let config = AgentConfig {
        not_before_sec: 1_800_000_000,
        ..AgentConfig::default()
    };
    let mut agent = Agent::new(bar, rig.clock.clone(), rig.power.clone(), config);
    agent.handshake().unwrap();
    agent
}

#[test]
fn a_snapshot_that_never_refreshes_is_refused() {
    let rig = Rig::new(0x7, -3 * NANOS_PER_SEC);
    let now = (HOST_START_NS / NANOS_PER_SEC) as u32;
    let mut bar = BadTime::new(SimBar::new(rig.vmd.clone()), Some(now), Some(250_000));
    bar.read_time = Some((rig.host.clone(), Duration::from_millis(1)));
    let mut agent = agent_over(&rig, bar);
    assert!(rig.vmd().request_syncrtc());
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    let Outcome::StepRefused(why) = handled.outcome else {
        panic!("{:?}", handled.outcome)
    };
    assert!(why.contains("does not refresh"), "{why}");
    assert!(rig.clock.steps().is_empty());
}

#[test]
fn tries_that_disagree_are_junk_and_not_stepped_to() {
    let rig = Rig::new(0x7, -3 * NANOS_PER_SEC);
    let now = (HOST_START_NS / NANOS_PER_SEC) as u32;
    let mut bar = BadTime::new(SimBar::new(rig.vmd.clone()), None, None);
    // One try says the host is 2 minutes ahead of the others.
    bar.secs = vec![now, now, now + 120, now, now];
    let mut agent = agent_over(&rig, bar);
    assert!(rig.vmd().request_syncrtc());
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    let Outcome::StepRefused(why) = handled.outcome else {
        panic!("{:?}", handled.outcome)
    };
    assert!(why.contains("disagree"), "{why}");
    assert!(rig.clock.steps().is_empty());
    assert!(handled.acked, "acknowledged all the same");
}

#[test]
fn reads_so_slow_the_bound_is_useless_are_not_stepped_to() {
    let rig = Rig::new(0x7, -3 * NANOS_PER_SEC);
    let mut bar = BadTime::new(SimBar::new(rig.vmd.clone()), None, None);
    bar.read_time = Some((rig.host.clone(), Duration::from_millis(1500)));
    let mut agent = agent_over(&rig, bar);
    assert!(rig.vmd().request_syncrtc());
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    let Outcome::StepRefused(why) = handled.outcome else {
        panic!("{:?}", handled.outcome)
    };
    assert!(why.contains("too uncertain"), "{why}");
}

#[test]
fn slow_reads_of_100ms_still_step_with_an_honest_bound() {
    let rig = Rig::new(0x7, -3 * NANOS_PER_SEC);
    let mut bar = BadTime::new(SimBar::new(rig.vmd.clone()), None, None);
    bar.read_time = Some((rig.host.clone(), Duration::from_millis(100)));
    let mut agent = agent_over(&rig, bar);
    assert!(rig.vmd().request_syncrtc());
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    let Outcome::Stepped(step) = handled.outcome else {
        panic!("{:?}", handled.outcome)
    };
    assert!(
        step.error_bound_ns >= 50_000_000,
        "bound {}",
        step.error_bound_ns
    );
    let residual = agent.clock().now_ns() - rig.vmd().host_now_ns();
    assert!(
        residual.abs() <= step.error_bound_ns + 200_000_000,
        "residual {residual}"
    );
}

/// A device whose COMMAND writes fail: as if the agent were killed right
/// after acting and before acknowledging.
struct AckLost<B> {
    inner: B,
}

impl<B: RegisterIo> RegisterIo for AckLost<B> {
    fn read(&mut self, reg: Register) -> Result<u32, TransportError> {
        self.inner.read(reg)
    }
    fn write(&mut self, reg: Register, value: u32) -> Result<(), TransportError> {
        if reg == Register::Command {
            return Err(TransportError::Gone("killed before the ACK".into()));
        }
        self.inner.write(reg, value)
    }
}

#[test]
fn killed_between_step_and_ack_the_next_agent_does_not_step_twice() {
    let rig = Rig::new(0x7, -7 * NANOS_PER_SEC);
    let mut first = agent_over(
        &rig,
        AckLost {
            inner: SimBar::new(rig.vmd.clone()),
        },
    );
    assert!(rig.vmd().request_syncrtc());
    assert!(first.tick(Duration::ZERO).is_err(), "the ACK was lost");
    assert_eq!(rig.clock.steps().len(), 1, "stepped before the ACK");
    drop(first);
    assert_eq!(
        rig.vmd().pending_command(),
        Command::SYNCRTC,
        "still pending"
    );
    let mut second = rig.agent();
    second.handshake().unwrap();
    let handled = second.tick(Duration::ZERO).unwrap().handled.unwrap();
    assert!(
        matches!(handled.outcome, Outcome::AlreadyRight { .. }),
        "{:?}",
        handled.outcome
    );
    assert!(handled.acked);
    assert_eq!(rig.clock.steps().len(), 1, "not stepped twice");
    assert_eq!(rig.vmd().pending_command(), Command::NONE);
}

// ---- the clock policy ------------------------------------------------------

fn with_mode(rig: &Rig, mode: ClockMode) -> Agent<SimBar, FakeGuestClock, RecordingPower> {
    let config = AgentConfig {
        not_before_sec: 1_800_000_000,
        clock: ClockPolicy {
            mode,
            ..ClockPolicy::default()
        },
        ..AgentConfig::default()
    };
    let mut agent = Agent::new(
        SimBar::new(rig.vmd.clone()),
        rig.clock.clone(),
        rig.power.clone(),
        config,
    );
    agent.handshake().unwrap();
    agent
}

/// Host − guest offsets of `n` periodic samples, one every 15 s.
fn sample_for(
    rig: &Rig,
    agent: &mut Agent<SimBar, FakeGuestClock, RecordingPower>,
    n: u32,
) -> Vec<i64> {
    let mut offsets = Vec::new();
    for k in 0..n {
        if k > 0 {
            rig.advance(Duration::from_secs(15));
        }
        let t = agent.tick(Duration::from_secs(15) * k).unwrap();
        offsets.push(t.sampled.expect("a sample every 15 s").offset_ns);
    }
    offsets
}

#[test]
fn discipline_learns_a_50_ppm_host_where_step_on_request_drifts() {
    // 20 minutes with the host 50 ppm fast and ±20 µs of read noise.
    let rig = Rig::with_host(0x7, 0, 50.0, 20_000);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    let offsets = sample_for(&rig, &mut agent, 80);
    let late = &offsets[40..];
    assert!(
        late.iter().all(|o| o.abs() < 150_000),
        "held within 150 µs after 10 min: {late:?}"
    );
    let snap = agent.snapshot();
    let learned = snap.clock.learned_frequency_ppm.unwrap();
    assert!((learned - 50.0).abs() < 2.0, "learned {learned} ppm");
    assert_eq!(snap.clock.slews, 80);
    assert!(rig.clock.steps().is_empty(), "no step for a rate error");
    assert!(snap.clock.last_decision.unwrap().starts_with("slewing"));

    // The old driver's policy on the same host: 50 µs more every second.
    let rig = Rig::with_host(0x7, 0, 50.0, 20_000);
    let mut agent = with_mode(&rig, ClockMode::StepOnRequest);
    let offsets = sample_for(&rig, &mut agent, 80);
    let last = *offsets.last().unwrap();
    assert!((last - 59_250_000).abs() < 100_000, "drifted {last} ns");
    assert_eq!(rig.clock.frequency_sets(), 0);
    rig.assert_no_violations();
}

#[test]
fn discipline_steps_a_missed_resume_in_both_directions() {
    for off in [-90 * NANOS_PER_SEC, 3 * NANOS_PER_SEC] {
        let rig = Rig::new(0x7, 0);
        let mut agent = with_mode(&rig, ClockMode::Discipline);
        agent.tick(Duration::ZERO).unwrap();
        // The guest clock is off and nobody sends SYNCRTC.
        rig.clock.set_offset_ns(off);
        rig.advance(Duration::from_secs(15));
        let t = agent.tick(Duration::from_secs(15)).unwrap();
        assert!(t.handled.is_none(), "no command involved");
        let Some(ClockDecision::Stepped(step)) = t.clock else {
            panic!("not stepped: {:?}", t.clock)
        };
        assert_eq!(step.cause, StepCause::Periodic);
        assert!((step.delta_ns + off).abs() < 10_000, "{step:?}");
        assert!(rig.clock.offset_ns().abs() < 10_000);
        let snap = agent.snapshot();
        assert_eq!(
            (snap.clock.steps_periodic, snap.clock.steps_requested),
            (1, 0)
        );
    }
}

#[test]
fn step_on_request_warns_once_about_a_far_clock_and_clears_after_a_step() {
    let rig = Rig::new(0x7, 0);
    let mut agent = with_mode(&rig, ClockMode::StepOnRequest);
    agent.tick(Duration::ZERO).unwrap();
    rig.clock.set_offset_ns(-90 * NANOS_PER_SEC);
    rig.advance(Duration::from_secs(15));
    let t = agent.tick(Duration::from_secs(15)).unwrap();
    assert!(matches!(t.clock, Some(ClockDecision::Warned { .. })));
    rig.advance(Duration::from_secs(15));
    let t = agent.tick(Duration::from_secs(30)).unwrap();
    assert_eq!(t.clock, None, "warned once, not every sample");
    let warning = agent.snapshot().clock.warning.expect("status keeps it");
    assert!(warning.contains("vmmci sync"), "{warning}");
    assert!(rig.clock.steps().is_empty(), "never steps unasked");
    // The host asks; after the step the warning goes.
    rig.vmd().request_syncrtc();
    rig.advance(Duration::from_secs(15));
    agent.tick(Duration::from_secs(45)).unwrap();
    assert_eq!(rig.clock.steps().len(), 1);
    assert_eq!(agent.snapshot().clock.warning, None);
    assert_eq!(agent.snapshot().clock.steps_requested, 1);
}

#[test]
fn discipline_stands_back_for_another_time_daemon_but_syncrtc_still_steps() {
    let rig = Rig::with_host(0x7, 0, 50.0, 0);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    rig.clock.set_disciplined_by(Some("chronyd"));
    rig.clock.set_offset_ns(-5 * NANOS_PER_SEC);
    let t = agent.tick(Duration::ZERO).unwrap();
    assert_eq!(
        t.clock,
        Some(ClockDecision::StoodBack {
            by: "chronyd".into()
        })
    );
    assert_eq!(rig.clock.frequency_sets(), 0);
    assert!(rig.clock.steps().is_empty());
    let snap = agent.snapshot();
    assert_eq!(snap.clock.disciplined_by.as_deref(), Some("chronyd"));
    assert!(snap.clock.last_decision.unwrap().contains("standing back"));

    rig.vmd().request_syncrtc();
    rig.advance(Duration::from_secs(1));
    let t = agent.tick(Duration::from_secs(1)).unwrap();
    assert!(matches!(t.handled.unwrap().outcome, Outcome::Stepped(_)));

    // chronyd goes away: the agent takes the clock over again.
    rig.clock.set_disciplined_by(None);
    rig.advance(Duration::from_secs(15));
    let t = agent.tick(Duration::from_secs(16)).unwrap();
    assert!(matches!(t.clock, Some(ClockDecision::Slewed { .. })));
    assert_eq!(agent.snapshot().clock.disciplined_by, None);
}

#[test]
fn clock_mode_off_acks_syncrtc_and_never_touches_the_clock() {
    let rig = Rig::new(0x7, -7 * NANOS_PER_SEC);
    let mut agent = with_mode(&rig, ClockMode::Off);
    assert_eq!(agent.tick(Duration::ZERO).unwrap().clock, None);
    rig.vmd().request_syncrtc();
    rig.advance(Duration::from_secs(1));
    let h = agent.tick(Duration::from_secs(1)).unwrap().handled.unwrap();
    assert!(h.acked, "vmd still gets its ACK");
    assert!(matches!(h.outcome, Outcome::StepRefused(ref why) if why.contains("off")));
    assert!(rig.clock.steps().is_empty());
    assert_eq!(rig.clock.frequency_sets(), 0);
    assert_eq!(agent.snapshot().commands.syncrtc, 1);
}

#[test]
fn a_clock_that_cannot_be_slewed_is_left_alone_and_said_so() {
    let rig = Rig::new(0x7, -1_000_000);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    rig.clock.refuse_steps(true);
    let t = agent.tick(Duration::ZERO).unwrap();
    let Some(ClockDecision::Failed(why)) = t.clock else {
        panic!("{:?}", t.clock)
    };
    assert!(why.contains("EPERM"), "{why}");
    assert_eq!(rig.clock.offset_ns(), -1_000_000);
    assert_eq!(agent.snapshot().clock.slews, 0);
}

#[test]
fn commands_are_counted_by_kind() {
    let (rig, mut agent) = started(0x7, 0);
    rig.vmd().set_command_raw(0x99);
    agent.tick(Duration::ZERO).unwrap();
    rig.vmd().request_syncrtc();
    agent.tick(Duration::from_millis(250)).unwrap();
    rig.vmd().vmctl_stop().unwrap();
    agent.tick(Duration::from_millis(500)).unwrap();
    assert_eq!(
        agent.snapshot().commands,
        CommandCounts {
            reboot: 1,
            shutdown: 0,
            syncrtc: 1,
            unknown: 1
        }
    );
}

#[test]
fn leaving_discipline_keeps_the_learned_rate_only() {
    let rig = Rig::with_host(0x7, 0, 50.0, 0);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    sample_for(&rig, &mut agent, 20);
    let learned = agent.snapshot().clock.learned_frequency_ppm.unwrap();
    let config = AgentConfig {
        not_before_sec: 1_800_000_000,
        ..AgentConfig::default()
    };
    agent.reconfigure(config);
    assert_eq!(rig.clock.frequency_ppm().unwrap(), learned);
}
