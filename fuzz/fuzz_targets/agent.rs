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
//!   5: 5 s, 6: 15 s, 7: 25 s); bits 3-5 all set: `notify_poweroff()` before
//!   the tick; bits 6-7 both set: the access numbered by bits 3-5 in this
//!   tick fails. Byte 1: bit 0 `Power::begin` fails, bit 1 the clock refuses
//!   to be stepped. Default: 250 ms, nothing else.
//! - `clk`: one byte per `GuestClock::now_ns` call, how far the guest clock
//!   moved since the previous call (0: 20 µs, 1..=0xdf: n × 500 ns,
//!   0xe0..=0xef: 50..800 ms, 0xf0..=0xf7: 1..8 s, 0xf8..=0xfe: 1..7 ms
//!   backwards, 0xff: not at all). Default: 20 µs.
//! - `regs`: every register read takes the next 4 bytes (LE), 0 when
//!   exhausted.
//!
//! Properties checked:
//! - no panic;
//! - `Power::begin(Reboot)` only when this tick's (last) COMMAND poll read
//!   exactly 2, `begin(Poweroff)` only after exactly 1, and `begin` at most
//!   once in the agent's life; `sync_disks`/`force` only for the action
//!   begun, `force` at most once;
//! - a clock step only while handling a SYNCRTC read this tick, and only by
//!   host − guest of a sample read this tick whose registers pass
//!   `HostTime::validate`, within that sample's error bound (+1 µs);
//! - COMMAND is written only with a command value (1, 2, 3): an ACK equals
//!   the value just polled and needs the ACK feature; the power-down signal
//!   (`notify_poweroff`, or a forced power-off) writes only SYNCRTC then
//!   SHUTDOWN;
//! - a command is acted on once while it stays posted (a model of vmd's
//!   latching over the poll reads);
//! - every access is by a decoded `Register` at its natural width; ISR is
//!   never read; TIME_USEC is read only right after TIME_SEC; the agent
//!   writes nothing but DEVICE_STATUS, GUEST_FEATURES and COMMAND, and
//!   accepts only offered, known features.

#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vmmci_agent::{
    Agent, AgentConfig, ClockError, GuestClock, Outcome, Power, PowerAction, PowerError,
};
use vmmci_protocol::{Command, Features, HostTime, Register, HOST_RESOLUTION_NS};
use vmmci_transport::{RegisterIo, TransportError};

/// Ticks per run: "a few hundred", enough to pass the 25 s grace period at
/// the default 250 ms step.
const TICKS: usize = 300;
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
    notify: bool,
    fault_at: Option<u32>,
    begin_fails: bool,
    step_fails: bool,
}

/// Everything the fakes share.
struct World<'a> {
    ctl: Stream<'a>,
    clk: Stream<'a>,
    regs: Stream<'a>,
    not_before_sec: u32,

    guest_ns: i64,
    offered: Option<u32>,
    guest_features: u32,

    // This tick.
    tick: TickCtl,
    accesses: u32,
    /// The COMMAND value the poll of this tick read (not notify's read).
    polled: Option<u32>,
    time_reads: Vec<TimeRead>,
    /// Index into `time_reads` waiting for its `after`.
    awaiting_after: Option<usize>,
    /// Previous access: (register, write).
    prev: Option<(Register, bool)>,
    /// Inside `notify_poweroff` called by the harness.
    in_notify: bool,
    /// Between `sync_disks` and `force`: the forced path, which may signal
    /// power-down.
    in_force: bool,
    /// COMMAND writes during the current power-down signal.
    signal_writes: Vec<u32>,
    /// COMMAND writes outside a power-down signal, this tick.
    ack_writes: Vec<u32>,

    // The whole run.
    begun: Option<PowerAction>,
    synced: u32,
    forced: Option<PowerAction>,
    steps: Vec<i64>,
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
        TickCtl {
            advance,
            notify: mid == 7,
            fault_at: (a >> 6 == 3).then_some(mid),
            begin_fails: b & 1 != 0,
            step_fails: b & 2 != 0,
        }
    }

    fn start_tick(&mut self, ctl: TickCtl) {
        self.tick = ctl;
        self.accesses = 0;
        self.polled = None;
        self.time_reads.clear();
        self.awaiting_after = None;
        self.ack_writes.clear();
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
    fn access(&mut self, reg: Register) -> bool {
        assert_eq!(
            Register::at(reg.offset()),
            Some(reg),
            "{reg} is not decoded at its own offset"
        );
        assert!(
            matches!(reg.width().bytes(), 1 | 2 | 4),
            "{reg}: impossible width"
        );
        let n = self.accesses;
        self.accesses += 1;
        self.tick.fault_at == Some(n)
    }

    fn signalling(&self) -> bool {
        self.in_notify || self.in_force
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

struct FuzzBar<'a>(Shared<'a>);

impl RegisterIo for FuzzBar<'_> {
    fn read(&mut self, reg: Register) -> Result<u32, TransportError> {
        let mut w = self.0.borrow_mut();
        let w = &mut *w;
        assert_ne!(
            reg,
            Register::Isr,
            "ISR read (it clears the ISR: side effects)"
        );
        if reg == Register::TimeUsecLow {
            assert_eq!(
                w.prev,
                Some((Register::TimeSecLow, false)),
                "TIME_USEC read not right after TIME_SEC"
            );
        }
        let fail = w.access(reg);
        w.prev = Some((reg, false));
        if fail {
            return Err(fault(reg, "read"));
        }
        let value = w.regs.u32() & reg.width().mask();
        match reg {
            Register::DeviceFeatures => w.offered = Some(value),
            Register::Command if !w.signalling() => {
                // The agent may read COMMAND more than once a tick (to
                // confirm a value, say): what it acts on is the last read.
                w.polled = Some(value);
            }
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
        let fail = w.access(reg);
        w.prev = Some((reg, true));
        match reg {
            Register::DeviceStatus => {
                assert_eq!(value & !0xff, 0, "status is one byte, got {value:#x}");
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
                if w.signalling() {
                    // notify_poweroff: clear with SYNCRTC (if anything is
                    // pending), then SHUTDOWN.
                    let ok = match w.signal_writes.as_slice() {
                        [] => true,
                        [Command::SYNCRTC] => value == Command::SHUTDOWN,
                        _ => false,
                    };
                    assert!(
                        ok && (value != Command::REBOOT),
                        "power-down signal wrote {:?} then {value}",
                        w.signal_writes
                    );
                    w.signal_writes.push(value);
                } else {
                    assert_eq!(
                        Some(value),
                        w.polled,
                        "COMMAND written with {value} after polling {:?}: not an ACK",
                        w.polled
                    );
                    assert!(
                        w.guest_features & Features::ACK.0 != 0,
                        "ACK of {value} without the ACK feature (accepted {:#x})",
                        w.guest_features
                    );
                    w.ack_writes.push(value);
                }
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
        assert_eq!(
            w.polled,
            Some(Command::SYNCRTC),
            "clock stepped by {delta_ns} ns in a tick that polled {:?}, not SYNCRTC",
            w.polled
        );
        assert!(!w.signalling(), "clock stepped while signalling power-down");
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
            "step of {delta_ns} ns not justified by any valid time read this tick: {:?}",
            w.time_reads
        );
        if w.tick.step_fails {
            return Err(ClockError::NotPermitted("fuzz: EPERM".into()));
        }
        w.guest_ns += delta_ns;
        w.steps.push(delta_ns);
        Ok(())
    }
}

struct FuzzPower<'a>(Shared<'a>);

fn raw(action: PowerAction) -> u32 {
    match action {
        PowerAction::Reboot => Command::REBOOT,
        PowerAction::Poweroff => Command::SHUTDOWN,
    }
}

impl Power for FuzzPower<'_> {
    fn begin(&mut self, action: PowerAction) -> Result<(), PowerError> {
        let mut w = self.0.borrow_mut();
        assert_eq!(
            w.polled,
            Some(raw(action)),
            "begin({action}) in a tick that polled {:?}",
            w.polled
        );
        assert_eq!(w.begun, None, "begin({action}) after begin({:?})", w.begun);
        w.begun = Some(action);
        if w.tick.begin_fails {
            return Err(PowerError {
                action,
                reason: "fuzz: init not there".into(),
            });
        }
        Ok(())
    }

    fn sync_disks(&mut self) {
        let mut w = self.0.borrow_mut();
        assert!(w.begun.is_some(), "sync_disks with no power action begun");
        assert!(w.forced.is_none(), "sync_disks after the force");
        w.synced += 1;
        assert_eq!(w.synced, 1, "synced twice: forced twice");
        w.in_force = true;
        w.signal_writes.clear();
    }

    fn force(&mut self, action: PowerAction) -> Result<(), PowerError> {
        let mut w = self.0.borrow_mut();
        assert_eq!(
            w.begun,
            Some(action),
            "force({action}) but begun {:?}",
            w.begun
        );
        assert!(w.in_force, "force({action}) without sync_disks first");
        assert_eq!(w.forced, None, "forced twice");
        w.forced = Some(action);
        w.in_force = false;
        Ok(())
    }
}

/// vmd's latching as seen through the poll reads: a command stays posted
/// until COMMAND reads NONE, or a SYNCRTC is acknowledged (vmd clears it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Latch {
    /// Nothing handled that is still posted.
    Clear,
    Posted(u32),
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

    let config = AgentConfig::default();
    let world = Rc::new(RefCell::new(World {
        ctl: Stream::new(ctl),
        clk: Stream::new(clk),
        regs: Stream::new(regs),
        not_before_sec: config.not_before_sec,
        guest_ns: guest_sec * NANOS,
        offered: None,
        guest_features: 0,
        tick: TickCtl::default(),
        accesses: 0,
        polled: None,
        time_reads: Vec::new(),
        awaiting_after: None,
        prev: None,
        in_notify: false,
        in_force: false,
        signal_writes: Vec::new(),
        ack_writes: Vec::new(),
        begun: None,
        synced: 0,
        forced: None,
        steps: Vec::new(),
    }));

    let mut agent = Agent::new(
        FuzzBar(world.clone()),
        FuzzClock(world.clone()),
        FuzzPower(world.clone()),
        config,
    );
    if agent.handshake().is_err() {
        return;
    }
    let ack = agent.features().contains(Features::ACK);
    assert_eq!(world.borrow().guest_features, agent.features().0);

    let mut now = Duration::ZERO;
    let mut latch = Latch::Clear;
    for _ in 0..TICKS {
        let ctl = world.borrow_mut().next_tick_ctl();
        now += ctl.advance;
        if ctl.notify {
            let (steps, begun) = {
                let mut w = world.borrow_mut();
                w.start_tick(TickCtl {
                    fault_at: ctl.fault_at,
                    ..TickCtl::default()
                });
                w.in_notify = true;
                w.signal_writes.clear();
                (w.steps.len(), w.begun)
            };
            let _ = agent.notify_poweroff();
            let mut w = world.borrow_mut();
            w.in_notify = false;
            assert_eq!(w.steps.len(), steps, "notify_poweroff stepped the clock");
            assert_eq!(w.begun, begun, "notify_poweroff began a power action");
        }
        world.borrow_mut().start_tick(ctl);
        let steps_before = world.borrow().steps.len();
        let result = agent.tick(now);
        let w = world.borrow();
        assert!(!w.in_force, "sync_disks without force");
        assert!(
            w.steps.len() <= steps_before + 1,
            "stepped twice in one tick"
        );
        if trace() {
            eprintln!(
                "tick at {now:?}: {result:?} polled {:?} steps {:?} begun {:?} forced {:?}",
                w.polled, w.steps, w.begun, w.forced
            );
        }
        let Ok(tick) = result else {
            // What is posted now is unknowable: take the agent's word.
            latch = match agent.latched() {
                None => Latch::Clear,
                Some(v) => Latch::Posted(v),
            };
            continue;
        };
        let polled = w.polled.expect("a tick that returned Ok polled COMMAND");
        let handled = tick.handled.as_ref();
        if let Some(h) = handled {
            assert_eq!(h.raw, polled, "handled {:#x} but polled {polled:#x}", h.raw);
        }
        match Command::from_raw(polled) {
            Ok(Command::None) => {
                assert!(handled.is_none(), "NONE handled: {handled:?}");
                latch = Latch::Clear;
            }
            Err(_) => {
                // Junk: logged (once), never acted on, never acknowledged.
                if let Some(h) = handled {
                    assert_eq!(h.command, None);
                    assert!(!h.acked);
                    assert_eq!(h.outcome, Outcome::Ignored);
                }
                assert!(w.ack_writes.is_empty(), "junk {polled:#x} acknowledged");
            }
            Ok(cmd) => {
                let fresh = match latch {
                    Latch::Posted(v) => v != polled,
                    Latch::Clear => true,
                };
                if !fresh {
                    assert!(
                        handled.is_none(),
                        "{cmd} handled again while still posted: {handled:?}"
                    );
                    assert!(w.ack_writes.is_empty(), "{cmd} acknowledged again");
                    continue;
                }
                let h = handled.unwrap_or_else(|| panic!("new {cmd} not handled"));
                assert_eq!(h.command, Some(cmd));
                assert_eq!(h.acked, ack, "acked {} with ACK negotiated {ack}", h.acked);
                assert_eq!(w.ack_writes, if ack { vec![polled] } else { vec![] });
                latch = if cmd == Command::SyncRtc && ack {
                    Latch::Clear
                } else {
                    Latch::Posted(polled)
                };
            }
        }
    }
    let _ = agent.release();
}

/// `FUZZ_TRACE=1 target/.../agent INPUT` prints every tick: for reading a
/// reproducer.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fuzz_target!(|data: &[u8]| run(data));
