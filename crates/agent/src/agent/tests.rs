//! The handshake, the tick schedule, and what reaches the caller.

use std::time::Duration;

use vmmci_protocol::{status, Command, Features, NANOS_PER_SEC};
use vmmci_transport::TransportError;

use crate::agent::test_rig::*;
use crate::agent::*;

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
