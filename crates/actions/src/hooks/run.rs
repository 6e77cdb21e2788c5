//! One run of one hook: its own process group, no stdin, stdout and stderr
//! into one pipe whose tail is kept, the event's facts in its environment,
//! and a limit after which the whole group is killed.

use std::fmt;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use super::{lock, Hook, HookEvent, HookFacts, OUTPUT_TAIL};
use crate::power::SEARCH_PATH;

/// How often a running hook is looked at.
const POLL: Duration = Duration::from_millis(10);
/// How long a killed hook gets to be reaped before the run goes on without
/// it (a process stuck in the kernel dies only when the kernel lets it).
const REAP_WAIT: Duration = Duration::from_secs(1);
/// How long the output may go on after the hook ended: a background
/// process it left holding the pipe must not hold the event up.
const OUTPUT_WAIT: Duration = Duration::from_millis(200);
/// Variables of the agent's own that are none of a hook's business.
const SCRUBBED: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How a hook's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookEnd {
    Exited(i32),
    /// A signal the agent did not send ended it.
    Signalled(i32),
    /// It overran its limit (this long) and its process group was killed.
    Killed(Duration),
    /// It could not be started, or the event's budget was spent first.
    NotStarted(String),
}

impl HookEnd {
    pub fn success(&self) -> bool {
        *self == HookEnd::Exited(0)
    }
}

impl fmt::Display for HookEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookEnd::Exited(code) => write!(f, "exit {code}"),
            HookEnd::Signalled(sig) => write!(f, "killed by signal {sig}"),
            HookEnd::Killed(limit) => write!(f, "killed at its limit ({limit:?})"),
            HookEnd::NotStarted(why) => write!(f, "not run: {why}"),
        }
    }
}

/// One run of one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookRun {
    pub event: HookEvent,
    /// [`Hook::display`].
    pub program: String,
    /// Wall clock when it started, ns since the Unix epoch.
    pub at_ns: i64,
    pub duration: Duration,
    pub end: HookEnd,
    /// The last [`OUTPUT_TAIL`] bytes of its stdout and stderr (one pipe),
    /// starting with "…" when cut.
    pub output: String,
}

pub(super) fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `12 ms`, `2.003 s`.
pub(super) fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

/// A hook the event's budget had no time left for.
pub(super) fn out_of_budget(event: HookEvent, hook: &Hook, budget: Duration) -> HookRun {
    HookRun {
        event,
        program: hook.display(),
        at_ns: wall_ns(),
        duration: Duration::ZERO,
        end: HookEnd::NotStarted(format!(
            "the {event} hooks used up their {budget:?} before it"
        )),
        output: String::new(),
    }
}

pub(super) fn run_one(
    event: HookEvent,
    hook: &Hook,
    facts: &HookFacts,
    limit: Duration,
) -> HookRun {
    let at_ns = wall_ns();
    let started = Instant::now();
    let program = hook.display();
    let not_started = |why: String| HookRun {
        event,
        program: program.clone(),
        at_ns,
        duration: started.elapsed(),
        end: HookEnd::NotStarted(why),
        output: String::new(),
    };
    let (read_end, write_end) = match pipe() {
        Ok(p) => p,
        Err(e) => return not_started(format!("cannot make a pipe: {e}")),
    };
    let stderr = match write_end.try_clone() {
        Ok(fd) => fd,
        Err(e) => return not_started(format!("cannot make a pipe: {e}")),
    };
    let mut cmd = Command::new(&hook.path);
    cmd.args(&hook.args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(stderr))
        // Its own group, so that an overrun is killed with its children.
        .process_group(0);
    for (name, value) in facts.env(event) {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    for name in SCRUBBED {
        cmd.env_remove(name);
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", SEARCH_PATH.join(":"));
    }
    let mut spawned = cmd.spawn();
    // A hook being written as the event comes (or a file another thread
    // of this process holds open across a fork): ETXTBSY passes.
    for _ in 0..5 {
        match &spawned {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
                spawned = cmd.spawn();
            }
            _ => break,
        }
    }
    // Our copies of the write end go with the Command: the output ends
    // when the hook (and whatever it started) closes it.
    drop(cmd);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => return not_started(format!("cannot run {}: {e}", hook.path.display())),
    };
    let (tail, eof) = read_tail(read_end);
    let end = wait_bounded(child, limit);
    let _ = eof.recv_timeout(OUTPUT_WAIT);
    let output = lock(&tail).text();
    HookRun {
        event,
        program,
        at_ns,
        duration: started.elapsed(),
        end,
        output,
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two new descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The last [`OUTPUT_TAIL`] bytes read.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    cut: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        let excess = self.bytes.len().saturating_sub(OUTPUT_TAIL);
        if excess > 0 {
            self.bytes.drain(..excess);
            self.cut = true;
        }
    }

    fn text(&self) -> String {
        if !self.cut {
            return String::from_utf8_lossy(&self.bytes).into_owned();
        }
        // Cut inside a character: start at the next one.
        let start = self
            .bytes
            .iter()
            .position(|b| b & 0xc0 != 0x80)
            .unwrap_or(self.bytes.len());
        format!("…{}", String::from_utf8_lossy(&self.bytes[start..]))
    }
}

/// Read `fd` to its end in a thread, keeping the tail; the receiver hears
/// when the end came.
fn read_tail(fd: OwnedFd) -> (Arc<Mutex<Tail>>, mpsc::Receiver<()>) {
    let tail = Arc::new(Mutex::new(Tail::default()));
    let (done, eof) = mpsc::channel();
    let t = Arc::clone(&tail);
    let spawned = std::thread::Builder::new()
        .name("vmmci-hook-output".into())
        .spawn(move || {
            let mut pipe = std::fs::File::from(fd);
            let mut buf = [0u8; 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => lock(&t).push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        // The read end is gone with the closure: the hook's writes fail.
        warn!("hook output not kept: cannot start a thread: {e}");
    }
    (tail, eof)
}

/// Wait for `child` at most `limit`, then kill its process group.
fn wait_bounded(mut child: Child, limit: Duration) -> HookEnd {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return ended(status),
            Ok(None) => {}
            Err(e) => return HookEnd::NotStarted(format!("cannot wait for it: {e}")),
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(POLL));
    }
    let pgid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a plain process group id and signal number.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    // And the hook itself, should it have left its group.
    let _ = child.kill();
    let reap_by = Instant::now() + REAP_WAIT;
    while Instant::now() < reap_by {
        if let Ok(Some(_)) = child.try_wait() {
            return HookEnd::Killed(limit);
        }
        std::thread::sleep(POLL);
    }
    // Stuck in the kernel: reaped whenever it dies, not waited for here.
    let _ = std::thread::Builder::new()
        .name("vmmci-hook-reaper".into())
        .spawn(move || child.wait());
    HookEnd::Killed(limit)
}

fn ended(status: ExitStatus) -> HookEnd {
    match (status.code(), status.signal()) {
        (Some(code), _) => HookEnd::Exited(code),
        (None, Some(sig)) => HookEnd::Signalled(sig),
        (None, None) => HookEnd::Exited(-1),
    }
}
