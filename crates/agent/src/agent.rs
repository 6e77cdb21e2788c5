//! The agent: its state, the handshake and `tick`, which runs the rest
//! (`commands`: COMMAND and the power path; `sample`: host time samples;
//! `policy`: what a sample does to the clock; records in `crate::report`).

mod commands;
mod policy;
mod sample;

use std::time::Duration;

use tracing::{debug, info, warn};
use vmmci_protocol::{status, Command, Features, HostTimeError, Register};
use vmmci_transport::{RegisterIo, TransportError};

use crate::discipline::{ClockMode, ClockPolicy};
use crate::drift::{DriftPoint, DriftTracker, WorstWindow};
use crate::report::{
    fmt_ns, ClockReport, CommandCounts, CommandRecord, Snapshot, StepRecord, Tick,
};
use crate::servo::Servo;
use crate::world::{ClockError, GuestClock, Power};
use commands::{is_syncrtc, PendingPower};

/// Tunables. The defaults keep vmd's 3 s ACK deadline with a wide margin.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// How often COMMAND is read (the guest gets no interrupt for it).
    pub poll_interval: Duration,
    /// How often a drift sample is taken.
    pub sample_interval: Duration,
    /// Reads per precise sample; the one with the smallest round trip wins.
    pub sample_tries: u32,
    /// Drift points kept in the history.
    pub history: usize,
    /// How long after the ACK of a power command the agent calls sync(2) if
    /// the guest is still up: data reaches the disk even if the host gives
    /// up early (`rcctl stop vmd` kills after about 30 s).
    pub grace: Duration,
    /// How long after the ACK the agent forces the reboot or power-off:
    /// shortly before vmd's long timeout (120 s) ends the VM, so a service
    /// that needs a minute to stop still stops cleanly.
    pub force_after: Duration,
    /// Polls a failed SYNCRTC step is tried again for.
    pub step_retries: u32,
    /// No real host clock is earlier than this (Unix seconds): the agent's
    /// build time.
    pub not_before_sec: u32,
    /// What periodic samples do to the clock.
    pub clock: ClockPolicy,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            poll_interval: Duration::from_millis(250),
            sample_interval: Duration::from_secs(15),
            sample_tries: 5,
            history: 32,
            grace: Duration::from_secs(25),
            force_after: Duration::from_secs(110),
            step_retries: 4,
            not_before_sec: 1_700_000_000,
            clock: ClockPolicy::default(),
        }
    }
}

/// Where the agent is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not yet through the handshake.
    Starting,
    /// DRIVER_OK set; polling.
    Running,
    /// A reboot is under way (REBOOT handled).
    Rebooting,
    /// A power-off is under way (SHUTDOWN handled).
    PoweringOff,
    /// Status written back to 0 on request (`release_on_exit`); the agent
    /// has let go of the device and vmd refuses stops.
    Released,
    /// The agent exited and left DRIVER_OK set, as the OpenBSD driver
    /// does: a stop posted now stays pending for the next agent.
    Exited,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Rebooting => "rebooting",
            State::PoweringOff => "powering-off",
            State::Released => "released",
            State::Exited => "exited",
        }
    }
}

/// Why the agent could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(
        "device reads all ones ({0:#x}): I/O decode is off or the device is gone; \
         check `lspci -v` and the device's 'enable' file"
    )]
    AllOnes(u32),
    #[error("no usable host time after {tries} tries: {last}")]
    BadHostTime { tries: u32, last: HostTimeError },
    #[error("the guest clock went backwards during every sample")]
    ClockUnordered,
    #[error("the host time snapshot does not refresh (same value for {span_ms} ms of guest time): device stuck")]
    StaleSnapshot { span_ms: i64 },
    #[error("host time reads disagree by {spread} within one sample: junk from the device")]
    Inconsistent { spread: String },
    #[error(transparent)]
    Clock(#[from] ClockError),
}

/// The agent. `B` reaches the device, `C` is the guest clock, `P` its power.
pub struct Agent<B, C, P> {
    bar: B,
    clock: C,
    power: P,
    config: AgentConfig,
    state: State,
    offered: Features,
    features: Features,
    /// The COMMAND value already handled; vmd leaves a command latched until
    /// it changes, so the same value must not be acted on twice.
    latched: Option<u32>,
    /// The last non-command value logged, so junk is logged once.
    last_unknown: Option<u32>,
    last_command: Option<CommandRecord>,
    last_step: Option<StepRecord>,
    drift: DriftTracker,
    next_sample: Duration,
    pending_power: Option<PendingPower>,
    polls: u64,
    last_sample_error: Option<String>,
    /// The worst offset of the last hour.
    worst: WorstWindow,
    servo: Servo,
    /// The tick the kernel had when the agent started: put back when the
    /// agent hands the clock over (a daemon that comes later expects it).
    found_tick_us: i64,
    /// Polls left to retry a SYNCRTC step that failed.
    step_retries_left: u32,
    clock_report: ClockReport,
    commands: CommandCounts,
    /// A time daemon the agent feeds (chronyd through its refclock socket).
    fed_daemon: Option<String>,
    /// How often to sample while that daemon takes the samples.
    fed_sample_interval: Option<Duration>,
    /// What the kernel's sync flag is taken to say (`discipline`).
    sync_flag: policy::SyncFlag,
    /// The kernel's rate holds the agent's last slew (`discipline`).
    slewing: bool,
}

impl<B: RegisterIo, C: GuestClock, P: Power> Agent<B, C, P> {
    pub fn new(bar: B, clock: C, power: P, config: AgentConfig) -> Self {
        let history = config.history;
        let found = clock.rate().unwrap_or_default();
        let servo = Servo::new(found.total_ppm());
        Agent {
            bar,
            clock,
            power,
            config,
            state: State::Starting,
            offered: Features::NONE,
            features: Features::NONE,
            latched: None,
            last_unknown: None,
            last_command: None,
            last_step: None,
            drift: DriftTracker::new(history),
            next_sample: Duration::ZERO,
            pending_power: None,
            polls: 0,
            last_sample_error: None,
            worst: WorstWindow::default(),
            servo,
            found_tick_us: found.tick_us,
            step_retries_left: 0,
            clock_report: ClockReport::default(),
            commands: CommandCounts::default(),
            fed_daemon: None,
            fed_sample_interval: None,
            sync_flag: policy::SyncFlag::default(),
            slewing: false,
        }
    }

    /// A previous instance of the agent, this boot, already handled `raw`
    /// (it was killed after starting the action): do not start it again.
    pub fn with_latch(mut self, raw: Option<u32>) -> Self {
        self.latched = raw.filter(|&r| r != Command::NONE);
        self
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn features(&self) -> Features {
        self.features
    }
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }
    pub fn bar_mut(&mut self) -> &mut B {
        &mut self.bar
    }
    pub fn clock(&self) -> &C {
        &self.clock
    }
    pub fn power(&self) -> &P {
        &self.power
    }
    pub fn power_mut(&mut self) -> &mut P {
        &mut self.power
    }

    /// New tunables (a reloaded config). The next sample is due at once so
    /// a new sample interval takes effect now; the history is kept.
    pub fn reconfigure(&mut self, config: AgentConfig) {
        let was = self.config.clock.mode == ClockMode::Discipline;
        let will = config.clock.mode == ClockMode::Discipline;
        if was && !will {
            // Leaving `discipline`: keep the learned rate, drop the part
            // that was removing the last offset.
            self.hand_over_clock();
            self.clock_report.locked_since_ns = None;
        } else if will && !was {
            // Starting it: from the kernel's correction now, and with the
            // steps a start allows.
            self.servo = Servo::new(self.clock.rate().unwrap_or_default().total_ppm());
        }
        self.config = config;
        self.next_sample = Duration::ZERO;
    }
    /// A time daemon takes this agent's samples (chronyd through its SOCK
    /// refclock): it disciplines the clock, so `discipline` stands back even
    /// when that daemon cannot be seen otherwise.
    pub fn set_fed_daemon(&mut self, by: Option<String>) {
        self.fed_daemon = by;
    }

    /// Sample this often while a time daemon takes the samples (chrony
    /// wants several per poll of its refclock); `None`: the configured
    /// interval. A change takes effect with a sample at the next tick.
    pub fn set_fed_sample_interval(&mut self, every: Option<Duration>) {
        if every != self.fed_sample_interval {
            self.fed_sample_interval = every;
            self.next_sample = Duration::ZERO;
        }
    }

    /// The sample interval in effect: the fed daemon's, or while
    /// `discipline` has the clock, fast until its servo locks.
    pub fn sample_interval(&self) -> Duration {
        if let Some(fed) = self.fed_sample_interval {
            return fed;
        }
        let configured = self.config.sample_interval;
        if self.config.clock.mode == ClockMode::Discipline
            && self.clock_report.disciplined_by.is_none()
        {
            return self.servo.interval(configured);
        }
        configured
    }
    pub fn latched(&self) -> Option<u32> {
        self.latched
    }

    /// The OpenBSD driver's handshake: status 0, ACKNOWLEDGE, DRIVER, read
    /// the offer, accept what we know of it, DRIVER_OK (bits OR-ed).
    ///
    /// When DRIVER_OK is already set (an agent restarted, upgraded, or
    /// redoing the handshake after a device error), it is never cleared:
    /// vmd refuses a stop without it and ends the VM at once. Only the
    /// features are negotiated again, then DRIVER_OK is written once more.
    pub fn handshake(&mut self) -> Result<Features, AgentError> {
        let current = self.bar.read(Register::DeviceStatus)? as u8;
        let claimed = current & status::DRIVER_OK != 0 && current & status::FAILED == 0;
        let mut s = status::ACKNOWLEDGE | status::DRIVER;
        if !claimed {
            self.write(Register::DeviceStatus, status::RESET.into())?;
            self.write(Register::DeviceStatus, status::ACKNOWLEDGE.into())?;
            self.write(Register::DeviceStatus, s.into())?;
        }
        let offered = self.bar.read(Register::DeviceFeatures)?;
        if offered == u32::MAX {
            return Err(AgentError::AllOnes(offered));
        }
        self.offered = Features(offered);
        self.features = self.offered.intersection(Features::SUPPORTED);
        self.write(Register::GuestFeatures, self.features.0)?;
        s |= status::DRIVER_OK;
        self.write(Register::DeviceStatus, s.into())?;
        // A handshake redone after a device error during a stop does not
        // make the agent forget the stop.
        if self.pending_power.is_none() {
            self.state = State::Running;
        }
        info!(offered = %self.offered, accepted = %self.features, "vmmci: DRIVER_OK");
        Ok(self.features)
    }

    /// Let go of the device: status back to 0. vmd then refuses
    /// `vmctl stop` for this guest and ends it at once, with no shutdown.
    /// Only on request (`release_on_exit`): the OpenBSD driver never clears
    /// DRIVER_OK, and keeping it lets the next agent acknowledge a stop
    /// posted while none ran.
    pub fn release(&mut self) -> Result<(), AgentError> {
        self.hand_over_clock();
        self.write(Register::DeviceStatus, status::RESET.into())?;
        self.state = State::Released;
        Ok(())
    }

    /// The agent is leaving and keeps DRIVER_OK (the default).
    pub fn exit(&mut self) {
        self.hand_over_clock();
        self.state = State::Exited;
    }

    /// One round of work at monotonic time `now`: force an overdue power
    /// action, handle COMMAND, take a drift sample when one is due.
    pub fn tick(&mut self, now: Duration) -> Result<Tick, AgentError> {
        let mut tick = Tick {
            synced: self.sync_if_due(now),
            forced: self.force_if_overdue(now),
            ..Tick::default()
        };
        tick.retried = self.retry_step();
        tick.handled = self.poll_command(now)?;
        if is_syncrtc(tick.handled.as_ref()) {
            // A stop may have come during the clock work: look now, not a
            // poll later.
            if let Some(next) = self.poll_command(now)? {
                tick.handled = Some(next);
            }
        }
        if now >= self.next_sample {
            match self.sample() {
                Ok(s) => {
                    let point = DriftPoint::from(&s);
                    self.drift.record(point);
                    self.worst.record(now, point.offset_ns);
                    self.last_sample_error = None;
                    debug!(offset = %fmt_ns(point.offset_ns), rtt = %fmt_ns(point.round_trip_ns), "drift sample");
                    tick.sampled = Some(point);
                    tick.clock = self.apply_policy(&s, now);
                }
                Err(AgentError::Transport(e)) => return Err(AgentError::Transport(e)),
                Err(e) => {
                    let text = e.to_string();
                    if self.last_sample_error.as_deref() != Some(text.as_str()) {
                        warn!("drift sample failed: {text}");
                    }
                    self.last_sample_error = Some(text);
                }
            }
            // After the policy: a servo that just locked samples slower.
            self.next_sample = now + self.sample_interval();
        }
        Ok(tick)
    }

    /// Monotonic time at which the next tick has work to do.
    pub fn next_deadline(&self, now: Duration) -> Duration {
        (now + self.config.poll_interval).min(self.next_sample.max(now))
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.state,
            features_offered: self.offered,
            features: self.features,
            poll_interval: self.config.poll_interval,
            sample_interval: self.sample_interval(),
            last_command: self.last_command.clone(),
            last_drift: self.drift.last().copied(),
            drift_min_ns: self.drift.min_offset_ns(),
            drift_max_ns: self.drift.max_offset_ns(),
            drift_samples: self.drift.count(),
            drift_history: self.drift.history().copied().collect(),
            last_step: self.last_step,
            latched: self.latched,
            polls: self.polls,
            last_sample_error: self.last_sample_error.clone(),
            clock: ClockReport {
                mode: self.config.clock.mode,
                step_threshold_ns: duration_ns(self.config.clock.step_threshold),
                rate_error_ppm: self.servo.rate_error_ppm(),
                worst_hour_ns: self.worst.worst(),
                ..self.clock_report.clone()
            },
            commands: self.commands,
        }
    }

    fn write(&mut self, reg: Register, value: u32) -> Result<(), AgentError> {
        self.bar.write(reg, value)?;
        Ok(())
    }
}

pub(crate) fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod test_rig;
#[cfg(test)]
mod tests;
