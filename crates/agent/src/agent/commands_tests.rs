//! Every command, the quirks, and values that are not commands.

use std::time::Duration;

use vmd_sim::{EventKind, SimBar, VmEnd};
use vmmci_protocol::{status, Command, Register, NANOS_PER_SEC};
use vmmci_transport::{RegisterIo, TransportError};

use crate::agent::test_rig::*;
use crate::agent::*;
use crate::fakes::{FakeGuestClock, PowerCall, RecordingPower};
use crate::report::*;
use crate::world::{GuestClock, PowerAction};

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

/// The power calls of an action init did not finish: begun, synced at
/// the grace point, then synced again and forced at `force_after`.
fn forced_late(action: PowerAction) -> Vec<PowerCall> {
    vec![
        PowerCall::Begin(action),
        PowerCall::Sync,
        PowerCall::Sync,
        PowerCall::Force(action),
    ]
}

/// Neither init's command nor PID 1 answers: never an immediate hard
/// reboot; the grace and the force still give the guest its time.
#[test]
fn init_that_cannot_be_asked_is_synced_at_the_grace_and_forced_late() {
    let rig = Rig {
        power: RecordingPower::failing(),
        ..Rig::new(0x7, 0)
    };
    let mut agent = rig.agent();
    agent.handshake().unwrap();
    rig.vmd().vmctl_stop().unwrap();
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    assert!(handled.acked);
    assert!(matches!(
        handled.outcome,
        Outcome::PowerNotStarted {
            action: PowerAction::Reboot,
            ..
        }
    ));
    assert_eq!(rig.calls(), vec![PowerCall::Begin(PowerAction::Reboot)]);
    let (grace, force_after) = (agent.config().grace, agent.config().force_after);
    assert_eq!(agent.tick(grace).unwrap().synced, Some(true));
    assert_eq!(
        agent.tick(force_after).unwrap().forced,
        Some(PowerAction::Reboot)
    );
    assert_eq!(rig.calls(), forced_late(PowerAction::Reboot));
}

/// "Sync early, force late": sync(2) at the grace point (25 s), the force
/// only at 110 s after the ACK, inside vmd's 120 s; nothing but the ACK is
/// ever written to COMMAND (no power-down signal).
#[test]
fn a_stuck_shutdown_is_synced_at_the_grace_and_forced_before_vmds_long_timeout() {
    let (rig, mut agent) = started(0x7, 0);
    let (grace, force_after) = (agent.config().grace, agent.config().force_after);
    assert_eq!(
        (grace, force_after),
        (Duration::from_secs(25), Duration::from_secs(110))
    );
    rig.vmd().request_shutdown().unwrap();
    agent.tick(Duration::ZERO).unwrap();
    let ms = Duration::from_millis(1);
    let t = agent.tick(grace - ms).unwrap();
    assert_eq!((t.synced, t.forced), (None, None));
    let t = agent.tick(grace).unwrap();
    assert_eq!((t.synced, t.forced), (Some(true), None));
    assert_eq!(
        rig.calls(),
        vec![PowerCall::Begin(PowerAction::Poweroff), PowerCall::Sync]
    );
    let t = agent.tick(force_after - ms).unwrap();
    assert_eq!((t.synced, t.forced), (None, None));
    assert_eq!(
        agent.tick(force_after).unwrap().forced,
        Some(PowerAction::Poweroff)
    );
    assert_eq!(rig.calls(), forced_late(PowerAction::Poweroff));
    assert!(
        agent.tick(force_after * 2).unwrap().forced.is_none(),
        "forced once"
    );
    // The ACK re-armed vmd's long timer; the force came 10 s before it.
    rig.advance(force_after);
    assert_eq!(rig.vmd().ended(), None);
    let writes_to_command = rig
        .vmd()
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Ack { .. }
                    | EventKind::GuestShutdown { .. }
                    | EventKind::RtcSyncAcked { .. }
            )
        })
        .count();
    assert_eq!(
        writes_to_command,
        1,
        "only the ACK: {:?}",
        rig.vmd().events()
    );
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

/// A device that stops answering time reads: as if the agent were killed
/// right after acknowledging SYNCRTC and before the clock work.
struct TimeGone<B> {
    inner: B,
}

impl<B: RegisterIo> RegisterIo for TimeGone<B> {
    fn read(&mut self, reg: Register) -> Result<u32, TransportError> {
        if matches!(reg, Register::TimeSecLow | Register::TimeUsecLow) {
            return Err(TransportError::Gone("killed after the ACK".into()));
        }
        self.inner.read(reg)
    }
    fn write(&mut self, reg: Register, value: u32) -> Result<(), TransportError> {
        self.inner.write(reg, value)
    }
}

/// SYNCRTC is acknowledged before the step (so a stop posted during the
/// step is never wiped); an agent killed in between leaves no request for
/// the next one, which therefore never steps twice.
#[test]
fn killed_between_the_ack_and_the_step_nothing_is_stepped_twice() {
    let rig = Rig::new(0x7, -7 * NANOS_PER_SEC);
    let mut first = agent_over(
        &rig,
        TimeGone {
            inner: SimBar::new(rig.vmd.clone()),
        },
    );
    first.handshake().unwrap();
    assert!(rig.vmd().request_syncrtc());
    // The tick's drift sample fails too: the device is "gone".
    assert!(first.tick(Duration::ZERO).is_err());
    let handled = first.snapshot().last_command.unwrap();
    assert!(handled.acked);
    assert!(matches!(handled.outcome, Outcome::StepRefused(_)));
    assert_eq!(rig.clock.steps().len(), 0);
    assert_eq!(
        rig.vmd().pending_command(),
        Command::NONE,
        "acknowledged first"
    );
    drop(first);
    let mut second = rig.agent();
    second.handshake().unwrap();
    assert!(second.tick(Duration::ZERO).unwrap().handled.is_none());
    assert_eq!(rig.clock.steps().len(), 0, "no request left to step on");
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

#[path = "race_tests.rs"]
mod races;

/// A device error during a stop makes the daemon redo the handshake; the
/// stop under way is not forgotten (found by the fuzz target).
#[test]
fn a_handshake_redone_during_a_stop_keeps_the_stop() {
    let (rig, mut agent) = started(0x7, 0);
    rig.vmd().vmctl_stop().unwrap();
    agent.tick(Duration::ZERO).unwrap();
    assert_eq!(agent.state(), State::Rebooting);
    agent.handshake().unwrap();
    assert_eq!(agent.state(), State::Rebooting);
    let grace = agent.config().grace;
    assert_eq!(
        agent.tick(grace).unwrap().synced,
        Some(true),
        "grace still runs"
    );
}
