//! The vmmci agent: everything the OpenBSD guest driver does for vmd, as a
//! state machine over a [`RegisterIo`] device, a [`GuestClock`] and a
//! [`Power`] switch. It does no I/O of its own and never sleeps: the daemon
//! calls [`Agent::tick`] every poll interval with the monotonic time, tests
//! call it with a fake one.
//!
//! [`RegisterIo`]: vmmci_transport::RegisterIo

mod agent;
mod discipline;
mod drift;
pub mod fakes;
mod world;

pub use agent::{
    fmt_bound, fmt_ns, Agent, AgentConfig, AgentError, ClockDecision, ClockReport, CommandCounts,
    CommandRecord, Handled, Outcome, Snapshot, State, StepCause, StepRecord, Tick,
};
pub use discipline::{ClockMode, ClockPolicy, Servo, DEFAULT_STEP_THRESHOLD, MAX_FREQUENCY_PPM};
pub use drift::{DriftPoint, DriftTracker};
pub use world::{ClockError, GuestClock, Power, PowerAction, PowerError};
