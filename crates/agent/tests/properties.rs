//! Property tests of the agent against the vmd simulator: random sequences
//! of what the host does (`vmctl stop`, SHUTDOWN, SYNCRTC, host clock
//! jumps, junk in COMMAND, someone setting the guest clock) interleaved with
//! agent ticks at random poll intervals and the occasional power-down
//! signal. Whatever the order:
//!
//! - the simulator records no access-rule violation;
//! - nothing but a command value is ever written to COMMAND (vmd logs no
//!   illegal request), and no write is mistaken for an ACK of something
//!   else;
//! - `Power::begin` runs at most once, and only for a command vmd posted
//!   (REBOOT → reboot, SHUTDOWN → poweroff): never twice for one REBOOT;
//! - the clock is stepped only while handling a SYNCRTC, by the amount the
//!   outcome reports, and leaves the guest within the error bound of host
//!   time; or, in `discipline` (the default), also by a periodic decision
//!   that reports the step;
//! - a posted REBOOT/SHUTDOWN is acknowledged within vmd's 3 s, unless vmd
//!   itself overwrote it with a SYNCRTC first (a vmd quirk: the command is
//!   lost and the ACK timer keeps running);
//! - `tick` fails only once the VM has ended.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use vmd_sim::{EventKind, HostClock, ManualClock, SimBar, VmEnd, Vmd, VmdConfig, VmmciCmd};
use vmmci_agent::fakes::{FakeGuestClock, PowerCall, RecordingPower};
use vmmci_agent::{
    Agent, AgentConfig, ClockDecision, ClockMode, ClockPolicy, GuestClock, Outcome, PowerAction,
};
use vmmci_protocol::{Command, NANOS_PER_SEC};

const HOST_START_NS: i64 = 1_900_000_000 * NANOS_PER_SEC;

/// One thing that happens, on the host or in the guest.
#[derive(Clone, Debug)]
enum Step {
    /// The agent's daemon loop: time passes, then one tick.
    Tick {
        after_ms: u64,
    },
    /// Several ticks at the default 250 ms (long stretches: the grace
    /// period, the 15 s drift samples, vmd's timers).
    Idle {
        ticks: u32,
    },
    VmctlStop,
    RequestShutdown,
    RequestSyncrtc,
    /// Host suspend/resume or an NTP step of the host clock.
    JumpHostClock {
        delta_ms: i64,
    },
    /// Something other than the agent sets the guest clock.
    SetGuestOffset {
        offset_ms: i64,
    },
    /// Junk in COMMAND (never a real command).
    Junk {
        value: u32,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        32 => (0u64..=250).prop_map(|after_ms| Step::Tick { after_ms }),
        8 => (1u32..=40).prop_map(|ticks| Step::Idle { ticks }),
        4 => Just(Step::VmctlStop),
        2 => Just(Step::RequestShutdown),
        8 => Just(Step::RequestSyncrtc),
        8 => prop_oneof![
            -200_000i64..=200_000,
            Just(6_000i64),
            Just(90_000i64),
            Just(-3_600_000i64),
        ]
        .prop_map(|delta_ms| Step::JumpHostClock { delta_ms }),
        4 => (-100_000i64..=100_000).prop_map(|offset_ms| Step::SetGuestOffset { offset_ms }),
        4 => prop_oneof![4u32..=16, Just(u32::MAX), Just(0x102u32), Just(0x1_0002u32), any::<u32>()
            .prop_filter("not a command", |v| *v > 3)]
        .prop_map(|value| Step::Junk { value }),
    ]
}

struct World {
    host: ManualClock,
    vmd: Arc<Mutex<Vmd>>,
    clock: FakeGuestClock,
    power: RecordingPower,
}

impl World {
    fn vmd(&self) -> std::sync::MutexGuard<'_, Vmd> {
        self.vmd.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A posted SHUTDOWN/REBOOT was overwritten before the agent could
/// acknowledge it: by vmd's own SYNCRTC (vmd's quirk: its ACK timer keeps
/// running) or by the test's junk. The guest never saw the stop.
fn stop_overwritten_before_ack(vmd: &Vmd) -> bool {
    let mut pending_stop = false;
    for e in vmd.events() {
        match &e.kind {
            EventKind::Posted {
                cmd: VmmciCmd::Reboot | VmmciCmd::Shutdown,
                ..
            } => pending_stop = true,
            EventKind::Ack { .. } => pending_stop = false,
            EventKind::Posted {
                cmd: VmmciCmd::SyncRtc,
                ..
            }
            | EventKind::RawCommand { .. }
                if pending_stop =>
            {
                return true
            }
            _ => {}
        }
    }
    false
}

fn posted(vmd: &Vmd, cmd: VmmciCmd) -> bool {
    vmd.events()
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Posted { cmd: c, .. } if *c == cmd))
}

fn run(
    features: u32,
    fail_begin: bool,
    mode: ClockMode,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let host = ManualClock::new(HOST_START_NS);
    let vmd = Arc::new(Mutex::new(Vmd::new(
        VmdConfig {
            features,
            ..VmdConfig::default()
        },
        Box::new(host.clone()),
    )));
    let w = World {
        clock: {
            let h = host.clone();
            FakeGuestClock::new(move || h.realtime_ns(), 0)
        },
        power: if fail_begin {
            RecordingPower::failing()
        } else {
            RecordingPower::default()
        },
        host,
        vmd,
    };
    let config = AgentConfig {
        not_before_sec: 1_800_000_000,
        clock: ClockPolicy {
            mode,
            ..ClockPolicy::default()
        },
        ..AgentConfig::default()
    };
    let mut agent = Agent::new(
        SimBar::new(w.vmd.clone()),
        w.clock.clone(),
        w.power.clone(),
        config,
    );
    agent
        .handshake()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut now = Duration::ZERO;

    let mut tick = |agent: &mut Agent<SimBar, FakeGuestClock, RecordingPower>,
                    after: Duration|
     -> Result<(), TestCaseError> {
        w.host.advance(after);
        now += after;
        let steps_before = w.clock.steps().len();
        let result = agent.tick(now);
        let steps = w.clock.steps();
        match result {
            Err(e) => {
                prop_assert!(
                    w.vmd().ended().is_some(),
                    "tick failed while the VM runs: {e}"
                );
                prop_assert_eq!(steps.len(), steps_before);
            }
            Ok(t) => {
                let stepped = &steps[steps_before..];
                match t.handled.as_ref().map(|h| (&h.command, &h.outcome)) {
                    Some((Some(Command::SyncRtc), Outcome::Stepped(s))) => {
                        prop_assert_eq!(stepped, &[s.delta_ns][..]);
                        // The simulator's clock did not move during the
                        // tick: the guest is now on host time.
                        let residual = w.clock.now_ns() - w.vmd().host_now_ns();
                        prop_assert!(
                            residual.abs() <= s.error_bound_ns + 1_000,
                            "guest − host {} ns after a step of {} ± {}",
                            residual,
                            s.delta_ns,
                            s.error_bound_ns
                        );
                    }
                    other => match &t.clock {
                        Some(ClockDecision::Stepped(s) | ClockDecision::SteppedAtStart(s)) => {
                            prop_assert_eq!(mode, ClockMode::Discipline);
                            prop_assert_eq!(stepped, &[s.delta_ns][..]);
                        }
                        _ => prop_assert!(
                            stepped.is_empty(),
                            "clock stepped by {:?} while handling {:?}",
                            stepped,
                            other
                        ),
                    },
                }
                if let Some(h) = &t.handled {
                    if h.command.is_none() {
                        prop_assert!(!h.acked, "junk {:#x} acknowledged", h.raw);
                        prop_assert_eq!(&h.outcome, &Outcome::Ignored);
                    }
                }
            }
        }
        Ok(())
    };

    for s in steps {
        match *s {
            Step::Tick { after_ms } => tick(&mut agent, Duration::from_millis(after_ms))?,
            Step::Idle { ticks } => {
                for _ in 0..ticks {
                    tick(&mut agent, Duration::from_millis(250))?;
                }
            }
            Step::VmctlStop => {
                let _ = w.vmd().vmctl_stop();
            }
            Step::RequestShutdown => {
                let _ = w.vmd().request_shutdown();
            }
            Step::RequestSyncrtc => {
                w.vmd().request_syncrtc();
            }
            Step::JumpHostClock { delta_ms } => {
                w.vmd().jump_host_clock(delta_ms * 1_000_000);
            }
            Step::SetGuestOffset { offset_ms } => w.clock.set_offset_ns(offset_ms * 1_000_000),
            Step::Junk { value } => w.vmd().set_command_raw(value),
        }
        check(&w, mode)?;
    }
    Ok(())
}

/// What must hold after every step.
fn check(w: &World, mode: ClockMode) -> Result<(), TestCaseError> {
    let vmd = w.vmd();
    prop_assert!(
        vmd.violations().is_empty(),
        "access rule broken: {:?}",
        vmd.violations()
    );
    for e in vmd.events() {
        prop_assert!(
            !matches!(e.kind, EventKind::IllegalRequest { .. }),
            "a non-command written to COMMAND: {}",
            e
        );
    }
    let calls = w.power.calls();
    let begins: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            PowerCall::Begin(a) => Some(*a),
            _ => None,
        })
        .collect();
    prop_assert!(
        begins.len() <= 1,
        "begin called {} times: {:?}",
        begins.len(),
        calls
    );
    for a in &begins {
        let cmd = match a {
            PowerAction::Reboot => VmmciCmd::Reboot,
            PowerAction::Poweroff => VmmciCmd::Shutdown,
        };
        prop_assert!(posted(&vmd, cmd), "{a} begun but vmd never posted {cmd}");
    }
    let forces = calls
        .iter()
        .filter(|c| matches!(c, PowerCall::Force(_)))
        .count();
    prop_assert!(forces <= 1, "forced {forces} times: {calls:?}");
    if !w.clock.steps().is_empty() && mode != ClockMode::Discipline {
        prop_assert!(
            posted(&vmd, VmmciCmd::SyncRtc),
            "clock stepped with no SYNCRTC"
        );
    }
    if vmd.ended() == Some(VmEnd::AckTimeout) && vmd.guest_features() & 0x2 != 0 {
        prop_assert!(
            stop_overwritten_before_ack(&vmd),
            "a stop was not acknowledged within 3 s although the agent polls every 250 ms at most:\n{}",
            vmd.events()
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// vmd as it is since 2023: all features.
    #[test]
    fn the_agent_never_does_harm(
        steps in prop::collection::vec(step(), 1..80),
        fail_begin in prop::bool::weighted(0.2),
        discipline in any::<bool>(),
    ) {
        let mode = if discipline { ClockMode::Discipline } else { ClockMode::StepOnRequest };
        run(0x7, fail_begin, mode, &steps)?;
    }

    /// Any offer, including an old vmd without ACK or SYNCRTC and bits
    /// nobody knows.
    #[test]
    fn the_agent_never_does_harm_whatever_is_offered(
        features in prop_oneof![Just(0u32), Just(1u32), Just(3u32), Just(5u32), 0u32..0x10, any::<u32>()
            .prop_filter("all ones means no device", |f| *f != u32::MAX)],
        steps in prop::collection::vec(step(), 1..60),
        discipline in any::<bool>(),
    ) {
        let mode = if discipline { ClockMode::Discipline } else { ClockMode::StepOnRequest };
        run(features, false, mode, &steps)?;
    }
}
