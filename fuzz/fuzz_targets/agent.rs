//! The agent state machine over a device whose register reads are whatever
//! the fuzzer says, with a deterministic guest clock and a recording power
//! switch. Every property is an assertion, so libFuzzer reports a violation
//! as a crash.
//!
//! Input layout (every part may be short or missing; what is missing takes
//! its default):
//!
//! ```text
//! [n_ctl: u16 LE][n_clk: u16 LE][guest: u32 LE][ctl: n_ctl bytes][clk: n_clk bytes][regs: rest]
//! ```
//!
//! - `guest`: the guest clock at start, in Unix seconds plus one (0: the
//!   default, 2027-01-15; 1: the epoch, a guest with no RTC).
//! - `ctl`: two bytes per tick. Byte 0: bits 0-2 how far monotonic `now`
//!   advances before the tick (0: 250 ms, 1: 0, 2: 1 ms, 3: 100 ms, 4: 1 s,
//!   5: 5 s, 6: 15 s, 7: 25 s); bits 3-5 all set: `handshake()` again
//!   before the tick (what the daemon does after a device error; these bits
//!   asked for `notify_poweroff()`, which is gone); bits 6-7 both set: the
//!   access numbered by bits 3-5 (counted from the start of the handshake,
//!   if any, else of the tick) fails. Byte 1: bit 0 `Power::begin` fails,
//!   bit 1 the clock refuses to be stepped, bit 2 `Power::sync_disks` does
//!   not finish in time (returns false), bit 3 `Power::force` fails.
//!   Default: 250 ms, nothing else.
//! - `clk`: one byte per `GuestClock::now_ns` call, how far the guest clock
//!   moved since the previous call (0: 20 µs, 1..=0xdf: n × 500 ns,
//!   0xe0..=0xef: 50..800 ms, 0xf0..=0xf7: 1..8 s, 0xf8..=0xfe: 1..7 ms
//!   backwards, 0xff: not at all). Default: 20 µs.
//! - `regs`: every register read takes the next 4 bytes (LE, masked to the
//!   register's width), 0 when exhausted.
//!
//! The run: `handshake()` (the daemon exits if the first one fails), then
//! [`TICKS`] ticks, each preceded by `handshake()` when the input asks or
//! the previous tick or handshake failed (as the daemon's loop does), then
//! `exit()` (writes nothing) and `release()` (writes status 0 only).
//!
//! Every call's register accesses and power/clock calls are logged, and the
//! log is checked against a model of what the agent must do with what it
//! read (`Model`). Properties checked:
//! - no panic; every access by a decoded `Register` at its natural width;
//!   TIME_USEC read only right after TIME_SEC; writes only to
//!   DEVICE_STATUS, GUEST_FEATURES and COMMAND;
//! - handshake: DEVICE_STATUS read first; if it shows DRIVER_OK (and not
//!   FAILED) the only status write is 7, else exactly 0, 1, 3, then 7; the
//!   features written are exactly the offered known ones; a status without
//!   DRIVER_OK is never written while the device has DRIVER_OK set, except
//!   by `release()`;
//! - COMMAND is written only with the ACK feature, and only with the value
//!   of the COMMAND read just before: a REBOOT (2) / SHUTDOWN (1) ACK right
//!   after the poll read it; the SYNCRTC (3) ACK only as read COMMAND (3),
//!   read ISR, read COMMAND (3 again, else the newer command is handled),
//!   write 3, read ISR, and if ISR has the config-change bit read COMMAND;
//!   nothing else, ever (no power-down signal, nothing on a forced power
//!   action); ISR is read only there;
//! - a command is acted on once while it stays posted (vmd's latching: it
//!   stays until COMMAND reads NONE or a SYNCRTC is acknowledged); junk is
//!   logged once, never acted on or acknowledged;
//! - `Power::begin` only right after the ACK (or the read, without ACK) of
//!   a new REBOOT/SHUTDOWN for that action, once in the agent's life;
//! - "sync early, force late": one `sync_disks` in the first tick at least
//!   `grace` after the ACK, with a wait under vmd's 3 s ACK timeout; in the
//!   first tick at least `force_after` after it, `sync_disks` then
//!   `force(action)` (the pair once, force_after + wait under vmd's 120 s);
//!   never a force before `force_after`, except the LostStopForced path
//!   (SYNCRTC ACK, ISR config-change bit, COMMAND NONE): `sync_disks` with
//!   a wait under 3 s then `force(Reboot)` at once; a failing `begin`
//!   changes none of this (PowerNotStarted);
//! - a clock step only inside the step attempt of a SYNCRTC handled this
//!   tick (after its ACK) or of a retry, by host − guest of a time read of
//!   that attempt's sample that passes `HostTime::validate`, within its
//!   error bound (+1 µs); at most one step per SYNCRTC request; a failed
//!   step is retried at the start of each following tick while it keeps
//!   failing, at most `step_retries` times, never with a stop under way;
//!   after COMMAND's SYNCRTC handling, COMMAND is read again in the tick;
//! - the drift sample (5 TIME_SEC/TIME_USEC pairs) exactly when due; a
//!   tick fails exactly when a fault hits an access outside a step's
//!   samples; what `tick()` returns (handled, acked, outcome, retried,
//!   synced, forced) and `state()` agree with the model.

#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vmmci_agent::{
    Agent, AgentConfig, ClockDecision, ClockError, GuestClock, Outcome, Power, PowerAction,
    PowerError, State, StepCause, Tick,
};
use vmmci_protocol::{
    status, timeouts, Command, Features, HostTime, Register, HOST_RESOLUTION_NS, ISR_CONFIG_CHANGE,
};
use vmmci_transport::{RegisterIo, TransportError};

/// Ticks per run: enough to pass the 110 s `force_after` at the default
/// 250 ms step.
const TICKS: usize = 480;
/// Rounding allowance on the step check.
const SLACK_NS: i64 = 1_000;
/// 2027-01-15, a guest with a sane clock.
const DEFAULT_GUEST_SEC: i64 = 1_800_000_000;
const NANOS: i64 = 1_000_000_000;

struct Stream<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Stream<'a> {
    fn new(data: &'a [u8]) -> Self {
        Stream { data, pos: 0 }
    }
    fn byte(&mut self) -> Option<u8> {
        let b = self.data.get(self.pos).copied();
        if b.is_some() {
            self.pos += 1;
        }
        b
    }
    /// The next 4 bytes LE; 0 once exhausted (a short tail is zero-padded).
    fn u32(&mut self) -> u32 {
        let mut v = [0u8; 4];
        for b in &mut v {
            *b = self.byte().unwrap_or(0);
        }
        u32::from_le_bytes(v)
    }
}

/// One read of TIME_SEC (with the TIME_USEC read after it) and the guest
/// clock values bracketing it.
#[derive(Debug)]
struct TimeRead {
    sec: u32,
    usec: Option<u32>,
    /// Guest clock as last read before TIME_SEC.
    before: i64,
    /// Guest clock as first read after TIME_SEC.
    after: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct TickCtl {
    advance: Duration,
    handshake: bool,
    fault_at: Option<u32>,
    begin_fails: bool,
    step_fails: bool,
    sync_slow: bool,
    force_fails: bool,
}

/// What the agent did, in order: register accesses and calls on the clock
/// and power fakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    /// A read and its value; `None`: the injected fault.
    Read(Register, Option<u32>),
    /// A write; `false`: the injected fault (it had no effect).
    Write(Register, u32, bool),
    /// `GuestClock::step(delta)`; `false`: refused.
    Step(i64, bool),
    /// `Power::begin`; `false`: failed.
    Begin(PowerAction, bool),
    /// `Power::sync_disks(wait)` and what it returned.
    Sync(Duration, bool),
    Force(PowerAction),
}

/// Everything the fakes share.
struct World<'a> {
    ctl: Stream<'a>,
    clk: Stream<'a>,
    regs: Stream<'a>,
    not_before_sec: u32,

    guest_ns: i64,
    /// The device's view: the offer last read, the features last accepted,
    /// whether its status has DRIVER_OK (and not FAILED).
    offered: Option<u32>,
    guest_features: u32,
    driver_ok: bool,
    /// Inside `release()`, which alone may clear DRIVER_OK.
    releasing: bool,

    // This call (handshake and/or tick).
    tick: TickCtl,
    accesses: u32,
    log: Vec<Ev>,
    /// The time reads since the last other access: the sample a step may
    /// be based on.
    time_reads: Vec<TimeRead>,
    /// Index into `time_reads` waiting for its `after`.
    awaiting_after: Option<usize>,
    /// Previous access: (register, write).
    prev: Option<(Register, bool)>,
}

impl World<'_> {
    fn next_tick_ctl(&mut self) -> TickCtl {
        let (Some(a), b) = (self.ctl.byte(), self.ctl.byte()) else {
            return TickCtl {
                advance: Duration::from_millis(250),
                ..TickCtl::default()
            };
        };
        let b = b.unwrap_or(0);
        let advance = match a & 7 {
            0 => Duration::from_millis(250),
            1 => Duration::ZERO,
            2 => Duration::from_millis(1),
            3 => Duration::from_millis(100),
            4 => Duration::from_secs(1),
            5 => Duration::from_secs(5),
            6 => Duration::from_secs(15),
            _ => Duration::from_secs(25),
        };
        let mid = u32::from((a >> 3) & 7);
        let fault = a >> 6 == 3;
        TickCtl {
            advance,
            handshake: mid == 7 && !fault,
            fault_at: fault.then_some(mid),
            begin_fails: b & 1 != 0,
            step_fails: b & 2 != 0,
            sync_slow: b & 4 != 0,
            force_fails: b & 8 != 0,
        }
    }

    /// A new call group: the access count (for `fault_at`) starts again.
    fn start(&mut self, ctl: TickCtl) {
        self.tick = ctl;
        self.accesses = 0;
        self.start_log();
    }

    /// A new log; the access count goes on.
    fn start_log(&mut self) {
        self.log.clear();
        self.time_reads.clear();
        self.awaiting_after = None;
    }

    fn clock_delta(&mut self) -> i64 {
        match self.clk.byte() {
            None | Some(0) => 20_000,
            Some(b @ 1..=0xdf) => i64::from(b) * 500,
            Some(b @ 0xe0..=0xef) => i64::from(b - 0xdf) * 50_000_000,
            Some(b @ 0xf0..=0xf7) => i64::from(b - 0xef) * NANOS,
            Some(b @ 0xf8..=0xfe) => -i64::from(b - 0xf7) * 1_000_000,
            Some(0xff) => 0,
        }
    }

    /// Checks common to reads and writes; true if this access is to fail.
    fn access(&mut self, reg: Register, write: bool) -> bool {
        assert_eq!(
            Register::at(reg.offset()),
            Some(reg),
            "{reg} is not decoded at its own offset"
        );
        assert!(
            matches!(reg.width().bytes(), 1 | 2 | 4),
            "{reg}: impossible width"
        );
        if !matches!(reg, Register::TimeSecLow | Register::TimeUsecLow) {
            self.time_reads.clear();
            self.awaiting_after = None;
        }
        self.prev = Some((reg, write));
        let n = self.accesses;
        self.accesses += 1;
        self.tick.fault_at == Some(n)
    }
}

type Shared<'a> = Rc<RefCell<World<'a>>>;

fn fault(reg: Register, op: &'static str) -> TransportError {
    TransportError::Io {
        path: "fuzz".into(),
        op,
        reg,
        source: std::io::Error::other("injected fault"),
    }
}

fn driver_ok(s: u32) -> bool {
    s & u32::from(status::DRIVER_OK) != 0 && s & u32::from(status::FAILED) == 0
}

struct FuzzBar<'a>(Shared<'a>);

impl RegisterIo for FuzzBar<'_> {
    fn read(&mut self, reg: Register) -> Result<u32, TransportError> {
        let mut w = self.0.borrow_mut();
        let w = &mut *w;
        if reg == Register::TimeUsecLow {
            assert_eq!(
                w.prev,
                Some((Register::TimeSecLow, false)),
                "TIME_USEC read not right after TIME_SEC"
            );
        }
        if w.access(reg, false) {
            w.log.push(Ev::Read(reg, None));
            return Err(fault(reg, "read"));
        }
        let value = w.regs.u32() & reg.width().mask();
        w.log.push(Ev::Read(reg, Some(value)));
        match reg {
            Register::DeviceFeatures => w.offered = Some(value),
            Register::DeviceStatus => w.driver_ok = driver_ok(value),
            Register::TimeSecLow => {
                w.time_reads.push(TimeRead {
                    sec: value,
                    usec: None,
                    before: w.guest_ns,
                    after: None,
                });
                w.awaiting_after = Some(w.time_reads.len() - 1);
            }
            Register::TimeUsecLow => {
                if let Some(last) = w.time_reads.last_mut() {
                    last.usec = Some(value);
                }
            }
            _ => {}
        }
        Ok(value)
    }

    fn write(&mut self, reg: Register, value: u32) -> Result<(), TransportError> {
        let mut w = self.0.borrow_mut();
        let w = &mut *w;
        let fail = w.access(reg, true);
        w.log.push(Ev::Write(reg, value, !fail));
        match reg {
            Register::DeviceStatus => {
                assert_eq!(value & !0xff, 0, "status is one byte, got {value:#x}");
                assert!(
                    !w.driver_ok || driver_ok(value) || w.releasing,
                    "status {value:#x} written while the device has DRIVER_OK: vmd would refuse stops"
                );
                if !fail {
                    w.driver_ok = driver_ok(value);
                }
            }
            Register::GuestFeatures => {
                let offered = w.offered.expect("features accepted before they were read");
                assert_eq!(
                    value & !offered,
                    0,
                    "accepted {value:#x}, offered {offered:#x}"
                );
                assert_eq!(
                    value & !Features::SUPPORTED.0,
                    0,
                    "accepted unknown bits {value:#x}"
                );
                if !fail {
                    w.guest_features = value;
                }
            }
            Register::Command => {
                assert!(
                    matches!(
                        value,
                        Command::SHUTDOWN | Command::REBOOT | Command::SYNCRTC
                    ),
                    "wrote {value:#x} to COMMAND: not a command"
                );
                assert!(
                    w.guest_features & Features::ACK.0 != 0,
                    "wrote {value} to COMMAND without the ACK feature (accepted {:#x})",
                    w.guest_features
                );
            }
            other => panic!("agent wrote {value:#x} to {other}"),
        }
        if fail {
            return Err(fault(reg, "write"));
        }
        Ok(())
    }
}

struct FuzzClock<'a>(Shared<'a>);

impl GuestClock for FuzzClock<'_> {
    fn now_ns(&self) -> i64 {
        let mut w = self.0.borrow_mut();
        let d = w.clock_delta();
        w.guest_ns += d;
        let now = w.guest_ns;
        if let Some(i) = w.awaiting_after.take() {
            w.time_reads[i].after = Some(now);
        }
        now
    }

    fn step(&mut self, delta_ns: i64) -> Result<(), ClockError> {
        let mut w = self.0.borrow_mut();
        let not_before = w.not_before_sec;
        let justified = w.time_reads.iter().find(|r| {
            let (Some(usec), Some(after)) = (r.usec, r.after) else {
                return false;
            };
            let Ok(host) = HostTime::validate(r.sec, usec, not_before) else {
                return false;
            };
            if after < r.before {
                return false;
            }
            // The host took its snapshot in [host, host + 1 µs) while the
            // guest clock read somewhere in [before, after].
            let lo = host.as_nanos() - after - SLACK_NS;
            let hi = host.as_nanos() + HOST_RESOLUTION_NS - r.before + SLACK_NS;
            (lo..=hi).contains(&delta_ns)
        });
        assert!(
            justified.is_some(),
            "step of {delta_ns} ns not justified by a valid time read of the sample just taken: {:?}",
            w.time_reads
        );
        let ok = !w.tick.step_fails;
        w.log.push(Ev::Step(delta_ns, ok));
        if !ok {
            return Err(ClockError::NotPermitted("fuzz: EPERM".into()));
        }
        w.guest_ns += delta_ns;
        Ok(())
    }
}

struct FuzzPower<'a>(Shared<'a>);

impl Power for FuzzPower<'_> {
    fn begin(&mut self, action: PowerAction) -> Result<(), PowerError> {
        let mut w = self.0.borrow_mut();
        let ok = !w.tick.begin_fails;
        w.log.push(Ev::Begin(action, ok));
        if !ok {
            return Err(PowerError {
                action,
                reason: "fuzz: init not there".into(),
            });
        }
        Ok(())
    }

    fn sync_disks(&mut self, wait: Duration) -> bool {
        let mut w = self.0.borrow_mut();
        assert!(!wait.is_zero(), "sync_disks with no time to sync");
        let done = !w.tick.sync_slow;
        w.log.push(Ev::Sync(wait, done));
        done
    }

    fn force(&mut self, action: PowerAction) -> Result<(), PowerError> {
        let mut w = self.0.borrow_mut();
        w.log.push(Ev::Force(action));
        if w.tick.force_fails {
            return Err(PowerError {
                action,
                reason: "fuzz: reboot(2) failed".into(),
            });
        }
        Ok(())
    }
}

/// The injected fault ended the call here.
#[derive(Debug)]
struct Fault;

/// A reader of one call's log that knows what must come next.
struct Parse<'l> {
    log: &'l [Ev],
    pos: usize,
}

impl Parse<'_> {
    fn peek(&self) -> Option<Ev> {
        self.log.get(self.pos).copied()
    }

    fn next(&mut self, what: &str) -> Ev {
        let ev = self
            .peek()
            .unwrap_or_else(|| panic!("expected {what}, nothing more came: {:?}", self.log));
        self.pos += 1;
        ev
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "expected {what}, got {:?} (event {} of {:?})",
            self.log[self.pos - 1],
            self.pos - 1,
            self.log
        )
    }

    fn read(&mut self, reg: Register, why: &str) -> Result<u32, Fault> {
        match self.next(why) {
            Ev::Read(r, v) if r == reg => v.ok_or(Fault),
            _ => self.fail(&format!("{why}: a read of {reg}")),
        }
    }

    fn write(&mut self, reg: Register, value: u32, why: &str) -> Result<(), Fault> {
        match self.next(why) {
            Ev::Write(r, v, ok) if r == reg && v == value => ok.then_some(()).ok_or(Fault),
            _ => self.fail(&format!("{why}: {value:#x} written to {reg}")),
        }
    }

    fn sync(&mut self, why: &str) -> (Duration, bool) {
        match self.next(why) {
            Ev::Sync(wait, done) => (wait, done),
            _ => self.fail(why),
        }
    }

    fn force(&mut self, action: PowerAction, why: &str) {
        if self.next(why) != Ev::Force(action) {
            self.fail(&format!("{why}: force({action})"));
        }
    }

    fn begin(&mut self, action: PowerAction) -> bool {
        match self.next("begin") {
            Ev::Begin(a, ok) if a == action => ok,
            _ => self.fail(&format!("begin({action}) right after the ACK")),
        }
    }

    /// One precise sample: `tries` TIME_SEC, TIME_USEC pairs.
    fn sample(&mut self, tries: u32, why: &str) -> Result<(), Fault> {
        for _ in 0..tries {
            self.read(Register::TimeSecLow, why)?;
            self.read(Register::TimeUsecLow, why)?;
        }
        Ok(())
    }

    /// One step attempt: its sample (a fault there refuses the step and
    /// ends nothing else), at most one step, the residual sample after it.
    fn attempt(&mut self, tries: u32) -> Attempt {
        if self.sample(tries, "the step's sample").is_err() {
            return Attempt::Refused;
        }
        match self.peek() {
            Some(Ev::Step(delta, ok)) => {
                self.pos += 1;
                if !ok {
                    return Attempt::Refused;
                }
                let _ = self.sample(tries, "the sample after the step");
                Attempt::Stepped(delta)
            }
            _ => Attempt::NoStep,
        }
    }

    fn end(&self, what: &str) {
        assert_eq!(
            self.pos,
            self.log.len(),
            "{what}: unexpected {:?} in {:?}",
            self.log.get(self.pos),
            self.log
        );
    }
}

/// How a step attempt went, as the log shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    Stepped(i64),
    /// A fault in its sample, or the clock refused.
    Refused,
    /// No step: AlreadyRight, or refused on what was read.
    NoStep,
}

impl Attempt {
    fn matches(self, outcome: &Outcome) -> bool {
        match (self, outcome) {
            (Attempt::Stepped(d), Outcome::Stepped(s)) => {
                s.delta_ns == d && s.cause == StepCause::Request
            }
            (Attempt::Refused, Outcome::StepRefused(_)) => true,
            (Attempt::NoStep, Outcome::AlreadyRight { .. } | Outcome::StepRefused(_)) => true,
            _ => false,
        }
    }

    fn last(self) -> Last {
        match self {
            Attempt::Stepped(_) => Last::Succeeded,
            Attempt::Refused => Last::Failed,
            Attempt::NoStep => Last::Unknown,
        }
    }
}

/// What the model expects a handled command's record to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ignored,
    Started(PowerAction),
    NotStarted(PowerAction),
    AlreadyStopping,
    LostStop,
    Step(Attempt),
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    raw: u32,
    command: Option<Command>,
    acked: bool,
    outcome: Expect,
}

impl Seen {
    fn is_syncrtc_step(&self) -> bool {
        self.command == Some(Command::SyncRtc) && self.outcome != Expect::LostStop
    }
}

#[derive(Debug, Default)]
struct Expected {
    handled: Option<Seen>,
    retried: Option<Attempt>,
    synced: Option<bool>,
    forced: Option<PowerAction>,
    sampled: bool,
    /// A SYNCRTC handled this tick opened a new request.
    opened: bool,
}

/// A reboot or power-off under way.
#[derive(Clone, Copy, Debug)]
struct Stop {
    action: PowerAction,
    /// `now` of the tick that acknowledged it.
    started: Duration,
    synced: bool,
    forced: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Last {
    Failed,
    Succeeded,
    /// The log cannot tell (no step: AlreadyRight or refused) and the tick
    /// did not say.
    Unknown,
}

/// A SYNCRTC request whose step may still be retried.
#[derive(Clone, Copy, Debug)]
struct Req {
    retries: u32,
    last: Last,
}

/// What the agent must do, given what it read.
struct Model {
    config: AgentConfig,
    /// ACK negotiated in the last handshake that went through.
    ack: bool,
    /// The command handled and still posted (vmd's latching).
    latch: Option<u32>,
    /// The junk value last logged (logged once until COMMAND reads NONE).
    last_unknown: Option<u32>,
    stop: Option<Stop>,
    req: Option<Req>,
    /// This tick's poll opened `req`.
    opened: bool,
    next_sample: Duration,
}

impl Model {
    fn tries(&self) -> u32 {
        self.config.sample_tries.max(1)
    }

    fn handshake(&mut self, log: &[Ev]) -> Result<u32, Fault> {
        let mut p = Parse { log, pos: 0 };
        let r = (|| {
            let s = p.read(Register::DeviceStatus, "the handshake's first access")?;
            if !driver_ok(s) {
                for v in [
                    status::RESET,
                    status::ACKNOWLEDGE,
                    status::ACKNOWLEDGE | status::DRIVER,
                ] {
                    p.write(Register::DeviceStatus, v.into(), "a fresh handshake")?;
                }
            }
            let offered = p.read(Register::DeviceFeatures, "the offer")?;
            if offered == u32::MAX {
                return Err(Fault);
            }
            let accepted = offered & Features::SUPPORTED.0;
            p.write(Register::GuestFeatures, accepted, "the accepted features")?;
            let ok = status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK;
            p.write(Register::DeviceStatus, ok.into(), "DRIVER_OK")?;
            Ok(accepted)
        })();
        p.end("after the handshake");
        if let Ok(accepted) = r {
            self.ack = accepted & Features::ACK.0 != 0;
        }
        r
    }

    fn tick(&mut self, log: &[Ev], now: Duration) -> Result<Expected, Fault> {
        let mut p = Parse { log, pos: 0 };
        let r = self.tick_inner(&mut p, now);
        p.end("after the tick");
        r
    }

    fn tick_inner(&mut self, p: &mut Parse, now: Duration) -> Result<Expected, Fault> {
        let mut exp = Expected::default();
        self.opened = false;
        // Sync early, force late.
        if let Some(s) = self.stop.as_mut() {
            let since = now.saturating_sub(s.started);
            if !s.synced && since >= self.config.grace {
                let (wait, done) = p.sync("sync_disks at the grace point");
                assert!(
                    wait < timeouts::ACK,
                    "the loop blocked {wait:?} on sync(2): a command would miss vmd's 3 s"
                );
                s.synced = true;
                exp.synced = Some(done);
            }
            if !s.forced && since >= self.config.force_after {
                let (wait, _) = p.sync("sync_disks before the force");
                assert!(
                    self.config.force_after + wait < timeouts::SHUTDOWN_LONG,
                    "force after {:?} + sync wait {wait:?}: vmd's 120 s end the VM first",
                    self.config.force_after
                );
                p.force(s.action, "the force at force_after");
                s.forced = true;
                exp.forced = Some(s.action);
            }
        }
        // The retry of a failed SYNCRTC step, before the poll.
        let retrying = matches!(p.peek(), Some(Ev::Read(Register::TimeSecLow, _)));
        let max = self.config.step_retries;
        let tries = self.tries();
        if retrying {
            let r = self
                .req
                .as_mut()
                .filter(|r| r.retries < max && r.last != Last::Succeeded);
            let r = match (r, self.stop) {
                (Some(r), None) => r,
                (r, stop) => panic!(
                    "step retried with no failed SYNCRTC step to retry: {r:?}, stop {stop:?}, log {:?}",
                    p.log
                ),
            };
            r.retries += 1;
            let a = p.attempt(tries);
            r.last = a.last();
            exp.retried = Some(a);
        } else {
            if let Some(r) = self.req {
                assert!(
                    !(r.last == Last::Failed && r.retries < max && self.stop.is_none()),
                    "a failed SYNCRTC step was not retried ({} of {max} retries so far): {:?}",
                    r.retries,
                    p.log
                );
            }
            // The agent has given up on it (or it had worked).
            self.req = None;
        }
        exp.handled = self.poll(p, now)?;
        if exp.handled.is_some_and(|h| h.is_syncrtc_step()) {
            // A stop may have come during the clock work: COMMAND is read
            // again in the same tick.
            if let Some(next) = self.poll(p, now)? {
                exp.handled = Some(next);
            }
        }
        if now >= self.next_sample {
            self.next_sample = now + self.config.sample_interval;
            p.sample(self.tries(), "the drift sample")?;
            exp.sampled = true;
        }
        exp.opened = self.opened;
        Ok(exp)
    }

    fn poll(&mut self, p: &mut Parse, now: Duration) -> Result<Option<Seen>, Fault> {
        let value = p.read(Register::Command, "the poll of COMMAND")?;
        if value == Command::NONE {
            self.latch = None;
            self.last_unknown = None;
            return Ok(None);
        }
        if self.latch == Some(value) {
            return Ok(None);
        }
        let command = match Command::from_raw(value) {
            Ok(c) => c,
            Err(_) => {
                if self.last_unknown == Some(value) {
                    return Ok(None);
                }
                self.last_unknown = Some(value);
                return Ok(Some(Seen {
                    raw: value,
                    command: None,
                    acked: false,
                    outcome: Expect::Ignored,
                }));
            }
        };
        let outcome = match command {
            Command::None => unreachable!("NONE returned above"),
            Command::Reboot | Command::Shutdown => {
                let action = match command {
                    Command::Reboot => PowerAction::Reboot,
                    _ => PowerAction::Poweroff,
                };
                if self.ack {
                    p.write(Register::Command, value, "the ACK right after the poll")?;
                }
                self.latch = Some(value);
                if self.stop.is_some() {
                    Expect::AlreadyStopping
                } else {
                    let started = p.begin(action);
                    self.stop = Some(Stop {
                        action,
                        started: now,
                        synced: false,
                        forced: false,
                    });
                    if started {
                        Expect::Started(action)
                    } else {
                        Expect::NotStarted(action)
                    }
                }
            }
            Command::SyncRtc => {
                if self.ack {
                    let why = "the SYNCRTC ACK sequence";
                    p.read(Register::Isr, why)?;
                    if p.read(Register::Command, why)? != value {
                        // Overwritten before the ACK: the newer command is
                        // handled instead (read afresh), SYNCRTC is not.
                        return self.poll(p, now);
                    }
                    p.write(Register::Command, value, why)?;
                    let isr = p.read(Register::Isr, why)?;
                    if isr & u32::from(ISR_CONFIG_CHANGE) != 0
                        && p.read(Register::Command, why)? == Command::NONE
                    {
                        let (wait, _) = p.sync("sync_disks after a wiped stop");
                        assert!(
                            wait < timeouts::ACK,
                            "sync wait {wait:?} after a wiped stop: vmd ends the VM 3 s after posting it"
                        );
                        p.force(PowerAction::Reboot, "the force after a wiped stop");
                        self.stop = Some(Stop {
                            action: PowerAction::Reboot,
                            started: now,
                            synced: true,
                            forced: true,
                        });
                        self.latch = None;
                        return Ok(Some(Seen {
                            raw: value,
                            command: Some(command),
                            acked: true,
                            outcome: Expect::LostStop,
                        }));
                    }
                    // vmd cleared COMMAND: the next SYNCRTC is a new one.
                    self.latch = None;
                } else {
                    self.latch = Some(value);
                }
                let a = p.attempt(self.tries());
                self.req = Some(Req {
                    retries: 0,
                    last: a.last(),
                });
                self.opened = true;
                Expect::Step(a)
            }
        };
        Ok(Some(Seen {
            raw: value,
            command: Some(command),
            acked: self.ack,
            outcome,
        }))
    }

    /// What `tick()` returned agrees with the log; learn from it what the
    /// log could not tell.
    fn check_tick(&mut self, tick: &Tick, exp: &Expected) {
        match (&tick.handled, exp.handled) {
            (None, None) => {}
            (Some(h), Some(s)) => {
                assert_eq!(
                    (h.raw, h.command, h.acked),
                    (s.raw, s.command, s.acked),
                    "handled {h:?}, the model says {s:?}"
                );
                let ok = match s.outcome {
                    Expect::Ignored => h.outcome == Outcome::Ignored,
                    Expect::Started(a) => h.outcome == Outcome::PowerStarted(a),
                    Expect::NotStarted(a) => {
                        matches!(h.outcome, Outcome::PowerNotStarted { action, .. } if action == a)
                    }
                    Expect::AlreadyStopping => h.outcome == Outcome::AlreadyStopping,
                    Expect::LostStop => h.outcome == Outcome::LostStopForced,
                    Expect::Step(a) => a.matches(&h.outcome),
                };
                assert!(
                    ok,
                    "outcome {:?}, the model says {:?}",
                    h.outcome, s.outcome
                );
                if let (Expect::Step(Attempt::NoStep), Some(r)) = (s.outcome, self.req.as_mut()) {
                    // The last request opened is this record's.
                    r.last = outcome_last(&h.outcome);
                }
            }
            (h, s) => panic!("handled {h:?}, the model says {s:?}"),
        }
        match (&tick.retried, exp.retried) {
            (None, None) => {}
            (Some(o), Some(a)) => {
                assert!(a.matches(o), "retried: {o:?}, the log shows {a:?}");
                if a == Attempt::NoStep && !exp.opened {
                    if let Some(r) = self.req.as_mut() {
                        r.last = outcome_last(o);
                    }
                }
            }
            (o, a) => panic!("retried {o:?}, the log shows {a:?}"),
        }
        assert_eq!(tick.synced, exp.synced, "synced");
        assert_eq!(tick.forced, exp.forced, "forced");
        if tick.sampled.is_some() {
            assert!(exp.sampled, "a drift sample that was not due");
        }
        assert!(
            matches!(tick.clock, None | Some(ClockDecision::Warned { .. })),
            "step-on-request did {:?} with a drift sample",
            tick.clock
        );
    }

    fn state(&self) -> State {
        match self.stop {
            None => State::Running,
            Some(Stop {
                action: PowerAction::Reboot,
                ..
            }) => State::Rebooting,
            Some(_) => State::PoweringOff,
        }
    }
}

fn outcome_last(o: &Outcome) -> Last {
    match o {
        Outcome::StepRefused(_) => Last::Failed,
        _ => Last::Succeeded,
    }
}

type FuzzAgent<'a> = Agent<FuzzBar<'a>, FuzzClock<'a>, FuzzPower<'a>>;

/// `handshake()` against the model; true if it went through.
fn handshake(agent: &mut FuzzAgent, world: &Shared, model: &mut Model) -> bool {
    world.borrow_mut().start_log();
    let result = agent.handshake();
    let w = world.borrow();
    let expected = model.handshake(&w.log);
    if trace() {
        eprintln!("handshake: {result:?} {:?}", w.log);
    }
    match (result, expected) {
        (Ok(f), Ok(accepted)) => {
            assert_eq!(f.0, accepted);
            assert_eq!(agent.features().0, accepted);
            assert_eq!(w.guest_features, accepted);
            true
        }
        (Err(_), Err(Fault)) => false,
        (r, e) => panic!("handshake returned {r:?}, the log says {e:?}: {:?}", w.log),
    }
}

fn run(data: &[u8]) {
    let header = |i: usize, n: usize| {
        let mut v = [0u8; 4];
        for (k, b) in v.iter_mut().take(n).enumerate() {
            *b = data.get(i + k).copied().unwrap_or(0);
        }
        u32::from_le_bytes(v)
    };
    let n_ctl = header(0, 2) as usize;
    let n_clk = header(2, 2) as usize;
    let guest = header(4, 4);
    let body = data.get(8..).unwrap_or(&[]);
    let (ctl, rest) = body.split_at(n_ctl.min(body.len()));
    let (clk, regs) = rest.split_at(n_clk.min(rest.len()));
    let guest_sec = match guest {
        0 => DEFAULT_GUEST_SEC,
        g => i64::from(g) - 1,
    };

    // The model predicts the policy that steps only when asked; the
    // default, `discipline`, adds steps and slews of its own.
    let config = AgentConfig {
        clock: vmmci_agent::ClockPolicy {
            mode: vmmci_agent::ClockMode::StepOnRequest,
            ..vmmci_agent::ClockPolicy::default()
        },
        ..AgentConfig::default()
    };
    let world = Rc::new(RefCell::new(World {
        ctl: Stream::new(ctl),
        clk: Stream::new(clk),
        regs: Stream::new(regs),
        not_before_sec: config.not_before_sec,
        guest_ns: guest_sec * NANOS,
        offered: None,
        guest_features: 0,
        driver_ok: false,
        releasing: false,
        tick: TickCtl::default(),
        accesses: 0,
        log: Vec::new(),
        time_reads: Vec::new(),
        awaiting_after: None,
        prev: None,
    }));
    let mut model = Model {
        config: config.clone(),
        ack: false,
        latch: None,
        last_unknown: None,
        stop: None,
        req: None,
        opened: false,
        next_sample: Duration::ZERO,
    };

    let mut agent = Agent::new(
        FuzzBar(world.clone()),
        FuzzClock(world.clone()),
        FuzzPower(world.clone()),
        config,
    );
    world.borrow_mut().start(TickCtl::default());
    if !handshake(&mut agent, &world, &mut model) {
        // The daemon exits when the first handshake fails.
        return;
    }
    assert_eq!(agent.state(), State::Running);

    let mut now = Duration::ZERO;
    let mut failed = false;
    for _ in 0..TICKS {
        let ctl = world.borrow_mut().next_tick_ctl();
        now += ctl.advance;
        world.borrow_mut().start(ctl);
        if failed || ctl.handshake {
            if !handshake(&mut agent, &world, &mut model) {
                failed = true;
                continue;
            }
            assert_eq!(agent.state(), model.state(), "state after a new handshake");
        }
        world.borrow_mut().start_log();
        let result = agent.tick(now);
        let w = world.borrow();
        let expected = model.tick(&w.log, now);
        if trace() {
            eprintln!("tick at {now:?}: {result:?}\n  log {:?}", w.log);
        }
        failed = match (&result, &expected) {
            (Ok(tick), Ok(exp)) => {
                model.check_tick(tick, exp);
                false
            }
            (Err(_), Err(Fault)) => true,
            (r, e) => panic!("tick returned {r:?}, the log says {e:?}: {:?}", w.log),
        };
        assert_eq!(agent.state(), model.state(), "state after the tick");
    }

    world.borrow_mut().start(TickCtl::default());
    agent.exit();
    assert_eq!(agent.state(), State::Exited);
    assert!(world.borrow().log.is_empty(), "exit() touched the device");
    world.borrow_mut().releasing = true;
    agent.release().expect("release with no fault");
    assert_eq!(agent.state(), State::Released);
    assert_eq!(
        world.borrow().log,
        [Ev::Write(Register::DeviceStatus, 0, true)],
        "release() writes status 0, nothing else"
    );
}

/// `FUZZ_TRACE=1 target/.../agent INPUT` prints every call's log: for
/// reading a reproducer.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fuzz_target!(|data: &[u8]| run(data));
