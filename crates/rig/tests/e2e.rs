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

use vmd_sim::{EventKind, VmmciCmd};
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

/// The agent's pid. The agent logs to the same console, so its lines can
/// fall into the output: pidof's line is the one that is a number.
fn agent_pid(b: &Booted) -> u32 {
    let out = must(b.vm.run("pidof vmmci", Duration::from_secs(20)), "pidof");
    out.lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("one agent pid, got {out:?}\n{}", dump(b)))
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
                cmd: VmmciCmd::Reboot,
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

/// The guest COMMAND writes since the `from`th (see `Vmd::command_writes`).
fn command_writes_since(b: &Booted, from: usize) -> Vec<u32> {
    b.vm.with_vmd(|v| {
        v.command_writes()[from.min(v.command_writes().len())..]
            .iter()
            .map(|&(_, value)| value)
            .collect()
    })
}

fn n_command_writes(b: &Booted) -> usize {
    b.vm.with_vmd(|v| v.command_writes().len())
}

/// Lines of the file written, without a sync, just before a power-off.
const LINES: u32 = 20000;

fn write_unsynced(b: &Booted, path: &str) {
    must(
        b.vm.run(&format!("seq 1 {LINES} > {path}"), Duration::from_secs(30)),
        "write file",
    );
}

fn assert_file_whole(b: &Booted, path: &str) {
    let want: String = (1..=LINES).map(|i| format!("{i}\n")).collect();
    let got = must(
        image::read_file(b.disk.as_ref().unwrap(), path),
        "read back",
    );
    assert!(
        got == want.as_bytes(),
        "{path} not whole on disk: {} of {} bytes\n{}",
        got.len(),
        want.len(),
        dump(b)
    );
}

/// The VM ended at the guest's halt, as vmm ends it (HLT with interrupts
/// off): the console showed the halt and the end came with it.
fn assert_ended_at_the_halt(b: &Booted, e: &Ended) {
    assert_outcome(b, e, Outcome::Halted);
    let Some(h) = b.vm.halted_at() else {
        panic!("ended as Halted, but no halt on the console\n{}", dump(b));
    };
    assert!(
        e.at.saturating_sub(h) < Duration::from_secs(1),
        "the VM ended {:?} after the halt, not at it\n{}",
        e.at.saturating_sub(h),
        dump(b)
    );
    let last =
        b.vm.with_vmd(|v| v.events().last().map(|ev| ev.kind.clone()));
    assert_eq!(
        last,
        Some(EventKind::Ended(vmd_sim::VmEnd::Halted)),
        "{}",
        dump(b)
    );
}

/// SHUTDOWN from the host: the agent acknowledges it and powers off through
/// init; the guest's final halt ends the VM at once (as vmm does: HLT with
/// interrupts off), long before the 120 s after the ACK. Only the ACK is
/// written to COMMAND; the data disk is clean and a file written just before
/// (no sync) is whole.
#[test]
fn d_host_shutdown_acked_then_the_halt_ends_the_vm() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), "shutdown");
    driver_ok(&b);
    write_unsynced(&b, "/data/g");
    let w0 = n_command_writes(&b);
    let t0 = b.vm.elapsed();
    b.vm.request_shutdown().expect("shutdown accepted");
    let e = end(&b, Duration::from_secs(150));
    let evs = events_since(&b, 0);
    assert!(
        evs.iter().any(|k| matches!(
            k,
            EventKind::Ack {
                cmd: VmmciCmd::Shutdown,
                ..
            }
        )),
        "SHUTDOWN not acknowledged\n{}",
        dump(&b)
    );
    assert_ended_at_the_halt(&b, &e);
    let writes = command_writes_since(&b, w0);
    assert!(
        !writes.is_empty() && writes.iter().all(|&w| w == Command::SHUTDOWN),
        "COMMAND writes after the request, want only the ACK (1): {writes:?}\n{}",
        dump(&b)
    );
    eprintln!(
        "  SHUTDOWN -> VM end {:.2}s (halt at {:.2}s); COMMAND writes {writes:?}",
        (e.at - t0).as_secs_f64(),
        b.vm.halted_at().unwrap_or_default().as_secs_f64()
    );
    assert!(
        b.vm.console_text().contains("RIG: fs clean"),
        "{}",
        dump(&b)
    );
    assert_disk_clean(&b);
    assert_file_whole(&b, "/g");
}

/// `poweroff` in the guest: the kernel's final halt ends the VM at once (as
/// vmm does), nothing at all is written to COMMAND, the data disk is clean
/// and a file written just before (no sync) is whole.
#[test]
fn e_guest_poweroff_halts_and_ends_the_vm() {
    guest_poweroff(BOOKWORM_CLOUD);
}

/// 6.12 prints "Power off not available: System halted instead".
#[test]
fn e_guest_poweroff_halts_and_ends_the_vm_trixie() {
    on_trixie("poweroff", || guest_poweroff(TRIXIE_CLOUD));
}

fn guest_poweroff(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::agent().with_disk(), "poweroff");
    driver_ok(&b);
    write_unsynced(&b, "/data/f");
    let w0 = n_command_writes(&b);
    let t0 = b.vm.elapsed();
    b.vm.send_console("poweroff").unwrap();
    let e = end(&b, Duration::from_secs(60));
    assert_ended_at_the_halt(&b, &e);
    let writes = command_writes_since(&b, w0);
    assert!(
        writes.is_empty(),
        "COMMAND written during a guest power-off: {writes:?}\n{}",
        dump(&b)
    );
    eprintln!(
        "  [{kernel}] poweroff -> VM end {:.2}s (halt at {:.2}s), no COMMAND write",
        (e.at - t0).as_secs_f64(),
        b.vm.halted_at().unwrap_or_default().as_secs_f64()
    );
    assert!(
        b.vm.console_text().contains("RIG: fs clean"),
        "{}",
        dump(&b)
    );
    assert_disk_clean(&b);
    assert_file_whole(&b, "/f");
}

/// `reboot` in the guest: nothing written to COMMAND; QEMU exits on the reset.
#[test]
fn f_guest_reboot_writes_nothing() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), "reboot");
    driver_ok(&b);
    let w0 = n_command_writes(&b);
    b.vm.send_console("reboot").unwrap();
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::GuestReset);
    let writes = command_writes_since(&b, w0);
    assert!(
        writes.is_empty(),
        "COMMAND written during a guest reboot: {writes:?}\n{}",
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
                cmd: VmmciCmd::SyncRtc,
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
                cmd: VmmciCmd::SyncRtc,
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
    let pid = agent_pid(&b);
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

/// The reboot command does nothing: "sync early, force late". The agent
/// syncs at the grace point and forces the reboot at `force_after`, before
/// vmd's long timeout (shortened here, with the agent's times to match).
#[test]
fn m_stuck_reboot_synced_at_grace_forced_late() {
    let _g = serial();
    let mut g = Guest::agent()
        .with_disk()
        .args("daemon --poll-interval 100ms --grace 5s --force-after 15s");
    g.vmd.long_timeout = Duration::from_secs(40);
    let b = boot(BOOKWORM_CLOUD, g, "grace");
    driver_ok(&b);
    must(
        b.vm.run("rm /sbin/reboot; printf '#!/bin/sh\\necho RIG: fake reboot\\n' > /sbin/reboot; chmod +x /sbin/reboot; echo data > /data/h", Duration::from_secs(20)),
        "fake reboot",
    );
    let from = b.vm.console_len();
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let synced = must(
        b.vm.wait_console_from(from, "syncing file systems", Duration::from_secs(30)),
        "the sync at the grace point",
    );
    let forced = must(
        b.vm.wait_console_from(synced, "syncing and forcing it", Duration::from_secs(40)),
        "the force at force_after",
    );
    assert!(synced < forced);
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
    let dt = e.at.saturating_sub(t0);
    eprintln!("  forced reboot after {:.2}s", dt.as_secs_f64());
    assert!(
        dt >= Duration::from_secs(15),
        "reset before force_after: {dt:?}"
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
    // The device kept DRIVER_OK through the removal: the second handshake
    // only writes DRIVER_OK again, never a status without it.
    let writes = b.vm.with_vmd(|v| v.status_writes().to_vec());
    assert!(
        writes.len() > writes_before,
        "no second handshake: {writes:x?}\n{}",
        dump(&b)
    );
    assert!(
        writes[writes_before..]
            .iter()
            .all(|w| w & status::DRIVER_OK != 0),
        "DRIVER_OK dropped by the second handshake: {writes:x?}"
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

// ------------------------- issue 10 §2 and §3: races and restarts ----

/// Issue 10 §2 (never lose a REBOOT to a SYNCRTC acknowledgement) and §3
/// (keep DRIVER_OK when the agent exits or restarts), on a real kernel
/// with the agent as busybox init supervises it.
mod issue10 {
    use super::*;

    use vmd_sim::{AccessTrigger, Event, HostAction, Reg};
    use vmmci_protocol::timeouts;
    use vmmci_rig::restart::{self, StatusWatch};

    const STATUS_FILE: &str = "/run/vmmci/status.json";

    /// The simulator time of the first event in `evs` that `pred` picks.
    fn first_at(evs: &[Event], pred: impl Fn(&EventKind) -> bool) -> Option<Duration> {
        evs.iter().find(|e| pred(&e.kind)).map(|e| e.at)
    }

    fn events_from(b: &Booted, from: usize) -> Vec<Event> {
        b.vm.with_vmd(|v| v.events()[from.min(v.events().len())..].to_vec())
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    /// `b - a` in ms, signed.
    fn dms(a: Duration, b: Duration) -> f64 {
        ms(b) - ms(a)
    }

    fn is_reboot_ack(k: &EventKind) -> bool {
        matches!(
            k,
            EventKind::Ack {
                cmd: VmmciCmd::Reboot,
                ..
            }
        )
    }

    fn is_stop(k: &EventKind) -> bool {
        matches!(
            k,
            EventKind::StopRequested {
                cmd: VmmciCmd::Reboot
            }
        )
    }

    // ------------------------------------------------------------ §2 --

    /// Where the REBOOT lands, counted in the agent's register accesses
    /// after its read of COMMAND that returned SYNCRTC: the stop runs just
    /// before access k+1. An agent that steps first and acknowledges after
    /// (two samples of five TIME_SEC/TIME_USEC pairs: 20 reads, the ACK is
    /// access 22) loses the REBOOT at every k here. Left out: the one
    /// instant no ordering can close, between the agent's last read of
    /// COMMAND and its ACK write (k = 3 with the agent's ISR/COMMAND
    /// re-check before the ACK): there vmd itself wipes the REBOOT, and the
    /// agent, seeing ISR set and COMMAND empty, reboots on its own with no
    /// ACK to give (the simulator's sweep covers that point).
    const SYNCRTC_STOP_AFTER: [u64; 10] = [1, 2, 4, 5, 7, 10, 13, 16, 19, 21];

    /// A host clock jump, vmd's RTC tick posts SYNCRTC, and `vmctl stop`
    /// lands while the agent handles it, at ten points of that handling
    /// (ten boots): every one a clean stop, REBOOT acknowledged within
    /// vmd's 3 s, never wiped by the SYNCRTC ACK, data disk clean.
    ///
    /// How the points are hit: the agent is frozen (SIGSTOP) while the
    /// clock jumps and vmd's tick posts SYNCRTC, so its first access when
    /// thawed is the read of COMMAND that returns SYNCRTC (a marker,
    /// a repeated SYNCRTC request that vmd only logs, is scheduled just
    /// before that read to time it); the stop is scheduled k accesses on.
    #[test]
    fn r_vmctl_stop_during_syncrtc_10_boots() {
        let _g = serial();
        let t_all = Instant::now();
        let mut read_to_stop = vec![];
        let mut stop_to_ack = vec![];
        for (i, &k) in SYNCRTC_STOP_AFTER.iter().enumerate() {
            let jump_s = 30 + 10 * i as i64;
            let tag = format!("syncrtc-stop-{:02}", i + 1);
            let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), &tag);
            driver_ok(&b);
            let pid = agent_pid(&b);
            must(
                b.vm.run(&format!("kill -STOP {pid}"), Duration::from_secs(20)),
                "freeze the agent",
            );
            // It polls every 100 ms: three polls' worth of silence.
            let a0 = b.vm.with_vmd(|v| v.accesses());
            std::thread::sleep(Duration::from_millis(300));
            let a1 = b.vm.with_vmd(|v| v.accesses());
            assert_eq!(a0, a1, "the agent still reads the device after SIGSTOP");
            let n = n_events(&b);
            b.vm.jump_host_clock(jump_s * SEC);
            must(
                b.vm.wait_vmd(
                    "vmd's RTC tick posting SYNCRTC",
                    Duration::from_secs(5),
                    |v| {
                        v.events()[n..].iter().any(|e| {
                            matches!(
                                e.kind,
                                EventKind::Posted {
                                    cmd: VmmciCmd::SyncRtc,
                                    ..
                                }
                            )
                        })
                    },
                ),
                "SYNCRTC after the jump",
            );
            b.vm.with_vmd(|v| {
                v.schedule(
                    AccessTrigger::Before(Reg::Command),
                    HostAction::RequestSyncRtc,
                );
                v.schedule(AccessTrigger::After(k), HostAction::VmctlStop);
            });
            must(
                b.vm.run(&format!("kill -CONT {pid}"), Duration::from_secs(20)),
                "thaw the agent",
            );
            let e = end(&b, Duration::from_secs(60));
            let evs = events_from(&b, n);
            let jump = first_at(&evs, |k| matches!(k, EventKind::ClockJump { .. }));
            let posted = first_at(&evs, |k| {
                matches!(
                    k,
                    EventKind::Posted {
                        cmd: VmmciCmd::SyncRtc,
                        ..
                    }
                )
            });
            let read = first_at(&evs, |k| {
                matches!(
                    k,
                    EventKind::CtlAlreadyPending {
                        cmd: VmmciCmd::SyncRtc
                    }
                )
            });
            let stop = first_at(&evs, is_stop);
            let rtc_ack = evs.iter().find_map(|e| match e.kind {
                EventKind::RtcSyncAcked { was } => Some((e.at, was)),
                _ => None,
            });
            let ack = first_at(&evs, is_reboot_ack);
            let ended = first_at(&evs, |k| matches!(k, EventKind::Ended(_)));
            let (Some(jump), Some(posted), Some(read), Some(stop)) = (jump, posted, read, stop)
            else {
                panic!(
                    "run {} (k={k}): jump, SYNCRTC, its read and the stop all in vmd's log\n{}",
                    i + 1,
                    dump(&b)
                );
            };
            let pos = |pred: fn(&EventKind) -> bool| evs.iter().position(|e| pred(&e.kind));
            let read_pos = pos(|k| {
                matches!(
                    k,
                    EventKind::CtlAlreadyPending {
                        cmd: VmmciCmd::SyncRtc
                    }
                )
            });
            assert!(
                read_pos < pos(is_stop),
                "run {} (k={k}): the stop came before the agent read SYNCRTC (frozen in the \
                 middle of a sample?)\n{}",
                i + 1,
                dump(&b)
            );
            if let Some((_, was)) = rtc_ack {
                assert_ne!(
                    was,
                    Command::REBOOT,
                    "run {} (k={k}): the agent's SYNCRTC ACK wiped the pending REBOOT\n{}",
                    i + 1,
                    dump(&b)
                );
            }
            assert_outcome(&b, &e, Outcome::CleanStop);
            let Some(ack) = ack else {
                panic!(
                    "run {} (k={k}): REBOOT never acknowledged\n{}",
                    i + 1,
                    dump(&b)
                );
            };
            let took = ack.saturating_sub(stop);
            assert!(
                took < timeouts::ACK,
                "run {} (k={k}): REBOOT acknowledged {took:?} after the stop\n{}",
                i + 1,
                dump(&b)
            );
            assert_disk_clean(&b);
            let rtc = match rtc_ack {
                Some((t, _)) if t <= stop => {
                    format!(
                        "SYNCRTC acknowledged {:.1} ms before the stop",
                        dms(t, stop)
                    )
                }
                Some((t, _)) => {
                    format!("SYNCRTC acknowledged {:.1} ms after the stop", dms(stop, t))
                }
                None => "SYNCRTC superseded by the REBOOT, never acknowledged".into(),
            };
            eprintln!(
                "  run {:2}: +{jump_s} s, stop after {k:2} accesses: tick posted SYNCRTC {:.0} ms \
                 after the jump, the thawed agent read it {:.0} ms later; stop {:.1} ms after that read; {rtc}; \
                 REBOOT ACK {:.1} ms after the stop; VM end {:.2} s after the stop",
                i + 1,
                dms(jump, posted),
                dms(posted, read),
                dms(read, stop),
                ms(took),
                ended.map_or(f64::NAN, |t| dms(stop, t) / 1e3),
            );
            read_to_stop.push(dms(read, stop));
            stop_to_ack.push(ms(took));
        }
        let range = |v: &[f64]| {
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.1}..{hi:.1} ms")
        };
        eprintln!(
            "  10/10 clean stops, every REBOOT acknowledged; stop after the SYNCRTC read: {}; \
             stop -> ACK: {} (vmd allows 3000 ms); 10 boots {:.1} s",
            range(&read_to_stop),
            range(&stop_to_ack),
            t_all.elapsed().as_secs_f64()
        );
    }

    // ------------------------------------------------------------ §3 --

    /// When the `vmctl stop` comes, relative to the agent's restart.
    #[derive(Clone, Copy, Debug)]
    enum StopAt {
        /// This long after the guest shell ran `kill` (host time at which
        /// the shell's reply arrived: the signal was sent just before).
        After(Duration),
        /// Just before the new agent reads the device features: inside its
        /// handshake. Scheduled before the signal; the running agent never
        /// reads them again (only a handshake does), so only the new one
        /// can trigger it.
        InNewHandshake,
    }

    /// One boot: end the agent with `signal`, let busybox init respawn it,
    /// post `vmctl stop` at `at`. Asserts a clean stop, REBOOT acknowledged
    /// within vmd's 3 s by the new agent's pid, no status write without
    /// DRIVER_OK after the first DRIVER_OK, data disk clean. Returns the
    /// timing line.
    fn restart_then_stop(signal: &str, at: StopAt, tag: &str) -> String {
        let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), tag);
        driver_ok(&b);
        let ev0 = n_events(&b);
        let mut watch = StatusWatch::new(&b.vm);
        if let StopAt::InNewHandshake = at {
            b.vm.with_vmd(|v| {
                v.schedule(
                    AccessTrigger::Before(Reg::DeviceFeatures),
                    HostAction::VmctlStop,
                )
            });
        }
        let from = b.vm.console_len();
        let t_send = watch.poll(&b.vm);
        let cmd = format!(
            "{} kill -{signal} $old",
            restart::watcher_cmd("pidof vmmci", true, STATUS_FILE)
        );
        must(b.vm.run(&cmd, Duration::from_secs(20)), "signal the agent");
        let t_sig = watch.poll(&b.vm);
        if let StopAt::After(d) = at {
            watch.wait_until(&b.vm, t_sig + d);
            if let Err(r) = b.vm.vmctl_stop() {
                panic!(
                    "[{tag}] vmctl stop {d:?} after SIG{signal} refused ({r:?}): DRIVER_OK was \
                     cleared\n{}",
                    dump(&b)
                );
            }
        }
        let ended = watch.wait_end(&b.vm, Duration::from_secs(60));
        assert!(
            ended,
            "[{tag}] the VM did not end within 60 s\n{}",
            dump(&b)
        );
        let e = end(&b, Duration::from_secs(1));
        let evs = events_from(&b, ev0);
        let (writes, left) =
            b.vm.with_vmd(|v| (v.status_writes().to_vec(), v.scheduled()));
        let dropped = restart::driver_ok_dropped(&writes);
        assert!(
            dropped.is_empty(),
            "[{tag}] status written without DRIVER_OK after DRIVER_OK (index, value): \
             {dropped:x?} in {writes:x?}: a `vmctl stop` there is refused and the VM ended at \
             once\n{}",
            dump(&b)
        );
        assert_eq!(
            left,
            0,
            "[{tag}] the stop scheduled inside the new handshake never ran (the new agent \
             did not read the device features)\n{}",
            dump(&b)
        );
        assert!(
            !evs.iter()
                .any(|e| matches!(e.kind, EventKind::CtlRefused { .. })),
            "[{tag}] vmctl stop refused\n{}",
            dump(&b)
        );
        assert_outcome(&b, &e, Outcome::CleanStop);
        let (Some(stop), Some(ack)) = (first_at(&evs, is_stop), first_at(&evs, is_reboot_ack))
        else {
            panic!(
                "[{tag}] REBOOT posted and acknowledged in vmd's log\n{}",
                dump(&b)
            );
        };
        let took = ack.saturating_sub(stop);
        assert!(
            took < timeouts::ACK,
            "[{tag}] REBOOT acknowledged {took:?} after the stop\n{}",
            dump(&b)
        );
        let console = b.vm.console_text();
        let pid = |m: &str| restart::marker_pid(&console, from, m);
        let (old, new, acked_by) = (
            pid(restart::OLD_PID),
            pid(restart::NEW_PID),
            pid(restart::ACKED_BY),
        );
        assert!(
            old.is_some() && new.is_some() && new != old,
            "[{tag}] old agent {old:?}, new agent {new:?}: busybox init did not respawn it?\n{}",
            dump(&b)
        );
        assert_eq!(
            acked_by,
            new,
            "[{tag}] the status file showing REBOOT acknowledged was written by pid {acked_by:?}, \
             not the new agent {new:?} (old {old:?})\n{}",
            dump(&b)
        );
        assert_disk_clean(&b);
        let new_ok = watch.first_driver_ok();
        let landed = match new_ok {
            Some(t) if stop < t => "before the new DRIVER_OK",
            Some(_) => "after the new DRIVER_OK",
            None => "no new DRIVER_OK seen",
        };
        format!(
            "SIG{signal} {at:?}: shell round trip {:.0} ms; stop {:+.0} ms after the signal \
             ({landed}); new agent's DRIVER_OK {} ms after the signal; REBOOT ACK {:.0} ms after \
             the stop by pid {} (old {}); VM end {:.2} s after the stop",
            dms(t_send, t_sig),
            dms(t_sig, stop),
            new_ok.map_or("?".into(), |t| format!("{:.0}", dms(t_sig, t))),
            ms(took),
            new.unwrap_or(0),
            old.unwrap_or(0),
            first_at(&evs, |k| matches!(k, EventKind::Ended(_)))
                .map_or(f64::NAN, |t| dms(stop, t) / 1e3),
        )
    }

    fn restarts(signal: &str, points: &[StopAt]) {
        let _g = serial();
        let t_all = Instant::now();
        let mut lines = vec![];
        for (i, &at) in points.iter().enumerate() {
            let tag = format!("restart-{}-{:02}", signal.to_lowercase(), i + 1);
            let line = restart_then_stop(signal, at, &tag);
            eprintln!("  {line}");
            lines.push(line);
        }
        eprintln!(
            "  {n}/{n} clean stops after SIG{signal}, each acknowledged by the new agent \
             within 3 s, DRIVER_OK never dropped ({:.1} s):\n    {}",
            t_all.elapsed().as_secs_f64(),
            lines.join("\n    "),
            n = points.len()
        );
    }

    /// SIGKILL (a crash, an OOM kill): a stop 0, 0.1, 0.5 and 1 s after the
    /// signal, and one just before the respawned agent reads the device
    /// features. DRIVER_OK must survive both the dead agent and the new
    /// agent's handshake (which must not start with status 0).
    #[test]
    fn s_agent_sigkill_then_vmctl_stop_5_boots() {
        let millis = Duration::from_millis;
        restarts(
            "KILL",
            &[
                StopAt::After(millis(0)),
                StopAt::After(millis(100)),
                StopAt::After(millis(500)),
                StopAt::After(millis(1000)),
                StopAt::InNewHandshake,
            ],
        );
    }

    /// SIGTERM (a restart, an upgrade): the agent exits without writing
    /// status 0, so a stop 0, 0.1, 0.5 or 1 s after the signal is posted,
    /// stays pending while no agent runs, and the respawned agent
    /// acknowledges it.
    #[test]
    fn s_agent_sigterm_then_vmctl_stop_4_boots() {
        let millis = Duration::from_millis;
        restarts(
            "TERM",
            &[
                StopAt::After(millis(0)),
                StopAt::After(millis(100)),
                StopAt::After(millis(500)),
                StopAt::After(millis(1000)),
            ],
        );
    }
}

/// vmd's deadline for the ACK holds under load: 10 boots of the busybox
/// guest with the agent at its defaults (poll every 250 ms, nice 0: no
/// priority help from an init system), each with one busy loop per vCPU and
/// a disk writer (dd with fsync to the data disk, in a loop) running when
/// `vmctl stop` comes. Every stop is acknowledged within 3 s and ends
/// clean, with an fsck-clean data disk. (The full-distro test
/// `i_boot_window_and_stop_under_load` does one such stop through the
/// packaged unit and its priorities; a distro boot costs ~10 busybox boots.)
#[test]
fn r_ack_under_load_10_stops() {
    let _g = serial();
    let mut acks = vec![];
    for i in 1..=10 {
        let b = boot(
            BOOKWORM_CLOUD,
            Guest::agent().with_disk().args("daemon"),
            "load",
        );
        driver_ok(&b);
        let load = must(vmmci_rig::load::start(&b.vm, "/data"), "load");
        assert!(
            load.spinners >= load.cpus && load.writers >= 1 && load.busy > 0.9,
            "stop {i}: the load is not running: {load:?}\n{}",
            dump(&b)
        );
        let stop = must(
            vmmci_rig::load::stop_and_time(&b.vm, Duration::from_secs(150)),
            "stop under load",
        );
        assert_outcome(&b, &stop.ended, Outcome::CleanStop);
        let Some(ack) = stop.ack else {
            panic!("stop {i}: REBOOT not acknowledged\n{}", dump(&b));
        };
        assert!(
            ack < Duration::from_secs(3),
            "stop {i}: ACK after {ack:?}\n{}",
            dump(&b)
        );
        assert_disk_clean(&b);
        eprintln!(
            "  stop {i:2} under load (CPU {:.0}% busy, {} spinner(s), {} writer(s)): ACK {:.3} s, VM end {:.2} s",
            load.busy * 100.0,
            load.spinners,
            load.writers,
            ack.as_secs_f64(),
            stop.end.as_secs_f64()
        );
        acks.push(ack);
    }
    let (m, max) = vmmci_rig::load::median_max(&acks).unwrap();
    eprintln!(
        "  ACK under load: n={}, median {:.3} s, max {:.3} s (vmd allows 3 s); 10/10 clean stops",
        acks.len(),
        m.as_secs_f64(),
        max.as_secs_f64()
    );
}

// ----------------------------------------------------------- clock source ----

/// `vmmci status` reports the clock source the guest kernel itself names,
/// and the ones it offers, on two kernels (6.1 and 6.12).
fn clock_source_matches_the_kernel(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::agent(), "clocksource");
    driver_ok(&b);
    let sysfs = "/sys/devices/system/clocksource/clocksource0";
    let read = |file: &str| {
        must(
            b.vm.run(&format!("cat {sysfs}/{file}"), Duration::from_secs(30)),
            file,
        )
    };
    let (current, available) = (read("current_clocksource"), read("available_clocksource"));
    let status = must(guest::agent_status(&b.vm), "vmmci status");
    let source = status
        .clock_source
        .unwrap_or_else(|| panic!("no clock source in the status\n{}", dump(&b)));
    eprintln!("  [{kernel}] kernel: {current:?} of {available:?}; agent: {source:?}");
    assert!(
        current
            .lines()
            .any(|l| Some(l.trim()) == source.current.as_deref()),
        "agent says {:?}, kernel {current:?}",
        source.current
    );
    let kernel_list: Vec<&str> = available
        .lines()
        .find(|l| l.contains(source.current.as_deref().unwrap_or("?")))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(source.available, kernel_list, "available clock sources");
    // QEMU's TCG offers no kvm-clock leaves, unlike a recent vmm.
    assert!(!source.kvm_clock_offered);
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
}

#[test]
fn r_clock_source_bookworm_cloud() {
    clock_source_matches_the_kernel(BOOKWORM_CLOUD);
}

#[test]
fn r_clock_source_trixie_cloud() {
    on_trixie("clocksource", || {
        clock_source_matches_the_kernel(TRIXIE_CLOUD)
    });
}

/// Issue 12 §1, hooks around host events, in one boot of the busybox guest
/// (a real kernel; the agent as busybox init runs it): hooks and a config
/// are put in place and the agent reloads them (SIGHUP). A missing
/// `[hooks]` program and a non-executable file in the drop-in directory
/// are reported once and harm nothing. A host clock jump of +90 s: the
/// SYNCRTC's step runs the after-step hook, which sees the step size. Then
/// `vmctl stop`: the REBOOT is acknowledged at once; the before-reboot
/// hooks run in name order, the one that hangs is killed at its limit (2 s)
/// and the next still runs; the stop is clean, and the file a hook wrote
/// (without a sync) is on the data disk after it.
#[test]
fn t_hooks_before_reboot_and_after_step() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), "hooks");
    driver_ok(&b);
    let d = "/etc/vmmci/hooks.d";
    for cmd in [
        format!("mkdir -p {d}/before-reboot {d}/after-step"),
        "printf '[hooks]\\ntimeout = \"2s\"\\nbefore_reboot = [\"no-such-hook-vmmci\"]\\n' > /etc/vmmci.toml".into(),
        format!("printf '#!/bin/sh\\necho \"$VMMCI_EVENT $VMMCI_COMMAND\" > /data/before-reboot\\n' > {d}/before-reboot/10-mark"),
        format!("printf '#!/bin/sh\\necho hanging\\nsleep 60\\n' > {d}/before-reboot/20-hang"),
        format!("printf 'not a hook\\n' > {d}/before-reboot/25-notes"),
        format!("printf '#!/bin/sh\\necho after the hang >> /data/before-reboot\\n' > {d}/before-reboot/30-after"),
        format!("printf '#!/bin/sh\\necho \"$VMMCI_EVENT $VMMCI_CAUSE $VMMCI_COMMAND $VMMCI_STEP_NS\" | tee /data/after-step\\n' > {d}/after-step/10-note"),
        format!("chmod 755 {d}/before-reboot/10-mark {d}/before-reboot/20-hang {d}/before-reboot/30-after {d}/after-step/10-note"),
        "kill -HUP $(pidof vmmci)".into(),
    ] {
        must(b.vm.run(&cmd, Duration::from_secs(20)), &cmd);
    }
    let st = wait_status(&b, "the hooks' problems", Duration::from_secs(30), |s| {
        s.hooks.problems.len() == 2
    });
    eprintln!("  problems: {:?}", st.hooks.problems);
    assert!(
        st.hooks
            .problems
            .iter()
            .any(|p| p.contains("\"no-such-hook-vmmci\" not found"))
            && st
                .hooks
                .problems
                .iter()
                .any(|p| p.contains("25-notes is not executable")),
        "{:?}",
        st.hooks.problems
    );

    // After a step.
    let n = n_events(&b);
    b.vm.jump_host_clock(90 * SEC);
    wait_rtc_acked(&b, n, "SYNCRTC acked after +90 s");
    let st = wait_status(
        &b,
        "the after-step hook's run",
        Duration::from_secs(30),
        |s| s.hooks.runs.iter().any(|r| r.event == "after-step"),
    );
    let run = st
        .hooks
        .runs
        .iter()
        .find(|r| r.event == "after-step")
        .unwrap();
    eprintln!(
        "  after-step: {} in {} ms: {:?}",
        run.result, run.duration_ms, run.output
    );
    assert!(run.success(), "{run:?}\n{}", dump(&b));
    let fields: Vec<&str> = run.output.split_whitespace().collect();
    assert_eq!(
        fields.get(..3),
        Some(&["after-step", "request", "SYNCRTC"][..]),
        "{run:?}"
    );
    let step_ns: i64 = fields[3].parse().expect("VMMCI_STEP_NS");
    assert!((step_ns - 90 * SEC).abs() < 2 * SEC, "step {step_ns} ns");
    let last_step = st.last_step.as_ref().expect("a step in the status");
    assert_eq!(step_ns, last_step.delta_ns, "the hook saw the agent's step");

    // Before the reboot `vmctl stop` asks for.
    let n = n_events(&b);
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
    let took = e.at.saturating_sub(t0);
    eprintln!("  stop took {:.2}s", took.as_secs_f64());
    let evs = b.vm.with_vmd(|v| v.events()[n..].to_vec());
    let at =
        |pred: &dyn Fn(&EventKind) -> bool| evs.iter().find(|ev| pred(&ev.kind)).map(|ev| ev.at);
    let posted = at(&|k| {
        matches!(
            k,
            EventKind::Posted {
                cmd: VmmciCmd::Reboot,
                ..
            }
        )
    });
    let acked = at(&|k| {
        matches!(
            k,
            EventKind::Ack {
                cmd: VmmciCmd::Reboot,
                ..
            }
        )
    });
    let (Some(posted), Some(acked)) = (posted, acked) else {
        panic!("REBOOT posted and acknowledged\n{}", dump(&b));
    };
    assert!(
        acked.saturating_sub(posted) < Duration::from_secs(1),
        "ACK {:?} after the post: it waited for a hook?\n{}",
        acked.saturating_sub(posted),
        dump(&b)
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "stop took {took:?} (the hanging hook has 2 s)\n{}",
        dump(&b)
    );
    let console = b.vm.console_text();
    assert!(
        console.contains(
            "before-reboot hook /etc/vmmci/hooks.d/before-reboot/20-hang: killed at its limit (2s)"
        ),
        "{}",
        dump(&b)
    );
    // In the log (not the status JSON the test printed): once each, at the
    // reload, and not again at the event.
    for once in [
        "program \"no-such-hook-vmmci\" not found",
        "25-notes is not executable",
    ] {
        let logged = console
            .lines()
            .filter(|l| l.contains("WARN hook") && l.contains(once))
            .count();
        assert_eq!(logged, 1, "{once:?} logged once\n{}", dump(&b));
    }
    assert!(console.contains("RIG: fs clean"), "{}", dump(&b));
    assert_disk_clean(&b);
    let disk = b.disk.as_ref().unwrap();
    let mark = must(image::read_file(disk, "/before-reboot"), "read back");
    assert_eq!(
        String::from_utf8_lossy(&mark),
        "before-reboot REBOOT\nafter the hang\n",
        "the before-reboot hooks, in name order"
    );
    let note = must(image::read_file(disk, "/after-step"), "read back");
    assert_eq!(String::from_utf8_lossy(&note), run.output);
}
