//! The `vmmci` binary as a user runs it, against a fake sysfs tree (a
//! regular file stands in for `resource0`), so no test depends on, or
//! touches, this machine's hardware, clock or power.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_vmmci");

fn vmmci(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run vmmci")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a run that must succeed said, on stdout and stderr together.
fn succeeded(out: &Output) -> String {
    let t = text(out);
    assert!(out.status.success(), "{t}");
    t
}

fn assert_says(t: &str, needles: &[&str]) {
    for needle in needles {
        assert!(t.contains(needle), "missing {needle:?} in\n{t}");
    }
}

/// A vmd device as sysfs shows it: identity files, an I/O BAR0 with decode
/// on, and a register file laid out like vmd's BAR.
fn fake_sysfs(root: &Path) -> PathBuf {
    let dev = root.join("0000:00:05.0");
    fs::create_dir_all(&dev).unwrap();
    for (name, value) in [
        ("vendor", "0x0b5d"),
        ("device", "0x0777"),
        ("subsystem_vendor", "0x0b5d"),
        ("subsystem_device", "0xffff"),
        ("revision", "0x00"),
        ("class", "0x078000"),
    ] {
        fs::write(dev.join(name), format!("{value}\n")).unwrap();
    }
    fs::write(
        dev.join("resource"),
        "0x000000000000c000 0x000000000000cfff 0x0000000000040101\n",
    )
    .unwrap();
    let mut config = vec![0u8; 64];
    config[4] = 0x1; // I/O decode on
    fs::write(dev.join("config"), config).unwrap();
    let mut regs = vec![0u8; 0x28];
    regs[0..4].copy_from_slice(&7u32.to_ne_bytes());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    regs[0x18..0x1c].copy_from_slice(&(now.as_secs() as u32).to_ne_bytes());
    regs[0x20..0x24].copy_from_slice(&now.subsec_micros().to_ne_bytes());
    fs::write(dev.join("resource0"), regs).unwrap();
    dev
}

#[test]
fn probe_says_clearly_when_this_is_not_a_vmd_guest() {
    let empty = tempfile::tempdir().unwrap();
    let out = vmmci(&["--sysfs-root", empty.path().to_str().unwrap(), "probe"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("not an OpenBSD vmd guest"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    let quiet = vmmci(&[
        "--sysfs-root",
        empty.path().to_str().unwrap(),
        "probe",
        "--quiet",
    ]);
    assert_eq!(quiet.status.code(), Some(1));
    assert!(quiet.stdout.is_empty() && quiet.stderr.is_empty());
}

#[test]
fn probe_explains_a_device() {
    let root = tempfile::tempdir().unwrap();
    fake_sysfs(root.path());
    let quiet = vmmci(&["--sysfs-root", root.path().to_str().unwrap(), "probe", "-q"]);
    assert!(quiet.status.success() && quiet.stdout.is_empty());
    let out = vmmci(&["--sysfs-root", root.path().to_str().unwrap(), "probe"]);
    let t = succeeded(&out);
    assert_says(
        &t,
        &[
            "device:    0000:00:05.0",
            "0b5d:0777 subsystem 0b5d:ffff rev 0",
            "driver:    none",
            "I/O 0xc000-0xcfff, I/O decode on",
            "offered TIMESYNC|ACK|SYNCRTC",
            "no agent: vmctl stop would kill this VM at once",
            "command:   NONE",
            "host time: offset",
        ],
    );
    // This machine's clock source, as its kernel says.
    let kernel =
        fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap();
    let want = format!("clock:     source {} (available: ", kernel.trim());
    assert_says(&t, &[&want]);
}

#[test]
fn sync_dry_run_prints_offset_and_error_bound() {
    let root = tempfile::tempdir().unwrap();
    fake_sysfs(root.path());
    let out = vmmci(&[
        "--sysfs-root",
        root.path().to_str().unwrap(),
        "sync",
        "--dry-run",
    ]);
    let t = succeeded(&out);
    assert!(t.contains("offset ") && t.contains("error bound ±"), "{t}");
}

#[test]
fn daemon_handshakes_serves_and_keeps_driver_ok_on_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let dev = fake_sysfs(root.path());
    let run = root.path().join("run");
    let child = start_daemon(root.path(), &run, &[]);
    let regs = fs::read(dev.join("resource0")).unwrap();
    assert_eq!(regs[0x12], 0x7, "DRIVER_OK written to the status register");
    let second = vmmci(&[
        "--sysfs-root",
        root.path().to_str().unwrap(),
        "daemon",
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    assert!(!second.status.success());
    assert!(
        text(&second).contains("another vmmci daemon is running (pid"),
        "{}",
        text(&second)
    );
    assert_eq!(&regs[0x04..0x08], &7u32.to_ne_bytes(), "features accepted");
    // Least privilege: as root, only CAP_SYS_TIME and CAP_SYS_BOOT are left.
    let proc_status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        for field in ["CapEff", "CapPrm", "CapBnd"] {
            let line = proc_status.lines().find(|l| l.starts_with(field)).unwrap();
            assert!(line.ends_with("0000000002400000"), "{line}");
        }
    }
    let status = vmmci(&["status", "--json", "--run-dir", run.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["state"], "running");
    assert_eq!(json["device"], "0000:00:05.0");
    assert_eq!(json["poll_interval_ms"], 20);

    terminate(child);
    let regs = fs::read(dev.join("resource0")).unwrap();
    assert_eq!(regs[0x12], 0x7, "DRIVER_OK kept on a normal exit");
    let status = vmmci(&["status", "--run-dir", run.to_str().unwrap()]);
    assert!(
        text(&status).contains("state:          exited"),
        "{}",
        text(&status)
    );

    // A restarted agent keeps DRIVER_OK through its handshake; asked to,
    // it writes status 0 when it leaves.
    fs::remove_file(run.join("status.json")).unwrap();
    let again = start_daemon(root.path(), &run, &["--release-on-exit"]);
    assert_eq!(fs::read(dev.join("resource0")).unwrap()[0x12], 0x7);
    terminate(again);
    assert_eq!(
        fs::read(dev.join("resource0")).unwrap()[0x12],
        0,
        "released"
    );
    let status = vmmci(&["status", "--run-dir", run.to_str().unwrap()]);
    assert!(text(&status).contains("state:          released"));
}

/// `vmmci daemon` on the fake tree, once its status file is there.
fn start_daemon(
    root: &std::path::Path,
    run: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    let child = Command::new(BIN)
        .args(["--sysfs-root", root.to_str().unwrap(), "daemon"])
        .args([
            "--poll-interval",
            "20ms",
            "--run-dir",
            run.to_str().unwrap(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run.join("status.json").exists() {
        assert!(Instant::now() < deadline, "no status file");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn terminate(child: std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_config_names_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vmmci.toml");
    fs::write(&cfg, "poll_interval = \"250ms\"\nreboot_cmd = \"reboot\"\n").unwrap();
    let out = vmmci(&["--config", cfg.to_str().unwrap(), "status"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("line 2") && t.contains("reboot_cmd"), "{t}");
    fs::write(&cfg, "poll_interval = \"5s\"\n").unwrap();
    let t = text(&vmmci(&["--config", cfg.to_str().unwrap(), "status"]));
    assert!(t.contains("poll_interval") && t.contains("3 s"), "{t}");
    let t = text(&vmmci(&["--config", "/nonexistent/vmmci.toml", "status"]));
    assert!(t.contains("cannot read /nonexistent/vmmci.toml"), "{t}");
}

#[test]
fn status_without_a_daemon_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = vmmci(&["status", "--run-dir", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is `vmmci daemon` running"),
        "{}",
        text(&out)
    );
}

#[test]
fn status_sysctl_keeps_the_old_driver_names_and_the_sign() {
    let dir = tempfile::tempdir().unwrap();
    let status = vmmci_report::Status {
        drift_ns: Some(-1_300_000_000),
        ..Default::default()
    };
    vmmci_report::write_status(dir.path(), &status).unwrap();
    let out = vmmci(&[
        "status",
        "--sysctl",
        "--run-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "vmmci.drift_sec = -1\nvmmci.drift_nsec = -300000000\n"
    );
}

/// A Linux power-off on vmd ends the VM by itself (HLT with interrupts
/// off): there is no power-down signal to send, in the CLI or its docs.
#[test]
fn there_is_no_power_down_signal_command() {
    let out = vmmci(&["notify-poweroff"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("unrecognized subcommand"),
        "{}",
        text(&out)
    );
    for args in [
        &["--help"][..],
        &["generate", "man"],
        &["generate", "bash"],
        &["generate", "zsh"],
        &["generate", "fish"],
    ] {
        let out = vmmci(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            !text(&out).contains("notify-poweroff"),
            "{args:?} still offers notify-poweroff:\n{}",
            text(&out)
        );
    }
}

#[test]
fn simulate_runs_the_script_and_touches_nothing() {
    let out = vmmci(&["simulate"]);
    let t = succeeded(&out);
    assert_says(
        &t,
        &[
            "handshake done: DRIVER_OK",
            "RTC clock drift",
            "SYNCRTC acknowledged: clock stepped by +90.0",
            "vmctl stop",
            "REBOOT acknowledged: reboot started through init",
            "VM ended: clean stop",
            "rule violations: 0",
            "result: OK",
        ],
    );
    // `discipline`, the default, steps the 1.5 s boot offset at its first
    // sample, then slews.
    assert_says(
        &t,
        &[
            "clock mode discipline",
            "stepped by +1.500000 s with no SYNCRTC",
            "slewing: offset",
        ],
    );
    // The old policy warns about it once, in the narrative only.
    let out = vmmci(&["simulate", "--clock-mode", "step-on-request"]);
    let t = succeeded(&out);
    assert_says(&t, &["SYNCRTC acknowledged: clock stepped by +91.5"]);
    let warned = t.matches("the host did not ask for a step").count();
    assert_eq!(
        warned, 1,
        "the missed-resume warning {warned} times in\n{t}"
    );
}

#[test]
fn sighup_reloads_the_config_and_a_bad_one_keeps_the_old() {
    let root = tempfile::tempdir().unwrap();
    fake_sysfs(root.path());
    let run = root.path().join("run");
    let cfg = root.path().join("vmmci.toml");
    fs::write(&cfg, "poll_interval = \"20ms\"\n").unwrap();
    let child = Command::new(BIN)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--sysfs-root",
            root.path().to_str().unwrap(),
        ])
        .args(["daemon", "--run-dir", run.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let poll_ms = || {
        let out = vmmci(&["status", "--json", "--run-dir", run.to_str().unwrap()]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|j| j["poll_interval_ms"].as_u64())
    };
    let wait_for = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while poll_ms() != Some(want) {
            assert!(
                Instant::now() < deadline,
                "poll interval never became {want} ms"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(20);
    fs::write(&cfg, "poll_interval = \"40ms\"\n").unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_for(40);
    fs::write(&cfg, "poll_interval = \"soon\"\n").unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        poll_ms(),
        Some(40),
        "a bad config must not replace the good one"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(
        log.contains("keeping the old configuration") && log.contains("line 1"),
        "{log}"
    );
}
