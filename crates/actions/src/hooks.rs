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
//! acknowledged the command before it calls
//! [`Power::begin`](vmmci_agent::Power::begin)), and the
//! daemon runs after-step hooks through [`Hooks::spawn`].

mod event;
mod hooked_power;
mod plan;
mod run;
mod turns;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use event::{HookEvent, HookFacts, HookSettings};
pub use hooked_power::HookedPower;
use plan::plan;
pub use plan::Hook;
pub use run::{HookEnd, HookRun};
use turns::Turns;

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
    /// Spawned runs (after-step) take their turn.
    turns: Turns,
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
        let ticket = self.shared.turns.ticket();
        let spawned = std::thread::Builder::new()
            .name(format!("vmmci-{event}"))
            .spawn(move || {
                me.shared.turns.wait_for(ticket);
                me.run_planned(event, hooks, &facts);
                me.shared.turns.done();
            });
        if let Err(e) = spawned {
            warn!("{event} hooks not run: cannot start a thread: {e}");
            self.shared.turns.skip(ticket);
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
                run::out_of_budget(event, &hook, budget)
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

#[cfg(test)]
mod tests;
