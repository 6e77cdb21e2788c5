//! The clock policy over many samples.

use std::time::Duration;

use vmd_sim::SimBar;
use vmmci_protocol::NANOS_PER_SEC;

use crate::agent::test_rig::*;
use crate::agent::*;
use crate::discipline::*;
use crate::fakes::{FakeGuestClock, RecordingPower};
use crate::report::*;
use crate::world::GuestClock;

fn with_mode(rig: &Rig, mode: ClockMode) -> Agent<SimBar, FakeGuestClock, RecordingPower> {
    let config = AgentConfig {
        clock: ClockPolicy {
            mode,
            ..ClockPolicy::default()
        },
        ..agent_config()
    };
    agent_with(rig, SimBar::new(rig.vmd.clone()), config)
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

/// A daemon killed before it could mark the clock unsynchronised leaves
/// STA_UNSYNC clear for hours: once the daemon the agent stood back for is
/// gone, the agent takes the clock over at the next sample, and the flag
/// counts again only after the kernel (or a daemon) has set it.
#[test]
fn discipline_takes_a_clear_sync_flag_left_by_a_gone_daemon_for_a_leftover() {
    let rig = Rig::with_host(0x7, 0, 50.0, 0);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    let decide = |agent: &mut Agent<_, _, _>, at: u64| {
        rig.advance(Duration::from_secs(15));
        agent.tick(Duration::from_secs(at)).unwrap().clock
    };
    // chronyd runs and has synchronised the clock.
    rig.clock.set_disciplined_by(Some("chronyd (pid 193)"));
    rig.clock.set_kernel_synchronised(Some(true));
    assert!(matches!(
        agent.tick(Duration::ZERO).unwrap().clock,
        Some(ClockDecision::StoodBack { .. })
    ));
    // Killed: the flag stays clear, and that alone no longer holds the
    // agent back.
    rig.clock.set_disciplined_by(None);
    assert!(matches!(
        decide(&mut agent, 15),
        Some(ClockDecision::Slewed { .. })
    ));
    assert!(matches!(
        decide(&mut agent, 30),
        Some(ClockDecision::Slewed { .. })
    ));
    assert_eq!(agent.snapshot().clock.disciplined_by, None);
    // The kernel marks the clock unsynchronised at last; then a daemon the
    // agent cannot see marks it synchronised: that counts.
    rig.clock.set_kernel_synchronised(Some(false));
    assert!(matches!(
        decide(&mut agent, 45),
        Some(ClockDecision::Slewed { .. })
    ));
    rig.clock.set_kernel_synchronised(Some(true));
    assert_eq!(
        decide(&mut agent, 60),
        Some(ClockDecision::StoodBack {
            by: "a time daemon (the kernel clock is marked synchronised)".into()
        })
    );
}

/// With no daemon ever seen, a clear flag is a daemon the agent cannot see.
#[test]
fn discipline_stands_back_for_a_clear_sync_flag_with_no_daemon_seen() {
    let rig = Rig::with_host(0x7, 0, 50.0, 0);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    rig.clock.set_kernel_synchronised(Some(true));
    for k in 0..3 {
        rig.advance(Duration::from_secs(15));
        let t = agent.tick(Duration::from_secs(15 * k)).unwrap();
        assert!(
            matches!(t.clock, Some(ClockDecision::StoodBack { .. })),
            "{t:?}"
        );
    }
    assert_eq!(rig.clock.frequency_sets(), 0);
}

/// Standing back after slewing leaves the learned rate in the kernel, not
/// the last correction with its phase part (up to ±500 ppm) that a chronyd
/// with no drift file and no reachable source would keep for its own; but
/// never over a frequency the other daemon has already set.
#[test]
fn discipline_settles_at_the_learned_rate_when_it_stands_back() {
    let rig = Rig::with_host(0x7, 0, 50.0, 0);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    // 100 ms off: slewed at the clamp.
    rig.clock.set_offset_ns(-100_000_000);
    let t = agent.tick(Duration::ZERO).unwrap();
    assert!(
        matches!(t.clock, Some(ClockDecision::Slewed { .. })),
        "{t:?}"
    );
    let slewed = rig.clock.frequency();
    let learned = agent.servo.frequency_ppm();
    assert!(
        (slewed - learned).abs() > 100.0,
        "slew {slewed} ppm, learned {learned} ppm"
    );
    rig.clock.set_disciplined_by(Some("chronyd (pid 193)"));
    rig.advance(Duration::from_secs(15));
    agent.tick(Duration::from_secs(15)).unwrap();
    assert_eq!(
        rig.clock.frequency(),
        learned,
        "settled at the learned rate"
    );
    assert_eq!(agent.snapshot().clock.frequency_ppm, Some(learned));
    let sets = rig.clock.frequency_sets();
    rig.advance(Duration::from_secs(15));
    agent.tick(Duration::from_secs(30)).unwrap();
    assert_eq!(rig.clock.frequency_sets(), sets, "settled once");

    // Back to slewing; this time chronyd sets its own frequency first.
    rig.clock.set_disciplined_by(None);
    rig.clock.set_offset_ns(-100_000_000);
    rig.advance(Duration::from_secs(15));
    agent.tick(Duration::from_secs(45)).unwrap();
    rig.clock.clone().set_frequency_ppm(-12.5).unwrap();
    rig.clock.set_disciplined_by(Some("chronyd (pid 300)"));
    rig.advance(Duration::from_secs(15));
    agent.tick(Duration::from_secs(60)).unwrap();
    assert_eq!(rig.clock.frequency(), -12.5, "chronyd's own frequency kept");
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
fn leaving_discipline_keeps_the_learned_rate_only() {
    let rig = Rig::with_host(0x7, 0, 50.0, 0);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    sample_for(&rig, &mut agent, 20);
    let learned = agent.snapshot().clock.learned_frequency_ppm.unwrap();
    agent.reconfigure(agent_config());
    assert_eq!(rig.clock.frequency_ppm().unwrap(), learned);
}
