//! QEMU process, serial console and proxy-device thread, independent of
//! what device model sits behind BAR0 (see [`crate::vm`] for the vmd one).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::proxy::{self, BarDevice, ProxyDevice, ProxyStats};
use crate::RigError;

mod cmdline;

pub use cmdline::guest_clock_params;

/// How to start QEMU.
#[derive(Clone, Debug)]
pub struct QemuOptions {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Raw ext4 image attached as virtio-blk-pci (`/dev/vda`); the kernel
    /// command line then carries `rig.data` so the guest mounts it.
    pub data_disk: Option<PathBuf>,
    /// Extra kernel command line (after `console=ttyS0`).
    pub append: String,
    pub memory_mb: u32,
    /// Everything the console prints (and QEMU's stderr) is appended here.
    pub log_path: PathBuf,
    /// Extra QEMU arguments, inserted before the proxy device.
    pub extra_args: Vec<String>,
}

impl QemuOptions {
    pub fn new(kernel: PathBuf, initramfs: PathBuf, log_path: PathBuf) -> QemuOptions {
        QemuOptions {
            kernel,
            initramfs,
            data_disk: None,
            append: String::new(),
            memory_mb: 256,
            log_path,
            extra_args: vec![],
        }
    }
}

/// The proxy thread's counters and notes.
type ProxyResult = (ProxyStats, Vec<String>);

/// The console buffer, shared with the reader thread.
#[derive(Default)]
pub struct ConsoleBuf {
    pub data: Vec<u8>,
    pub eof: bool,
    /// When each chunk of `data` arrived: (end offset, exclusive; time since
    /// QEMU was spawned), ascending. A byte arrived with the first chunk
    /// whose end is past it.
    pub arrivals: Vec<(usize, Duration)>,
}

pub struct Shared {
    pub console: Mutex<ConsoleBuf>,
    pub console_cv: Condvar,
    pub stderr: Mutex<Vec<u8>>,
}

/// A running QEMU with the proxy device served in-process.
pub struct Qemu {
    pub child: Mutex<Child>,
    pid: i32,
    stdin: Mutex<Option<ChildStdin>>,
    pub shared: Arc<Shared>,
    pub start: Instant,
    cursor: Mutex<usize>,
    proxy: Mutex<Option<JoinHandle<ProxyResult>>>,
    proxy_result: Mutex<Option<ProxyResult>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
    log: Arc<Mutex<File>>,
    exit: Mutex<Option<ExitStatus>>,
    pub command_line: Vec<String>,
}

/// A thread that reads `from` until EOF (or an error), hands each chunk to
/// `chunk`, then calls `done`.
fn pump(
    mut from: impl Read + Send + 'static,
    mut chunk: impl FnMut(&[u8]) + Send + 'static,
    done: impl FnOnce() + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => chunk(&buf[..n]),
            }
        }
        done();
    })
}

fn tail(data: &[u8], n: usize) -> String {
    let s = &data[data.len().saturating_sub(n)..];
    String::from_utf8_lossy(s).into_owned()
}

impl Qemu {
    pub fn start<D: BarDevice + 'static>(opts: &QemuOptions, device: D) -> Result<Qemu, RigError> {
        let qemu = crate::artifacts::qemu()?;
        for (p, what) in [(&opts.kernel, "kernel"), (&opts.initramfs, "initramfs")] {
            if !p.is_file() {
                return Err(RigError::Missing(format!("{what} {} missing", p.display())));
            }
        }
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| RigError::Io("socketpair".into(), e))?;
        let theirs_fd = theirs.as_raw_fd();

        let args = cmdline::args(opts, theirs_fd);

        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&opts.log_path)
            .map_err(|e| RigError::Io(format!("open log {}", opts.log_path.display()), e))?;
        let log = Arc::new(Mutex::new(log));
        {
            let mut l = log.lock().unwrap();
            let _ = writeln!(l, "### rig: {} {}", qemu.display(), args.join(" "));
        }

        let mut cmd = Command::new(&qemu);
        cmd.args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: fcntl is async-signal-safe; only clears CLOEXEC on the one
        // fd QEMU must inherit.
        unsafe {
            cmd.pre_exec(move || {
                let flags = libc::fcntl(theirs_fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(theirs_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // Die with the test process.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| RigError::Io(format!("spawn {}", qemu.display()), e))?;
        drop(theirs);
        let pid = child.id() as i32;

        let shared = Arc::new(Shared {
            console: Mutex::new(ConsoleBuf::default()),
            console_cv: Condvar::new(),
            stderr: Mutex::new(Vec::new()),
        });

        let proxy_thread = std::thread::Builder::new()
            .name("rig-proxy".into())
            .spawn(move || {
                let mut dev = ProxyDevice::new(device);
                if let Err(e) = proxy::serve_owned(ours, &mut dev) {
                    dev.notes.push(format!("link error: {e}"));
                }
                (dev.stats, dev.notes)
            })
            .map_err(|e| RigError::Io("spawn proxy thread".into(), e))?;

        let (sh, lg) = (shared.clone(), log.clone());
        let stdout = child.stdout.take().unwrap();
        let console = pump(
            stdout,
            move |chunk| {
                let at = start.elapsed();
                let _ = lg.lock().unwrap().write_all(chunk);
                let mut c = sh.console.lock().unwrap();
                c.data.extend_from_slice(chunk);
                let end = c.data.len();
                c.arrivals.push((end, at));
                drop(c);
                sh.console_cv.notify_all();
            },
            {
                let sh = shared.clone();
                move || {
                    sh.console.lock().unwrap().eof = true;
                    sh.console_cv.notify_all();
                }
            },
        );
        let (sh, lg) = (shared.clone(), log.clone());
        let stderr = child.stderr.take().unwrap();
        let errors = pump(
            stderr,
            move |chunk| {
                let _ = lg.lock().unwrap().write_all(
                    format!("\n[qemu stderr] {}", String::from_utf8_lossy(chunk)).as_bytes(),
                );
                sh.stderr.lock().unwrap().extend_from_slice(chunk);
            },
            || {},
        );
        let readers = vec![console, errors];
        let stdin = child.stdin.take();
        Ok(Qemu {
            child: Mutex::new(child),
            pid,
            stdin: Mutex::new(stdin),
            shared,
            start,
            cursor: Mutex::new(0),
            proxy: Mutex::new(Some(proxy_thread)),
            proxy_result: Mutex::new(None),
            readers: Mutex::new(readers),
            log,
            exit: Mutex::new(None),
            command_line: std::iter::once(qemu.display().to_string())
                .chain(args)
                .collect(),
        })
    }

    /// Time since QEMU was spawned.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Append a line of our own to the log.
    pub fn log_line(&self, s: &str) {
        let _ = writeln!(
            self.log.lock().unwrap(),
            "\n### rig [{:8.3}s] {s}",
            self.elapsed().as_secs_f64()
        );
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.shared.console.lock().unwrap().data).into_owned()
    }

    pub fn console_len(&self) -> usize {
        self.shared.console.lock().unwrap().data.len()
    }

    /// The console output so far, with when each chunk of it arrived (see
    /// [`ConsoleBuf::arrivals`]).
    pub fn console_with_arrivals(&self) -> (Vec<u8>, Vec<(usize, Duration)>) {
        let c = self.shared.console.lock().unwrap();
        (c.data.clone(), c.arrivals.clone())
    }

    pub fn console_tail(&self, n: usize) -> String {
        let c = self.shared.console.lock().unwrap();
        let mut t = tail(&c.data, n);
        let e = self.shared.stderr.lock().unwrap();
        if !e.is_empty() {
            t.push_str("\n[qemu stderr]\n");
            t.push_str(&tail(&e, 2000));
        }
        t
    }

    /// Wait until `needle` appears in the console output after the position
    /// of the previous successful `wait_console` match (expect-style); on
    /// success the cursor moves past this match. Returns the console offset
    /// of the end of the match.
    pub fn wait_console(&self, needle: &str, timeout: Duration) -> Result<usize, RigError> {
        let from = *self.cursor.lock().unwrap();
        let end = self.wait_console_from(from, needle, timeout)?;
        *self.cursor.lock().unwrap() = end;
        Ok(end)
    }

    /// Like [`Qemu::wait_console`] but from an explicit offset, cursor untouched.
    pub fn wait_console_from(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<usize, RigError> {
        let deadline = Instant::now() + timeout;
        let n = needle.as_bytes();
        let mut c = self.shared.console.lock().unwrap();
        loop {
            if c.data.len() >= from + n.len() {
                if let Some(p) = c.data[from..].windows(n.len()).position(|w| w == n) {
                    return Ok(from + p + n.len());
                }
            }
            if c.eof {
                let t = tail(&c.data, 3000);
                drop(c);
                return Err(RigError::Exited {
                    what: format!("{needle:?} on the console"),
                    tail: t + &self.stderr_tail(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                let t = tail(&c.data, 3000);
                drop(c);
                return Err(RigError::Timeout {
                    what: format!("{needle:?} on the console ({:?})", timeout),
                    tail: t + &self.stderr_tail(),
                });
            }
            c = self
                .shared
                .console_cv
                .wait_timeout(c, deadline - now)
                .unwrap()
                .0;
        }
    }

    fn stderr_tail(&self) -> String {
        let e = self.shared.stderr.lock().unwrap();
        if e.is_empty() {
            String::new()
        } else {
            format!("\n[qemu stderr]\n{}", tail(&e, 2000))
        }
    }

    /// Move the `wait_console` cursor to the current end of the output.
    pub fn skip_console(&self) {
        *self.cursor.lock().unwrap() = self.console_len();
    }

    /// Type a line on the serial console (QEMU's stdin).
    pub fn send_console(&self, line: &str) -> Result<(), RigError> {
        self.log_line(&format!("send_console {line:?}"));
        let mut g = self.stdin.lock().unwrap();
        let Some(stdin) = g.as_mut() else {
            return Err(RigError::Exited {
                what: "console input".into(),
                tail: self.console_tail(2000),
            });
        };
        let mut s = line.to_string();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        stdin
            .write_all(s.as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| RigError::Io("write to QEMU serial (stdin)".into(), e))
    }

    /// Non-blocking: QEMU's exit status if it has exited (reaped once).
    pub fn try_wait(&self) -> Option<ExitStatus> {
        let mut ex = self.exit.lock().unwrap();
        if ex.is_none() {
            if let Ok(Some(st)) = self.child.lock().unwrap().try_wait() {
                *ex = Some(st);
            }
        }
        *ex
    }

    /// SIGKILL QEMU (as vmd does when it ends a VM) unless it already exited.
    pub fn kill(&self) {
        let ex = self.exit.lock().unwrap();
        if ex.is_none() {
            let _ = self.child.lock().unwrap().kill();
        }
    }

    /// Wait for exit, up to `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// After exit: the proxy thread's counters.
    pub fn proxy_stats(&self) -> Option<ProxyStats> {
        self.try_wait()?;
        self.join_proxy().map(|r| r.0)
    }

    /// After exit: what the proxy noticed (out-of-BAR accesses, link errors).
    pub fn proxy_notes(&self) -> Option<Vec<String>> {
        self.try_wait()?;
        self.join_proxy().map(|r| r.1)
    }

    fn join_proxy(&self) -> Option<ProxyResult> {
        let mut res = self.proxy_result.lock().unwrap();
        if res.is_none() {
            let h = self.proxy.lock().unwrap().take()?;
            *res = h.join().ok();
        }
        res.clone()
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        let _ = self.wait_exit(Duration::from_secs(5));
        self.stdin.lock().unwrap().take();
        for h in self.readers.lock().unwrap().drain(..) {
            let _ = h.join();
        }
        if let Some((stats, notes)) = self.join_proxy() {
            self.log_line(&format!("proxy: {stats:?}"));
            for n in notes.iter().take(20) {
                self.log_line(&format!("proxy note: {n}"));
            }
        }
    }
}
