use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmmci_agent::fakes::{PowerCall, RecordingPower};
use vmmci_agent::{Power, PowerAction, StepCause, StepRecord};

use super::*;

/// A file with `mode`.
fn put(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A shell script hook.
fn script(path: &Path, body: &str) {
    put(path, &format!("#!/bin/sh\n{body}\n"), 0o755);
}

/// A fresh hooks directory whose `hook` sleeps `pause` seconds, then
/// appends `$var` to the note it returns.
fn slow_hook(hook: &str, pause: &str, var: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let note = tmp.path().join("note");
    let body = format!("sleep {pause}; echo ${var} >> {}", note.display());
    script(&tmp.path().join(hook), &body);
    (tmp, note)
}

fn in_dir(dir: &Path) -> HookSettings {
    HookSettings {
        dir: Some(dir.to_path_buf()),
        ..HookSettings::default()
    }
}

fn step_facts() -> HookFacts {
    let step = StepRecord {
        cause: StepCause::Request,
        at_ns: 0,
        delta_ns: 90_000_123_456,
        error_bound_ns: 1_000,
        residual_ns: None,
    };
    HookFacts::step(&step, Some("SYNCRTC"))
}

/// Wait up to 10 s for `done`.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reported(hooks: &Hooks) -> usize {
    lock(&hooks.shared.state).reported.len()
}

#[test]
fn the_config_program_comes_first_then_the_directory_in_name_order() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("after-step");
    for name in ["20-b", "10-a", "30-c.sh", "9-z"] {
        script(&d.join(name), "true");
    }
    // Passed over without a word.
    for name in ["README.md", ".hidden", "10-a~", "x.dpkg-old", "y.apk-new"] {
        put(&d.join(name), "#!/bin/sh\n", 0o755);
    }
    std::fs::create_dir(d.join("sub")).unwrap();
    put(&d.join("README"), "not a hook\n", 0o644);
    let settings = HookSettings {
        after_step: vec!["true".into(), "--flag".into()],
        ..in_dir(tmp.path())
    };
    let (hooks, problems) = plan(&settings, HookEvent::AfterStep);
    assert!(problems.is_empty(), "{problems:?}");
    let names: Vec<String> = hooks
        .iter()
        .map(|h| h.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["true", "10-a", "20-b", "30-c.sh", "9-z"]);
    assert!(
        hooks[0].path.is_absolute(),
        "bare name resolved: {:?}",
        hooks[0]
    );
    assert_eq!(hooks[0].args, ["--flag"]);
    // The other events have no directory: nothing, and no problem.
    assert_eq!(plan(&settings, HookEvent::BeforeReboot), (vec![], vec![]));
}

#[test]
fn a_missing_or_non_executable_hook_is_reported_once_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("before-reboot");
    let ran = tmp.path().join("ran");
    script(
        &d.join("20-good"),
        &format!("echo good >> {}", ran.display()),
    );
    put(&d.join("10-notes"), "#!/bin/sh\necho never\n", 0o644);
    std::os::unix::fs::symlink("/nonexistent/hook", d.join("15-dangling")).unwrap();
    let settings = HookSettings {
        before_reboot: vec!["no-such-hook-program-vmmci".into()],
        before_poweroff: vec![tmp.path().join("absent").display().to_string()],
        ..in_dir(tmp.path())
    };
    let hooks = Hooks::new(settings.clone());
    let problems = hooks.problems();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    for want in [
        "before-reboot: [hooks] before_reboot program \"no-such-hook-program-vmmci\" not found in /usr/sbin:/usr/bin:/sbin:/bin",
        "10-notes is not executable (chmod +x to run it); skipped",
        "15-dangling is missing; skipped",
        "before-poweroff: [hooks] before_poweroff program",
    ] {
        assert!(problems.iter().any(|p| p.contains(want)), "{want:?} not in {problems:#?}");
    }
    assert_eq!(reported(&hooks), 4, "each logged at the start");
    let gen = hooks.generation();
    for _ in 0..3 {
        let runs = hooks.run(
            HookEvent::BeforeReboot,
            &HookFacts::power(PowerAction::Reboot),
        );
        assert_eq!(runs.len(), 1, "only the good one runs: {runs:?}");
        assert!(runs[0].end.success(), "{runs:?}");
    }
    assert_eq!(reported(&hooks), 4, "not logged again at each event");
    assert_eq!(hooks.problems(), problems, "still shown in the status");
    assert!(hooks.generation() > gen, "runs are news for the status");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "good\ngood\ngood\n");

    // Fixed: gone from the status; a new problem is logged when first seen.
    std::fs::set_permissions(d.join("10-notes"), std::fs::Permissions::from_mode(0o755)).unwrap();
    put(&d.join("30-new"), "#!/bin/sh\n", 0o600);
    assert_eq!(hooks.plan(HookEvent::BeforeReboot).len(), 2);
    let now = hooks.problems();
    assert!(!now.iter().any(|p| p.contains("10-notes")), "{now:#?}");
    assert!(now.iter().any(|p| p.contains("30-new")), "{now:#?}");
    assert_eq!(reported(&hooks), 5);
    // A reload says everything again, once.
    hooks.configure(settings);
    assert_eq!(reported(&hooks), 4);
}

#[test]
fn hooks_get_the_events_facts_in_their_environment_and_their_output_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    script(
        &tmp.path().join("after-step/env"),
        "echo \"event=$VMMCI_EVENT cause=$VMMCI_CAUSE command=$VMMCI_COMMAND step=$VMMCI_STEP_NS\"\n\
         echo \"notify=${NOTIFY_SOCKET-unset} cwd=$(pwd)\" >&2\nexit 3",
    );
    let hooks = Hooks::new(in_dir(tmp.path()));
    let runs = hooks.run(HookEvent::AfterStep, &step_facts());
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(r.end, HookEnd::Exited(3));
    assert_eq!(
        r.output,
        "event=after-step cause=request command=SYNCRTC step=90000123456\nnotify=unset cwd=/\n"
    );
    assert!(r.program.ends_with("after-step/env"), "{}", r.program);
    assert!(r.at_ns > 1_700_000_000_000_000_000);
    assert_eq!(hooks.runs(), runs);

    // Before a stop: the command, and no step facts at all.
    script(
        &tmp.path().join("before-poweroff/env"),
        "echo \"$VMMCI_EVENT $VMMCI_COMMAND ${VMMCI_STEP_NS-nostep} ${VMMCI_CAUSE-nocause}\"",
    );
    let runs = hooks.run(
        HookEvent::BeforePoweroff,
        &HookFacts::power(PowerAction::Poweroff),
    );
    assert_eq!(runs[0].output, "before-poweroff SHUTDOWN nostep nocause\n");
    assert_eq!(hooks.runs().len(), 2);
}

#[test]
fn a_hook_that_overruns_is_killed_with_its_process_group_at_its_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let child_pid = tmp.path().join("child");
    script(
        &tmp.path().join("after-step/10-hang"),
        &format!(
            "echo started\nsleep 30 &\necho $! > {}\nwait",
            child_pid.display()
        ),
    );
    let next = tmp.path().join("next-ran");
    script(
        &tmp.path().join("after-step/20-next"),
        &format!("touch {}", next.display()),
    );
    let hooks = Hooks::new(HookSettings {
        timeout: Duration::from_millis(300),
        ..in_dir(tmp.path())
    });
    let t0 = Instant::now();
    let runs = hooks.run(HookEvent::AfterStep, &step_facts());
    let took = t0.elapsed();
    assert_eq!(runs[0].end, HookEnd::Killed(Duration::from_millis(300)));
    assert!(runs[0].end.to_string().contains("killed at its limit"));
    assert_eq!(runs[0].output, "started\n");
    assert!(
        runs[0].duration >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{:?}, all took {took:?}",
        runs[0].duration
    );
    assert!(
        runs[1].end.success() && next.exists(),
        "the next hook still runs"
    );
    // The shell's background child went with it.
    let pid: i32 = std::fs::read_to_string(&child_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for whoever inherited it.
        if stat.is_empty() || stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')) {
            break;
        }
        assert!(Instant::now() < deadline, "sleep {pid} still runs: {stat}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_events_budget_bounds_all_its_hooks_together() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["1", "2", "3"] {
        script(&tmp.path().join("before-reboot").join(name), "sleep 5");
    }
    let hooks = Hooks::new(HookSettings {
        timeout: Duration::from_millis(200),
        ..in_dir(tmp.path())
    });
    let planned = hooks.plan(HookEvent::BeforeReboot);
    let runs = hooks.run_within(
        HookEvent::BeforeReboot,
        planned,
        &HookFacts::power(PowerAction::Reboot),
        Duration::from_millis(300),
    );
    assert_eq!(runs[0].end, HookEnd::Killed(Duration::from_millis(200)));
    // What was left of the budget.
    assert!(
        matches!(runs[1].end, HookEnd::Killed(d) if d <= Duration::from_millis(100)),
        "{:?}",
        runs[1].end
    );
    assert!(
        matches!(&runs[2].end, HookEnd::NotStarted(why) if why.contains("used up")),
        "{:?}",
        runs[2].end
    );
}

#[test]
fn output_is_bounded_to_its_tail() {
    let tmp = tempfile::tempdir().unwrap();
    // About 40 KiB; the last lines end the tail.
    script(
        &tmp.path().join("after-step/loud"),
        "i=0; while [ $i -lt 2000 ]; do echo \"line $i ééééé\"; i=$((i+1)); done; echo last",
    );
    let hooks = Hooks::new(in_dir(tmp.path()));
    let runs = hooks.run(HookEvent::AfterStep, &step_facts());
    let out = &runs[0].output;
    assert!(
        out.starts_with('…') && out.ends_with("line 1999 ééééé\nlast\n"),
        "{out}"
    );
    assert!(out.len() <= OUTPUT_TAIL + '…'.len_utf8(), "{}", out.len());
    assert!(!out.contains('\u{fffd}'), "cut inside a character: {out}");
}

#[test]
fn a_hook_that_cannot_be_started_is_recorded_and_harms_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("after-step/gone");
    script(&gone, "true");
    let hooks = Hooks::new(in_dir(tmp.path()));
    let planned = hooks.plan(HookEvent::AfterStep);
    std::fs::remove_file(&gone).unwrap();
    let runs = hooks.run_planned(HookEvent::AfterStep, planned, &step_facts());
    assert!(
        matches!(&runs[0].end, HookEnd::NotStarted(why) if why.contains("cannot run")),
        "{:?}",
        runs[0].end
    );
    assert!(!runs[0].end.success());
}

#[test]
fn spawned_runs_return_at_once_and_take_their_turn() {
    let (tmp, log) = slow_hook("after-step/slow", "0.2", "VMMCI_STEP_NS");
    let hooks = Hooks::new(in_dir(tmp.path()));
    let t0 = Instant::now();
    let mut facts = step_facts();
    for n in [1, 2, 3] {
        facts.step_ns = Some(n);
        hooks.spawn(HookEvent::AfterStep, facts.clone());
    }
    assert!(t0.elapsed() < Duration::from_millis(500), "spawn waited");
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_until("spawned hooks did not run", || lines() >= 3);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "1\n2\n3\n",
        "in order, one at a time"
    );
    // Nothing to run: nothing spawned.
    Hooks::default().spawn(HookEvent::AfterStep, step_facts());
}

#[test]
fn hooked_power_acknowledged_first_runs_the_hooks_then_the_init_command() {
    let (tmp, marker) = slow_hook("before-reboot/10-slow", "1", "VMMCI_COMMAND");
    let recorder = RecordingPower::default();
    let mut power = HookedPower::new(recorder.clone(), Hooks::new(in_dir(tmp.path())));
    let t0 = Instant::now();
    power.begin(PowerAction::Reboot).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "begin waited for the hook"
    );
    assert!(
        recorder.calls().is_empty(),
        "the init command comes after the hooks"
    );
    wait_until("init command never asked", || !recorder.calls().is_empty());
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "REBOOT\n");
    assert_eq!(
        recorder.calls(),
        vec![PowerCall::Begin(PowerAction::Reboot)]
    );

    // No hooks for power-off: the init command at once, and its failure
    // reaches the agent as before.
    let failing = RecordingPower::failing();
    let mut power = HookedPower::new(failing.clone(), Hooks::new(in_dir(tmp.path())));
    assert!(power.begin(PowerAction::Poweroff).is_err());
    assert_eq!(
        failing.calls(),
        vec![PowerCall::Begin(PowerAction::Poweroff)]
    );
    assert!(power.sync_disks(Duration::from_secs(1)));
    power.force(PowerAction::Poweroff).unwrap();
    assert_eq!(
        failing.calls().len(),
        3,
        "sync and force go straight through"
    );
}
