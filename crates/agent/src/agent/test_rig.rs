//! The agent against the vmd simulator, with a fake guest clock and a
//! recording power switch: what every test of the agent starts from.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmd_sim::{ManualClock, SimBar, Vmd, VmdConfig};
use vmmci_protocol::NANOS_PER_SEC;
use vmmci_transport::RegisterIo;

use crate::agent::*;
use crate::fakes::{FakeGuestClock, PowerCall, RecordingPower};

pub(crate) const HOST_START_NS: i64 = 1_900_000_000 * NANOS_PER_SEC;

/// The defaults, for an agent built before the simulated host's time, with
/// the clock policy that steps only when asked: the tests of commands and
/// samples count steps and register accesses, which `discipline`'s own
/// steps and slews (tested on their own in `policy_tests`) would add to.
pub(crate) fn agent_config() -> AgentConfig {
    AgentConfig {
        not_before_sec: 1_800_000_000,
        clock: ClockPolicy {
            mode: ClockMode::StepOnRequest,
            ..ClockPolicy::default()
        },
        ..AgentConfig::default()
    }
}

pub(crate) struct Rig {
    pub(crate) host: ManualClock,
    pub(crate) vmd: Arc<Mutex<Vmd>>,
    pub(crate) clock: FakeGuestClock,
    pub(crate) power: RecordingPower,
}

impl Rig {
    pub(crate) fn new(features: u32, guest_offset_ns: i64) -> Self {
        Rig::with_host(features, guest_offset_ns, 0.0, 0)
    }

    /// The simulated host's clock runs `ppm` fast against the guest's
    /// oscillator, with ±`jitter_ns` of read noise.
    pub(crate) fn with_host(features: u32, guest_offset_ns: i64, ppm: f64, jitter_ns: i64) -> Self {
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

    /// An agent on the simulator, before its handshake.
    pub(crate) fn agent(&self) -> Agent<SimBar, FakeGuestClock, RecordingPower> {
        Agent::new(
            SimBar::new(self.vmd.clone()),
            self.clock.clone(),
            self.power.clone(),
            agent_config(),
        )
    }

    pub(crate) fn vmd(&self) -> std::sync::MutexGuard<'_, Vmd> {
        self.vmd.lock().unwrap()
    }

    /// Let host time pass and vmd's timers and RTC tick run.
    pub(crate) fn advance(&self, d: Duration) {
        self.host.advance(d);
        self.vmd().poll();
    }

    pub(crate) fn calls(&self) -> Vec<PowerCall> {
        self.power.calls()
    }

    pub(crate) fn assert_no_violations(&self) {
        let vmd = self.vmd();
        assert!(
            vmd.violations().is_empty(),
            "access rule broken: {:?}",
            vmd.violations()
        );
    }
}

pub(crate) fn started(
    features: u32,
    guest_offset_ns: i64,
) -> (Rig, Agent<SimBar, FakeGuestClock, RecordingPower>) {
    let rig = Rig::new(features, guest_offset_ns);
    let mut agent = rig.agent();
    agent.handshake().unwrap();
    (rig, agent)
}

/// An agent over `bar`, through its handshake.
pub(crate) fn agent_over<B: RegisterIo>(
    rig: &Rig,
    bar: B,
) -> Agent<B, FakeGuestClock, RecordingPower> {
    agent_with(rig, bar, agent_config())
}

/// An agent over `bar` with `config`, through its handshake.
pub(crate) fn agent_with<B: RegisterIo>(
    rig: &Rig,
    bar: B,
    config: AgentConfig,
) -> Agent<B, FakeGuestClock, RecordingPower> {
    let mut agent = Agent::new(bar, rig.clock.clone(), rig.power.clone(), config);
    agent.handshake().unwrap();
    agent
}
