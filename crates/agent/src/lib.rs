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
mod rate;
mod report;
mod servo;
mod world;

pub use agent::{Agent, AgentConfig, AgentError, State};
pub use discipline::{ClockMode, ClockPolicy, DEFAULT_STEP_THRESHOLD};
pub use drift::{DriftPoint, DriftTracker};
pub use rate::{Rate, MAX_FREQUENCY_PPM, MAX_RATE_PPM, MAX_TICK_US, MIN_TICK_US, NOMINAL_TICK_US};
pub use report::{
    fmt_bound, fmt_ns, ClockDecision, ClockReport, CommandCounts, CommandRecord, Handled, Outcome,
    Snapshot, StepCause, StepRecord, Tick,
};
pub use servo::{Servo, FAST_INTERVAL, STARTUP_STEP_NS};
pub use world::{ClockError, GuestClock, Power, PowerAction, PowerError};
