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
mod report;
mod world;

pub use agent::{Agent, AgentConfig, AgentError, State};
pub use discipline::{ClockMode, ClockPolicy, Servo, DEFAULT_STEP_THRESHOLD, MAX_FREQUENCY_PPM};
pub use drift::{DriftPoint, DriftTracker};
pub use report::{
    fmt_bound, fmt_ns, ClockDecision, ClockReport, CommandCounts, CommandRecord, Handled, Outcome,
    Snapshot, StepCause, StepRecord, Tick,
};
pub use world::{ClockError, GuestClock, Power, PowerAction, PowerError};
