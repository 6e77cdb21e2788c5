//! The clock policy over many samples.

use std::time::Duration;

use vmd_sim::SimBar;
use vmmci_protocol::NANOS_PER_SEC;

use crate::agent::test_rig::*;
use crate::agent::*;
use crate::discipline::*;
use crate::fakes::{FakeGuestClock, RecordingPower};
use crate::rate::{Rate, NOMINAL_TICK_US};
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

/// Run the agent from `*now` for `seconds` of host time, ticking when it
/// asks to (as the daemon does); what each sample decided, with its offset.
fn run_for(
    rig: &Rig,
    agent: &mut Agent<SimBar, FakeGuestClock, RecordingPower>,
    now: &mut Duration,
    seconds: u64,
) -> Vec<(i64, Option<ClockDecision>)> {
    let end = *now + Duration::from_secs(seconds);
    let mut seen = Vec::new();
    while *now < end {
        let t = agent.tick(*now).unwrap();
        if let Some(p) = t.sampled {
            seen.push((p.offset_ns, t.clock));
        }
        let next = agent
            .next_deadline(*now)
            .max(*now + Duration::from_millis(1));
        rig.advance(next - *now);
        *now = next;
    }
    seen
}

fn offsets(seen: &[(i64, Option<ClockDecision>)]) -> Vec<i64> {
    seen.iter().map(|(o, _)| *o).collect()
}

/// The last decision of a run.
fn decide_after(
    rig: &Rig,
    agent: &mut Agent<SimBar, FakeGuestClock, RecordingPower>,
    now: &mut Duration,
    seconds: u64,
) -> Option<ClockDecision> {
    run_for(rig, agent, now, seconds).pop().and_then(|(_, d)| d)
}

#[test]
fn discipline_learns_a_50_ppm_host_where_step_on_request_drifts() {
    // 20 minutes with the host 50 ppm fast and ±20 µs of read noise.
    let rig = Rig::with_host(0x7, 0, 50.0, 20_000);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    let mut now = Duration::ZERO;
    let first = run_for(&rig, &mut agent, &mut now, 600);
    let late = offsets(&run_for(&rig, &mut agent, &mut now, 600));
    assert!(
        late.iter().all(|o| o.abs() < 150_000),
        "held within 150 µs after 10 min: {late:?}"
    );
    let snap = agent.snapshot();
    let learned = snap.clock.learned_frequency_ppm.unwrap();
    assert!((learned - 50.0).abs() < 2.0, "learned {learned} ppm");
    assert_eq!(snap.clock.slews as usize, first.len() + late.len());
    assert!(rig.clock.steps().is_empty(), "no step for a rate error");
    assert!(snap.clock.last_decision.unwrap().starts_with("slewing"));
    assert!(snap.clock.locked_since_ns.is_some(), "locked");
    assert_eq!(
        snap.sample_interval,
        Duration::from_secs(15),
        "slower once locked"
    );
    assert!(snap.clock.worst_hour_ns.unwrap().abs() < 1_000_000);

    // The old driver's policy on the same host: 50 µs more every second.
    let rig = Rig::with_host(0x7, 0, 50.0, 20_000);
    let mut agent = with_mode(&rig, ClockMode::StepOnRequest);
    let mut now = Duration::ZERO;
    let last = *offsets(&run_for(&rig, &mut agent, &mut now, 1200))
        .last()
        .unwrap();
    assert!(
        (58_000_000..=60_000_000).contains(&last),
        "drifted {last} ns"
    );
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
    let mut now = Duration::from_secs(2);
    rig.advance(Duration::from_secs(1));
    let d = decide_after(&rig, &mut agent, &mut now, 15);
    assert!(matches!(d, Some(ClockDecision::Slewed { .. })), "{d:?}");
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
    let mut now = Duration::ZERO;
    let mut decide = |agent: &mut Agent<_, _, _>, _at: u64| {
        rig.advance(Duration::from_secs(15));
        now += Duration::from_secs(15);
        decide_after(&rig, agent, &mut now, 15)
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
/// the last correction with its phase part (up to ±10 %) that a chronyd
/// with no drift file and no reachable source would keep for its own; but
/// never over a frequency the other daemon has already set.
#[test]
fn discipline_settles_at_the_learned_rate_when_it_stands_back() {
    let rig = Rig::with_host(0x7, 0, 50.0, 0);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    let mut now = Duration::ZERO;
    run_for(&rig, &mut agent, &mut now, 60);
    // 100 ms off, after the start: slewed hard.
    rig.clock.set_offset_ns(-100_000_000);
    let seen = loop {
        let seen = run_for(&rig, &mut agent, &mut now, 1);
        if !seen.is_empty() {
            break seen;
        }
    };
    assert!(
        matches!(seen[0].1, Some(ClockDecision::Slewed { .. })),
        "{seen:?}"
    );
    let slewed = rig.clock.frequency();
    let learned = agent.servo.rate_ppm();
    assert!(
        (slewed - learned).abs() > 100.0,
        "slew {slewed} ppm, learned {learned} ppm"
    );
    rig.clock.set_disciplined_by(Some("chronyd (pid 193)"));
    run_for(&rig, &mut agent, &mut now, 2);
    assert_eq!(
        rig.clock.frequency(),
        learned,
        "settled at the learned rate"
    );
    assert_eq!(agent.snapshot().clock.frequency_ppm, Some(learned));
    let sets = rig.clock.frequency_sets();
    run_for(&rig, &mut agent, &mut now, 30);
    assert_eq!(rig.clock.frequency_sets(), sets, "settled once");

    // Back to slewing; this time chronyd sets its own frequency first.
    rig.clock.set_disciplined_by(None);
    rig.clock.set_offset_ns(-100_000_000);
    run_for(&rig, &mut agent, &mut now, 1);
    rig.clock.clone().set_rate(Rate::split(-12.5)).unwrap();
    rig.clock.set_disciplined_by(Some("chronyd (pid 300)"));
    run_for(&rig, &mut agent, &mut now, 15);
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
    run_for(&rig, &mut agent, &mut Duration::ZERO.clone(), 300);
    let learned = agent.snapshot().clock.learned_frequency_ppm.unwrap();
    assert!(agent.snapshot().clock.locked_since_ns.is_some());
    let mut config = agent_config();
    config.clock.mode = ClockMode::StepOnRequest;
    agent.reconfigure(config);
    assert_eq!(rig.clock.frequency(), learned);
    assert_eq!(
        agent.snapshot().clock.locked_since_ns,
        None,
        "no lock shown"
    );
}

#[test]
fn discipline_steps_an_offset_beyond_a_millisecond_as_it_starts_then_slews() {
    for (start, stepped) in [(50_000_000, true), (-120_000_000, true), (400_000, false)] {
        let rig = Rig::new(0x7, start);
        let mut agent = with_mode(&rig, ClockMode::Discipline);
        let mut now = Duration::ZERO;
        let seen = run_for(&rig, &mut agent, &mut now, 30);
        let first = seen[0].1.clone();
        assert_eq!(
            matches!(first, Some(ClockDecision::SteppedAtStart(_))),
            stepped,
            "{start}: {first:?}"
        );
        assert!(rig.clock.offset_ns().abs() < 1_000_000, "{start}: {seen:?}");
        // A later 50 ms jump is slewed through the tick, not stepped.
        let steps = rig.clock.steps().len();
        rig.clock.set_offset_ns(50_000_000);
        let seen = run_for(&rig, &mut agent, &mut now, 30);
        assert_eq!(rig.clock.steps().len(), steps, "{start}: {seen:?}");
        assert!(rig.clock.offset_ns().abs() < 1_000_000, "{start}: {seen:?}");
    }
}

/// A guest oscillator 2 % off (a clock source without kvm-clock): the
/// frequency alone cannot follow it; tick and frequency together can,
/// with no step once the servo holds.
#[test]
fn discipline_follows_a_clock_2_percent_off_through_the_tick() {
    let rig = Rig::with_host(0x7, 0, 20_000.0, 0);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    let mut now = Duration::ZERO;
    run_for(&rig, &mut agent, &mut now, 120);
    let steps = rig.clock.steps().len();
    let late = offsets(&run_for(&rig, &mut agent, &mut now, 600));
    assert_eq!(
        rig.clock.steps().len(),
        steps,
        "no step after lock: {late:?}"
    );
    assert!(late.iter().all(|o| o.abs() < 1_000_000), "{late:?}");
    let rate = rig.clock.kernel_rate();
    assert!((rate.total_ppm() - 20_000.0).abs() < 5.0, "{rate:?}");
    assert_eq!(rate.tick_us, NOMINAL_TICK_US + 200, "{rate:?}");
    assert_eq!(agent.snapshot().clock.tick_us, Some(rate.tick_us));
    // Handed over (exit): the tick the kernel had, the frequency its most.
    agent.exit();
    assert_eq!(rig.clock.kernel_rate().tick_us, NOMINAL_TICK_US);
    assert_eq!(
        rig.clock.kernel_rate().frequency_ppm,
        crate::MAX_FREQUENCY_PPM
    );
}

/// A host clock set back 40 s sends no SYNCRTC; `discipline` follows it at
/// its next sample, locked or not.
#[test]
fn discipline_follows_a_host_clock_set_back_at_the_next_sample() {
    let rig = Rig::new(0x7, 0);
    let mut agent = with_mode(&rig, ClockMode::Discipline);
    let mut now = Duration::ZERO;
    run_for(&rig, &mut agent, &mut now, 120);
    assert!(agent.snapshot().clock.locked_since_ns.is_some());
    rig.vmd().jump_host_clock(-40 * NANOS_PER_SEC);
    let seen = run_for(&rig, &mut agent, &mut now, 16);
    assert!(
        matches!(seen[0].1, Some(ClockDecision::Stepped(_))),
        "the first sample steps: {seen:?}"
    );
    assert!((rig.clock.offset_ns() + 40 * NANOS_PER_SEC).abs() < 1_000_000);
}
