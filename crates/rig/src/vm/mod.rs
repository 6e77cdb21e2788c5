//! A VM as vmd runs it: QEMU with the simulated vmmci device, a ticker
//! that runs vmd's timers and ends the VM the way vmd would, and the host
//! side of vmctl.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmd_sim::{HostClock, StopRefused, SystemClock, Vmd, VmdConfig};

mod end;
mod shell;
mod ticker;

pub use end::{guest_crash_in_log, Ended, Outcome, GUEST_CRASH, GUEST_CRASH_MARKERS};
pub(crate) use shell::is_kernel_log_line;
pub use shell::Ran;

use crate::proxy::BarDevice;
use crate::qemu::{Qemu, QemuOptions};
use crate::{units, RigError};

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

    fn note(&self, s: String) {
        let at = self.elapsed();
        self.inner.qemu.log_line(&s);
        self.inner.state.lock().unwrap().log.push((at, s));
    }

    /// Host-side actions and their times.
    pub fn actions(&self) -> Vec<(Duration, String)> {
        self.inner.state.lock().unwrap().log.clone()
    }

    /// The vmd log, the rig's actions and the last `tail` bytes of the
    /// console, for a failure's message.
    pub fn dump(&self, tail: usize) -> String {
        format!(
            "--- vmd log ---\n{}--- host actions ---\n{:?}\n--- console tail ---\n{}\n",
            self.vmd_log(),
            self.actions(),
            self.console_tail(tail)
        )
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
        self.note(format!("host clock jump {:+.3} s", units::secs(delta_ns)));
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
}

/// The QEMU underneath: its console (`wait_console`, `send_console`,
/// `console_text`, …), `elapsed` and `kill`.
impl Deref for Vm {
    type Target = Qemu;

    fn deref(&self) -> &Qemu {
        &self.inner.qemu
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
