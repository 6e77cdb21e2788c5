//! Full-distro tests (issue 4): Debian 12 with systemd as PID 1 and the
//! vmmci .deb installed as `dpkg -i` leaves it (unit, udev rule, shutdown
//! hook), booted in QEMU (TCG) with the simulated vmd device; and the same
//! with sysvinit + OpenRC and packaging/openrc/ (tests `o_*`). Each boot runs
//! on a fresh copy of the image's root file system, checked on the host
//! afterwards (`e2fsck -fn`, `debugfs`).
//!
//! Needs (never skipped; a missing piece fails with what to run):
//!   scripts/rig/install-deps.sh, scripts/rig/fetch-kernels.sh
//!   deb=$(scripts/package/deb | tail -n1)                        (root, both:)
//!   scripts/package/distro-image --deb "$deb"                    -> target/distro
//!   scripts/package/distro-image --init openrc --deb "$deb"      -> target/distro-openrc
//! Images: $VMMCI_DISTRO_DIR, $VMMCI_DISTRO_OPENRC_DIR (defaults above).
//! Console logs: target/rig-work/distro-*.log (a failing test also leaves
//! its disk copy, distro-*.ext4).
//! Run: cargo test -p vmmci-rig --test distro -- --test-threads=1 --nocapture

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmd_sim::EventKind;
use vmmci_protocol::timeouts::SHUTDOWN_LONG;
use vmmci_protocol::{status, Command};
use vmmci_rig::distro::{self, BootOptions, Distro, Image, Init};
use vmmci_rig::image;
use vmmci_rig::vm::{Ended, Outcome};

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

/// vmd's host shutdown (rc.shutdown -> vmctl stop -a -w) gives every guest 30 s.
const HOST_SHUTDOWN_BUDGET: Duration = Duration::from_secs(30);
/// Lines written just before a stop, without a sync.
const LINES: u32 = 20000;
const SH: Duration = Duration::from_secs(30);

fn image() -> Image {
    image_for(Init::Systemd)
}

fn image_for(init: Init) -> Image {
    let img = must(Image::locate_init(init), "distro image");
    eprintln!(
        "distro image {}:\n{}",
        img.dir.display(),
        img.manifest.trim()
    );
    img
}

fn boot(img: &Image, opts: BootOptions) -> Distro {
    let tag = opts.tag.clone();
    let d = must(distro::boot(img, opts), &format!("boot {tag}"));
    eprintln!(
        "[{tag}] prompt at {:.2}s, system {} at {:.2}s (log {})",
        d.prompt_at.as_secs_f64(),
        d.system_state,
        d.ready_at.as_secs_f64(),
        d.log.display()
    );
    d
}

fn sh(d: &Distro, cmd: &str) -> String {
    match d.sh(cmd, SH) {
        Ok(s) => s,
        Err(e) => panic!("guest command {cmd:?}: {e}\n{}", d.dump()),
    }
}

/// The checks every boot makes once systemd has finished starting up:
/// nothing failed, vmmci.service is running and was (also) wanted by the
/// device unit udev made for vmd's device, the simulator saw the handshake
/// in order, and no access broke vmd's rules. Returns the device unit name.
fn check_booted(d: &Distro) -> String {
    assert_eq!(
        d.system_state,
        "running",
        "systemctl is-system-running: {}; failed units:\n{}\n{}",
        d.system_state,
        sh(d, "systemctl --failed --no-legend"),
        d.dump()
    );
    let active = sh(d, "systemctl is-active vmmci.service");
    assert_eq!(active, "active", "vmmci.service\n{}", d.dump());
    // The device as udev and systemd see it.
    let syspath = sh(
        d,
        "for p in /sys/bus/pci/devices/*; do \
         [ \"$(cat $p/vendor):$(cat $p/device)\" = 0x0b5d:0x0777 ] && readlink -f $p; done",
    );
    assert!(
        syspath.starts_with("/sys/devices/pci") && !syspath.contains('\n'),
        "vmd's device (0b5d:0777) not found once in sysfs: {syspath:?}\n{}",
        d.dump()
    );
    let udev = sh(d, &format!("udevadm info {syspath}"));
    assert!(
        udev.lines().any(|l| l == "E: SYSTEMD_WANTS=vmmci.service")
            && udev
                .lines()
                .any(|l| l.starts_with("E: TAGS=") && l.contains(":systemd:")),
        "60-vmmci.rules did not apply to {syspath}:\n{udev}\n{}",
        d.dump()
    );
    let unit = sh(d, &format!("systemd-escape -p --suffix=device {syspath}"));
    let wants = sh(d, &format!("systemctl show -p Wants --value {unit}"));
    assert!(
        wants.split_whitespace().any(|w| w == "vmmci.service"),
        "{unit} does not want vmmci.service (Wants={wants})\n{}",
        d.dump()
    );
    let wanted_by = sh(d, "systemctl show -p WantedBy --value vmmci.service");
    assert!(
        wanted_by.split_whitespace().any(|w| w == unit),
        "vmmci.service WantedBy={wanted_by}, not {unit}\n{}",
        d.dump()
    );
    // The handshake, from vmd's side.
    must(
        d.vm.wait_vmd("DRIVER_OK", Duration::from_secs(30), |v| {
            v.device_status() & status::DRIVER_OK != 0
        }),
        "DRIVER_OK",
    );
    let (writes, violations) =
        d.vm.with_vmd(|v| (v.status_writes().to_vec(), v.violations().to_vec()));
    assert_handshake(d, &writes, 0);
    assert!(
        violations.is_empty(),
        "access-rule violations: {violations:#?}\n{}",
        d.dump()
    );
    unit
}

/// From `writes[from..]`: ACKNOWLEDGE, then DRIVER, then DRIVER_OK (which
/// keeps the other two); returns the index of the DRIVER_OK write.
fn assert_handshake(d: &Distro, writes: &[u8], from: usize) -> usize {
    let w = &writes[from.min(writes.len())..];
    let first = |bit: u8| w.iter().position(|x| x & bit != 0);
    let (a, b, o) = (
        first(status::ACKNOWLEDGE),
        first(status::DRIVER),
        first(status::DRIVER_OK),
    );
    assert!(
        a.is_some() && b.is_some() && o.is_some() && a < b && b < o && w[o.unwrap()] & 7 == 7,
        "handshake ACKNOWLEDGE -> DRIVER -> DRIVER_OK not in status writes {writes:x?} (from {from})\n{}",
        d.dump()
    );
    from + o.unwrap()
}

fn n_events(d: &Distro) -> usize {
    d.vm.with_vmd(|v| v.events().len())
}

fn events_since(d: &Distro, from: usize) -> Vec<EventKind> {
    d.vm.with_vmd(|v| {
        v.events()[from.min(v.events().len())..]
            .iter()
            .map(|e| e.kind.clone())
            .collect()
    })
}

fn acked_reboot(evs: &[EventKind]) -> bool {
    evs.iter().any(|k| {
        matches!(
            k,
            EventKind::Ack {
                cmd: Command::Reboot,
                ..
            }
        )
    })
}

fn power_down_signal(evs: &[EventKind]) -> bool {
    evs.iter()
        .any(|k| matches!(k, EventKind::GuestShutdown { .. }))
}

fn end(d: &Distro, timeout: Duration) -> Ended {
    let e = match d.vm.wait_end(timeout) {
        Ok(e) => e,
        Err(err) => panic!("VM end: {err}\n{}", d.dump()),
    };
    eprintln!(
        "  ended at {:.2}s: {:?} ({})",
        e.at.as_secs_f64(),
        e.outcome,
        e.why
    );
    e
}

fn assert_outcome(d: &Distro, e: &Ended, want: Outcome) {
    assert_eq!(
        e.outcome,
        want,
        "unexpected outcome ({})\n{}",
        e.why,
        d.dump()
    );
}

fn assert_disk_clean(d: &Distro) {
    let r = must(image::fsck(&d.disk), "e2fsck");
    assert!(
        r.clean,
        "e2fsck -fn {} not clean (exit {}):\n{}\n{}",
        d.disk.display(),
        r.exit_code,
        r.output,
        d.dump()
    );
    let state = must(image::superblock_state(&d.disk), "dumpe2fs");
    assert_eq!(state, "clean", "superblock state of {}", d.disk.display());
}

/// Console text from `from` on, without escapes and carriage returns.
fn console_since(d: &Distro, from: usize) -> String {
    let t = d.vm.console_text();
    let mut from = from.min(t.len());
    while !t.is_char_boundary(from) {
        from -= 1;
    }
    distro::clean(&t[from..])
}

/// systemd's own shutdown ran to its end: the console shows the target
/// reached and systemd-shutdown's last steps, in order.
fn assert_systemd_shutdown(d: &Distro, from: usize, target: &str, last: &[&str]) {
    let text = console_since(d, from);
    let mut want = vec![
        format!("Reached target {target}"),
        "systemd-shutdown[1]: Syncing filesystems and block devices.".to_string(),
        "systemd-shutdown[1]: Sending SIGTERM to remaining processes".to_string(),
        "Remounting '/' read-only".to_string(),
        "systemd-shutdown[1]: All filesystems unmounted.".to_string(),
    ];
    want.extend(last.iter().map(|s| s.to_string()));
    let mut at = 0;
    for w in &want {
        match text[at..].find(w.as_str()) {
            Some(p) => at += p + w.len(),
            None => panic!(
                "console after the request lacks {w:?} (in order: {want:?})\n--- console since the request ---\n{}\n{}",
                &text[text.len().saturating_sub(8000)..],
                d.dump()
            ),
        }
    }
}

fn expected_file() -> String {
    (1..=LINES).map(|i| format!("{i}\n")).collect()
}

fn assert_file_whole(d: &Distro, path: &str) {
    let want = expected_file();
    let got = must(image::read_file(&d.disk, path), "debugfs cat");
    assert!(
        got == want.as_bytes(),
        "{path} not whole on disk: {} of {} bytes\n{}",
        got.len(),
        want.len(),
        d.dump()
    );
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    }
}

// ------------------------------------------------------------- tests ----

/// The udev rule alone starts the agent: with the unit's multi-user.target
/// want removed (as `systemctl disable vmmci` would), vmmci.service is still
/// running after boot, wanted by the device unit and by nothing else.
#[test]
fn a_udev_rule_starts_the_service() {
    let _g = serial();
    let img = image();
    let t0 = Instant::now();
    let mut o = BootOptions::new("udev");
    o.prepare = Some(Box::new(|disk| {
        let link = "/etc/systemd/system/multi-user.target.wants/vmmci.service";
        let p = disk.display().to_string();
        let before = distro::host_tool("debugfs", &["-R", &format!("stat {link}"), &p])?;
        if before.contains("File not found") {
            return Err(vmmci_rig::RigError::Missing(format!(
                "the image has no {link}: the package did not enable the unit"
            )));
        }
        distro::host_tool("debugfs", &["-w", "-R", &format!("rm {link}"), &p])?;
        Ok(())
    }));
    let d = boot(&img, o);
    let unit = check_booted(&d);
    let enabled = sh(&d, "systemctl is-enabled vmmci.service || true");
    assert_eq!(
        enabled,
        "disabled",
        "the want was not removed\n{}",
        d.dump()
    );
    let wanted_by = sh(&d, "systemctl show -p WantedBy --value vmmci.service");
    assert_eq!(
        wanted_by.trim(),
        unit,
        "vmmci.service must be wanted by the device unit only\n{}",
        d.dump()
    );
    let rdeps = sh(
        &d,
        "systemctl list-dependencies --reverse --plain --no-legend vmmci.service",
    );
    eprintln!("  reverse dependencies:\n{rdeps}");
    assert!(
        !rdeps.contains("multi-user.target"),
        "multi-user.target still wants vmmci.service:\n{rdeps}"
    );
    let journal = sh(&d, "journalctl -b -u vmmci.service --no-pager -o cat");
    assert!(
        journal.contains("DRIVER_OK"),
        "the agent's journal:\n{journal}\n{}",
        d.dump()
    );
    // And it stops the machine cleanly.
    let from = d.vm.console_len();
    d.vm.vmctl_stop().expect("stop accepted");
    let e = end(&d, Duration::from_secs(150));
    assert_outcome(&d, &e, Outcome::CleanStop);
    assert_systemd_shutdown(&d, from, "reboot.target", &["reboot: Restarting system"]);
    assert_disk_clean(&d);
    eprintln!("  a_udev: {:.1}s", t0.elapsed().as_secs_f64());
    d.discard();
}

/// `vmctl stop`, 10 boots: systemd's real shutdown, a clean stop (reset
/// while stopping), no power-down signal on a reboot, a clean file system,
/// and a file written just before the stop (no sync) whole on disk.
#[test]
fn b_vmctl_stop_10_boots() {
    let _g = serial();
    let img = image();
    let t_all = Instant::now();
    let mut times = vec![];
    for i in 1..=10 {
        let t_boot = Instant::now();
        let d = boot(&img, BootOptions::new(&format!("stop-{i:02}")));
        check_booted(&d);
        let ev0 = n_events(&d);
        must(
            d.vm.run(&format!("seq 1 {LINES} > /root/f"), SH),
            "write /root/f",
        );
        let from = d.vm.console_len();
        let t0 = d.vm.elapsed();
        d.vm.vmctl_stop().expect("stop accepted");
        let e = end(&d, Duration::from_secs(150));
        let took = e.at.saturating_sub(t0);
        assert_outcome(&d, &e, Outcome::CleanStop);
        let evs = events_since(&d, ev0);
        assert!(acked_reboot(&evs), "REBOOT not acknowledged\n{}", d.dump());
        assert!(
            !power_down_signal(&evs),
            "power-down signal sent on a reboot\n{}",
            d.dump()
        );
        assert_systemd_shutdown(&d, from, "reboot.target", &["reboot: Restarting system"]);
        assert_disk_clean(&d);
        assert_file_whole(&d, "/root/f");
        let violations = d.vm.with_vmd(|v| v.violations().len());
        assert_eq!(violations, 0, "access-rule violations\n{}", d.dump());
        eprintln!(
            "  stop {i:2}: vmctl stop -> VM end {:.2}s (boot to ready {:.2}s, boot total {:.1}s)",
            took.as_secs_f64(),
            d.ready_at.as_secs_f64(),
            t_boot.elapsed().as_secs_f64()
        );
        assert!(
            took < HOST_SHUTDOWN_BUDGET,
            "stop {i} took {took:?}, over vmd's host-shutdown budget {HOST_SHUTDOWN_BUDGET:?}\n{}",
            d.dump()
        );
        times.push(took);
        d.discard();
    }
    let m = median(&times);
    let max = times.iter().max().unwrap();
    let list: Vec<String> = times
        .iter()
        .map(|t| format!("{:.2}", t.as_secs_f64()))
        .collect();
    eprintln!(
        "  10/10 clean stops; vmctl stop -> VM end (s): [{}]; median {:.2}s, max {:.2}s, \
         against vmd's 30 s host-shutdown budget ({:.0}% of it at the max); all 10 boots {:.1}s",
        list.join(", "),
        m.as_secs_f64(),
        max.as_secs_f64(),
        100.0 * max.as_secs_f64() / HOST_SHUTDOWN_BUDGET.as_secs_f64(),
        t_all.elapsed().as_secs_f64()
    );
}

/// `poweroff` in the guest: systemd powers off, its shutdown hook sends the
/// power-down signal only after the file systems are read-only, vmd ends
/// the VM 3 s later (PowerDown), the file system is clean.
#[test]
fn c_guest_poweroff_power_down_signal() {
    let _g = serial();
    let img = image();
    let d = boot(&img, BootOptions::new("poweroff"));
    check_booted(&d);
    let hook = sh(
        &d,
        "ls -l /usr/lib/systemd/system-shutdown/vmmci.shutdown && dpkg -S /usr/lib/systemd/system-shutdown/vmmci.shutdown",
    );
    assert!(
        hook.contains("vmmci: "),
        "the hook is not the package's: {hook}"
    );
    must(
        d.vm.run(&format!("seq 1 {LINES} > /root/f"), SH),
        "write /root/f",
    );
    let ev0 = n_events(&d);
    let from = d.vm.console_len();
    let console_at_signal = poweroff_until_signal(&d, ev0, from);
    let e = end(&d, Duration::from_secs(30));
    assert_outcome(&d, &e, Outcome::PowerDown);
    for w in [
        "Reached target poweroff.target",
        "Remounting '/' read-only",
        "systemd-shutdown[1]: All filesystems unmounted.",
        "systemd-shutdown[1]: All filesystems, swaps, loop devices, MD devices and DM devices detached.",
    ] {
        assert!(
            console_at_signal.contains(w),
            "the power-down signal came before {w:?} was on the console:\n{}\n{}",
            &console_at_signal[console_at_signal.len().saturating_sub(3000)..],
            d.dump()
        );
    }
    assert_systemd_shutdown(
        &d,
        from,
        "poweroff.target",
        &["systemd-shutdown[1]: Powering off."],
    );
    let evs = events_since(&d, ev0);
    let sig = evs
        .iter()
        .position(|k| matches!(k, EventKind::GuestShutdown { .. }));
    let halt = evs.iter().position(|k| matches!(k, EventKind::GuestHalted));
    assert!(
        sig.is_some() && halt.is_some() && sig < halt,
        "power-down signal, then the halt: {evs:?}\n{}",
        d.dump()
    );
    assert!(!acked_reboot(&evs), "nothing to acknowledge: {evs:?}");
    assert_disk_clean(&d);
    assert_file_whole(&d, "/root/f");
    let violations = d.vm.with_vmd(|v| v.violations().len());
    assert_eq!(violations, 0, "access-rule violations\n{}", d.dump());
    d.discard();
}

/// The agent killed with SIGKILL: systemd restarts it (a new pid, a new
/// handshake), and a `vmctl stop` right after is handled: clean stop.
#[test]
fn d_agent_sigkill_restarted() {
    let _g = serial();
    let img = image();
    let d = boot(&img, BootOptions::new("sigkill"));
    check_booted(&d);
    let pid0 = sh(&d, "systemctl show -p MainPID --value vmmci.service");
    assert!(pid0.parse::<u32>().is_ok_and(|p| p > 1), "MainPID {pid0:?}");
    let nw = d.vm.with_vmd(|v| v.status_writes().len());
    let t_kill = d.vm.elapsed();
    let out = sh(&d, "systemctl kill -s KILL vmmci.service");
    assert!(out.is_empty(), "systemctl kill: {out}");
    must(
        d.vm.wait_vmd(
            "DRIVER_OK from the restarted agent",
            Duration::from_secs(30),
            |v| {
                v.status_writes()[nw..]
                    .iter()
                    .any(|w| w & status::DRIVER_OK != 0)
            },
        ),
        "restart",
    );
    let t_ok = d.vm.elapsed();
    let writes = d.vm.with_vmd(|v| v.status_writes().to_vec());
    assert_handshake(&d, &writes, nw);
    let show = sh(
        &d,
        "systemctl show -p MainPID,NRestarts,ActiveState,SubState vmmci.service",
    );
    let ev0 = n_events(&d);
    let from = d.vm.console_len();
    let t0 = d.vm.elapsed();
    d.vm.vmctl_stop().expect("stop accepted");
    let field = |k: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    eprintln!(
        "  killed pid {pid0} at {:.2}s; new DRIVER_OK {:.2}s later; {}",
        t_kill.as_secs_f64(),
        (t_ok - t_kill).as_secs_f64(),
        show.replace('\n', " ")
    );
    let pid1 = field("MainPID");
    assert!(
        pid1 != pid0 && pid1.parse::<u32>().is_ok_and(|p| p > 1),
        "no new agent: {show}\n{}",
        d.dump()
    );
    assert_eq!(field("NRestarts"), "1", "{show}");
    assert_eq!(field("ActiveState"), "active", "{show}");
    let e = end(&d, Duration::from_secs(150));
    assert_outcome(&d, &e, Outcome::CleanStop);
    eprintln!(
        "  vmctl stop -> VM end {:.2}s",
        e.at.saturating_sub(t0).as_secs_f64()
    );
    assert!(
        acked_reboot(&events_since(&d, ev0)),
        "REBOOT not acknowledged\n{}",
        d.dump()
    );
    assert_systemd_shutdown(&d, from, "reboot.target", &["reboot: Restarting system"]);
    assert_disk_clean(&d);
    let violations = d.vm.with_vmd(|v| v.violations().len());
    assert_eq!(violations, 0, "access-rule violations\n{}", d.dump());
    d.discard();
}

/// Harder: `vmctl stop` while the agent is dead (killed, not yet restarted).
/// vmd still has DRIVER_OK (a killed agent resets nothing), so it posts
/// REBOOT and gives 3 s for the ACK: systemd's restart (RestartSec=200ms)
/// and the new agent's handshake must fit, and the new agent handles the
/// command that was pending when it started.
#[test]
fn e_vmctl_stop_while_agent_dead() {
    let _g = serial();
    let img = image();
    let d = boot(&img, BootOptions::new("stop-agent-dead"));
    check_booted(&d);
    let nw = d.vm.with_vmd(|v| v.status_writes().len());
    let ev0 = n_events(&d);
    let from = d.vm.console_len();
    let out = sh(&d, "systemctl kill -s KILL vmmci.service");
    assert!(out.is_empty(), "systemctl kill: {out}");
    let t0 = d.vm.elapsed();
    d.vm.vmctl_stop()
        .expect("stop accepted (DRIVER_OK survives the agent)");
    let e = end(&d, Duration::from_secs(150));
    assert_outcome(&d, &e, Outcome::CleanStop);
    let writes = d.vm.with_vmd(|v| v.status_writes().to_vec());
    assert_handshake(&d, &writes, nw);
    let acked_at = d.vm.with_vmd(|v| {
        v.events()[ev0..].iter().find_map(|ev| match ev.kind {
            EventKind::Ack {
                cmd: Command::Reboot,
                ..
            } => Some(ev.at),
            _ => None,
        })
    });
    let posted_at = d.vm.with_vmd(|v| {
        v.events()[ev0..].iter().find_map(|ev| match ev.kind {
            EventKind::Posted { .. } => Some(ev.at),
            _ => None,
        })
    });
    let (Some(a), Some(p)) = (acked_at, posted_at) else {
        panic!("REBOOT posted and acknowledged\n{}", d.dump());
    };
    eprintln!(
        "  stop with the agent dead: ACK {:.2}s after REBOOT (vmd allows 3 s), VM end {:.2}s after the stop",
        a.saturating_sub(p).as_secs_f64(),
        e.at.saturating_sub(t0).as_secs_f64()
    );
    assert_systemd_shutdown(&d, from, "reboot.target", &["reboot: Restarting system"]);
    assert_disk_clean(&d);
    d.discard();
}

// ------------------------------------------------------------ chrony ----

/// The agent's status record, from `vmmci status --json` in the guest.
fn agent_status(d: &Distro) -> vmmci_report::Status {
    match vmmci_rig::guest::agent_status(&d.vm) {
        Ok(s) => s,
        Err(e) => panic!("{e}\n{}", d.dump()),
    }
}

/// `chronyc tracking`'s "System time" (guest − reference, s; "fast" is
/// positive) and "Frequency" (ppm; "slow" is negative), if it has them.
fn tracking(text: &str) -> Option<(f64, f64)> {
    let field = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let words: Vec<&str> = line.split(':').nth(1)?.split_whitespace().collect();
        let v: f64 = words.first()?.parse().ok()?;
        let sign = if words.contains(&"slow") { -1.0 } else { 1.0 };
        Some(sign * v)
    };
    Some((field("System time")?, field("Frequency")?))
}

#[test]
fn tracking_parses() {
    let t = "Reference ID    : 564D4D00 (VMM)\nSystem time     : 0.000012345 seconds slow of NTP time\nFrequency       : 49.875 ppm slow\n";
    assert_eq!(tracking(t), Some((-0.000012345, -49.875)));
    assert_eq!(tracking("506 Cannot talk to daemon"), None);
}

/// chronyd with vmmci as its only source, no network: the agent sends every
/// sample to chrony's SOCK refclock, chrony selects it and locks the guest
/// clock to the host, whose clock runs 50 ppm fast. The agent, in
/// `discipline` mode, stands back for chrony and says so in status and
/// metrics.
#[test]
fn f_chrony_selects_the_vmmci_refclock_and_converges() {
    let _g = serial();
    let img = image();
    let mut o = BootOptions::new("chrony");
    o.host_clock = vmmci_rig::guest::HostClockError {
        ppm: 50.0,
        jitter_ns: 20_000,
    };
    let d = boot(&img, o);
    check_booted(&d);
    let t0 = Instant::now();
    if let Err(e) = d.start_chrony(&[
        "sample_interval = \"2s\"",
        "[clock]",
        "mode = \"discipline\"",
        "[chrony]",
        "socket = \"/run/chrony.vmmci.sock\"",
        "[metrics]",
        "textfile = \"/run/vmmci/vmmci.prom\"",
    ]) {
        panic!("{e}\n{}", d.dump());
    }
    let deadline = t0 + Duration::from_secs(300);
    let mut selected_at = None;
    let (mut sources, mut track);
    let converged = loop {
        sources = sh(&d, "chronyc -n sources");
        if selected_at.is_none() && sources.lines().any(|l| l.starts_with("#* VMM")) {
            selected_at = Some(t0.elapsed());
        }
        track = sh(&d, "chronyc -n tracking");
        let locked = track.contains("(VMM)");
        if let (true, Some((offset, freq))) = (locked, tracking(&track)) {
            if selected_at.is_some() && offset.abs() < 0.001 && (freq + 50.0).abs() < 10.0 {
                break Some((offset, freq));
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_secs(5));
    };
    let Some((offset, freq)) = converged else {
        panic!(
            "chrony did not select VMM and converge in 300 s:\n{sources}\n{track}\n{}\n{}",
            sh(
                &d,
                "journalctl -b -u chrony -u vmmci --no-pager | tail -n 40"
            ),
            d.dump()
        );
    };
    eprintln!(
        "  chrony: VMM selected {:.0} s after start; converged at {:.0} s: system time {:+.6} ms, frequency {freq:+.3} ppm (host 50 ppm fast)",
        selected_at.unwrap_or_default().as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        offset * 1e3
    );
    let st = agent_status(&d);
    let feed = st.clock.chrony.clone().unwrap_or_default();
    assert!(
        feed.starts_with("sending"),
        "chrony feed: {feed}\n{}",
        d.dump()
    );
    assert_eq!(st.clock.mode, "discipline");
    let by = st.clock.disciplined_by.clone().unwrap_or_default();
    assert!(
        by.contains("chronyd"),
        "discipline did not stand back: {st:?}"
    );
    assert_eq!(st.clock.slews, 0, "the agent never slewed against chrony");
    let drift = st.drift_ns.expect("a sample");
    assert!(
        drift.abs() < 2_000_000,
        "agent's own sample: host − guest {drift} ns"
    );
    let prom = sh(&d, "cat /run/vmmci/vmmci.prom");
    for want in [
        "vmmci_up 1",
        "vmmci_clock_standing_back 1",
        "clock_mode=\"discipline\"",
    ] {
        assert!(prom.contains(want), "{want} not in metrics:\n{prom}");
    }
    d.vm.kill();
    d.discard();
}

// ------------------------------------------------------------ OpenRC ----
//
// Debian 12 with sysvinit + OpenRC (as Devuan): the agent supervised by
// supervise-daemon (packaging/openrc/vmmci.initd), the power-down signal from
// vmmci-poweroff in the shutdown runlevel. sysvinit tells reboot (runlevel 6:
// `openrc off`, `openrc reboot`, RC_REBOOT=YES) from power-off (runlevel 0:
// `openrc off`, `openrc shutdown`), so no marker file is needed. Debian's LSB
// shutdown scripts are slow under TCG (about 20 s from stop to reset).

/// Stops: how many boots.
const OPENRC_STOPS: u32 = 3;

/// After boot: every sysinit/default service started, the agent running
/// under supervise-daemon, the handshake seen by vmd, no access violations.
/// Returns the agent's pid.
fn check_booted_openrc(d: &Distro) -> String {
    assert_eq!(
        d.system_state,
        "runlevel=default",
        "OpenRC runlevel and services not started:\n{}\n{}",
        d.system_state,
        d.dump()
    );
    let st = sh(d, "rc-service vmmci status");
    assert!(
        st.contains("status: started"),
        "rc-service vmmci status: {st}\n{}",
        d.dump()
    );
    let pid = sh(d, "pidof vmmci");
    assert!(
        pid.parse::<u32>().is_ok_and(|p| p > 1),
        "one vmmci process, got {pid:?}\n{}",
        d.dump()
    );
    let parent = sh(d, &format!("ps -o args= -p $(ps -o ppid= -p {pid})"));
    assert!(
        parent.starts_with("supervise-daemon vmmci"),
        "vmmci's parent is not supervise-daemon: {parent:?}\n{}",
        d.dump()
    );
    must(
        d.vm.wait_vmd("DRIVER_OK", Duration::from_secs(30), |v| {
            v.device_status() & status::DRIVER_OK != 0
        }),
        "DRIVER_OK",
    );
    let (writes, violations) =
        d.vm.with_vmd(|v| (v.status_writes().to_vec(), v.violations().to_vec()));
    assert_handshake(d, &writes, 0);
    assert!(
        violations.is_empty(),
        "access-rule violations: {violations:#?}\n{}",
        d.dump()
    );
    pid
}

/// sysvinit + OpenRC went down to the end, in this order.
fn assert_in_order(d: &Distro, from: usize, want: &[&str]) {
    let text = console_since(d, from);
    let mut at = 0;
    for w in want {
        match text[at..].find(w) {
            Some(p) => at += p + w.len(),
            None => panic!(
                "console after the request lacks {w:?} (in order: {want:?})\n--- console since the request ---\n{}\n{}",
                &text[text.len().saturating_sub(8000)..],
                d.dump()
            ),
        }
    }
}

const OPENRC_REBOOT: &[&str] = &[
    "INIT: Switching to runlevel: 6",
    "* Stopping vmmci",
    "EXT4-fs (vda): re-mounted",
    "* Rebooting: no vmmci power-down signal",
    "Will now restart.",
    "reboot: Restarting system",
];

/// `vmctl stop` on OpenRC: REBOOT acknowledged, the agent reboots through
/// sysvinit, runlevel 6 runs to its end, vmmci-poweroff stays silent, the
/// VM resets (clean stop), the file system is clean and a file written just
/// before the stop is whole.
#[test]
fn o_openrc_vmctl_stop() {
    let _g = serial();
    let img = image_for(Init::OpenRc);
    let mut times = vec![];
    for i in 1..=OPENRC_STOPS {
        let d = boot(&img, BootOptions::new(&format!("openrc-stop-{i}")));
        check_booted_openrc(&d);
        let ev0 = n_events(&d);
        must(
            d.vm.run(&format!("seq 1 {LINES} > /root/f"), SH),
            "write /root/f",
        );
        let from = d.vm.console_len();
        let t0 = d.vm.elapsed();
        d.vm.vmctl_stop().expect("stop accepted");
        let e = end(&d, Duration::from_secs(150));
        let took = e.at.saturating_sub(t0);
        assert_outcome(&d, &e, Outcome::CleanStop);
        let evs = events_since(&d, ev0);
        assert!(acked_reboot(&evs), "REBOOT not acknowledged\n{}", d.dump());
        assert!(
            !power_down_signal(&evs),
            "power-down signal sent on a reboot\n{}",
            d.dump()
        );
        assert_in_order(&d, from, OPENRC_REBOOT);
        assert_disk_clean(&d);
        assert_file_whole(&d, "/root/f");
        let violations = d.vm.with_vmd(|v| v.violations().len());
        assert_eq!(violations, 0, "access-rule violations\n{}", d.dump());
        eprintln!(
            "  openrc stop {i}: vmctl stop -> VM end {:.2}s (boot to ready {:.2}s)",
            took.as_secs_f64(),
            d.ready_at.as_secs_f64()
        );
        // Under TCG Debian's LSB shutdown scripts alone take ~20 s (forks are
        // slow), too close to the 30 s host-shutdown budget to assert it
        // without flaking; the bound is vmd's deadline for one `vmctl stop`
        // (the outcome would be LongTimeout past it). Reported against 30 s.
        assert!(
            took < SHUTDOWN_LONG,
            "stop {i} took {took:?}, over vmd's {SHUTDOWN_LONG:?}\n{}",
            d.dump()
        );
        times.push(took);
        d.discard();
    }
    let list: Vec<String> = times
        .iter()
        .map(|t| format!("{:.2}", t.as_secs_f64()))
        .collect();
    let max = times.iter().max().unwrap();
    eprintln!(
        "  openrc: {OPENRC_STOPS}/{OPENRC_STOPS} clean stops; vmctl stop -> VM end (s): [{}]; \
         median {:.2}s, max {:.2}s ({:.0}% of vmd's 30 s host-shutdown budget; TCG)",
        list.join(", "),
        median(&times).as_secs_f64(),
        max.as_secs_f64(),
        100.0 * max.as_secs_f64() / HOST_SHUTDOWN_BUDGET.as_secs_f64()
    );
}

/// `poweroff` on OpenRC: runlevel 0, / read-only, then vmmci-poweroff sends
/// the power-down signal (RC_REBOOT unset), vmd ends the VM 3 s later.
#[test]
fn o_openrc_poweroff_power_down_signal() {
    let _g = serial();
    let img = image_for(Init::OpenRc);
    let d = boot(&img, BootOptions::new("openrc-poweroff"));
    check_booted_openrc(&d);
    let lvl = sh(&d, "ls /etc/runlevels/shutdown");
    assert!(
        lvl.split_whitespace().any(|s| s == "vmmci-poweroff"),
        "vmmci-poweroff not in the shutdown runlevel: {lvl}"
    );
    must(
        d.vm.run(&format!("seq 1 {LINES} > /root/f"), SH),
        "write /root/f",
    );
    let ev0 = n_events(&d);
    let from = d.vm.console_len();
    let console_at_signal = poweroff_until_signal(&d, ev0, from);
    for w in [
        "INIT: Switching to runlevel: 0",
        "EXT4-fs (vda): re-mounted",
        "* Signalling power-down to vmd (vmmci)",
    ] {
        assert!(
            console_at_signal.contains(w),
            "the power-down signal came before {w:?} was on the console:\n{}\n{}",
            &console_at_signal[console_at_signal.len().saturating_sub(3000)..],
            d.dump()
        );
    }
    let e = end(&d, Duration::from_secs(30));
    assert_outcome(&d, &e, Outcome::PowerDown);
    assert_in_order(
        &d,
        from,
        &[
            "INIT: Switching to runlevel: 0",
            "* Stopping vmmci",
            "EXT4-fs (vda): re-mounted",
            "* Signalling power-down to vmd (vmmci)",
            "Will now halt.",
            "reboot: System halted",
        ],
    );
    let evs = events_since(&d, ev0);
    let sig = evs
        .iter()
        .position(|k| matches!(k, EventKind::GuestShutdown { .. }));
    let halt = evs.iter().position(|k| matches!(k, EventKind::GuestHalted));
    assert!(
        sig.is_some() && halt.is_some() && sig < halt,
        "power-down signal, then the halt: {evs:?}\n{}",
        d.dump()
    );
    assert_disk_clean(&d);
    assert_file_whole(&d, "/root/f");
    let violations = d.vm.with_vmd(|v| v.violations().len());
    assert_eq!(violations, 0, "access-rule violations\n{}", d.dump());
    d.discard();
}

/// The agent killed with SIGKILL on OpenRC: supervise-daemon starts it again
/// (new pid, new handshake), and a `vmctl stop` right after is a clean stop.
#[test]
fn o_openrc_agent_sigkill_respawned() {
    let _g = serial();
    let img = image_for(Init::OpenRc);
    let d = boot(&img, BootOptions::new("openrc-sigkill"));
    let pid0 = check_booted_openrc(&d);
    let nw = d.vm.with_vmd(|v| v.status_writes().len());
    let t_kill = d.vm.elapsed();
    let out = sh(&d, &format!("kill -9 {pid0}"));
    assert!(out.is_empty(), "kill: {out}");
    must(
        d.vm.wait_vmd(
            "DRIVER_OK from the respawned agent",
            Duration::from_secs(30),
            |v| {
                v.status_writes()[nw..]
                    .iter()
                    .any(|w| w & status::DRIVER_OK != 0)
            },
        ),
        "respawn",
    );
    let t_ok = d.vm.elapsed();
    let writes = d.vm.with_vmd(|v| v.status_writes().to_vec());
    assert_handshake(&d, &writes, nw);
    let pid1 = sh(&d, "pidof vmmci");
    let parent = sh(&d, &format!("ps -o args= -p $(ps -o ppid= -p {pid1})"));
    eprintln!(
        "  killed pid {pid0}; new pid {pid1} with DRIVER_OK {:.2}s after the kill",
        (t_ok - t_kill).as_secs_f64()
    );
    assert!(
        pid1 != pid0 && pid1.parse::<u32>().is_ok_and(|p| p > 1),
        "no new agent: {pid1:?}\n{}",
        d.dump()
    );
    assert!(
        parent.starts_with("supervise-daemon vmmci"),
        "the new agent is not supervised: {parent:?}\n{}",
        d.dump()
    );
    let ev0 = n_events(&d);
    let from = d.vm.console_len();
    d.vm.vmctl_stop().expect("stop accepted");
    let e = end(&d, Duration::from_secs(150));
    assert_outcome(&d, &e, Outcome::CleanStop);
    assert!(
        acked_reboot(&events_since(&d, ev0)),
        "REBOOT not acknowledged\n{}",
        d.dump()
    );
    assert_in_order(&d, from, OPENRC_REBOOT);
    assert_disk_clean(&d);
    let violations = d.vm.with_vmd(|v| v.violations().len());
    assert_eq!(violations, 0, "access-rule violations\n{}", d.dump());
    d.discard();
}

/// `poweroff` in the guest; wait for vmd to get the power-down signal and
/// assert that the root file system was already clean (read-only) on disk
/// at that moment. Returns what the console showed from `from` on by then;
/// `ev0` is the vmd event count before.
fn poweroff_until_signal(d: &Distro, ev0: usize, from: usize) -> String {
    must(d.vm.send_console("poweroff"), "poweroff");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (console_at_signal, sb_at_signal) = loop {
        if power_down_signal(&events_since(d, ev0)) {
            // The root file system's superblock as it is on the disk now:
            // mounted read-write it carries needs_recovery.
            let sb = must(image::superblock_state(&d.disk), "dumpe2fs at the signal");
            break (console_since(d, from), sb);
        }
        let halted_long =
            d.vm.halted_at()
                .is_some_and(|h| d.vm.elapsed() > h + Duration::from_secs(10));
        if d.vm.ended().is_some() || halted_long || Instant::now() > deadline {
            panic!("no power-down signal\n{}", d.dump());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(
        sb_at_signal,
        "clean",
        "when the power-down signal came, / was still mounted read-write\n{}",
        d.dump()
    );
    console_at_signal
}
