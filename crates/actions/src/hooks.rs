//! The administrator's own programs around host events, as open-vm-tools
//! runs its power-operation scripts: before a reboot or power-off that the
//! host asked for, and after each step of the clock.
//!
//! An event runs the program named in `[hooks]` (an argv list, no shell;
//! a bare name is looked up like `[power]`'s) and then every executable in
//! `<dir>/<event>/`, in name order, one at a time. Each gets at most its
//! limit and is killed with its whole process group when it overruns; the
//! hooks of one event together get at most [`EVENT_BUDGET`]. Exit status,
//! time taken and the tail of the output go to the log and to `vmmci
//! status`. A missing or non-executable hook is said once (when the hooks
//! are resolved: at start, on SIGHUP, or when it first shows up at an
//! event) and skipped.
//!
//! Nothing here runs on the agent's loop: [`HookedPower`] runs the before-*
//! hooks, then the init command, in a thread of its own (the agent has
//! acknowledged the command before it calls [`Power::begin`]), and the
//! daemon runs after-step hooks through [`Hooks::spawn`].

mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vmmci_agent::{Power, PowerAction, PowerError, StepRecord};

use crate::power::{resolve_argv, SEARCH_PATH};

/// Where the drop-in directories are, one per event.
pub const DEFAULT_HOOK_DIR: &str = "/etc/vmmci/hooks.d";
/// How long one hook may run unless `[hooks] timeout` says otherwise.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);
pub const MIN_HOOK_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest `[hooks] timeout`: well inside vmd's budgets (about 30 s
/// for a whole host shutdown, 120 s after the acknowledgement).
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(20);
/// All hooks of one event together: the init command starts at most this
/// long after the acknowledgement, before the agent's grace sync (25 s).
pub const EVENT_BUDGET: Duration = Duration::from_secs(20);
/// How much of a hook's output (stdout and stderr together) is kept.
pub const OUTPUT_TAIL: usize = 4096;
/// Last runs kept for `vmmci status`: the latest of each program, so the
/// status file stays small (at most this many output tails).
const KEPT_RUNS: usize = 16;

/// When hooks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookEvent {
    /// The host sent REBOOT (`vmctl stop`): before the init command.
    BeforeReboot,
    /// The host sent SHUTDOWN: before the init command.
    BeforePoweroff,
    /// The agent stepped the clock (SYNCRTC, `vmmci sync`, `discipline`).
    AfterStep,
}

impl HookEvent {
    pub const ALL: [HookEvent; 3] = [
        HookEvent::BeforeReboot,
        HookEvent::BeforePoweroff,
        HookEvent::AfterStep,
    ];

    /// `VMMCI_EVENT`, and the name of the event's drop-in directory.
    pub fn name(self) -> &'static str {
        match self {
            HookEvent::BeforeReboot => "before-reboot",
            HookEvent::BeforePoweroff => "before-poweroff",
            HookEvent::AfterStep => "after-step",
        }
    }

    /// The `[hooks]` key of the event.
    pub fn key(self) -> &'static str {
        match self {
            HookEvent::BeforeReboot => "before_reboot",
            HookEvent::BeforePoweroff => "before_poweroff",
            HookEvent::AfterStep => "after_step",
        }
    }

    pub fn before(action: PowerAction) -> HookEvent {
        match action {
            PowerAction::Reboot => HookEvent::BeforeReboot,
            PowerAction::Poweroff => HookEvent::BeforePoweroff,
        }
    }
}

impl fmt::Display for HookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the hooks are: `[hooks]` of the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct HookSettings {
    /// argv run before a reboot the host asked for; empty: none.
    pub before_reboot: Vec<String>,
    /// argv run before a power-off the host asked for; empty: none.
    pub before_poweroff: Vec<String>,
    /// argv run after each clock step; empty: none.
    pub after_step: Vec<String>,
    /// How long each hook may run before its process group is killed.
    pub timeout: Duration,
    /// Where the drop-in directories are (`<dir>/<event>/`); `None`: none.
    pub dir: Option<PathBuf>,
}

/// No hooks at all (no drop-in directory either: the configuration's
/// default names [`DEFAULT_HOOK_DIR`]).
impl Default for HookSettings {
    fn default() -> Self {
        HookSettings {
            before_reboot: Vec::new(),
            before_poweroff: Vec::new(),
            after_step: Vec::new(),
            timeout: DEFAULT_HOOK_TIMEOUT,
            dir: None,
        }
    }
}

impl HookSettings {
    fn argv(&self, event: HookEvent) -> &[String] {
        match event {
            HookEvent::BeforeReboot => &self.before_reboot,
            HookEvent::BeforePoweroff => &self.before_poweroff,
            HookEvent::AfterStep => &self.after_step,
        }
    }
}

/// The event's facts, as the hook's environment gets them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookFacts {
    /// `VMMCI_COMMAND`: the host command behind the event (REBOOT,
    /// SHUTDOWN, SYNCRTC); unset for a periodic step or `vmmci sync`.
    pub command: Option<String>,
    /// `VMMCI_STEP_NS`: the step, ns (positive: forward).
    pub step_ns: Option<i64>,
    /// `VMMCI_CAUSE`: `request` (SYNCRTC, `vmmci sync`) or `periodic`.
    pub cause: Option<String>,
}

impl HookFacts {
    /// A reboot or power-off the host asked for.
    pub fn power(action: PowerAction) -> HookFacts {
        HookFacts {
            command: Some(
                match action {
                    PowerAction::Reboot => "REBOOT",
                    PowerAction::Poweroff => "SHUTDOWN",
                }
                .into(),
            ),
            ..HookFacts::default()
        }
    }

    /// A clock step; `command` is the host's (SYNCRTC) when it asked.
    pub fn step(step: &StepRecord, command: Option<&str>) -> HookFacts {
        HookFacts {
            command: command.map(str::to_string),
            step_ns: Some(step.delta_ns),
            cause: Some(step.cause.name().into()),
        }
    }

    /// Every variable a hook may see: set, or removed (`None`) so that
    /// nothing leaks in from the agent's own environment.
    fn env(&self, event: HookEvent) -> [(&'static str, Option<String>); 4] {
        [
            ("VMMCI_EVENT", Some(event.name().into())),
            ("VMMCI_COMMAND", self.command.clone()),
            ("VMMCI_STEP_NS", self.step_ns.map(|n| n.to_string())),
            ("VMMCI_CAUSE", self.cause.clone()),
        ]
    }
}

/// One program to run for an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub path: PathBuf,
    pub args: Vec<String>,
}

impl Hook {
    /// The program and its arguments, for the log and the status.
    pub fn display(&self) -> String {
        let mut s = self.path.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

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

/// The hooks, shared by the daemon's loop (after-step), [`HookedPower`]
/// (before-*) and the status writer. Cheap to clone; clones share the
/// settings, the last runs and the problems found. `Hooks::default()` has
/// no hooks at all.
#[derive(Clone, Default)]
pub struct Hooks {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    settings: Mutex<HookSettings>,
    state: Mutex<HookState>,
    /// Bumped whenever the runs or the problems change (status is due).
    generation: AtomicU64,
    /// Spawned runs (after-step) take their turn: one event at a time, in
    /// the order they came.
    turns: Mutex<Turns>,
    turn: Condvar,
}

/// Tickets for spawned runs, served in order.
#[derive(Default)]
struct Turns {
    next: u64,
    serving: u64,
    /// Tickets whose thread never started.
    skipped: BTreeSet<u64>,
}

impl Turns {
    fn advance(&mut self) {
        self.serving += 1;
        while self.skipped.remove(&self.serving) {
            self.serving += 1;
        }
    }
}

#[derive(Default)]
struct HookState {
    /// The latest run of each program, oldest first.
    runs: Vec<HookRun>,
    /// What is wrong with each event's hooks now.
    problems: BTreeMap<HookEvent, Vec<String>>,
    /// Problems already logged since the last [`Hooks::configure`].
    reported: BTreeSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hooks {
    pub fn new(settings: HookSettings) -> Hooks {
        let hooks = Hooks::default();
        hooks.configure(settings);
        hooks
    }

    /// New settings (at start and on SIGHUP): every event's hooks are
    /// resolved now, and each problem is logged once.
    pub fn configure(&self, settings: HookSettings) {
        *lock(&self.shared.settings) = settings;
        {
            let mut state = lock(&self.shared.state);
            state.reported.clear();
            state.problems.clear();
        }
        self.bump();
        let mut counts = Vec::new();
        for event in HookEvent::ALL {
            let n = self.plan(event).len();
            if n > 0 {
                counts.push(format!("{n} {event}"));
            }
        }
        if !counts.is_empty() {
            let timeout = lock(&self.shared.settings).timeout;
            info!("hooks: {}; each may run {timeout:?}", counts.join(", "));
        }
    }

    pub fn settings(&self) -> HookSettings {
        lock(&self.shared.settings).clone()
    }

    /// What `event` runs now, in order: the `[hooks]` program, then the
    /// drop-in directory's executables by name. Problems found are logged
    /// the first time they are seen and kept for the status.
    pub fn plan(&self, event: HookEvent) -> Vec<Hook> {
        let settings = self.settings();
        let (hooks, problems) = plan(&settings, event);
        let mut state = lock(&self.shared.state);
        for p in &problems {
            if state.reported.insert(p.clone()) {
                warn!("hook {p}");
            }
        }
        let known = state.problems.get(&event).cloned().unwrap_or_default();
        if known != problems {
            if problems.is_empty() {
                state.problems.remove(&event);
            } else {
                state.problems.insert(event, problems);
            }
            drop(state);
            self.bump();
        }
        hooks
    }

    /// Run `event`'s hooks here and now, one after the other.
    pub fn run(&self, event: HookEvent, facts: &HookFacts) -> Vec<HookRun> {
        let hooks = self.plan(event);
        self.run_planned(event, hooks, facts)
    }

    /// Run `event`'s hooks in a thread of their own, after any spawned
    /// before them; returns at once. Nothing is spawned when there are no
    /// hooks.
    pub fn spawn(&self, event: HookEvent, facts: HookFacts) {
        let hooks = self.plan(event);
        if hooks.is_empty() {
            return;
        }
        let me = self.clone();
        let ticket = {
            let mut t = lock(&self.shared.turns);
            t.next += 1;
            t.next - 1
        };
        let spawned = std::thread::Builder::new()
            .name(format!("vmmci-{event}"))
            .spawn(move || {
                let shared = &me.shared;
                let mut t = lock(&shared.turns);
                while t.serving != ticket {
                    t = shared.turn.wait(t).unwrap_or_else(|p| p.into_inner());
                }
                drop(t);
                me.run_planned(event, hooks, &facts);
                lock(&shared.turns).advance();
                shared.turn.notify_all();
            });
        if let Err(e) = spawned {
            warn!("{event} hooks not run: cannot start a thread: {e}");
            let mut t = lock(&self.shared.turns);
            if t.serving == ticket {
                t.advance();
            } else {
                t.skipped.insert(ticket);
            }
            drop(t);
            self.shared.turn.notify_all();
        }
    }

    /// Run hooks already planned, each for at most its limit and all of
    /// them for at most [`EVENT_BUDGET`].
    pub fn run_planned(
        &self,
        event: HookEvent,
        hooks: Vec<Hook>,
        facts: &HookFacts,
    ) -> Vec<HookRun> {
        self.run_within(event, hooks, facts, EVENT_BUDGET)
    }

    fn run_within(
        &self,
        event: HookEvent,
        hooks: Vec<Hook>,
        facts: &HookFacts,
        budget: Duration,
    ) -> Vec<HookRun> {
        let timeout = self.settings().timeout;
        let start = Instant::now();
        let mut runs = Vec::with_capacity(hooks.len());
        for hook in hooks {
            let left = budget.saturating_sub(start.elapsed());
            let r = if left.is_zero() {
                HookRun {
                    event,
                    program: hook.display(),
                    at_ns: run::wall_ns(),
                    duration: Duration::ZERO,
                    end: HookEnd::NotStarted(format!(
                        "the {event} hooks used up their {budget:?} before it"
                    )),
                    output: String::new(),
                }
            } else {
                run::run_one(event, &hook, facts, timeout.min(left))
            };
            self.record(r.clone());
            runs.push(r);
        }
        runs
    }

    /// The latest run of each hook, oldest first.
    pub fn runs(&self) -> Vec<HookRun> {
        lock(&self.shared.state).runs.clone()
    }

    /// What is wrong with the hooks now (missing, not executable), by event.
    pub fn problems(&self) -> Vec<String> {
        lock(&self.shared.state)
            .problems
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Changes whenever [`Hooks::runs`] or [`Hooks::problems`] do.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Relaxed)
    }

    fn bump(&self) {
        self.shared.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, r: HookRun) {
        log_run(&r);
        {
            let mut state = lock(&self.shared.state);
            state
                .runs
                .retain(|o| !(o.event == r.event && o.program == r.program));
            state.runs.push(r);
            let excess = state.runs.len().saturating_sub(KEPT_RUNS);
            state.runs.drain(..excess);
        }
        self.bump();
    }
}

fn log_run(r: &HookRun) {
    let took = run::fmt_duration(r.duration);
    if r.end.success() {
        info!("{} hook {}: {} after {took}", r.event, r.program, r.end);
    } else {
        warn!("{} hook {}: {} after {took}", r.event, r.program, r.end);
    }
    for line in r.output.lines().filter(|l| !l.trim().is_empty()) {
        info!("{} hook {}| {line}", r.event, r.program);
    }
}

/// What `event` runs under `settings`, and what is wrong.
fn plan(settings: &HookSettings, event: HookEvent) -> (Vec<Hook>, Vec<String>) {
    let mut hooks = Vec::new();
    let mut problems = Vec::new();
    let argv = settings.argv(event);
    if !argv.is_empty() {
        match resolve_argv(argv) {
            None => problems.push(format!(
                "{event}: [hooks] {} program {:?} not found in {}; not run",
                event.key(),
                argv[0],
                SEARCH_PATH.join(":")
            )),
            Some((path, args)) => match check_executable(&path) {
                Ok(()) => hooks.push(Hook { path, args }),
                Err(why) => problems.push(format!(
                    "{event}: [hooks] {} program {} {why}; not run",
                    event.key(),
                    path.display()
                )),
            },
        }
    }
    if let Some(dir) = &settings.dir {
        scan_dir(&dir.join(event.name()), event, &mut hooks, &mut problems);
    }
    (hooks, problems)
}

/// Every executable in `dir`, by name (byte order); a missing directory
/// has none. README files, hidden files and the leftovers of editors and
/// package managers are passed over without a word.
fn scan_dir(dir: &Path, event: HookEvent, hooks: &mut Vec<Hook>, problems: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            problems.push(format!("{event}: cannot list {}: {e}", dir.display()));
            return;
        }
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        if passed_over(&name.to_string_lossy()) {
            continue;
        }
        let path = dir.join(&name);
        if path.is_dir() {
            continue;
        }
        match check_executable(&path) {
            Ok(()) => hooks.push(Hook {
                path,
                args: Vec::new(),
            }),
            Err(why) => problems.push(format!("{event}: {} {why}; skipped", path.display())),
        }
    }
}

fn passed_over(name: &str) -> bool {
    const LEFTOVERS: &[&str] = &[".dpkg-", ".ucf-", ".apk-new", ".rpmnew", ".rpmsave"];
    name.starts_with('.')
        || name.ends_with('~')
        || name.to_ascii_lowercase().starts_with("readme")
        || LEFTOVERS.iter().any(|l| name.contains(l))
}

/// A regular file with an execute bit (root may run any such file).
fn check_executable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("is missing".into()),
        Err(e) => Err(format!("cannot be read ({e})")),
        Ok(m) if !m.is_file() => Err("is not a regular file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err("is not executable (chmod +x to run it)".into())
        }
        Ok(_) => Ok(()),
    }
}

/// A [`Power`] that runs the before-reboot or before-poweroff hooks first.
/// The agent acknowledges the command before it calls [`Power::begin`];
/// `begin` here returns at once and runs the hooks and then the wrapped
/// power's own `begin` (the init command, PID 1's signal) in a thread, so
/// the agent keeps polling meanwhile (other commands, SYNCRTC, its grace
/// sync and force). With no hooks for the event, the wrapped `begin` runs
/// directly, as before.
#[derive(Clone)]
pub struct HookedPower<P> {
    inner: P,
    hooks: Hooks,
}

impl<P> HookedPower<P> {
    pub fn new(inner: P, hooks: Hooks) -> HookedPower<P> {
        HookedPower { inner, hooks }
    }
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<P: Power + Clone + Send + 'static> Power for HookedPower<P> {
    fn begin(&mut self, action: PowerAction) -> Result<(), PowerError> {
        let event = HookEvent::before(action);
        let planned = self.hooks.plan(event);
        if planned.is_empty() {
            return self.inner.begin(action);
        }
        info!(
            "{action}: running {} {event} hook(s) first, then the {action} command",
            planned.len()
        );
        let hooks = self.hooks.clone();
        let mut inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vmmci-{event}"))
            .spawn(move || {
                hooks.run_planned(event, planned, &HookFacts::power(action));
                if let Err(e) = inner.begin(action) {
                    warn!("{e}; the agent syncs at the grace point and forces the {action} later");
                }
            });
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                warn!("{event} hooks not run: cannot start a thread: {e}");
                self.inner.begin(action)
            }
        }
    }

    fn sync_disks(&mut self, wait: Duration) -> bool {
        self.inner.sync_disks(wait)
    }

    fn force(&mut self, action: PowerAction) -> Result<(), PowerError> {
        self.inner.force(action)
    }
}

#[cfg(test)]
mod tests;
