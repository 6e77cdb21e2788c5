//! A VM as vmd runs it: QEMU with the simulated vmmci device, a ticker
//! that runs vmd's timers and ends the VM the way vmd would, and the host
//! side of vmctl.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmd_sim::{HostClock, StopRefused, SystemClock, VmEnd, Vmd, VmdConfig};

use crate::proxy::BarDevice;
use crate::qemu::{Qemu, QemuOptions};
use crate::RigError;

/// How the VM ended, as the host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// QEMU exited on a guest reset while a stop was in progress.
    CleanStop,
    /// QEMU exited on a guest reset with no stop in progress: a reboot
    /// inside the guest (vmd would restart the VM; the rig does not).
    GuestReset,
    /// vmd ended the VM: SHUTDOWN/REBOOT not acknowledged in time.
    AckTimeout,
    /// vmd ended the VM: acknowledged, but no reset within the long timeout.
    LongTimeout,
    /// vmd ended the VM 3 s after a guest SHUTDOWN write with nothing
    /// pending (OpenBSD's power-down signal; the agent never writes it).
    PowerDown,
    /// The guest halted (a Linux power-off or halt: HLT with interrupts off,
    /// no ACPI): vmm fails the vcpu (EIO) and vmd ends the VM at once,
    /// stopping or not. Not a clean stop: vmd logs a failed vcpu.
    Halted,
    /// `vmctl stop` refused (no DRIVER_OK): vmd ended the VM at once.
    Refused,
    /// `vmctl stop -f`.
    Forced,
    /// QEMU went away on its own (crash, or a clean exit we cannot explain).
    QemuDied(String),
}

impl From<VmEnd> for Outcome {
    fn from(e: VmEnd) -> Outcome {
        match e {
            VmEnd::CleanStop => Outcome::CleanStop,
            VmEnd::AckTimeout => Outcome::AckTimeout,
            VmEnd::LongTimeout => Outcome::LongTimeout,
            VmEnd::PowerDown => Outcome::PowerDown,
            VmEnd::Halted => Outcome::Halted,
            VmEnd::Refused => Outcome::Refused,
            VmEnd::Forced => Outcome::Forced,
        }
    }
}

/// The end of a VM, with why and when (monotonic since QEMU was spawned).
#[derive(Clone, Debug)]
pub struct Ended {
    pub outcome: Outcome,
    pub at: Duration,
    pub why: String,
    pub qemu_status: Option<String>,
}

/// What to boot.
pub struct VmOptions {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub data_disk: Option<PathBuf>,
    /// Extra kernel command line.
    pub append: String,
    pub vmd_config: VmdConfig,
    /// The simulated host's clock (default: the real one).
    pub clock: Option<Box<dyn HostClock>>,
    pub memory_mb: u32,
    pub log_path: PathBuf,
    pub extra_qemu_args: Vec<String>,
}

impl VmOptions {
    pub fn new(kernel: PathBuf, initramfs: PathBuf, log_path: PathBuf) -> VmOptions {
        VmOptions {
            kernel,
            initramfs,
            data_disk: None,
            append: String::new(),
            vmd_config: VmdConfig::default(),
            clock: None,
            memory_mb: 256,
            log_path,
            extra_qemu_args: vec![],
        }
    }
}

/// BAR0 accesses go straight to the shared simulator.
struct SharedVmd(Arc<Mutex<Vmd>>);

impl BarDevice for SharedVmd {
    fn bar_read(&mut self, offset: u64, size: u8) -> u32 {
        self.0.lock().unwrap().bar_read(offset, size)
    }
    fn bar_write(&mut self, offset: u64, size: u8, value: u32) {
        self.0.lock().unwrap().bar_write(offset, size, value)
    }
}

struct VmState {
    ended: Option<Ended>,
    /// Time the console showed the guest halting (power-off under acpi=off),
    /// which is when the rig, as vmm would, ended the VM.
    halted_at: Option<Duration>,
    halt_scan: usize,
    /// Host-side actions with their times, for the report.
    log: Vec<(Duration, String)>,
}

struct Inner {
    qemu: Qemu,
    vmd: Arc<Mutex<Vmd>>,
    state: Mutex<VmState>,
    cv: Condvar,
    stop_ticker: AtomicBool,
}

/// A running (or ended) VM.
pub struct Vm {
    inner: Arc<Inner>,
    ticker: Option<JoinHandle<()>>,
}

/// The guest kernel's last line before `cli; hlt` on a power-off or halt
/// without ACPI (6.12 says "Power off not available: System halted instead").
const HALT_MARKERS: &[&str] = &[
    "reboot: Power down",
    "System halted",
    "reboot: System halted",
];

/// What a guest kernel prints when it crashes (an oops may leave it hung).
pub const GUEST_CRASH_MARKERS: &[&str] = &["Kernel panic - not syncing", "Oops: "];

impl Inner {
    fn record(&self, outcome: Outcome, why: String, status: Option<ExitStatus>) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.ended.is_some() {
            return false;
        }
        let at = self.qemu.elapsed();
        self.qemu.log_line(&format!("VM ended: {outcome:?}: {why}"));
        st.ended = Some(Ended {
            outcome,
            at,
            why,
            qemu_status: status.map(|s| format!("{s}")),
        });
        self.cv.notify_all();
        true
    }

    fn tick(&self) -> bool {
        // vmd's timers and RTC.
        let end = {
            let mut v = self.vmd.lock().unwrap();
            v.poll();
            v.ended()
        };
        if let Some(end) = end {
            if self.state.lock().unwrap().ended.is_none() {
                self.record(end.into(), format!("vmd: {end}"), None);
                // vmd tears the VM down: the guest gets no say.
                self.qemu.kill();
            }
        }
        // A halted guest (acpi=off): QEMU just sits, vmm would fail the
        // vcpu at the HLT (interrupts off) and vmd end the VM at once.
        if self.state.lock().unwrap().halted_at.is_none() {
            let (from, text) = {
                let c = self.qemu.shared.console.lock().unwrap();
                let mut st = self.state.lock().unwrap();
                let from = st.halt_scan.saturating_sub(64);
                st.halt_scan = c.data.len();
                (from, String::from_utf8_lossy(&c.data[from..]).into_owned())
            };
            let _ = from;
            // A crashed guest kernel never ends by itself: end the VM now
            // and say why, rather than wait for a timeout.
            if GUEST_CRASH_MARKERS.iter().any(|m| text.contains(m)) {
                let why = "guest kernel oops/panic (console)".to_string();
                self.record(Outcome::QemuDied("guest kernel crash".into()), why, None);
                self.qemu.kill();
            }
            if HALT_MARKERS.iter().any(|m| text.contains(m)) {
                let at = self.qemu.elapsed();
                self.state.lock().unwrap().halted_at = Some(at);
                self.qemu.log_line("guest halted (console)");
                let end = {
                    let mut v = self.vmd.lock().unwrap();
                    v.guest_poweroff_halt();
                    v.ended()
                };
                if let Some(end) = end {
                    // Halted, or what ended it before (the record keeps the first).
                    self.record(end.into(), format!("vmm/vmd: {end}"), None);
                }
                // As vmm does: the guest has no say after its HLT.
                self.qemu.kill();
            }
        }
        if let Some(status) = self.qemu.try_wait() {
            if self.state.lock().unwrap().ended.is_none() {
                if status.success() {
                    // -no-reboot: QEMU exits on a guest reset. Tell vmd.
                    let end = {
                        let mut v = self.vmd.lock().unwrap();
                        v.guest_reset();
                        v.ended()
                    };
                    match end {
                        Some(VmEnd::CleanStop) => self.record(
                            Outcome::CleanStop,
                            "guest reset while stopping".into(),
                            Some(status),
                        ),
                        Some(e) => {
                            self.record(e.into(), format!("vmd: {e} (at reset)"), Some(status))
                        }
                        None => self.record(
                            Outcome::GuestReset,
                            "guest reset, no stop in progress".into(),
                            Some(status),
                        ),
                    };
                } else {
                    let tail = self.qemu.console_tail(500);
                    self.record(
                        Outcome::QemuDied(format!("{status}")),
                        format!("QEMU exited: {status}; console tail: {tail}"),
                        Some(status),
                    );
                }
            }
            return false;
        }
        true
    }
}

impl Vm {
    /// Start QEMU with a fresh simulated vmd. Fails with [`RigError::Missing`]
    /// (never a skip) when QEMU or an artifact is missing.
    pub fn start(opts: VmOptions) -> Result<Vm, RigError> {
        let clock = opts.clock.unwrap_or_else(|| Box::new(SystemClock));
        let vmd = Arc::new(Mutex::new(Vmd::new(opts.vmd_config, clock)));
        let qopts = QemuOptions {
            kernel: opts.kernel,
            initramfs: opts.initramfs,
            data_disk: opts.data_disk,
            append: opts.append,
            memory_mb: opts.memory_mb,
            log_path: opts.log_path,
            extra_args: opts.extra_qemu_args,
        };
        let qemu = Qemu::start(&qopts, SharedVmd(vmd.clone()))?;
        let inner = Arc::new(Inner {
            qemu,
            vmd,
            state: Mutex::new(VmState {
                ended: None,
                halted_at: None,
                halt_scan: 0,
                log: vec![],
            }),
            cv: Condvar::new(),
            stop_ticker: AtomicBool::new(false),
        });
        let i2 = inner.clone();
        let ticker = std::thread::Builder::new()
            .name("rig-ticker".into())
            .spawn(move || {
                while !i2.stop_ticker.load(Ordering::Relaxed) {
                    if !i2.tick() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .map_err(|e| RigError::Io("spawn ticker".into(), e))?;
        Ok(Vm {
            inner,
            ticker: Some(ticker),
        })
    }

    pub fn qemu(&self) -> &Qemu {
        &self.inner.qemu
    }

    /// Time since QEMU was spawned.
    pub fn elapsed(&self) -> Duration {
        self.inner.qemu.elapsed()
    }

    fn note(&self, s: String) {
        let at = self.elapsed();
        self.inner.qemu.log_line(&s);
        self.inner.state.lock().unwrap().log.push((at, s));
    }

    /// Host-side actions and their times.
    pub fn actions(&self) -> Vec<(Duration, String)> {
        self.inner.state.lock().unwrap().log.clone()
    }

    /// Expect-style console wait (see [`Qemu::wait_console`]).
    pub fn wait_console(&self, needle: &str, timeout: Duration) -> Result<usize, RigError> {
        self.inner.qemu.wait_console(needle, timeout)
    }

    pub fn wait_console_from(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<usize, RigError> {
        self.inner.qemu.wait_console_from(from, needle, timeout)
    }

    pub fn send_console(&self, line: &str) -> Result<(), RigError> {
        self.inner.qemu.send_console(line)
    }

    /// Run a shell command on the console and wait for it to finish; returns
    /// what it printed (between our markers).
    pub fn run(&self, cmd: &str, timeout: Duration) -> Result<String, RigError> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // The echoed command line shows `RIG-B""n`; only the output shows `RIG-Bn`.
        let begin = format!("RIG-B{n}:");
        let end = format!("RIG-E{n}:");
        let from = self.console_len();
        self.send_console(&format!("echo RIG-B\"\"{n}:; {cmd}; echo RIG-E\"\"{n}:$?"))?;
        let b = self.wait_console_from(from, &begin, timeout)?;
        let e = self.wait_console_from(b, &end, timeout)?;
        let text = self.console_text();
        let out = &text.as_bytes()[b..e - end.len()];
        Ok(String::from_utf8_lossy(out).trim().to_string())
    }

    pub fn console_text(&self) -> String {
        self.inner.qemu.console_text()
    }

    pub fn console_len(&self) -> usize {
        self.inner.qemu.console_len()
    }

    pub fn console_tail(&self, n: usize) -> String {
        self.inner.qemu.console_tail(n)
    }

    /// `vmctl stop`: REBOOT to the guest; refused without DRIVER_OK (and the
    /// VM is then ended at once).
    pub fn vmctl_stop(&self) -> Result<(), StopRefused> {
        let r = self.inner.vmd.lock().unwrap().vmctl_stop();
        self.note(format!("vmctl stop -> {r:?}"));
        r
    }

    /// `vmctl stop -f`.
    pub fn vmctl_stop_force(&self) {
        self.inner.vmd.lock().unwrap().vmctl_stop_force();
        self.note("vmctl stop -f".into());
    }

    /// SHUTDOWN to the guest.
    pub fn request_shutdown(&self) -> Result<(), StopRefused> {
        let r = self.inner.vmd.lock().unwrap().request_shutdown();
        self.note(format!("request shutdown -> {r:?}"));
        r
    }

    pub fn request_syncrtc(&self) -> bool {
        let r = self.inner.vmd.lock().unwrap().request_syncrtc();
        self.note(format!("request syncrtc -> {r}"));
        r
    }

    pub fn jump_host_clock(&self, delta_ns: i64) {
        self.inner.vmd.lock().unwrap().jump_host_clock(delta_ns);
        self.note(format!("host clock jump {:+.3} s", delta_ns as f64 / 1e9));
    }

    pub fn set_command_raw(&self, value: u32) {
        self.inner.vmd.lock().unwrap().set_command_raw(value);
        self.note(format!("COMMAND := {value:#x} (raw)"));
    }

    /// Look at (or poke) the simulator.
    pub fn with_vmd<R>(&self, f: impl FnOnce(&mut Vmd) -> R) -> R {
        f(&mut self.inner.vmd.lock().unwrap())
    }

    /// The vmd log, one line per event, with times.
    pub fn vmd_log(&self) -> String {
        self.with_vmd(|v| v.events().iter().map(|e| format!("{e:#}\n")).collect())
    }

    /// Wait until the simulator satisfies `pred` (polled every 20 ms).
    pub fn wait_vmd(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Vmd) -> bool,
    ) -> Result<(), RigError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.with_vmd(|v| pred(v)) {
                return Ok(());
            }
            if let Some(e) = self.ended() {
                return Err(RigError::Exited {
                    what: format!("{what} (VM ended: {:?} {})", e.outcome, e.why),
                    tail: self.console_tail(3000),
                });
            }
            if Instant::now() >= deadline {
                return Err(RigError::Timeout {
                    what: format!("{what} ({timeout:?}); vmd log:\n{}", self.vmd_log()),
                    tail: self.console_tail(3000),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end, if the VM has ended.
    pub fn ended(&self) -> Option<Ended> {
        self.inner.state.lock().unwrap().ended.clone()
    }

    /// When the console showed the guest halting, if it did.
    pub fn halted_at(&self) -> Option<Duration> {
        self.inner.state.lock().unwrap().halted_at
    }

    /// Wait for the VM to end. On timeout, QEMU is killed and the error
    /// carries the console tail and the vmd log.
    pub fn wait_end(&self, timeout: Duration) -> Result<Ended, RigError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.state.lock().unwrap();
        loop {
            if let Some(e) = &st.ended {
                return Ok(e.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                return Err(RigError::Timeout {
                    what: format!("the VM to end ({timeout:?}); vmd log:\n{}", self.vmd_log()),
                    tail: self.console_tail(3000),
                });
            }
            st = self.inner.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Kill QEMU now (as a test teardown would).
    pub fn kill(&self) {
        self.inner.qemu.kill();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.inner.qemu.kill();
        // Leave vmd's side of the story in the console log too.
        let log = self.vmd_log();
        let (writes, violations) =
            self.with_vmd(|v| (v.status_writes().to_vec(), v.violations().len()));
        self.inner.qemu.log_line(&format!(
            "vmd log:\n{log}### status writes {writes:x?}, {violations} access-rule violations"
        ));
        let _ = self.inner.qemu.wait_exit(Duration::from_secs(5));
        // Let the ticker record the exit, then stop it.
        std::thread::sleep(Duration::from_millis(20));
        self.inner.stop_ticker.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
