//! Harmless stand-ins for the guest's clock and power switch: for tests, the
//! fuzzer and `vmmci simulate`, where nothing may touch the machine. Both
//! are `Send` and cheap to clone; clones share their state, so a test keeps
//! one to look at while the agent owns the other.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::rate::{Rate, MAX_FREQUENCY_PPM, MAX_TICK_US, MIN_TICK_US};
use crate::world::{ClockError, GuestClock, Power, PowerAction, PowerError};

/// A guest wall clock: some base time (a simulated host's, or this
/// machine's) plus an error the agent corrects by stepping, running at a
/// rate correction (tick and frequency, in the kernel's limits) the agent
/// sets when it slews.
#[derive(Clone)]
pub struct FakeGuestClock {
    base: Arc<dyn Fn() -> i64 + Send + Sync>,
    state: Arc<Mutex<ClockState>>,
}

#[derive(Default)]
struct ClockState {
    offset_ns: i64,
    steps: Vec<i64>,
    refuse: bool,
    /// Rate correction in effect since base time `anchor_ns`.
    rate: Rate,
    anchor_ns: Option<i64>,
    freq_sets: u64,
    disciplined_by: Option<String>,
    kernel_synchronised: Option<bool>,
}

impl ClockState {
    /// What the rate correction has added since its anchor.
    fn slewed_ns(&self, base_ns: i64) -> i64 {
        self.anchor_ns.map_or(0, |a| {
            ((base_ns - a) as f64 * self.rate.total_ppm() * 1e-6).round() as i64
        })
    }
}

impl FakeGuestClock {
    /// A clock that reads `base() + offset_ns`.
    pub fn new(base: impl Fn() -> i64 + Send + Sync + 'static, offset_ns: i64) -> Self {
        FakeGuestClock {
            base: Arc::new(base),
            state: Arc::new(Mutex::new(ClockState {
                offset_ns,
                ..ClockState::default()
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Guest − base, ns.
    pub fn offset_ns(&self) -> i64 {
        let base = (self.base)();
        let s = self.state();
        s.offset_ns + s.slewed_ns(base)
    }
    /// Put the clock off by `offset_ns` (as another program setting it would).
    pub fn set_offset_ns(&self, offset_ns: i64) {
        let base = (self.base)();
        let mut s = self.state();
        s.offset_ns = offset_ns;
        if s.anchor_ns.is_some() {
            s.anchor_ns = Some(base);
        }
    }
    /// Every step the agent made, in order.
    pub fn steps(&self) -> Vec<i64> {
        self.state().steps.clone()
    }
    /// Refuse steps from now on, as a clock without CAP_SYS_TIME would.
    pub fn refuse_steps(&self, refuse: bool) {
        self.state().refuse = refuse;
    }
    /// How many times the rate was set.
    pub fn frequency_sets(&self) -> u64 {
        self.state().freq_sets
    }
    /// Pretend another time daemon runs (`None`: none).
    pub fn set_disciplined_by(&self, by: Option<&str>) {
        self.state().disciplined_by = by.map(str::to_string);
    }
    /// Pretend the kernel's STA_UNSYNC is clear (`Some(true)`) or set.
    pub fn set_kernel_synchronised(&self, synchronised: Option<bool>) {
        self.state().kernel_synchronised = synchronised;
    }
    /// The whole rate correction in effect, ppm.
    pub fn frequency(&self) -> f64 {
        self.state().rate.total_ppm()
    }
    /// The rate correction in effect.
    pub fn kernel_rate(&self) -> Rate {
        self.state().rate
    }
}

impl GuestClock for FakeGuestClock {
    fn now_ns(&self) -> i64 {
        let base = (self.base)();
        let s = self.state();
        base + s.offset_ns + s.slewed_ns(base)
    }
    fn step(&mut self, delta_ns: i64) -> Result<(), ClockError> {
        let mut s = self.state();
        if s.refuse {
            return Err(ClockError::NotPermitted("EPERM (fake clock)".into()));
        }
        s.offset_ns += delta_ns;
        s.steps.push(delta_ns);
        Ok(())
    }
    fn rate(&self) -> Result<Rate, ClockError> {
        Ok(self.state().rate)
    }
    /// As `adjtimex(2)`: EINVAL for a tick or frequency out of range.
    fn set_rate(&mut self, rate: Rate) -> Result<(), ClockError> {
        let base = (self.base)();
        let mut s = self.state();
        if s.refuse {
            return Err(ClockError::NotPermitted("EPERM (fake clock)".into()));
        }
        if !(MIN_TICK_US..=MAX_TICK_US).contains(&rate.tick_us)
            || !rate.frequency_ppm.is_finite()
            || rate.frequency_ppm.abs() > MAX_FREQUENCY_PPM
        {
            return Err(ClockError::Failed(format!("EINVAL (fake clock): {rate:?}")));
        }
        // Fold what the old rate added into the offset, then run at the new.
        s.offset_ns += s.slewed_ns(base);
        s.anchor_ns = Some(base);
        s.rate = rate;
        s.freq_sets += 1;
        Ok(())
    }
    fn disciplined_by(&self) -> Option<String> {
        self.state().disciplined_by.clone()
    }
    fn kernel_synchronised(&self) -> Option<bool> {
        self.state().kernel_synchronised
    }
}

/// What the agent asked of the power switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerCall {
    Begin(PowerAction),
    Sync,
    Force(PowerAction),
}

/// A power switch that records what it is asked and does nothing.
#[derive(Clone, Default)]
pub struct RecordingPower {
    calls: Arc<Mutex<Vec<PowerCall>>>,
    fail_begin: bool,
}

impl RecordingPower {
    /// One whose init system cannot be asked (`begin` fails).
    pub fn failing() -> Self {
        RecordingPower {
            fail_begin: true,
            ..RecordingPower::default()
        }
    }
    pub fn calls(&self) -> Vec<PowerCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn record(&self, call: PowerCall) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }
}

impl Power for RecordingPower {
    fn begin(&mut self, action: PowerAction) -> Result<(), PowerError> {
        self.record(PowerCall::Begin(action));
        if self.fail_begin {
            return Err(PowerError {
                action,
                reason: "no init to ask (fake)".into(),
            });
        }
        Ok(())
    }
    fn sync_disks(&mut self, _wait: std::time::Duration) -> bool {
        self.record(PowerCall::Sync);
        true
    }
    fn force(&mut self, action: PowerAction) -> Result<(), PowerError> {
        self.record(PowerCall::Force(action));
        Ok(())
    }
}
