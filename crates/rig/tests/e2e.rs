//! End-to-end scenarios: a real Debian kernel in QEMU (TCG) with the
//! simulated vmd device, the static agent supervised by busybox init.
//!
//! Needs (never skipped; a missing piece fails with what to run):
//!   scripts/rig/install-deps.sh      (root: qemu-system-x86, busybox-static, e2fsprogs, ...)
//!   scripts/rig/fetch-kernels.sh     (kernels into ~/.cache/vmmci/kernels)
//!   scripts/rig/build-guest-bins.sh  (static vmmci + rig-clockprobe)
//! Run: scripts/rig/run-e2e.sh [filter]   (tests hold a lock: one QEMU at a time)

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmd_sim::EventKind;
use vmmci_protocol::{status, Command};
use vmmci_rig::clock;
use vmmci_rig::guest::{self, Booted, Guest};
use vmmci_rig::image;
use vmmci_rig::vm::{Ended, Outcome, Vm, VmOptions};

const BOOKWORM_CLOUD: &str = "bookworm-cloud";
const BOOKWORM_GENERIC: &str = "bookworm-generic";
const TRIXIE_CLOUD: &str = "trixie-cloud";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn boot(kernel: &str, g: Guest, tag: &str) -> Booted {
    let b = must(guest::boot(kernel, &g, tag), "boot");
    eprintln!(
        "[{tag}-{kernel}] RIG: ready at {:.2}s (log {})",
        b.ready_at.as_secs_f64(),
        b.log.display()
    );
    b
}

fn driver_ok(b: &Booted) -> Duration {
    let t = must(b.driver_ok(Duration::from_secs(60)), "agent handshake");
    eprintln!("  DRIVER_OK at {:.2}s", t.as_secs_f64());
    t
}

fn end(b: &Booted, timeout: Duration) -> Ended {
    let e = must(b.vm.wait_end(timeout), "VM end");
    eprintln!(
        "  ended at {:.2}s: {:?} ({})",
        e.at.as_secs_f64(),
        e.outcome,
        e.why
    );
    e
}

fn dump(b: &Booted) -> String {
    b.dump()
}

fn assert_outcome(b: &Booted, e: &Ended, want: Outcome) {
    assert_eq!(
        e.outcome,
        want,
        "unexpected outcome ({})\n{}",
        e.why,
        dump(b)
    );
}

fn assert_disk_clean(b: &Booted) {
    let d = b.disk.as_ref().expect("no disk");
    let r = must(image::fsck(d), "e2fsck");
    assert!(
        r.clean,
        "e2fsck -fn not clean (exit {}):\n{}\n{}",
        r.exit_code,
        r.output,
        dump(b)
    );
}

fn events_since(b: &Booted, from: usize) -> Vec<EventKind> {
    b.vm.with_vmd(|v| {
        v.events()[from.min(v.events().len())..]
            .iter()
            .map(|e| e.kind.clone())
            .collect()
    })
}

fn n_events(b: &Booted) -> usize {
    b.vm.with_vmd(|v| v.events().len())
}

/// Median residual guest − host (ns) from `count` probe samples.
fn probe(b: &Booted, count: u32) -> i64 {
    let res = must(b.probe(count), "clock probe");
    assert_eq!(res.len(), count as usize, "probe samples: {res:?}");
    let m = clock::median(&res).unwrap();
    eprintln!(
        "  probe residual guest-host: median {:+.6}s (n={})",
        m as f64 / 1e9,
        res.len()
    );
    m
}

const SEC: i64 = 1_000_000_000;

/// Trixie's 6.12 kernel crashes now and then under QEMU 7.2's TCG (a
/// double fault or general protection fault in interrupt context, at boot
/// or at shutdown: about 1 boot in 12 here, with any CPU model, with and
/// without the agent): an emulator defect. A scenario on that kernel runs
/// again, at most twice, when and only when the guest console shows the
/// kernel crashing; each crashed run's console is kept beside the log. Any
/// other failure fails at once.
fn on_trixie(tag: &str, scenario: impl Fn() + std::panic::RefUnwindSafe) {
    let log = vmmci_rig::artifacts::work_dir().join(format!("{tag}-{TRIXIE_CLOUD}.log"));
    for attempt in 1..=3 {
        let Err(failure) = std::panic::catch_unwind(&scenario) else {
            return;
        };
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        let crashed = vmmci_rig::vm::GUEST_CRASH_MARKERS
            .iter()
            .any(|m| console.contains(m));
        if attempt == 3 || !crashed {
            std::panic::resume_unwind(failure);
        }
        let kept = log.with_extension(format!("guest-crash-{attempt}.log"));
        let _ = std::fs::copy(&log, &kept);
        eprintln!(
            "  WARNING: the guest kernel crashed under TCG ({}); running the scenario again",
            kept.display()
        );
    }
}

// ------------------------------------------------------------- boot ----

fn boot_with_agent(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::agent(), "boot");
    let t_ok = driver_ok(&b);
    let (writes, violations) =
        b.vm.with_vmd(|v| (v.status_writes().to_vec(), v.violations().to_vec()));
    let first = |bit: u8| writes.iter().position(|w| w & bit != 0);
    let (a, d, o) = (
        first(status::ACKNOWLEDGE),
        first(status::DRIVER),
        first(status::DRIVER_OK),
    );
    assert!(
        a.is_some() && d.is_some() && o.is_some(),
        "status writes {writes:?}\n{}",
        dump(&b)
    );
    assert!(
        a < d && d < o,
        "handshake order ACKNOWLEDGE -> DRIVER -> DRIVER_OK, got {writes:x?}\n{}",
        dump(&b)
    );
    let last = writes[o.unwrap()];
    assert_eq!(
        last & 0x7,
        0x7,
        "DRIVER_OK write keeps ACKNOWLEDGE|DRIVER: {writes:x?}"
    );
    assert!(
        violations.is_empty(),
        "access-rule violations: {violations:#?}\n{}",
        dump(&b)
    );
    eprintln!(
        "  [{kernel}] boot: ready {:.2}s, DRIVER_OK {:.2}s, status writes {writes:x?}",
        b.ready_at.as_secs_f64(),
        t_ok.as_secs_f64()
    );
    // And it stops cleanly.
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
}

#[test]
fn a_boot_agent_bookworm_cloud() {
    boot_with_agent(BOOKWORM_CLOUD);
}

#[test]
fn a_boot_agent_bookworm_generic() {
    boot_with_agent(BOOKWORM_GENERIC);
}

#[test]
fn a_boot_agent_trixie_cloud() {
    on_trixie("boot", || boot_with_agent(TRIXIE_CLOUD));
}

/// The rig itself, without the agent: device enumerated, probe works.
fn boot_no_agent_probe(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::no_agent().with_disk(), "noagent");
    let lspci = must(
        b.vm.run(
            "cat /sys/bus/pci/devices/*/vendor /sys/bus/pci/devices/*/device",
            Duration::from_secs(20),
        ),
        "sysfs",
    );
    assert!(
        lspci.contains("0x0b5d") && lspci.contains("0x0777"),
        "device not enumerated: {lspci}"
    );
    let r = probe(&b, 5);
    // The guest set its clock from the CMOS RTC at boot: 1 s resolution.
    assert!(
        r.abs() < 3 * SEC / 2,
        "guest clock vs simulated host off by {r} ns before any jump"
    );
    b.vm.send_console("reboot").unwrap();
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::GuestReset);
    assert_disk_clean(&b);
}

#[test]
fn rig_no_agent_bookworm_cloud() {
    boot_no_agent_probe(BOOKWORM_CLOUD);
}

#[test]
fn rig_no_agent_bookworm_generic() {
    boot_no_agent_probe(BOOKWORM_GENERIC);
}

#[test]
fn rig_no_agent_trixie_cloud() {
    on_trixie("noagent", || boot_no_agent_probe(TRIXIE_CLOUD));
}

// ---------------------------------------------------------- scenarios --

/// (b) No agent: DRIVER_OK never set, vmctl stop is refused and vmd ends
/// the VM at once.
#[test]
fn b_no_agent_stop_refused() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::no_agent(), "refused");
    assert_eq!(b.vm.with_vmd(|v| v.device_status()), 0);
    assert!(
        b.vm.vmctl_stop().is_err(),
        "stop must be refused without DRIVER_OK"
    );
    let e = end(&b, Duration::from_secs(10));
    assert_outcome(&b, &e, Outcome::Refused);
}

/// (c) vmctl stop: REBOOT, acked, the guest shuts down and resets; the
/// data written just before (no sync) is on disk, and the fs is clean.
#[test]
fn c_vmctl_stop_clean() {
    vmctl_stop_clean(BOOKWORM_CLOUD);
}

#[test]
fn c_vmctl_stop_clean_trixie() {
    on_trixie("stop", || vmctl_stop_clean(TRIXIE_CLOUD));
}

fn vmctl_stop_clean(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::agent().with_disk(), "stop");
    driver_ok(&b);
    must(
        b.vm.run("seq 1 20000 > /data/f", Duration::from_secs(30)),
        "write file",
    );
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(150));
    assert_outcome(&b, &e, Outcome::CleanStop);
    eprintln!("  stop took {:.2}s", (e.at - t0).as_secs_f64());
    let evs = events_since(&b, 0);
    assert!(
        evs.iter().any(|k| matches!(
            k,
            EventKind::Ack {
                cmd: Command::Reboot,
                ..
            }
        )),
        "REBOOT not acknowledged\n{}",
        dump(&b)
    );
    assert_disk_clean(&b);
    let want: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    let got = must(
        image::read_file(b.disk.as_ref().unwrap(), "/f"),
        "read back",
    );
    assert!(
        got == want.as_bytes(),
        "file not whole: {} of {} bytes",
        got.len(),
        want.len()
    );
    assert!(
        b.vm.console_text().contains("RIG: fs clean"),
        "{}",
        dump(&b)
    );
}

/// SHUTDOWN from the host: ACK, power-off, power-down signal, vmd ends the
/// VM about 3 s later; disk clean.
#[test]
fn d_host_shutdown_powers_down() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), "shutdown");
    driver_ok(&b);
    must(
        b.vm.run("echo before-shutdown > /data/g", Duration::from_secs(30)),
        "write",
    );
    b.vm.request_shutdown().expect("shutdown accepted");
    let e = end(&b, Duration::from_secs(150));
    let evs = events_since(&b, 0);
    assert!(
        evs.iter().any(|k| matches!(
            k,
            EventKind::Ack {
                cmd: Command::Shutdown,
                ..
            }
        )),
        "SHUTDOWN not acknowledged\n{}",
        dump(&b)
    );
    assert_outcome(&b, &e, Outcome::PowerDown);
    if let Some(h) = b.vm.halted_at() {
        eprintln!(
            "  halted at {:.2}s, ended {:.2}s later",
            h.as_secs_f64(),
            (e.at.saturating_sub(h)).as_secs_f64()
        );
    }
    assert_disk_clean(&b);
    assert_eq!(
        must(image::read_file(b.disk.as_ref().unwrap(), "/g"), "read"),
        b"before-shutdown\n"
    );
}

/// `poweroff` in the guest: the power-down signal ends the VM (PowerDown).
#[test]
fn e_guest_poweroff() {
    guest_poweroff(BOOKWORM_CLOUD);
}

/// 6.12 prints "Power off not available: System halted instead".
#[test]
fn e_guest_poweroff_trixie() {
    on_trixie("poweroff", || guest_poweroff(TRIXIE_CLOUD));
}

fn guest_poweroff(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::agent().with_disk(), "poweroff");
    driver_ok(&b);
    b.vm.send_console("poweroff").unwrap();
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::PowerDown);
    let evs = events_since(&b, 0);
    assert!(
        evs.iter()
            .any(|k| matches!(k, EventKind::GuestShutdown { .. })),
        "{}",
        dump(&b)
    );
    assert_disk_clean(&b);
}

/// `reboot` in the guest: no power-down signal; QEMU exits on the reset.
#[test]
fn f_guest_reboot() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), "reboot");
    driver_ok(&b);
    b.vm.send_console("reboot").unwrap();
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::GuestReset);
    let evs = events_since(&b, 0);
    assert!(
        !evs.iter()
            .any(|k| matches!(k, EventKind::GuestShutdown { .. })),
        "reboot signalled power-down\n{}",
        dump(&b)
    );
    assert_disk_clean(&b);
}

fn wait_rtc_acked(b: &Booted, from: usize, what: &str) {
    must(
        b.vm.wait_vmd(what, Duration::from_secs(20), |v| {
            v.events()[from.min(v.events().len())..]
                .iter()
                .any(|e| matches!(e.kind, EventKind::RtcSyncAcked { .. }))
        }),
        what,
    );
}

/// Host clock +90 s: vmd sends SYNCRTC, the agent acks and steps the guest.
#[test]
fn g_host_clock_forward_syncrtc() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent(), "clockfwd");
    driver_ok(&b);
    let before = probe(&b, 3);
    let n = n_events(&b);
    b.vm.jump_host_clock(90 * SEC);
    wait_rtc_acked(&b, n, "SYNCRTC acked after +90 s");
    let evs = events_since(&b, n);
    assert!(
        evs.iter().any(|k| matches!(
            k,
            EventKind::Posted {
                cmd: Command::SyncRtc,
                ..
            }
        )),
        "{}",
        dump(&b)
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = probe(&b, 5);
    assert!(
        before.abs() < 3 * SEC / 2,
        "before (RTC-set clock, 1 s resolution): {before}"
    );
    assert!(
        after.abs() < SEC / 2,
        "guest not corrected: residual {after} ns\n{}",
        dump(&b)
    );
    assert!(b.vm.with_vmd(|v| v.violations().is_empty()), "{}", dump(&b));
}

/// Host clock −40 s: vmd sends nothing; an explicit SYNCRTC then corrects.
#[test]
fn h_host_clock_backward_explicit_syncrtc() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent(), "clockback");
    driver_ok(&b);
    let n = n_events(&b);
    b.vm.jump_host_clock(-40 * SEC);
    std::thread::sleep(Duration::from_secs(3));
    let evs = events_since(&b, n);
    assert!(
        !evs.iter().any(|k| matches!(
            k,
            EventKind::Posted {
                cmd: Command::SyncRtc,
                ..
            }
        )),
        "vmd must not send SYNCRTC for a backward jump\n{}",
        dump(&b)
    );
    let r = probe(&b, 3);
    assert!(
        (r - 40 * SEC).abs() < 3 * SEC / 2,
        "guest should be ~40 s ahead before resync: {r}"
    );
    let n = n_events(&b);
    assert!(b.vm.request_syncrtc(), "SYNCRTC not posted\n{}", dump(&b));
    wait_rtc_acked(&b, n, "explicit SYNCRTC acked");
    std::thread::sleep(Duration::from_millis(500));
    let after = probe(&b, 5);
    assert!(
        after.abs() < SEC / 2,
        "guest did not follow the host back: residual {after}\n{}",
        dump(&b)
    );
}

/// kill -9 of the agent while REBOOT is pending: busybox init respawns it
/// and the new agent handles the still-pending REBOOT.
#[test]
fn i_agent_killed_with_reboot_pending() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), "kill9");
    driver_ok(&b);
    let pid = must(b.vm.run("pidof vmmci", Duration::from_secs(20)), "pidof");
    assert!(!pid.is_empty(), "agent not running");
    must(
        b.vm.run(&format!("kill -STOP {pid}"), Duration::from_secs(20)),
        "stop agent",
    );
    b.vm.vmctl_stop().expect("stop accepted");
    must(
        b.vm.run(&format!("kill -9 {pid}"), Duration::from_secs(20)),
        "kill agent",
    );
    let e = end(&b, Duration::from_secs(150));
    assert_outcome(&b, &e, Outcome::CleanStop);
    assert_disk_clean(&b);
}

/// Garbage in COMMAND never causes an action; the next stop still works.
#[test]
fn j_garbage_commands_ignored() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent(), "garbage");
    driver_ok(&b);
    for v in [7u32, 0xdead_beef] {
        b.vm.set_command_raw(v);
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            b.vm.ended().is_none(),
            "VM ended after COMMAND {v:#x}\n{}",
            dump(&b)
        );
        let out = must(
            b.vm.run("echo alive", Duration::from_secs(20)),
            "console after garbage",
        );
        assert!(out.contains("alive"));
        assert!(
            !b.vm.console_text().contains("RIG: shutdown begin"),
            "garbage {v:#x} triggered a shutdown\n{}",
            dump(&b)
        );
    }
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(150));
    assert_outcome(&b, &e, Outcome::CleanStop);
}

fn json_i64(json: &str, key: &str) -> Option<i64> {
    let k = format!("\"{key}\"");
    let i = json.find(&k)? + k.len();
    let rest = json[i..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c == '-' || c.is_ascii_digit()))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `vmmci status --json` agrees with the host offset the rig injected.
#[test]
fn k_status_json_drift() {
    let _g = serial();
    let b = boot(
        BOOKWORM_CLOUD,
        Guest::agent().args("daemon --poll-interval 100ms --sample-interval 2s"),
        "status",
    );
    driver_ok(&b);
    // +3 s: below vmd's 5 s RTC threshold, so no SYNCRTC: only the drift shows.
    b.vm.jump_host_clock(3 * SEC);
    std::thread::sleep(Duration::from_secs(5));
    let out = must(
        b.vm.run("vmmci status --json", Duration::from_secs(20)),
        "status",
    );
    let drift =
        json_i64(&out, "drift_ns").unwrap_or_else(|| panic!("no drift_ns in: {out}\n{}", dump(&b)));
    let r = probe(&b, 3);
    eprintln!("  status drift_ns {drift}, probe residual {r}");
    // The guest clock came from the RTC (1 s resolution) unless the agent
    // stepped it: compare loosely with the injection, tightly with the probe.
    assert!(
        (drift - 3 * SEC).abs() < 3 * SEC / 2,
        "drift_ns {drift} vs injected +3 s\n{out}"
    );
    assert!(
        (drift + r).abs() < SEC / 2,
        "agent drift {drift} disagrees with probe residual {r}"
    );
}

#[test]
fn json_i64_parses() {
    assert_eq!(
        json_i64(r#"{"a":1,"drift_ns": -3000,"b":2}"#, "drift_ns"),
        Some(-3000)
    );
    assert_eq!(json_i64(r#"{"drift_ns":null}"#, "drift_ns"), None);
    let _ = Instant::now();
}

/// A frozen agent never acknowledges: vmd ends the VM after the 3 s ACK
/// timeout.
#[test]
fn l_frozen_agent_ack_timeout() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent(), "frozen");
    driver_ok(&b);
    must(
        b.vm.run("kill -STOP $(pidof vmmci)", Duration::from_secs(20)),
        "freeze agent",
    );
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(30));
    assert_outcome(&b, &e, Outcome::AckTimeout);
    let dt = e.at.saturating_sub(t0);
    assert!(
        dt >= Duration::from_millis(2900) && dt < Duration::from_secs(5),
        "ack timeout after {dt:?}"
    );
}

/// The reboot command does nothing: the agent forces the reboot when its
/// grace period runs out, before vmd's long timeout.
#[test]
fn m_stuck_reboot_forced_after_grace() {
    let _g = serial();
    let mut g = Guest::agent()
        .with_disk()
        .args("daemon --poll-interval 100ms --grace 5s");
    g.vmd.long_timeout = Duration::from_secs(40);
    let b = boot(BOOKWORM_CLOUD, g, "grace");
    driver_ok(&b);
    must(
        b.vm.run("rm /sbin/reboot; printf '#!/bin/sh\\necho RIG: fake reboot\\n' > /sbin/reboot; chmod +x /sbin/reboot; echo data > /data/h", Duration::from_secs(20)),
        "fake reboot",
    );
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
    let dt = e.at.saturating_sub(t0);
    eprintln!("  forced reboot after {:.2}s", dt.as_secs_f64());
    assert!(
        dt >= Duration::from_secs(5),
        "reset before the grace period: {dt:?}"
    );
    let d = b.disk.as_ref().unwrap();
    eprintln!(
        "  data disk after forced reboot: {}",
        must(image::superblock_state(d), "dumpe2fs")
    );
    // Synced before forcing: the data is there even if the journal is dirty.
    assert_eq!(must(image::read_file(d, "/h"), "read"), b"data\n");
}

/// The agent acknowledges and then stops dead (its reboot command freezes
/// it): vmd ends the VM when the long timeout (shortened here) runs out.
#[test]
fn n_acked_but_no_reset_long_timeout() {
    let _g = serial();
    let mut g = Guest::agent();
    g.vmd.long_timeout = Duration::from_secs(10);
    let b = boot(BOOKWORM_CLOUD, g, "long");
    driver_ok(&b);
    must(
        b.vm.run("rm /sbin/reboot; printf '#!/bin/sh\\nkill -STOP $PPID\\n' > /sbin/reboot; chmod +x /sbin/reboot", Duration::from_secs(20)),
        "freezing reboot",
    );
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::LongTimeout);
    let dt = e.at.saturating_sub(t0);
    eprintln!("  long timeout after {:.2}s", dt.as_secs_f64());
    assert!(
        dt >= Duration::from_secs(10) && dt < Duration::from_secs(14),
        "{dt:?}"
    );
}

/// `vmctl stop -f` never involves vmmci: the VM is ended at once, the
/// agent never sees a command.
#[test]
fn o_forced_stop_ends_at_once_without_vmmci() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent(), "force");
    driver_ok(&b);
    let n = n_events(&b);
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop_force();
    let e = end(&b, Duration::from_secs(10));
    assert_outcome(&b, &e, Outcome::Forced);
    assert!(
        e.at.saturating_sub(t0) < Duration::from_secs(2),
        "forced stop took {:?}",
        e.at - t0
    );
    let evs = events_since(&b, n);
    assert!(
        !evs.iter()
            .any(|k| matches!(k, EventKind::Posted { .. } | EventKind::Ack { .. })),
        "a forced stop must not go through vmmci: {evs:?}"
    );
}

/// The agent's status record, from `vmmci status --json` in the guest.
fn agent_status(b: &Booted) -> vmmci_report::Status {
    must(guest::agent_status(&b.vm), "vmmci status")
}

/// Wait (polling status) until `cond` holds; the status it held on.
fn wait_status(
    b: &Booted,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&vmmci_report::Status) -> bool,
) -> vmmci_report::Status {
    let deadline = Instant::now() + timeout;
    loop {
        let st = agent_status(b);
        if cond(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {st:?}\n{}",
            dump(b)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// `discipline` in a real kernel: with the host clock 50 ppm fast, the
/// agent learns the rate through the kernel's frequency correction and
/// holds the guest clock to the host within a millisecond with no step;
/// then the guest clock is set back a minute with no SYNCRTC (a resume the
/// agent missed) and the next sample steps it back.
#[test]
fn q_discipline_slews_a_fast_host_and_steps_a_missed_resume() {
    let _g = serial();
    let b = boot(
        BOOKWORM_CLOUD,
        Guest::agent()
            .args("daemon --clock-mode discipline --sample-interval 2s")
            .host_clock(50.0, 20_000),
        "discipline",
    );
    driver_ok(&b);
    let st = wait_status(&b, "30 slews", Duration::from_secs(180), |s| {
        s.clock.slews >= 30
    });
    let learned = st.clock.learned_frequency_ppm.unwrap_or(f64::NAN);
    let steps_before = st.clock.steps_periodic;
    let r = probe(&b, 5);
    eprintln!(
        "  discipline: {} slews, learned {learned:+.3} ppm, frequency {:+.3} ppm, probe residual {:+.3} ms",
        st.clock.slews,
        st.clock.frequency_ppm.unwrap_or(f64::NAN),
        r as f64 / 1e6
    );
    assert_eq!(st.clock.mode, "discipline");
    assert!(
        (learned - 50.0).abs() < 15.0,
        "learned rate {learned} ppm; the host runs 50 ppm fast\n{st:?}"
    );
    assert!(
        r.abs() < 1_000_000,
        "guest − host {r} ns after a minute of discipline\n{}",
        dump(&b)
    );

    let n = n_events(&b);
    must(
        b.vm.run(
            "date -s @$(( $(date +%s) - 60 )) >/dev/null && echo set-back",
            Duration::from_secs(20),
        ),
        "date -s",
    );
    let st = wait_status(&b, "the periodic step", Duration::from_secs(60), |s| {
        s.clock.steps_periodic > steps_before
    });
    let step = st.last_step.clone().expect("a step");
    assert_eq!(step.cause, "periodic");
    assert!(
        (step.delta_ns - 60 * SEC).abs() < 2 * SEC,
        "stepped by {} ns",
        step.delta_ns
    );
    let evs = events_since(&b, n);
    assert!(
        !evs.iter().any(|k| matches!(k, EventKind::Posted { .. })),
        "no command was involved: {evs:?}"
    );
    let r = probe(&b, 5);
    assert!(
        r.abs() < 1_000_000,
        "guest − host {r} ns after the step\n{}",
        dump(&b)
    );
}

/// The device vanishes from the guest's PCI bus (hot-remove) and comes
/// back (rescan): the agent logs it, reopens `resource0`, redoes the
/// handshake, and the next `vmctl stop` is handled.
#[test]
fn p_device_removed_and_rescanned_agent_recovers() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent(), "hotplug");
    driver_ok(&b);
    let bdf = must(
        b.vm.run(
            "basename $(dirname $(grep -l 0x0777 /sys/bus/pci/devices/*/device))",
            Duration::from_secs(20),
        ),
        "find the device",
    );
    let bdf = bdf.trim().to_string();
    assert!(bdf.starts_with("0000:"), "device not found: {bdf}");
    let writes_before = b.vm.with_vmd(|v| v.status_writes().len());
    let from = b.vm.console_len();
    must(
        b.vm.run(
            &format!("echo 1 > /sys/bus/pci/devices/{bdf}/remove"),
            Duration::from_secs(20),
        ),
        "remove",
    );
    // The agent's next poll fails and it says so, once; then the device
    // comes back.
    must(
        b.vm.wait_console_from(from, "ERROR", Duration::from_secs(20)),
        "agent noticing the removal",
    );
    must(
        b.vm.run("echo 1 > /sys/bus/pci/rescan", Duration::from_secs(20)),
        "rescan",
    );
    must(
        b.vm.wait_console_from(from, "device answers again", Duration::from_secs(20)),
        "agent recovery",
    );
    let writes_after = b.vm.with_vmd(|v| v.status_writes().len());
    assert!(
        writes_after >= writes_before + 4,
        "no second handshake: {writes_before} -> {writes_after}\n{}",
        dump(&b)
    );
    b.vm.vmctl_stop().expect("stop accepted after recovery");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
}

/// No QEMU is an error that says what to install, never a skip.
#[test]
fn qemu_missing_is_an_error() {
    let _g = serial();
    let old = std::env::var_os("VMMCI_QEMU");
    std::env::set_var("VMMCI_QEMU", "/nonexistent/qemu-system-x86_64");
    let r = Vm::start(VmOptions::new(
        "/nonexistent".into(),
        "/nonexistent".into(),
        std::env::temp_dir().join("rig-noqemu.log"),
    ));
    match old {
        Some(v) => std::env::set_var("VMMCI_QEMU", v),
        None => std::env::remove_var("VMMCI_QEMU"),
    }
    let err = r
        .err()
        .expect("Vm::start without QEMU must fail")
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}
