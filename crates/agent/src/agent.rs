//! The agent state machine.

use std::time::Duration;

use tracing::{debug, info, warn};
use vmmci_protocol::{status, Command, Features, HostTime, HostTimeError, Register, TimeSample};
use vmmci_transport::{RegisterIo, TransportError};

use crate::discipline::{ClockMode, ClockPolicy, Servo};
use crate::drift::{DriftPoint, DriftTracker};
use crate::world::{ClockError, GuestClock, Power, PowerAction};

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
    /// How long the init system gets to reboot or power off before the agent
    /// syncs and forces it: well under vmd's long timeout after the ACK
    /// (120 s; 30 s before 2019), and under the 30 s `rcctl stop vmd` waits.
    pub grace: Duration,
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
    /// Status written back to 0; the agent has let go of the device.
    Released,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Rebooting => "rebooting",
            State::PoweringOff => "powering-off",
            State::Released => "released",
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

/// What handling one command led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The init system was asked to reboot / power off.
    PowerStarted(PowerAction),
    /// The init system could not be asked; the agent synced and forced it.
    PowerForced { action: PowerAction, reason: String },
    /// A power command came while one was already under way: acknowledged,
    /// nothing new started.
    AlreadyStopping,
    /// The clock was stepped.
    Stepped(StepRecord),
    /// The clock was already within the sample's error bound.
    AlreadyRight { offset_ns: i64, error_bound_ns: i64 },
    /// Stepping was refused or failed; the clock was not changed.
    StepRefused(String),
    /// Not a command: logged, nothing done, not acknowledged.
    Ignored,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::PowerStarted(a) => write!(f, "{a} started through init"),
            Outcome::PowerForced { action, reason } => write!(f, "{action} forced ({reason})"),
            Outcome::AlreadyStopping => write!(f, "already stopping"),
            Outcome::Stepped(s) => write!(
                f,
                "clock stepped by {} (±{})",
                fmt_ns(s.delta_ns),
                fmt_bound(s.error_bound_ns)
            ),
            Outcome::AlreadyRight {
                offset_ns,
                error_bound_ns,
            } => write!(
                f,
                "clock already right (offset {} within ±{})",
                fmt_ns(*offset_ns),
                fmt_bound(*error_bound_ns)
            ),
            Outcome::StepRefused(why) => write!(f, "clock left alone: {why}"),
            Outcome::Ignored => write!(f, "ignored"),
        }
    }
}

/// Why the clock was stepped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepCause {
    /// The host sent SYNCRTC (or `vmmci sync` asked).
    Request,
    /// `discipline` found an offset beyond the step threshold with no
    /// request: a resume the agent missed, or someone set the clock.
    Periodic,
}

impl StepCause {
    pub fn name(self) -> &'static str {
        match self {
            StepCause::Request => "request",
            StepCause::Periodic => "periodic",
        }
    }
}

/// A step of the guest clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepRecord {
    pub cause: StepCause,
    /// Guest wall time just before the step.
    pub at_ns: i64,
    pub delta_ns: i64,
    pub error_bound_ns: i64,
    /// Offset measured right after the step, if that sample worked.
    pub residual_ns: Option<i64>,
}

/// A command the agent saw and what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    pub raw: u32,
    /// `None` for a value that is not a command.
    pub command: Option<Command>,
    /// Guest wall time it was seen.
    pub at_ns: i64,
    pub acked: bool,
    pub outcome: Outcome,
}

impl CommandRecord {
    pub fn name(&self) -> String {
        match self.command {
            Some(c) => c.name().to_string(),
            None => format!("{:#x}", self.raw),
        }
    }
}

/// A command handled during a tick.
pub type Handled = CommandRecord;

/// What the clock policy did with a periodic sample.
#[derive(Clone, Debug, PartialEq)]
pub enum ClockDecision {
    /// `discipline`: the frequency correction was set to this.
    Slewed { offset_ns: i64, frequency_ppm: f64 },
    /// `discipline`: the offset was beyond the threshold.
    Stepped(StepRecord),
    /// `discipline`: another time daemon has the clock.
    StoodBack { by: String },
    /// `step-on-request`: far off, and no request came (logged once).
    Warned { offset_ns: i64 },
    /// Slewing or stepping failed; the clock is as it was.
    Failed(String),
}

impl std::fmt::Display for ClockDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClockDecision::Slewed {
                offset_ns,
                frequency_ppm,
            } => write!(
                f,
                "slewing: offset {}, frequency {frequency_ppm:+.3} ppm",
                fmt_ns(*offset_ns)
            ),
            ClockDecision::Stepped(s) => write!(
                f,
                "stepped by {} with no SYNCRTC (beyond the step threshold)",
                fmt_ns(s.delta_ns)
            ),
            ClockDecision::StoodBack { by } => {
                write!(f, "standing back: {by} disciplines the clock")
            }
            ClockDecision::Warned { offset_ns } => write!(
                f,
                "clock is off by {} and the host did not ask for a step \
                 (a resume the agent missed?): run `vmmci sync`, or set [clock] mode = \"discipline\"",
                fmt_ns(*offset_ns)
            ),
            ClockDecision::Failed(why) => write!(f, "clock left alone: {why}"),
        }
    }
}

/// Commands seen over the agent's life, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandCounts {
    pub reboot: u64,
    pub shutdown: u64,
    pub syncrtc: u64,
    /// Values that are not commands.
    pub unknown: u64,
}

/// The clock policy's state, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClockReport {
    pub mode: ClockMode,
    pub step_threshold_ns: i64,
    /// The frequency correction the agent last set (`discipline` only).
    pub frequency_ppm: Option<f64>,
    /// The servo's learned rate correction.
    pub learned_frequency_ppm: Option<f64>,
    pub steps_requested: u64,
    pub steps_periodic: u64,
    pub slews: u64,
    /// Who else disciplines the clock, when `discipline` stands back.
    pub disciplined_by: Option<String>,
    pub last_decision: Option<String>,
    /// A condition that needs a person (far off with no request).
    pub warning: Option<String>,
}

/// What one tick did.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    pub handled: Option<Handled>,
    pub sampled: Option<DriftPoint>,
    /// What the clock policy did with that sample.
    pub clock: Option<ClockDecision>,
    /// The orderly power action ran out of time and was forced.
    pub forced: Option<PowerAction>,
}

/// Everything the status report shows, copied out of the agent.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub state: State,
    pub features_offered: Features,
    pub features: Features,
    pub poll_interval: Duration,
    pub sample_interval: Duration,
    pub last_command: Option<CommandRecord>,
    pub last_drift: Option<DriftPoint>,
    pub drift_min_ns: Option<i64>,
    pub drift_max_ns: Option<i64>,
    pub drift_samples: u64,
    pub drift_history: Vec<DriftPoint>,
    pub last_step: Option<StepRecord>,
    pub latched: Option<u32>,
    pub polls: u64,
    pub last_sample_error: Option<String>,
    pub clock: ClockReport,
    pub commands: CommandCounts,
}

struct PendingPower {
    action: PowerAction,
    started: Duration,
    forced: bool,
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
    servo: Servo,
    clock_report: ClockReport,
    commands: CommandCounts,
    /// A time daemon the agent feeds (chronyd through its refclock socket).
    fed_daemon: Option<String>,
}

impl<B: RegisterIo, C: GuestClock, P: Power> Agent<B, C, P> {
    pub fn new(bar: B, clock: C, power: P, config: AgentConfig) -> Self {
        let history = config.history;
        let servo = Servo::new(clock.frequency_ppm().unwrap_or(0.0));
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
            servo,
            clock_report: ClockReport::default(),
            commands: CommandCounts::default(),
            fed_daemon: None,
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
        // Leaving `discipline`: keep the learned rate, drop the part that
        // was removing the last offset.
        if self.config.clock.mode == ClockMode::Discipline
            && config.clock.mode != ClockMode::Discipline
            && self.clock_report.slews > 0
        {
            if let Err(e) = self.clock.set_frequency_ppm(self.servo.frequency_ppm()) {
                warn!("could not settle the clock's frequency: {e}");
            }
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
    pub fn latched(&self) -> Option<u32> {
        self.latched
    }

    /// The OpenBSD driver's handshake: status 0, ACKNOWLEDGE, DRIVER, read
    /// the offer, accept what we know of it, DRIVER_OK (bits OR-ed).
    pub fn handshake(&mut self) -> Result<Features, AgentError> {
        self.write(Register::DeviceStatus, status::RESET.into())?;
        let mut s = status::ACKNOWLEDGE;
        self.write(Register::DeviceStatus, s.into())?;
        s |= status::DRIVER;
        self.write(Register::DeviceStatus, s.into())?;
        let offered = self.bar.read(Register::DeviceFeatures)?;
        if offered == u32::MAX {
            return Err(AgentError::AllOnes(offered));
        }
        self.offered = Features(offered);
        self.features = self.offered.intersection(Features::SUPPORTED);
        self.write(Register::GuestFeatures, self.features.0)?;
        s |= status::DRIVER_OK;
        self.write(Register::DeviceStatus, s.into())?;
        self.state = State::Running;
        info!(offered = %self.offered, accepted = %self.features, "vmmci: DRIVER_OK");
        Ok(self.features)
    }

    /// Let go of the device on a normal exit: status back to 0, as the
    /// OpenBSD driver does on detach. vmd then refuses `vmctl stop` for this
    /// guest (and ends it at once), which is the truth: no driver listens.
    pub fn release(&mut self) -> Result<(), AgentError> {
        self.write(Register::DeviceStatus, status::RESET.into())?;
        self.state = State::Released;
        Ok(())
    }

    /// One round of work at monotonic time `now`: force an overdue power
    /// action, handle COMMAND, take a drift sample when one is due.
    pub fn tick(&mut self, now: Duration) -> Result<Tick, AgentError> {
        let mut tick = Tick {
            forced: self.force_if_overdue(now),
            ..Tick::default()
        };
        tick.handled = self.poll_command(now)?;
        if now >= self.next_sample {
            self.next_sample = now + self.config.sample_interval;
            match self.sample() {
                Ok(s) => {
                    let point = DriftPoint::from(&s);
                    self.drift.record(point);
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
        }
        Ok(tick)
    }

    /// Monotonic time at which the next tick has work to do.
    pub fn next_deadline(&self, now: Duration) -> Duration {
        (now + self.config.poll_interval).min(self.next_sample.max(now))
    }

    fn poll_command(&mut self, now: Duration) -> Result<Option<Handled>, AgentError> {
        let raw = self.bar.read(Register::Command)?;
        self.polls += 1;
        if raw == Command::NONE {
            // The host cleared it (SYNCRTC acknowledged, or a fresh device):
            // the next command is new even if it has the same value.
            self.latched = None;
            self.last_unknown = None;
            return Ok(None);
        }
        if self.latched == Some(raw) {
            return Ok(None);
        }
        let at_ns = self.clock.now_ns();
        let command = match Command::from_raw(raw) {
            Ok(c) => c,
            Err(unknown) => {
                if self.last_unknown == Some(raw) {
                    return Ok(None);
                }
                self.last_unknown = Some(raw);
                self.commands.unknown += 1;
                if raw == u32::MAX {
                    warn!("COMMAND reads all ones: I/O decode off or device gone; ignoring");
                } else {
                    warn!("{unknown} in COMMAND: not acted on, not acknowledged");
                }
                let record = CommandRecord {
                    raw,
                    command: None,
                    at_ns,
                    acked: false,
                    outcome: Outcome::Ignored,
                };
                self.last_command = Some(record.clone());
                return Ok(Some(record));
            }
        };
        let (acked, outcome) = match command {
            // Returned above; kept total so no input can reach a panic.
            Command::None => return Ok(None),
            Command::Reboot => {
                self.commands.reboot += 1;
                self.handle_power(raw, PowerAction::Reboot, now)?
            }
            Command::Shutdown => {
                self.commands.shutdown += 1;
                self.handle_power(raw, PowerAction::Poweroff, now)?
            }
            Command::SyncRtc => {
                self.commands.syncrtc += 1;
                // Step first, then acknowledge: the ACK tells vmd the guest
                // clock is right again.
                let outcome = match self.config.clock.mode {
                    ClockMode::Off => Outcome::StepRefused("[clock] mode is \"off\"".into()),
                    _ => self.step(StepCause::Request),
                };
                let acked = self.ack(raw)?;
                // vmd clears COMMAND on that ACK, so the next SYNCRTC is a
                // new request even before a poll sees NONE. Without ACK it
                // stays posted and must not be handled again.
                self.latched = (!acked).then_some(raw);
                (acked, outcome)
            }
        };
        info!(command = %command, acked, "{outcome}");
        let record = CommandRecord {
            raw,
            command: Some(command),
            at_ns,
            acked,
            outcome,
        };
        self.last_command = Some(record.clone());
        Ok(Some(record))
    }

    fn handle_power(
        &mut self,
        raw: u32,
        action: PowerAction,
        now: Duration,
    ) -> Result<(bool, Outcome), AgentError> {
        // Acknowledge first: vmd kills the VM 3 s after asking otherwise.
        let acked = self.ack(raw)?;
        self.latched = Some(raw);
        if self.pending_power.is_some() {
            return Ok((acked, Outcome::AlreadyStopping));
        }
        self.state = match action {
            PowerAction::Reboot => State::Rebooting,
            PowerAction::Poweroff => State::PoweringOff,
        };
        self.pending_power = Some(PendingPower {
            action,
            started: now,
            forced: false,
        });
        match self.power.begin(action) {
            Ok(()) => Ok((acked, Outcome::PowerStarted(action))),
            Err(e) => {
                warn!("{e}; syncing and forcing {action}");
                let reason = e.reason.clone();
                self.force(action);
                Ok((acked, Outcome::PowerForced { action, reason }))
            }
        }
    }

    fn force_if_overdue(&mut self, now: Duration) -> Option<PowerAction> {
        let p = self.pending_power.as_ref()?;
        if p.forced || now.saturating_sub(p.started) < self.config.grace {
            return None;
        }
        let action = p.action;
        warn!(
            "{action} still not done after {:?}; syncing and forcing it",
            self.config.grace
        );
        self.force(action);
        Some(action)
    }

    fn force(&mut self, action: PowerAction) {
        if let Some(p) = self.pending_power.as_mut() {
            p.forced = true;
        }
        self.power.sync_disks();
        if action == PowerAction::Poweroff {
            if let Err(e) = self.notify_poweroff() {
                warn!("power-down signal failed: {e}");
            }
        }
        if let Err(e) = self.power.force(action) {
            warn!("{e}");
        }
    }

    /// Write `raw` back to COMMAND when ACK was negotiated.
    fn ack(&mut self, raw: u32) -> Result<bool, AgentError> {
        if !self.features.contains(Features::ACK) {
            return Ok(false);
        }
        self.write(Register::Command, raw)?;
        Ok(true)
    }

    /// Tell vmd this guest has powered down, so it ends the VM in 3 s
    /// instead of leaving a halted guest running. vmd counts a SHUTDOWN
    /// write as that signal only with nothing pending (with SHUTDOWN
    /// pending it is an ACK and re-arms the long timer; with SYNCRTC pending
    /// it is ignored), and a SYNCRTC write clears whatever is pending, so
    /// clear first.
    pub fn notify_poweroff(&mut self) -> Result<(), AgentError> {
        let pending = self.bar.read(Register::Command)?;
        if pending != Command::NONE {
            self.write(Register::Command, Command::SYNCRTC)?;
        }
        self.write(Register::Command, Command::SHUTDOWN)?;
        Ok(())
    }

    /// A precise host time sample: several bracketed reads of TIME_SEC
    /// (which takes vmd's snapshot) then TIME_USEC; the one with the
    /// smallest round trip wins.
    pub fn sample(&mut self) -> Result<TimeSample, AgentError> {
        let tries = self.config.sample_tries.max(1);
        let mut valid: Vec<TimeSample> = Vec::with_capacity(tries as usize);
        let mut last_error = None;
        for _ in 0..tries {
            let before = self.clock.now_ns();
            let sec = self.bar.read(Register::TimeSecLow)?;
            let after = self.clock.now_ns();
            let usec = self.bar.read(Register::TimeUsecLow)?;
            match HostTime::validate(sec, usec, self.config.not_before_sec) {
                Ok(host) => valid.push(TimeSample {
                    guest_before_ns: before,
                    host,
                    guest_after_ns: after,
                }),
                Err(e) => last_error = Some(e),
            }
        }
        valid.retain(TimeSample::is_ordered);
        let Some(best) = valid.iter().min_by_key(|s| s.round_trip_ns()).copied() else {
            return Err(match last_error {
                Some(last) => AgentError::BadHostTime { tries, last },
                None => AgentError::ClockUnordered,
            });
        };
        check_consistent(&valid, &best)?;
        Ok(best)
    }

    /// Step the guest clock to host time, as asked (`vmmci sync`). Never
    /// steps on a sample that does not validate; the reason is in the
    /// outcome.
    pub fn step_to_host(&mut self) -> Outcome {
        self.step(StepCause::Request)
    }

    /// What the clock policy does with a periodic sample.
    fn apply_policy(&mut self, sample: &TimeSample, now: Duration) -> Option<ClockDecision> {
        let policy = self.config.clock;
        let offset = sample.offset_ns();
        let beyond = offset.abs() > duration_ns(policy.step_threshold)
            && offset.abs() > sample.error_bound_ns();
        let decision = match policy.mode {
            ClockMode::Off => None,
            ClockMode::StepOnRequest if beyond => {
                let first = self.clock_report.warning.is_none();
                let d = ClockDecision::Warned { offset_ns: offset };
                self.clock_report.warning = Some(d.to_string());
                if first {
                    warn!("{d}");
                }
                first.then_some(d)
            }
            ClockMode::StepOnRequest => {
                self.clock_report.warning = None;
                None
            }
            ClockMode::Discipline => Some(self.discipline(sample, beyond, now)),
        };
        if let Some(d) = &decision {
            self.clock_report.last_decision = Some(d.to_string());
        }
        decision
    }

    fn discipline(&mut self, sample: &TimeSample, beyond: bool, now: Duration) -> ClockDecision {
        self.clock_report.warning = None;
        if let Some(by) = self
            .fed_daemon
            .clone()
            .or_else(|| self.clock.disciplined_by())
        {
            self.servo.restart();
            if self.clock_report.disciplined_by.as_deref() != Some(by.as_str()) {
                info!("{by} disciplines the clock: standing back (SYNCRTC still steps)");
            }
            self.clock_report.disciplined_by = Some(by.clone());
            return ClockDecision::StoodBack { by };
        }
        if self.clock_report.disciplined_by.take().is_some() {
            info!("no other time daemon now: disciplining the clock");
        }
        if beyond {
            warn!(
                "clock off by {} with no SYNCRTC (a missed resume?): stepping",
                fmt_ns(sample.offset_ns())
            );
            return match self.step(StepCause::Periodic) {
                Outcome::Stepped(s) => ClockDecision::Stepped(s),
                other => ClockDecision::Failed(other.to_string()),
            };
        }
        let offset = sample.offset_ns();
        let frequency = self.servo.update(offset, now, self.config.sample_interval);
        match self.clock.set_frequency_ppm(frequency) {
            Ok(()) => {
                self.clock_report.slews += 1;
                self.clock_report.frequency_ppm = Some(frequency);
                self.clock_report.learned_frequency_ppm = Some(self.servo.frequency_ppm());
                ClockDecision::Slewed {
                    offset_ns: offset,
                    frequency_ppm: frequency,
                }
            }
            Err(e) => {
                self.servo.restart();
                let d = ClockDecision::Failed(format!("cannot slew: {e}"));
                if self.clock_report.last_decision.as_deref() != Some(d.to_string().as_str()) {
                    warn!("{d}");
                }
                d
            }
        }
    }

    fn step(&mut self, cause: StepCause) -> Outcome {
        let sample = match self.sample() {
            Ok(s) => s,
            Err(e) => return Outcome::StepRefused(e.to_string()),
        };
        let offset = sample.offset_ns();
        let bound = sample.error_bound_ns();
        if bound > MAX_STEP_ERROR_NS {
            return Outcome::StepRefused(format!(
                "host time too uncertain to step to (±{}; device reads are slow)",
                fmt_bound(bound)
            ));
        }
        if offset.abs() <= bound {
            return Outcome::AlreadyRight {
                offset_ns: offset,
                error_bound_ns: bound,
            };
        }
        let at_ns = self.clock.now_ns();
        if let Err(e) = self.clock.step(offset) {
            return Outcome::StepRefused(e.to_string());
        }
        // Measure what is left, so the record says how well the step did.
        let residual = self.sample().ok().map(|s| {
            self.drift.record(DriftPoint::from(&s));
            s.offset_ns()
        });
        self.servo.restart();
        match cause {
            StepCause::Request => self.clock_report.steps_requested += 1,
            StepCause::Periodic => self.clock_report.steps_periodic += 1,
        }
        let record = StepRecord {
            cause,
            at_ns,
            delta_ns: offset,
            error_bound_ns: bound,
            residual_ns: residual,
        };
        self.last_step = Some(record);
        Outcome::Stepped(record)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.state,
            features_offered: self.offered,
            features: self.features,
            poll_interval: self.config.poll_interval,
            sample_interval: self.config.sample_interval,
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

/// Tries of one sample must tell the same story: a snapshot that never
/// changes while the guest clock runs is a stuck device, and offsets that
/// disagree beyond their error bounds are junk. Either way, no sample.
fn check_consistent(valid: &[TimeSample], best: &TimeSample) -> Result<(), AgentError> {
    let first = valid
        .iter()
        .map(|s| s.guest_before_ns)
        .min()
        .unwrap_or(best.guest_before_ns);
    let last = valid
        .iter()
        .map(|s| s.guest_after_ns)
        .max()
        .unwrap_or(best.guest_after_ns);
    let span = last - first;
    if valid.len() >= 2 && span > STALE_SPAN_NS && valid.iter().all(|s| s.host == best.host) {
        return Err(AgentError::StaleSnapshot {
            span_ms: span / 1_000_000,
        });
    }
    for s in valid {
        let spread = (s.offset_ns() - best.offset_ns()).abs();
        if spread > s.error_bound_ns() + best.error_bound_ns() + CONSISTENCY_SLACK_NS {
            return Err(AgentError::Inconsistent {
                spread: fmt_bound(spread),
            });
        }
    }
    Ok(())
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Guest time over which a live host clock must have moved on.
const STALE_SPAN_NS: i64 = 2_000_000;
/// Allowance beyond the error bounds for rate differences within a sample.
const CONSISTENCY_SLACK_NS: i64 = 1_000_000;
/// A sample less certain than this is not stepped to.
pub const MAX_STEP_ERROR_NS: i64 = 500_000_000;

/// A magnitude (round trip, error bound) for people: `40.000 µs`.
pub fn fmt_bound(ns: i64) -> String {
    fmt_ns(ns).trim_start_matches(['+', '-']).to_string()
}

/// Nanoseconds for people: `+1.234567 s`, `-12.3 ms`, `850 ns`.
pub fn fmt_ns(ns: i64) -> String {
    let a = ns.unsigned_abs();
    let sign = if ns < 0 { "-" } else { "+" };
    if a >= 1_000_000_000 {
        format!(
            "{sign}{}.{:06} s",
            a / 1_000_000_000,
            (a % 1_000_000_000) / 1_000
        )
    } else if a >= 1_000_000 {
        format!("{sign}{}.{:03} ms", a / 1_000_000, (a % 1_000_000) / 1_000)
    } else if a >= 1_000 {
        format!("{sign}{}.{:03} µs", a / 1_000, a % 1_000)
    } else {
        format!("{sign}{a} ns")
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
