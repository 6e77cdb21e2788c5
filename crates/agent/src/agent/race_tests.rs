//! The host acts at any instant: a stop posted between any two register
//! accesses of the agent (while it handles SYNCRTC, while a restarted agent
//! redoes its handshake) must still end in a clean stop.

use vmd_sim::{AccessTrigger, HostAction, Reg, VmmciCmd};

use super::*;

const POLL: Duration = Duration::from_millis(250);

/// How a stop posted at one instant ended.
#[derive(Debug, PartialEq, Eq)]
enum StopFate {
    /// REBOOT acknowledged; vmd was still waiting 3.1 s after the stop.
    Acked,
    /// Wiped by the SYNCRTC acknowledgement; the agent synced and reset the
    /// guest, which vmd (stopping) took as a clean stop.
    ResetInTime,
}

/// A guest 5 s behind the host, its start-up sample taken, and a SYNCRTC
/// posted.
fn syncrtc_posted() -> (Rig, Agent<SimBar, FakeGuestClock, RecordingPower>) {
    let (rig, mut agent) = started(0x7, -5 * NANOS_PER_SEC);
    agent.tick(Duration::ZERO).unwrap(); // the start-up drift sample
    assert!(rig.vmd().request_syncrtc());
    (rig, agent)
}

/// Poll as the daemon does for 3.1 s of host time from `from`.
fn poll_for_vmds_deadline(
    rig: &Rig,
    agent: &mut Agent<SimBar, FakeGuestClock, RecordingPower>,
    from: Duration,
) {
    let mut now = from;
    while now < from + Duration::from_millis(3100) {
        rig.advance(POLL);
        now += POLL;
        if agent.tick(now).is_err() {
            break;
        }
    }
}

/// After a stop was posted: poll on for vmd's 3 s unless the agent reset
/// the guest (a forced reboot is a reset at once), then say how it ended.
fn fate(
    rig: &Rig,
    agent: &mut Agent<SimBar, FakeGuestClock, RecordingPower>,
    from: Duration,
) -> StopFate {
    if rig.calls().contains(&PowerCall::Force(PowerAction::Reboot)) {
        // A reset while vmd is stopping ends the VM as a clean stop.
        rig.vmd().guest_reset();
        assert_eq!(rig.vmd().ended(), Some(VmEnd::CleanStop));
        return StopFate::ResetInTime;
    }
    poll_for_vmds_deadline(rig, agent, from);
    let acked = rig.vmd().events().iter().any(|e| {
        matches!(
            e.kind,
            EventKind::Ack {
                cmd: VmmciCmd::Reboot,
                ..
            }
        )
    });
    assert!(
        acked,
        "stop neither acknowledged nor answered by a reset: {:?}\n{:#?}",
        rig.calls(),
        rig.vmd().events()
    );
    assert_eq!(rig.vmd().ended(), None, "acknowledged, yet ended");
    assert!(rig.calls().contains(&PowerCall::Begin(PowerAction::Reboot)));
    StopFate::Acked
}

/// SYNCRTC handled with a `vmctl stop` scheduled `k` accesses into the
/// tick that handles it. Returns the fate and how many accesses that tick
/// made.
fn syncrtc_with_stop_at(k: Option<u64>) -> (Rig, Option<StopFate>, u64) {
    let (rig, mut agent) = syncrtc_posted();
    if let Some(k) = k {
        rig.vmd()
            .schedule(AccessTrigger::After(k), HostAction::VmctlStop);
    }
    let before = rig.vmd().accesses();
    agent.tick(POLL).unwrap();
    let used = rig.vmd().accesses() - before;
    let fate = k.map(|_| {
        let fate = fate(&rig, &mut agent, POLL);
        assert_eq!(rig.vmd().scheduled(), 0, "the stop was posted");
        fate
    });
    rig.assert_no_violations();
    (rig, fate, used)
}

/// Every instant of the SYNCRTC handling, and a few after it: the stop is
/// acknowledged within vmd's 3 s, except at the one instant no agent can
/// close (after its last read of COMMAND, before its SYNCRTC ACK, which
/// vmd lets wipe the stop): there the agent sees it through ISR and resets
/// the guest inside vmd's 3 s.
#[test]
fn a_stop_at_any_instant_of_a_syncrtc_is_never_lost() {
    let (rig, _, used) = syncrtc_with_stop_at(None);
    assert_eq!(rig.clock.steps().len(), 1, "the SYNCRTC stepped");
    assert!(used >= 20, "a step with two samples: {used} accesses");
    let mut wiped = vec![];
    for k in 0..used + 3 {
        let (_, fate, _) = syncrtc_with_stop_at(Some(k));
        if fate == Some(StopFate::ResetInTime) {
            wiped.push(k);
        }
    }
    // Read COMMAND, read ISR, read COMMAND again, then the ACK: only a stop
    // landing just before the ACK (k = 3) is wiped.
    assert_eq!(wiped, vec![3], "instants where the ACK wiped the stop");
}

/// The clock work is done after the ACK, and COMMAND is read again right
/// after it: a stop posted during the step is handled in the same tick.
#[test]
fn syncrtc_is_acknowledged_before_the_step_and_command_read_again_after() {
    let (rig, mut agent) = syncrtc_posted();
    // Before the first time read of the step: after the ACK.
    rig.vmd().schedule(
        AccessTrigger::Before(Reg::TimeSecLow),
        HostAction::VmctlStop,
    );
    let handled = agent.tick(POLL).unwrap().handled.unwrap();
    assert_eq!(
        handled.command,
        Some(Command::Reboot),
        "seen in the same tick"
    );
    assert!(handled.acked);
    assert_eq!(rig.clock.steps().len(), 1);
    let kinds: Vec<_> = rig.vmd().events().iter().map(|e| e.kind.clone()).collect();
    let synced = kinds
        .iter()
        .position(|k| matches!(k, EventKind::RtcSyncAcked { .. }))
        .unwrap();
    let stop = kinds
        .iter()
        .position(|k| matches!(k, EventKind::StopRequested { .. }))
        .unwrap();
    assert!(synced < stop, "ACK before the step's reads: {kinds:?}");
}

/// A step that fails is tried again on the next polls, not forgotten.
#[test]
fn a_failed_syncrtc_step_is_retried_on_later_polls() {
    let (rig, mut agent) = syncrtc_posted();
    rig.clock.refuse_steps(true);
    let handled = agent.tick(POLL).unwrap().handled.unwrap();
    assert!(handled.acked && matches!(handled.outcome, Outcome::StepRefused(_)));
    let t = agent.tick(POLL * 2).unwrap();
    assert!(matches!(t.retried, Some(Outcome::StepRefused(_))));
    rig.clock.refuse_steps(false);
    let t = agent.tick(POLL * 3).unwrap();
    assert!(
        matches!(t.retried, Some(Outcome::Stepped(_))),
        "{:?}",
        t.retried
    );
    assert_eq!(rig.clock.steps().len(), 1);
    let last = agent.snapshot().last_command.unwrap();
    assert!(
        matches!(last.outcome, Outcome::Stepped(_)),
        "status shows the step"
    );
    assert!(agent.tick(POLL * 4).unwrap().retried.is_none(), "done");
}

/// Retries are bounded.
#[test]
fn a_step_that_keeps_failing_is_given_up_after_a_few_polls() {
    let (rig, mut agent) = syncrtc_posted();
    rig.clock.refuse_steps(true);
    agent.tick(POLL).unwrap();
    let retries = (2..20)
        .filter(|&i| agent.tick(POLL * i).unwrap().retried.is_some())
        .count();
    assert_eq!(retries, agent.config().step_retries as usize);
}

/// A restarted agent (DRIVER_OK left set by the last one) never writes a
/// status without DRIVER_OK, so vmd never refuses a stop; a stop posted at
/// any instant of its handshake is acknowledged.
#[test]
fn a_stop_inside_a_restarted_agents_handshake_is_acknowledged() {
    let handshake_accesses = {
        let (rig, _) = started(0x7, 0);
        let before = rig.vmd().accesses();
        rig.agent().handshake().unwrap();
        let after = rig.vmd().accesses();
        after - before
    };
    assert_eq!(
        handshake_accesses, 4,
        "status, features, guest features, status"
    );
    for k in 0..=handshake_accesses {
        let (rig, first) = started(0x7, 0);
        drop(first);
        rig.vmd()
            .schedule(AccessTrigger::After(k), HostAction::VmctlStop);
        let mut next = rig.agent();
        next.handshake().unwrap();
        assert_eq!(rig.vmd().ended(), None, "k={k}: refused");
        next.tick(Duration::ZERO).unwrap();
        assert_eq!(
            fate(&rig, &mut next, Duration::ZERO),
            StopFate::Acked,
            "k={k}"
        );
        let writes = rig.vmd().status_writes().to_vec();
        assert!(
            writes[4..].iter().all(|w| w & status::DRIVER_OK != 0),
            "k={k}: DRIVER_OK dropped: {writes:x?}"
        );
        rig.assert_no_violations();
    }
}
