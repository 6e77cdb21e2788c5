//! The vmmci device and the bits of vmd around it (`vmmci_ctl`, `vmmci_ack`,
//! the one timeout timer, the RTC tick, stop/reset handling), as written down
//! in `docs/protocol.md`.
//!
//! Time-driven things (the timer, the 1 s RTC tick) are evaluated lazily: at
//! the start of every BAR access, every host call and [`Vmd::poll`], in the
//! order they were due.

use std::fmt;
use std::time::Duration;

use vmmci_protocol::{pci, status, timeouts, Command, Features, Register, Width};
use vmmci_protocol::{ISR_CONFIG_CHANGE, NANOS_PER_SEC};

use crate::clock::{duration_ns, HostClock};
use crate::event::{AccessViolation, Event, EventKind, ViolationReason, VmEnd};

/// The RTC ticks once a second (`rtc_fire1` in `mc146818.c`).
const RTC_TICK: Duration = Duration::from_secs(1);

/// What the host offers and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmdConfig {
    /// Read at 0x00.
    pub features: u32,
    /// `VMMCI_TIMEOUT` / `_SHORT`.
    pub ack_timeout: Duration,
    /// `VMMCI_SHUTDOWN_TIMEOUT` / `_LONG`.
    pub long_timeout: Duration,
}

impl Default for VmdConfig {
    /// vmd since 2023: all three features, 3 s, 120 s.
    fn default() -> VmdConfig {
        VmdConfig {
            features: Features::SUPPORTED.0,
            ack_timeout: timeouts::ACK,
            long_timeout: timeouts::SHUTDOWN_LONG,
        }
    }
}

impl VmdConfig {
    /// vmd up to 2019: a 30 s long timeout.
    pub fn before_2019() -> VmdConfig {
        VmdConfig {
            long_timeout: timeouts::SHUTDOWN_LONG_BEFORE_2019,
            ..VmdConfig::default()
        }
    }
}

/// Which deadline vmd's single `vmmci.timeout` timer is running for. vmd has
/// one timer whose firing always ends the VM; the kind only names the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// Armed by `vmmci_ctl(SHUTDOWN|REBOOT)`: the guest must ACK.
    Ack,
    /// Armed (re-armed) by each matching ACK.
    Long,
    /// Armed by a guest SHUTDOWN write with nothing pending.
    PowerDown,
}

impl TimerKind {
    fn end(self) -> VmEnd {
        match self {
            TimerKind::Ack => VmEnd::AckTimeout,
            TimerKind::Long => VmEnd::LongTimeout,
            TimerKind::PowerDown => VmEnd::PowerDown,
        }
    }
}

/// The armed timer, for inspection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmedTimer {
    pub kind: TimerKind,
    /// Host monotonic time since [`Vmd::new`] at which it fires.
    pub deadline: Duration,
}

/// A non-forced stop or a SHUTDOWN request that did not go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopRefused {
    /// `vmmci_ctl` refused (no DRIVER_OK); vmd ended the VM at once
    /// ([`VmEnd::Refused`]).
    NoDriverOk,
    /// The VM had already ended.
    NotRunning(VmEnd),
}

impl fmt::Display for StopRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopRefused::NoDriverOk => {
                write!(
                    f,
                    "vmmci_ctl refused (guest has not set DRIVER_OK); VM ended at once"
                )
            }
            StopRefused::NotRunning(end) => write!(f, "VM is not running (ended: {end})"),
        }
    }
}

impl std::error::Error for StopRefused {}

/// The register file of one vmmci instance. A restarted VM is a new vmd VM
/// process, so it gets a fresh one.
#[derive(Clone, Debug, Default)]
struct Device {
    guest_features: u32,
    queue_address: u32,
    // vmd keeps these in uint16_t fields.
    queue_select: u16,
    queue_notify: u16,
    // uint8_t in vmd: a wider write keeps the low byte.
    status: u8,
    isr: u8,
    irq: bool,
    /// The pending command: any u32 (the test hook may put garbage there).
    cmd: u32,
    /// The last `gettimeofday()` snapshot (zero before the first).
    snap_sec: i64,
    snap_usec: u32,
    /// (kind, absolute monotonic deadline).
    timer: Option<(TimerKind, Duration)>,
}

/// What `vmmci_ctl` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctl {
    /// Returned −1: no DRIVER_OK.
    Refused,
    /// Equal to the pending command: nothing.
    AlreadyPending,
    Posted,
    /// SYNCRTC without the accepted feature.
    Skipped,
}

/// The simulated vmd: one VM's vmmci device plus the host side around it.
pub struct Vmd {
    config: VmdConfig,
    clock: Box<dyn HostClock>,
    /// Monotonic reading at [`Vmd::new`]; event times are relative to it.
    origin: Duration,
    /// Added to the clock's realtime (host clock steps).
    offset_ns: i64,
    dev: Device,
    /// vmd's `VM_STATE_SHUTDOWN`: a reset ends the VM instead of restarting.
    stopping: bool,
    ended: Option<VmEnd>,
    /// `rtc.now`: host `time()` at the last RTC tick.
    rtc_now_s: i64,
    /// Absolute monotonic time of the next RTC tick.
    next_tick: Duration,
    /// What the guest's EAX held after its last read (junk for undecoded reads).
    last_read: u32,
    events: Vec<Event>,
    violations: Vec<AccessViolation>,
    status_writes: Vec<u8>,
    /// The same writes with their times (since [`Vmd::new`]).
    status_writes_at: Vec<(Duration, u8)>,
    probe_writes: Vec<(i64, u32)>,
    command_writes: Vec<(Duration, u32)>,
    accesses: u64,
    /// Host actions a test has timed against the guest's accesses.
    scheduled: Vec<Scheduled>,
}

/// Something vmd or vmctl does on its own, at a moment a test picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// [`Vmd::vmctl_stop`].
    VmctlStop,
    /// [`Vmd::request_shutdown`].
    RequestShutdown,
    /// [`Vmd::request_syncrtc`].
    RequestSyncRtc,
}

/// When a scheduled [`HostAction`] runs, counted in guest accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessTrigger {
    /// Just before the guest's next access once this many more accesses
    /// have completed (0: before the very next one).
    After(u64),
    /// Just before the guest's next access to this register (read or write).
    Before(Register),
}

#[derive(Clone, Copy, Debug)]
struct Scheduled {
    trigger: AccessTrigger,
    /// `accesses` when it was scheduled.
    base: u64,
    action: HostAction,
}

impl fmt::Debug for Vmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vmd")
            .field("config", &self.config)
            .field("offset_ns", &self.offset_ns)
            .field("dev", &self.dev)
            .field("stopping", &self.stopping)
            .field("ended", &self.ended)
            .field("events", &self.events.len())
            .field("violations", &self.violations.len())
            .finish_non_exhaustive()
    }
}

impl Vmd {
    /// A VM that has just started: fresh device, no driver yet.
    pub fn new(config: VmdConfig, clock: Box<dyn HostClock>) -> Vmd {
        let origin = clock.monotonic();
        let rtc_now_s = clock.realtime_ns().div_euclid(NANOS_PER_SEC);
        Vmd {
            config,
            clock,
            origin,
            offset_ns: 0,
            dev: Device::default(),
            stopping: false,
            ended: None,
            rtc_now_s,
            next_tick: origin.saturating_add(RTC_TICK),
            last_read: 0,
            events: Vec::new(),
            violations: Vec::new(),
            status_writes: Vec::new(),
            status_writes_at: Vec::new(),
            probe_writes: Vec::new(),
            command_writes: Vec::new(),
            accesses: 0,
            scheduled: Vec::new(),
        }
    }

    // ---- what the guest's PCI BAR sees ----

    /// A guest read of `size` bytes at `offset` within BAR0. A decoded
    /// register gives its full value masked to `size` (vmd ignores the size;
    /// `inb` keeps the low byte); an undecoded offset gives the guest's
    /// previous EAX. A dead VM reads all ones.
    pub fn bar_read(&mut self, offset: u64, size: u8) -> u32 {
        self.run_scheduled(offset);
        let now = self.advance();
        let mask = size_mask(size);
        if self.ended.is_some() {
            return mask;
        }
        self.accesses += 1;
        let Some(reg) = self.decode(offset, size, false, now) else {
            // vmd does not touch the guest's register: it keeps what it had.
            return self.last_read & mask;
        };
        let full = match reg {
            Register::DeviceFeatures => self.config.features,
            Register::GuestFeatures => self.dev.guest_features,
            Register::QueueAddress => self.dev.queue_address,
            Register::QueueSize => 0,
            Register::QueueSelect => u32::from(self.dev.queue_select),
            Register::QueueNotify => u32::from(self.dev.queue_notify),
            Register::DeviceStatus => u32::from(self.dev.status),
            Register::Isr => {
                let isr = self.dev.isr;
                self.dev.isr = 0;
                self.dev.irq = false;
                u32::from(isr)
            }
            Register::Command => self.dev.cmd,
            Register::TimeSecLow => {
                // The only read that takes a snapshot, truncated to whole µs
                // like gettimeofday(); vmd stores tv_sec into a u32. The
                // one host reading that carries the clock's read noise.
                let host = self.clock.realtime_read_ns().saturating_add(self.offset_ns);
                self.dev.snap_sec = host.div_euclid(NANOS_PER_SEC);
                self.dev.snap_usec = (host.rem_euclid(NANOS_PER_SEC) / 1_000) as u32;
                self.dev.snap_sec as u32
            }
            // vmd shifts the 64-bit value left by 32 into a 32-bit register.
            Register::TimeSecHigh | Register::TimeUsecHigh => 0,
            Register::TimeUsecLow => self.dev.snap_usec,
        };
        let value = full & mask;
        self.last_read = value;
        value
    }

    /// A guest write of `size` bytes at `offset`. `value` is the whole EAX as
    /// vmd receives it: vmd ignores the size, so bits above `size` count.
    /// Writes to a dead VM are dropped and recorded nowhere.
    pub fn bar_write(&mut self, offset: u64, size: u8, value: u32) {
        self.run_scheduled(offset);
        let now = self.advance();
        if self.ended.is_some() {
            return;
        }
        self.accesses += 1;
        let Some(reg) = self.decode(offset, size, true, now) else {
            return;
        };
        match reg {
            Register::DeviceFeatures | Register::QueueSize | Register::Isr => {
                self.log(now, EventKind::IllegalWrite { reg, value });
            }
            Register::GuestFeatures => self.dev.guest_features = value,
            Register::QueueAddress => {
                // "Stored, no effect" in vmd; the rig's guest clock probe
                // writes here, so keep the host time of each write.
                self.dev.queue_address = value;
                let host = self.host_now_ns();
                self.probe_writes.push((host, value));
            }
            Register::QueueSelect => self.dev.queue_select = value as u16,
            Register::QueueNotify => self.dev.queue_notify = value as u16,
            Register::DeviceStatus => {
                self.dev.status = value as u8;
                self.status_writes.push(value as u8);
                let at = now.saturating_sub(self.origin);
                self.status_writes_at.push((at, value as u8));
                // Worth a line only when something outlives the "reset".
                let live =
                    self.dev.cmd != Command::NONE || self.dev.isr != 0 || self.dev.timer.is_some();
                if self.dev.status == status::RESET && live {
                    let pending = self.dev.cmd;
                    self.log(now, EventKind::StatusZero { pending });
                }
            }
            Register::Command => {
                let at = now.saturating_sub(self.origin);
                self.command_writes.push((at, value));
                self.ack(value, now);
            }
            Register::TimeSecLow
            | Register::TimeSecHigh
            | Register::TimeUsecLow
            | Register::TimeUsecHigh => self.log(now, EventKind::IgnoredWrite { reg, value }),
        }
    }

    // ---- host side: what vmctl and vmd do ----

    /// `vmctl stop` (not forced): mark the VM stopping and send REBOOT. If
    /// vmmci refuses (no DRIVER_OK) the VM process exits at once.
    pub fn vmctl_stop(&mut self) -> Result<(), StopRefused> {
        self.host_stop(Command::Reboot)
    }

    /// `vmctl stop -f`: the VM is ended at once; vmmci is not involved.
    pub fn vmctl_stop_force(&mut self) {
        let now = self.advance();
        if self.ended.is_none() {
            self.end(VmEnd::Forced, now);
        }
    }

    /// `vmmci_ctl(SHUTDOWN)` through the VM process's `IMSG_VMDOP_VM_SHUTDOWN`
    /// path. No vmd code path sends it today. Handled like a stop: the VM is
    /// marked stopping (so a reset ends it) and a refusal ends it at once.
    pub fn request_shutdown(&mut self) -> Result<(), StopRefused> {
        self.host_stop(Command::Shutdown)
    }

    /// `vmmci_ctl(SYNCRTC)`. True if SYNCRTC is pending afterwards; false
    /// (and an event) without DRIVER_OK or without the accepted feature.
    pub fn request_syncrtc(&mut self) -> bool {
        let now = self.advance();
        if self.ended.is_some() {
            return false;
        }
        matches!(
            self.ctl(Command::SyncRtc, now),
            Ctl::Posted | Ctl::AlreadyPending
        )
    }

    /// Test hook: put any value in COMMAND and raise ISR, arming no timer.
    pub fn set_command_raw(&mut self, value: u32) {
        let now = self.advance();
        if self.ended.is_some() {
            return;
        }
        self.dev.cmd = value;
        self.dev.isr = ISR_CONFIG_CHANGE;
        self.dev.irq = true;
        self.log(now, EventKind::RawCommand { value });
    }

    /// Step the host clock (suspend/resume, an ntpd step). Only the RTC tick
    /// notices, and only a forward step: see [`Vmd::poll`].
    pub fn jump_host_clock(&mut self, delta_ns: i64) {
        // Ticks due before the step must see the old clock.
        let now = self.advance();
        self.offset_ns = self.offset_ns.saturating_add(delta_ns);
        self.log(now, EventKind::ClockJump { delta_ns });
    }

    /// The guest reset (reboot, triple fault). While stopping, vmd ends the
    /// VM; otherwise it restarts it, and the new VM process has a fresh
    /// device and RTC. The host clock offset and the logs stay.
    pub fn guest_reset(&mut self) {
        let now = self.advance();
        if self.ended.is_some() {
            return;
        }
        if self.stopping {
            self.end(VmEnd::CleanStop, now);
            return;
        }
        self.log(now, EventKind::GuestReset);
        self.dev = Device::default();
        self.last_read = 0;
        self.rtc_now_s = self.host_now_ns().div_euclid(NANOS_PER_SEC);
        self.next_tick = now.saturating_add(RTC_TICK);
    }

    /// The guest executed HLT with interrupts off: how a Linux power-off or
    /// halt ends on vmd, which has no ACPI (`stop_this_cpu()`: `cli; hlt`).
    /// vmm(4)'s `vmx_handle_hlt`/`svm_handle_hlt` return EIO, vmd's vcpu
    /// loop fails and the VM is ended at once, not restarted, whether or not
    /// a stop is in progress, whatever timer is armed and whether or not the
    /// guest wrote anything to COMMAND ([`VmEnd::Halted`]; vmd logs a failed
    /// vcpu, not a clean stop).
    pub fn guest_poweroff_halt(&mut self) {
        let now = self.advance();
        if self.ended.is_none() {
            self.log(now, EventKind::GuestHalted);
            self.end(VmEnd::Halted, now);
        }
    }

    /// Run what is due by now: the 1 s RTC tick (once per elapsed monotonic
    /// second; it compares host `time()`, offset included, with the previous
    /// tick and sends SYNCRTC only when it advanced by more than 5 s) and the
    /// timer (its firing ends the VM).
    pub fn poll(&mut self) {
        self.advance();
    }

    /// Test hook: run `action` at a moment defined by the guest's own
    /// accesses, so a test can put a host request between any two register
    /// accesses of the agent (the host can act at any instant).
    pub fn schedule(&mut self, trigger: AccessTrigger, action: HostAction) {
        self.scheduled.push(Scheduled {
            trigger,
            base: self.accesses,
            action,
        });
    }

    /// Host actions scheduled and not yet run.
    pub fn scheduled(&self) -> usize {
        self.scheduled.len()
    }

    fn run_scheduled(&mut self, offset: u64) {
        if self.scheduled.is_empty() || self.ended.is_some() {
            return;
        }
        let (accesses, reg) = (self.accesses, Register::at(offset));
        let (due, keep): (Vec<Scheduled>, Vec<Scheduled>) =
            self.scheduled.drain(..).partition(|s| match s.trigger {
                AccessTrigger::After(n) => accesses >= s.base.saturating_add(n),
                AccessTrigger::Before(r) => reg == Some(r),
            });
        self.scheduled = keep;
        for s in due {
            // A refused or repeated request is logged by the call itself.
            let _ = match s.action {
                HostAction::VmctlStop => self.vmctl_stop().is_ok(),
                HostAction::RequestShutdown => self.request_shutdown().is_ok(),
                HostAction::RequestSyncRtc => self.request_syncrtc(),
            };
        }
    }

    // ---- inspection ----

    pub fn ended(&self) -> Option<VmEnd> {
        self.ended
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Every access that broke the access rule, in order.
    pub fn violations(&self) -> &[AccessViolation] {
        &self.violations
    }

    pub fn pending_command(&self) -> u32 {
        self.dev.cmd
    }

    pub fn device_status(&self) -> u8 {
        self.dev.status
    }

    pub fn guest_features(&self) -> u32 {
        self.dev.guest_features
    }

    /// ISR without reading (and so without clearing) it.
    pub fn isr(&self) -> u8 {
        self.dev.isr
    }

    /// The device's INTA line: raised with a posted command, lowered by an
    /// ISR read.
    pub fn irq_asserted(&self) -> bool {
        self.dev.irq
    }

    /// Whether a non-forced stop (or SHUTDOWN request) is in progress.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    pub fn armed_timer(&self) -> Option<ArmedTimer> {
        self.dev.timer.map(|(kind, deadline)| ArmedTimer {
            kind,
            deadline: deadline.saturating_sub(self.origin),
        })
    }

    /// Host `gettimeofday()` now: the clock's realtime plus the host offset.
    pub fn host_now_ns(&self) -> i64 {
        self.clock.realtime_ns().saturating_add(self.offset_ns)
    }

    /// Host monotonic time since [`Vmd::new`].
    pub fn elapsed(&self) -> Duration {
        self.clock.monotonic().saturating_sub(self.origin)
    }

    /// BAR accesses made while the VM was running.
    pub fn accesses(&self) -> u64 {
        self.accesses
    }

    /// Every value the guest wrote to device status, in order (kept across
    /// a VM restart).
    pub fn status_writes(&self) -> &[u8] {
        &self.status_writes
    }

    /// [`Vmd::status_writes`] with the time of each (since [`Vmd::new`]):
    /// e.g. when the guest's driver set DRIVER_OK.
    pub fn status_writes_at(&self) -> &[(Duration, u8)] {
        &self.status_writes_at
    }

    /// Writes to QUEUE_ADDRESS: (host time at the write in ns, value).
    pub fn probe_writes(&self) -> &[(i64, u32)] {
        &self.probe_writes
    }

    /// Every guest write to COMMAND while the VM ran, whatever its value (a
    /// NONE write leaves no line in the log): (time since [`Vmd::new`],
    /// value), in order, kept across a VM restart.
    pub fn command_writes(&self) -> &[(Duration, u32)] {
        &self.command_writes
    }

    pub fn config(&self) -> &VmdConfig {
        &self.config
    }

    // ---- internals ----

    /// vmm.c's TERMINATE_VM_REQUEST, then the VM process's `vmmci_ctl`.
    fn host_stop(&mut self, cmd: Command) -> Result<(), StopRefused> {
        let now = self.advance();
        if let Some(end) = self.ended {
            return Err(StopRefused::NotRunning(end));
        }
        if self.stopping {
            // vmm.c sends nothing while VM_STATE_SHUTDOWN is set.
            self.log(now, EventKind::AlreadyStopping);
            return Ok(());
        }
        self.stopping = true;
        self.log(now, EventKind::StopRequested { cmd });
        if self.ctl(cmd, now) == Ctl::Refused {
            // vm.c: `if (vmmci_ctl(...) == -1) _exit(0);`
            self.end(VmEnd::Refused, now);
            return Err(StopRefused::NoDriverOk);
        }
        Ok(())
    }

    /// `vmmci_ctl(cmd)`.
    fn ctl(&mut self, cmd: Command, now: Duration) -> Ctl {
        if self.dev.status & status::DRIVER_OK == 0 {
            self.log(now, EventKind::CtlRefused { cmd });
            return Ctl::Refused;
        }
        if cmd.raw() == self.dev.cmd {
            self.log(now, EventKind::CtlAlreadyPending { cmd });
            return Ctl::AlreadyPending;
        }
        match cmd {
            // No caller sends NONE; vmd does nothing with it.
            Command::None => Ctl::AlreadyPending,
            Command::Shutdown | Command::Reboot => {
                // Overwrites whatever was pending, SYNCRTC included.
                self.post(cmd);
                self.arm(TimerKind::Ack, now, self.config.ack_timeout);
                let timer = Some(self.config.ack_timeout);
                self.log(now, EventKind::Posted { cmd, timer });
                Ctl::Posted
            }
            Command::SyncRtc => {
                // vmd tests the guest's word as written, not an intersection.
                if self.dev.guest_features & Features::SYNCRTC.0 == 0 {
                    self.log(now, EventKind::RtcSyncSkipped);
                    return Ctl::Skipped;
                }
                // Like vmd, this also overwrites a pending SHUTDOWN/REBOOT
                // (the timer keeps running).
                self.post(cmd);
                self.log(now, EventKind::Posted { cmd, timer: None });
                Ctl::Posted
            }
        }
    }

    fn post(&mut self, cmd: Command) {
        self.dev.cmd = cmd.raw();
        self.dev.isr = ISR_CONFIG_CHANGE;
        self.dev.irq = true;
    }

    /// `vmmci_ack(value)`: a guest write to COMMAND.
    fn ack(&mut self, value: u32, now: Duration) {
        let cmd = match Command::from_raw(value) {
            Ok(cmd) => cmd,
            Err(_) => {
                self.log(now, EventKind::IllegalRequest { value });
                return;
            }
        };
        match cmd {
            Command::None => {}
            Command::Shutdown if self.dev.cmd == Command::NONE => {
                // A guest-initiated power-down (OpenBSD's driver writes it
                // at the end of its power-down; a Linux guest has no use
                // for it: its halt ends the VM, see guest_poweroff_halt).
                let t = self.config.ack_timeout;
                self.arm(TimerKind::PowerDown, now, t);
                self.log(now, EventKind::GuestShutdown { timeout: t });
            }
            Command::Shutdown | Command::Reboot => {
                if cmd.raw() == self.dev.cmd {
                    // The ACK; the command stays pending, each ACK re-arms.
                    let t = self.config.long_timeout;
                    self.arm(TimerKind::Long, now, t);
                    self.log(now, EventKind::Ack { cmd, long: t });
                } else {
                    let pending = self.dev.cmd;
                    self.log(now, EventKind::AckIgnored { cmd, pending });
                }
            }
            Command::SyncRtc => {
                // vmd clears unconditionally, even a pending REBOOT.
                let was = self.dev.cmd;
                self.dev.cmd = Command::NONE;
                self.log(now, EventKind::RtcSyncAcked { was });
            }
        }
    }

    /// `evtimer_add`: vmd has one timer, re-adding replaces the deadline.
    fn arm(&mut self, kind: TimerKind, now: Duration, after: Duration) {
        self.dev.timer = Some((kind, now.saturating_add(after)));
    }

    fn end(&mut self, end: VmEnd, at: Duration) {
        self.ended = Some(end);
        self.dev.timer = None;
        self.dev.irq = false;
        self.log(at, EventKind::Ended(end));
    }

    /// Run the timer and RTC ticks due by now, in order; return now.
    fn advance(&mut self) -> Duration {
        let now = self.clock.monotonic();
        let host_now = self.host_now_ns();
        while self.ended.is_none() {
            let timer = self.dev.timer.filter(|&(_, deadline)| deadline <= now);
            let tick_due = self.next_tick <= now;
            match timer {
                Some((kind, deadline)) if !tick_due || deadline < self.next_tick => {
                    self.end(kind.end(), deadline);
                }
                _ if tick_due => self.run_ticks(now, host_now),
                _ => break,
            }
        }
        now
    }

    /// Run the first due RTC tick, then skip the rest of the due ones.
    ///
    /// Host time at a past tick is reconstructed as `host_now − (now − tick)`,
    /// so a step that happened since the last tick shows at the first one
    /// and every later catch-up tick sees exactly +1 s: they cannot send
    /// SYNCRTC, so they are skipped in one go (no loop over a long sleep).
    fn run_ticks(&mut self, now: Duration, host_now: i64) {
        let host_at =
            |tick: Duration| host_now.saturating_sub(duration_ns(now.saturating_sub(tick)));
        let tick = self.next_tick;
        self.rtc_tick(tick, host_at(tick));
        let rest = now.saturating_sub(tick).as_secs();
        let last = tick.saturating_add(Duration::from_secs(rest));
        if rest > 0 {
            self.rtc_now_s = host_at(last).div_euclid(NANOS_PER_SEC);
        }
        self.next_tick = last.saturating_add(RTC_TICK);
    }

    /// `rtc_fire1`: `old = rtc.now; time(&rtc.now); if (rtc.now - old > 5)
    /// vmmci_ctl(VMMCI_SYNCRTC);` so only a forward step is noticed.
    fn rtc_tick(&mut self, at: Duration, host_ns: i64) {
        let now_s = host_ns.div_euclid(NANOS_PER_SEC);
        let delta = now_s.saturating_sub(self.rtc_now_s);
        self.rtc_now_s = now_s;
        if delta > timeouts::RTC_DRIFT_SECS {
            self.log(at, EventKind::RtcDrift { secs: delta });
            // The tick ignores vmmci_ctl's answer.
            self.ctl(Command::SyncRtc, at);
        } else if !(0..=1).contains(&delta) {
            self.log(at, EventKind::RtcNoResync { secs: delta });
        }
    }

    /// Resolve an access to a register, recording any rule it breaks.
    fn decode(&mut self, offset: u64, size: u8, write: bool, now: Duration) -> Option<Register> {
        let reg = if offset < u64::from(pci::BAR0_SIZE) {
            Register::at(offset)
        } else {
            None
        };
        let reason = if offset >= u64::from(pci::BAR0_SIZE) {
            Some(ViolationReason::OutsideBar)
        } else if Width::from_bytes(usize::from(size)).is_none() {
            Some(ViolationReason::BadSize)
        } else {
            match reg {
                None => Some(ViolationReason::Undecoded),
                Some(r) if r.width().bytes() != usize::from(size) => {
                    Some(ViolationReason::WrongWidth {
                        reg: r,
                        natural: r.width(),
                    })
                }
                Some(_) => None,
            }
        };
        if let Some(reason) = reason {
            let at = now.saturating_sub(self.origin);
            self.violations.push(AccessViolation {
                at,
                offset,
                size,
                write,
                reason,
            });
        }
        reg
    }

    fn log(&mut self, at: Duration, kind: EventKind) {
        let at = at.saturating_sub(self.origin);
        self.events.push(Event { at, kind });
    }
}

/// Bits one access of `size` bytes carries; an impossible size is taken as 4.
fn size_mask(size: u8) -> u32 {
    Width::from_bytes(usize::from(size)).map_or(u32::MAX, Width::mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// 2025-06-15 15:06:40.123456789 UTC.
    const T0: i64 = 1_750_000_000 * NANOS_PER_SEC + 123_456_789;
    const S: i64 = NANOS_PER_SEC;

    fn sim() -> (Vmd, ManualClock) {
        let clock = ManualClock::new(T0);
        (
            Vmd::new(VmdConfig::default(), Box::new(clock.clone())),
            clock,
        )
    }

    /// The OpenBSD driver's handshake, at natural widths.
    fn handshake(v: &mut Vmd, accept: u32) {
        v.bar_write(Register::DEVICE_STATUS, 1, 0);
        v.bar_write(Register::DEVICE_STATUS, 1, 1);
        v.bar_write(Register::DEVICE_STATUS, 1, 1 | 2);
        let offered = v.bar_read(Register::DEVICE_FEATURES, 4);
        v.bar_write(Register::GUEST_FEATURES, 4, offered & accept);
        v.bar_write(Register::DEVICE_STATUS, 1, 1 | 2 | 4);
    }

    fn ready() -> (Vmd, ManualClock) {
        let (mut v, c) = sim();
        handshake(&mut v, 0x7);
        (v, c)
    }

    fn read_cmd(v: &mut Vmd) -> u32 {
        v.bar_read(Register::COMMAND, 4)
    }

    fn ack(v: &mut Vmd, cmd: u32) {
        v.bar_write(Register::COMMAND, 4, cmd);
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn has_event(v: &Vmd, text: &str) -> bool {
        v.events().iter().any(|e| e.to_string().contains(text))
    }

    #[test]
    fn handshake_in_order_with_no_violations() {
        let (v, _) = ready();
        assert_eq!(v.status_writes(), &[0, 1, 3, 7]);
        assert_eq!(v.device_status(), 7);
        assert_eq!(v.guest_features(), 7);
        assert!(v.violations().is_empty(), "{:?}", v.violations());
        assert_eq!(v.accesses(), 6);
        assert!(v.events().is_empty());
    }

    #[test]
    fn status_writes_carry_their_time() {
        let (mut v, c) = sim();
        c.advance(secs(1.5));
        handshake(&mut v, 0x7);
        let at: Vec<(Duration, u8)> = v.status_writes_at().to_vec();
        assert_eq!(
            at,
            [0u8, 1, 3, 7].map(|s| (secs(1.5), s)).to_vec(),
            "times since Vmd::new, the values as status_writes()"
        );
    }

    #[test]
    fn stop_before_driver_ok_is_refused_and_ends_the_vm() {
        let (mut v, _) = sim();
        v.bar_write(Register::DEVICE_STATUS, 1, 1 | 2);
        assert_eq!(v.vmctl_stop(), Err(StopRefused::NoDriverOk));
        assert_eq!(v.ended(), Some(VmEnd::Refused));
        assert!(has_event(&v, "REBOOT refused"));
        assert_eq!(v.bar_read(Register::COMMAND, 4), 0xffff_ffff);
        assert_eq!(v.vmctl_stop(), Err(StopRefused::NotRunning(VmEnd::Refused)));
    }

    #[test]
    fn stop_posts_reboot_and_ack_within_3s_arms_the_long_timer() {
        let (mut v, c) = ready();
        assert_eq!(v.vmctl_stop(), Ok(()));
        assert!(v.stopping());
        assert_eq!(v.pending_command(), Command::REBOOT);
        assert!(v.irq_asserted());
        assert_eq!(
            v.armed_timer(),
            Some(ArmedTimer {
                kind: TimerKind::Ack,
                deadline: secs(3.0)
            })
        );
        // ISR reads 2 once, then 0.
        assert_eq!(v.bar_read(Register::ISR, 1), 2);
        assert_eq!(v.bar_read(Register::ISR, 1), 0);
        assert!(!v.irq_asserted());
        c.advance(secs(2.5));
        assert_eq!(read_cmd(&mut v), Command::REBOOT);
        ack(&mut v, Command::REBOOT);
        assert_eq!(
            v.armed_timer(),
            Some(ArmedTimer {
                kind: TimerKind::Long,
                deadline: secs(122.5)
            })
        );
        // The command stays pending after the ACK.
        assert_eq!(v.pending_command(), Command::REBOOT);
        c.advance(secs(10.0));
        v.poll();
        assert_eq!(v.ended(), None);
        assert!(has_event(
            &v,
            "vmmci: ack received for REBOOT, long timer armed (120 s)"
        ));
    }

    #[test]
    fn no_ack_ends_at_3s_not_before() {
        let (mut v, c) = ready();
        v.vmctl_stop().unwrap();
        c.advance(secs(2.999));
        v.poll();
        assert_eq!(v.ended(), None);
        c.advance(secs(0.001));
        v.poll();
        assert_eq!(v.ended(), Some(VmEnd::AckTimeout));
        let last = v.events().last().unwrap();
        assert_eq!(last.at, secs(3.0));
        assert_eq!(last.to_string(), "VM ended: ack timeout");
        // An ACK that arrives late finds a dead device.
        ack(&mut v, Command::REBOOT);
        assert_eq!(v.ended(), Some(VmEnd::AckTimeout));
    }

    #[test]
    fn late_ack_is_too_late_even_when_noticed_at_the_same_access() {
        let (mut v, c) = ready();
        v.vmctl_stop().unwrap();
        c.advance(secs(3.5));
        // The timer fired at 3 s; this write comes after it.
        ack(&mut v, Command::REBOOT);
        assert_eq!(v.ended(), Some(VmEnd::AckTimeout));
        assert!(!has_event(&v, "ack received"));
    }

    #[test]
    fn ack_then_reset_is_a_clean_stop() {
        let (mut v, c) = ready();
        v.vmctl_stop().unwrap();
        c.advance(secs(0.2));
        ack(&mut v, Command::REBOOT);
        c.advance(secs(30.0));
        v.guest_reset();
        assert_eq!(v.ended(), Some(VmEnd::CleanStop));
        assert_eq!(v.armed_timer(), None);
    }

    #[test]
    fn ack_then_no_reset_ends_after_the_long_timeout() {
        let (mut v, c) = ready();
        v.vmctl_stop().unwrap();
        c.advance(secs(1.0));
        ack(&mut v, Command::REBOOT);
        c.advance(secs(119.999));
        v.poll();
        assert_eq!(v.ended(), None);
        c.advance(secs(0.001));
        v.poll();
        assert_eq!(v.ended(), Some(VmEnd::LongTimeout));
        assert_eq!(v.events().last().unwrap().at, secs(121.0));
    }

    #[test]
    fn a_halt_while_stopping_ends_the_vm_at_once_as_a_failed_vcpu() {
        // A guest that halts instead of rebooting on `vmctl stop`: the VM
        // ends at the HLT, not at the long timeout, and not as a clean stop.
        let (mut v, c) = ready();
        v.vmctl_stop().unwrap();
        ack(&mut v, Command::REBOOT);
        c.advance(secs(7.0));
        v.guest_poweroff_halt();
        assert_eq!(v.ended(), Some(VmEnd::Halted));
        assert_eq!(v.armed_timer(), None);
        assert!(!v.irq_asserted());
        let last: Vec<_> = v.events().iter().rev().take(2).collect();
        assert_eq!(last[0].kind, EventKind::Ended(VmEnd::Halted));
        assert_eq!(last[1].kind, EventKind::GuestHalted);
        assert_eq!(last[0].at, secs(7.0));
        assert!(has_event(&v, "guest HLT with interrupts off"));
        // Nothing later changes how it ended.
        c.advance(secs(200.0));
        v.poll();
        v.guest_reset();
        v.guest_poweroff_halt();
        assert_eq!(v.ended(), Some(VmEnd::Halted));
        assert_eq!(v.vmctl_stop(), Err(StopRefused::NotRunning(VmEnd::Halted)));
    }

    #[test]
    fn a_halt_with_nothing_going_on_ends_the_vm_at_once() {
        // A Linux `poweroff` or `halt` on vmd (no ACPI): no write to COMMAND
        // is needed for the VM to end, and no timer is involved.
        let (mut v, c) = ready();
        c.advance(secs(30.0));
        v.guest_poweroff_halt();
        assert_eq!(v.ended(), Some(VmEnd::Halted));
        assert!(v.command_writes().is_empty());
        assert_eq!(v.events().last().unwrap().at, secs(30.0));
    }

    #[test]
    fn a_halt_ends_the_vm_before_the_power_down_timer_fires() {
        // A guest SHUTDOWN write arms the 3 s kill; the halt 1 s later ends
        // the VM then, as Halted: the write bought nothing.
        let (mut v, c) = ready();
        ack(&mut v, Command::SHUTDOWN);
        assert_eq!(v.armed_timer().map(|t| t.kind), Some(TimerKind::PowerDown));
        c.advance(secs(1.0));
        v.guest_poweroff_halt();
        assert_eq!(v.ended(), Some(VmEnd::Halted));
        c.advance(secs(5.0));
        v.poll();
        assert_eq!(v.ended(), Some(VmEnd::Halted));
    }

    #[test]
    fn a_halt_without_driver_ok_ends_the_vm_too() {
        // vmm ends it, not vmmci: no agent is needed.
        let (mut v, _c) = sim();
        v.guest_poweroff_halt();
        assert_eq!(v.ended(), Some(VmEnd::Halted));
    }

    #[test]
    fn every_command_write_is_recorded_even_none() {
        let (mut v, c) = ready();
        c.advance(secs(2.0));
        ack(&mut v, Command::NONE);
        ack(&mut v, 9);
        v.request_syncrtc();
        ack(&mut v, Command::SYNCRTC);
        assert_eq!(
            v.command_writes(),
            &[
                (secs(2.0), Command::NONE),
                (secs(2.0), 9),
                (secs(2.0), Command::SYNCRTC)
            ]
        );
    }

    #[test]
    fn repeated_acks_rearm_the_long_timer() {
        let (mut v, c) = ready();
        v.vmctl_stop().unwrap();
        ack(&mut v, Command::REBOOT);
        c.advance(secs(100.0));
        ack(&mut v, Command::REBOOT);
        c.advance(secs(100.0));
        v.poll();
        assert_eq!(v.ended(), None);
        c.advance(secs(20.0));
        v.poll();
        assert_eq!(v.ended(), Some(VmEnd::LongTimeout));
        assert_eq!(v.events().last().unwrap().at, secs(220.0));
    }

    #[test]
    fn pre_2019_long_timeout_is_30s() {
        let c = ManualClock::new(T0);
        let mut v = Vmd::new(VmdConfig::before_2019(), Box::new(c.clone()));
        handshake(&mut v, 7);
        v.vmctl_stop().unwrap();
        ack(&mut v, Command::REBOOT);
        c.advance(secs(30.0));
        v.poll();
        assert_eq!(v.ended(), Some(VmEnd::LongTimeout));
    }

    #[test]
    fn guest_shutdown_with_nothing_pending_powers_down_after_3s() {
        let (mut v, c) = ready();
        c.advance(secs(5.0));
        ack(&mut v, Command::SHUTDOWN);
        assert_eq!(v.armed_timer().map(|t| t.kind), Some(TimerKind::PowerDown));
        assert!(has_event(&v, "guest requested shutdown, timer armed (3 s)"));
        c.advance(secs(2.9));
        v.poll();
        assert_eq!(v.ended(), None);
        c.advance(secs(0.1));
        v.poll();
        assert_eq!(v.ended(), Some(VmEnd::PowerDown));
    }

    #[test]
    fn guest_reset_during_power_down_restarts_the_vm() {
        let (mut v, c) = ready();
        ack(&mut v, Command::SHUTDOWN);
        v.guest_reset();
        c.advance(secs(10.0));
        v.poll();
        assert_eq!(v.ended(), None);
        assert_eq!(v.armed_timer(), None);
    }

    #[test]
    fn host_shutdown_then_guest_shutdown_write_is_an_ack_not_a_power_down() {
        // With SHUTDOWN pending, the guest's power-down write matches it:
        // vmd re-arms the long timer instead of the 3 s one.
        let (mut v, c) = ready();
        v.request_shutdown().unwrap();
        assert_eq!(v.pending_command(), Command::SHUTDOWN);
        ack(&mut v, Command::SHUTDOWN);
        c.advance(secs(5.0));
        ack(&mut v, Command::SHUTDOWN);
        c.advance(secs(5.0));
        v.poll();
        assert_eq!(v.ended(), None);
        assert_eq!(v.armed_timer().map(|t| t.kind), Some(TimerKind::Long));
        c.advance(secs(115.0));
        v.poll();
        assert_eq!(v.ended(), Some(VmEnd::LongTimeout));
    }

    #[test]
    fn reboot_write_with_nothing_pending_is_ignored() {
        let (mut v, c) = ready();
        ack(&mut v, Command::REBOOT);
        assert_eq!(v.armed_timer(), None);
        assert!(has_event(
            &v,
            "REBOOT written while 0x0 pending, not an ack, ignored"
        ));
        c.advance(secs(500.0));
        v.poll();
        assert_eq!(v.ended(), None);
    }

    #[test]
    fn syncrtc_only_with_the_accepted_feature() {
        let (mut v, c) = sim();
        handshake(&mut v, 0x3);
        assert!(!v.request_syncrtc());
        assert_eq!(v.pending_command(), Command::NONE);
        assert!(has_event(&v, "RTC sync skipped"));

        let (mut v, _) = ready();
        assert!(v.request_syncrtc());
        assert_eq!(v.pending_command(), Command::SYNCRTC);
        assert_eq!(v.isr(), ISR_CONFIG_CHANGE);
        assert_eq!(v.armed_timer(), None);
        // Already pending: not posted again, still true.
        assert!(v.request_syncrtc());
        assert!(has_event(&v, "SYNCRTC already pending"));
        c.advance(secs(1000.0));
        v.poll();
        assert_eq!(v.ended(), None);
    }

    #[test]
    fn syncrtc_without_driver_ok_is_refused() {
        let (mut v, _) = sim();
        v.bar_write(Register::GUEST_FEATURES, 4, 7);
        v.bar_write(Register::DEVICE_STATUS, 1, 3);
        assert!(!v.request_syncrtc());
        assert_eq!(v.pending_command(), Command::NONE);
        // Unlike a stop, a refused SYNCRTC does not end the VM.
        assert_eq!(v.ended(), None);
    }

    #[test]
    fn syncrtc_ack_clears_the_pending_command() {
        let (mut v, _) = ready();
        v.request_syncrtc();
        assert_eq!(read_cmd(&mut v), Command::SYNCRTC);
        ack(&mut v, Command::SYNCRTC);
        assert_eq!(v.pending_command(), Command::NONE);
        assert_eq!(read_cmd(&mut v), Command::NONE);
        // Cleared, so the next request posts again.
        assert!(v.request_syncrtc());
        assert_eq!(v.pending_command(), Command::SYNCRTC);
    }

    #[test]
    fn reboot_overwrites_a_pending_syncrtc_and_syncrtc_overwrites_reboot() {
        let (mut v, c) = ready();
        v.request_syncrtc();
        v.vmctl_stop().unwrap();
        assert_eq!(v.pending_command(), Command::REBOOT);
        assert_eq!(v.armed_timer().map(|t| t.kind), Some(TimerKind::Ack));
        // vmd's vmmci_ctl lets SYNCRTC replace REBOOT; the timer runs on.
        v.jump_host_clock(60 * S);
        c.advance(secs(1.0));
        v.poll();
        assert_eq!(v.pending_command(), Command::SYNCRTC);
        c.advance(secs(2.0));
        v.poll();
        assert_eq!(v.ended(), Some(VmEnd::AckTimeout));
    }

    #[test]
    fn forward_jump_of_90s_sends_syncrtc_at_the_next_tick() {
        let (mut v, c) = ready();
        c.advance(secs(10.5));
        v.poll();
        v.jump_host_clock(90 * S);
        assert_eq!(v.pending_command(), Command::NONE);
        c.advance(secs(0.5));
        v.poll();
        assert_eq!(v.pending_command(), Command::SYNCRTC);
        assert!(has_event(
            &v,
            "rtc_fire1: RTC clock drift (91s), requesting guest resync"
        ));
        let drift = v
            .events()
            .iter()
            .find(|e| matches!(e.kind, EventKind::RtcDrift { .. }))
            .unwrap();
        assert_eq!(drift.at, secs(11.0));
        // Host time really moved.
        assert_eq!(v.host_now_ns(), T0 + 11 * S + 90 * S);
    }

    #[test]
    fn backward_jump_of_40s_sends_no_syncrtc() {
        let (mut v, c) = ready();
        v.jump_host_clock(-40 * S);
        c.advance(secs(5.0));
        v.poll();
        assert_eq!(v.pending_command(), Command::NONE);
        assert!(has_event(&v, "host time moved -39 s between ticks"));
        assert_eq!(v.isr(), 0);
    }

    #[test]
    fn small_forward_jump_of_3s_sends_no_syncrtc() {
        let (mut v, c) = ready();
        v.jump_host_clock(3 * S);
        c.advance(secs(3.0));
        v.poll();
        assert_eq!(v.pending_command(), Command::NONE);
        assert!(has_event(&v, "host time moved +4 s"));
    }

    #[test]
    fn a_realtime_step_behind_vmds_back_is_seen_at_the_next_tick() {
        // A host suspend: realtime moves 10 min, monotonic only a little.
        let (mut v, c) = ready();
        c.advance(secs(3.2));
        v.poll();
        c.set_realtime_ns(c.realtime_ns() + 600 * S);
        c.advance(secs(0.8));
        v.poll();
        assert_eq!(v.pending_command(), Command::SYNCRTC);
    }

    #[test]
    fn a_long_quiet_stretch_is_caught_up_without_false_drift() {
        let (mut v, c) = ready();
        c.advance(secs(86_400.0 * 365.0));
        v.poll();
        assert_eq!(v.pending_command(), Command::NONE);
        assert!(v.events().is_empty(), "{:?}", v.events());
        c.advance(secs(1.0));
        v.poll();
        assert!(v.events().is_empty());
    }

    #[test]
    fn snapshot_is_taken_only_by_the_time_sec_read() {
        let (mut v, c) = ready();
        // Nothing before the first snapshot.
        assert_eq!(v.bar_read(Register::TIME_USEC_LOW, 4), 0);
        let sec = v.bar_read(Register::TIME_SEC_LOW, 4);
        assert_eq!(i64::from(sec), T0 / S);
        c.advance(secs(0.5));
        // Still the first snapshot's µs (truncated, not rounded).
        assert_eq!(v.bar_read(Register::TIME_USEC_LOW, 4), 123_456);
        assert_eq!(v.bar_read(Register::TIME_USEC_LOW, 4), 123_456);
        let sec2 = v.bar_read(Register::TIME_SEC_LOW, 4);
        assert_eq!(sec2, sec);
        assert_eq!(v.bar_read(Register::TIME_USEC_LOW, 4), 623_456);
    }

    #[test]
    fn high_words_read_zero() {
        let (mut v, _) = ready();
        v.bar_read(Register::TIME_SEC_LOW, 4);
        assert_eq!(v.bar_read(Register::TIME_SEC_HIGH, 4), 0);
        assert_eq!(v.bar_read(Register::TIME_USEC_HIGH, 4), 0);
    }

    #[test]
    fn seconds_are_the_low_32_bits_and_include_the_host_offset() {
        let (mut v, _) = ready();
        let to_2106 = (1_i64 << 32) * S + 5 * S - T0;
        v.jump_host_clock(to_2106);
        assert_eq!(v.bar_read(Register::TIME_SEC_LOW, 4), 5);
        assert_eq!(v.bar_read(Register::TIME_SEC_HIGH, 4), 0);
    }

    #[test]
    fn undecoded_offsets_return_the_previous_read_and_are_flagged() {
        let (mut v, _) = ready();
        let sec = v.bar_read(Register::TIME_SEC_LOW, 4);
        assert_eq!(v.bar_read(0x15, 4), sec);
        assert_eq!(v.bar_read(0x16, 1), sec & 0xff);
        let bad = v.violations();
        assert_eq!(bad.len(), 2);
        assert_eq!((bad[0].offset, bad[0].size, bad[0].write), (0x15, 4, false));
        assert_eq!(bad[0].reason, ViolationReason::Undecoded);
        // Byte-wise assembly of TIME_SEC, what Linux's legacy accessors do,
        // gives junk in bytes 1-3.
        let b0 = v.bar_read(Register::TIME_SEC_LOW, 1);
        let b1 = v.bar_read(Register::TIME_SEC_LOW + 1, 1);
        assert_eq!(b0, sec & 0xff);
        assert_eq!(b1, b0);
        // Undecoded writes do nothing, but are flagged too.
        v.bar_write(0x28, 4, 0x1234);
        assert_eq!(
            v.violations().last().unwrap().reason,
            ViolationReason::Undecoded
        );
        v.bar_write(0x1000, 4, 0);
        assert_eq!(
            v.violations().last().unwrap().reason,
            ViolationReason::OutsideBar
        );
        v.bar_read(Register::COMMAND, 3);
        assert_eq!(
            v.violations().last().unwrap().reason,
            ViolationReason::BadSize
        );
    }

    #[test]
    fn wrong_widths_work_like_vmd_but_are_flagged() {
        let (mut v, _) = ready();
        v.vmctl_stop().unwrap();
        // 4 bytes at status: vmd returns the status byte.
        assert_eq!(v.bar_read(Register::DEVICE_STATUS, 4), 7);
        // 1 byte of COMMAND: the low byte.
        assert_eq!(v.bar_read(Register::COMMAND, 1), 2);
        let bad = v.violations();
        assert_eq!(bad.len(), 2);
        assert_eq!(
            bad[0].reason,
            ViolationReason::WrongWidth {
                reg: Register::DeviceStatus,
                natural: Width::Byte
            }
        );
        assert_eq!(
            bad[1].reason,
            ViolationReason::WrongWidth {
                reg: Register::Command,
                natural: Width::Dword
            }
        );
        // vmd passes the whole EAX on a write: junk above the byte counts.
        v.bar_write(Register::COMMAND, 1, 0x0000_0102);
        assert!(has_event(&v, "illegal request 258"));
        assert_eq!(v.armed_timer().map(|t| t.kind), Some(TimerKind::Ack));
        // A wide status write keeps the low byte (uint8_t in vmd).
        v.bar_write(Register::DEVICE_STATUS, 4, 0x0203_0407);
        assert_eq!(v.device_status(), 7);
    }

    #[test]
    fn status_zero_keeps_pending_command_isr_and_timer() {
        let (mut v, c) = ready();
        v.vmctl_stop().unwrap();
        v.bar_write(Register::DEVICE_STATUS, 1, 0);
        assert_eq!(v.device_status(), 0);
        assert_eq!(v.pending_command(), Command::REBOOT);
        assert_eq!(v.isr(), ISR_CONFIG_CHANGE);
        assert_eq!(v.guest_features(), 7);
        assert!(has_event(
            &v,
            "guest wrote status 0; no real reset, pending command 0x2"
        ));
        // A restarting driver still sees the command.
        handshake(&mut v, 7);
        assert_eq!(read_cmd(&mut v), Command::REBOOT);
        c.advance(secs(3.0));
        v.poll();
        assert_eq!(v.ended(), Some(VmEnd::AckTimeout));
    }

    #[test]
    fn stop_when_reboot_is_already_pending_is_a_no_op() {
        let (mut v, c) = ready();
        v.set_command_raw(Command::REBOOT);
        assert_eq!(v.bar_read(Register::ISR, 1), 2);
        v.vmctl_stop().unwrap();
        // Nothing posted: no ISR, no timer; vmd waits for a reset forever.
        assert_eq!(v.isr(), 0);
        assert_eq!(v.armed_timer(), None);
        assert!(has_event(&v, "REBOOT already pending, nothing done"));
        c.advance(secs(600.0));
        v.poll();
        assert_eq!(v.ended(), None);
        v.guest_reset();
        assert_eq!(v.ended(), Some(VmEnd::CleanStop));
    }

    #[test]
    fn a_second_stop_sends_nothing() {
        let (mut v, c) = ready();
        v.vmctl_stop().unwrap();
        c.advance(secs(2.0));
        v.vmctl_stop().unwrap();
        assert!(has_event(&v, "already stopping"));
        // The first ACK timer was not re-armed.
        assert_eq!(v.armed_timer().map(|t| t.deadline), Some(secs(3.0)));
    }

    #[test]
    fn garbage_commands() {
        let (mut v, c) = ready();
        v.set_command_raw(0xdead_beef);
        assert_eq!(read_cmd(&mut v), 0xdead_beef);
        assert_eq!(v.isr(), 2);
        assert_eq!(v.armed_timer(), None);
        ack(&mut v, 7);
        assert!(has_event(&v, "vmmci_ack: illegal request 7"));
        assert_eq!(v.pending_command(), 0xdead_beef);
        // Acknowledging garbage is not possible: it is an illegal request.
        ack(&mut v, 0xdead_beef);
        assert_eq!(v.armed_timer(), None);
        c.advance(secs(500.0));
        v.poll();
        assert_eq!(v.ended(), None);
    }

    #[test]
    fn reset_without_a_stop_restarts_with_a_fresh_device() {
        let (mut v, c) = ready();
        v.jump_host_clock(7 * S);
        v.request_syncrtc();
        v.bar_read(Register::TIME_SEC_LOW, 4);
        v.guest_reset();
        assert_eq!(v.ended(), None);
        assert_eq!(v.pending_command(), Command::NONE);
        assert_eq!(v.device_status(), 0);
        assert_eq!(v.guest_features(), 0);
        assert_eq!(v.isr(), 0);
        assert_eq!(v.bar_read(Register::TIME_USEC_LOW, 4), 0);
        assert_eq!(v.host_now_ns(), T0 + 7 * S);
        assert!(has_event(&v, "VM reset, restarting"));
        // The new VM needs a new handshake before a stop is accepted.
        c.advance(secs(1.0));
        assert_eq!(v.vmctl_stop(), Err(StopRefused::NoDriverOk));
    }

    #[test]
    fn forced_stop_never_touches_vmmci() {
        let (mut v, _) = ready();
        v.vmctl_stop_force();
        assert_eq!(v.ended(), Some(VmEnd::Forced));
        assert_eq!(v.pending_command(), Command::NONE);
    }

    #[test]
    fn a_dead_device_reads_ones_and_records_nothing() {
        let (mut v, _) = ready();
        v.vmctl_stop_force();
        let (n, events) = (v.accesses(), v.events().len());
        assert_eq!(v.bar_read(Register::COMMAND, 4), 0xffff_ffff);
        assert_eq!(v.bar_read(Register::ISR, 1), 0xff);
        v.bar_write(Register::DEVICE_STATUS, 1, 0);
        v.bar_write(Register::QUEUE_ADDRESS, 4, 1);
        v.bar_write(0x15, 4, 1);
        assert_eq!(v.accesses(), n);
        assert_eq!(v.events().len(), events);
        assert!(v.violations().is_empty());
        assert!(v.probe_writes().is_empty());
        assert_eq!(v.status_writes(), &[0, 1, 3, 7]);
        assert!(!v.request_syncrtc());
    }

    #[test]
    fn plain_registers() {
        let (mut v, _) = ready();
        assert_eq!(v.bar_read(Register::DEVICE_FEATURES, 4), 7);
        v.bar_write(Register::DEVICE_FEATURES, 4, 0xff);
        assert_eq!(v.bar_read(Register::DEVICE_FEATURES, 4), 7);
        assert!(has_event(
            &v,
            "vmmci: illegal write 0xff to DEVICE_FEATURES"
        ));
        v.bar_write(Register::QUEUE_SIZE, 2, 16);
        assert_eq!(v.bar_read(Register::QUEUE_SIZE, 2), 0);
        v.bar_write(Register::ISR, 1, 2);
        assert_eq!(v.bar_read(Register::ISR, 1), 0);
        assert!(has_event(&v, "illegal write 0x2 to ISR"));
        v.bar_write(Register::QUEUE_SELECT, 2, 0x1_0003);
        assert_eq!(v.bar_read(Register::QUEUE_SELECT, 2), 3);
        v.bar_write(Register::QUEUE_NOTIFY, 2, 9);
        assert_eq!(v.bar_read(Register::QUEUE_NOTIFY, 2), 9);
        v.bar_write(Register::TIME_SEC_LOW, 4, 1);
        assert!(has_event(&v, "write 0x1 to TIME_SEC ignored"));
        let c = ManualClock::new(T0);
        let mut custom = Vmd::new(
            VmdConfig {
                features: 0x3,
                ..VmdConfig::default()
            },
            Box::new(c),
        );
        assert_eq!(custom.bar_read(Register::DEVICE_FEATURES, 4), 3);
    }

    #[test]
    fn probe_writes_carry_the_host_time() {
        let (mut v, c) = ready();
        v.jump_host_clock(-2 * S);
        c.advance(secs(0.25));
        v.bar_write(Register::QUEUE_ADDRESS, 4, 0xabcd);
        assert_eq!(v.probe_writes(), &[(T0 - 2 * S + S / 4, 0xabcd)]);
        assert_eq!(v.bar_read(Register::QUEUE_ADDRESS, 4), 0xabcd);
    }

    #[test]
    fn events_are_timestamped_and_ordered() {
        let (mut v, c) = ready();
        c.advance(secs(1.5));
        v.vmctl_stop().unwrap();
        c.advance(secs(10.0));
        v.poll();
        let times: Vec<_> = v.events().iter().map(|e| e.at).collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted);
        assert_eq!(v.events().last().unwrap().at, secs(4.5));
        assert_eq!(v.elapsed(), secs(11.5));
    }
}
