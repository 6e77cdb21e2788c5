//! Host time samples, and the junk they refuse to step to.

use std::time::Duration;

use vmd_sim::{ManualClock, SimBar};
use vmmci_protocol::{Command, Register, NANOS_PER_SEC};
use vmmci_transport::{RegisterIo, TransportError};

use crate::agent::test_rig::*;
use crate::agent::*;
use crate::fakes::{FakeGuestClock, RecordingPower};
use crate::report::*;
use crate::world::GuestClock;

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

    /// Each read takes `d` of the host's time.
    fn taking(self, host: &ManualClock, d: Duration) -> Self {
        BadTime {
            read_time: Some((host.clone(), d)),
            ..self
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

/// A guest 3 s behind the host, and a device over the simulator whose
/// time registers hold `sec` and `usec` where given.
fn bad_time(sec: Option<u32>, usec: Option<u32>) -> (Rig, BadTime<SimBar>) {
    let rig = Rig::new(0x7, -3 * NANOS_PER_SEC);
    let bar = BadTime::new(SimBar::new(rig.vmd.clone()), sec, usec);
    (rig, bar)
}

/// An agent over `bar`, and what it made of a SYNCRTC.
fn syncrtc_over<B: RegisterIo>(
    rig: &Rig,
    bar: B,
) -> (Agent<B, FakeGuestClock, RecordingPower>, Handled) {
    let mut agent = agent_over(rig, bar);
    assert!(rig.vmd().request_syncrtc());
    let handled = agent.tick(Duration::ZERO).unwrap().handled.unwrap();
    (agent, handled)
}

/// Why the step was refused (it must have been).
fn refusal(handled: &Handled) -> &str {
    match &handled.outcome {
        Outcome::StepRefused(why) => why,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn syncrtc_never_steps_to_nonsense() {
    for (sec, usec, why) in [
        (Some(0), None, "reads 0"),
        (None, Some(1_000_000), "out of range"),
        (Some(12), None, "before this agent was built"),
    ] {
        let (rig, bar) = bad_time(sec, usec);
        let (_, handled) = syncrtc_over(&rig, bar);
        let text = refusal(&handled);
        assert!(text.contains(why), "{text}");
        assert!(handled.acked, "acknowledged all the same");
        assert!(rig.clock.steps().is_empty(), "{why}: clock changed");
        assert_eq!(rig.vmd().pending_command(), Command::NONE);
    }
}

#[test]
fn a_snapshot_that_never_refreshes_is_refused() {
    let now = (HOST_START_NS / NANOS_PER_SEC) as u32;
    let (rig, bar) = bad_time(Some(now), Some(250_000));
    let bar = bar.taking(&rig.host, Duration::from_millis(1));
    let (_, handled) = syncrtc_over(&rig, bar);
    let why = refusal(&handled);
    assert!(why.contains("does not refresh"), "{why}");
    assert!(rig.clock.steps().is_empty());
}

#[test]
fn tries_that_disagree_are_junk_and_not_stepped_to() {
    let now = (HOST_START_NS / NANOS_PER_SEC) as u32;
    let (rig, mut bar) = bad_time(None, None);
    // One try says the host is 2 minutes ahead of the others.
    bar.secs = vec![now, now, now + 120, now, now];
    let (_, handled) = syncrtc_over(&rig, bar);
    let why = refusal(&handled);
    assert!(why.contains("disagree"), "{why}");
    assert!(rig.clock.steps().is_empty());
    assert!(handled.acked, "acknowledged all the same");
}

#[test]
fn reads_so_slow_the_bound_is_useless_are_not_stepped_to() {
    let (rig, bar) = bad_time(None, None);
    let bar = bar.taking(&rig.host, Duration::from_millis(1500));
    let (_, handled) = syncrtc_over(&rig, bar);
    let why = refusal(&handled);
    assert!(why.contains("too uncertain"), "{why}");
}

#[test]
fn slow_reads_of_100ms_still_step_with_an_honest_bound() {
    let (rig, bar) = bad_time(None, None);
    let bar = bar.taking(&rig.host, Duration::from_millis(100));
    let (agent, handled) = syncrtc_over(&rig, bar);
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
