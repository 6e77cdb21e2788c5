//! What the full-distro scenarios share: the images, booting them, the
//! guest's root shell, and the checks of a boot by either init system (a
//! shutdown's are in `shutdown`, the rest in `vmmci_rig::scenario`).

use std::time::Duration;

use vmmci_protocol::status;
use vmmci_rig::distro::{self, BootOptions, Distro, Image, Init};
use vmmci_rig::events::{self, is_reboot_ack};
use vmmci_rig::{image, restart};

pub use vmmci_rig::scenario::*;

/// vmd's host shutdown (rc.shutdown -> vmctl stop -a -w) gives every guest 30 s.
pub const HOST_SHUTDOWN_BUDGET: Duration = Duration::from_secs(30);
/// vmd's ACK deadline.
pub const ACK_DEADLINE: Duration = Duration::from_secs(3);
const SH: Duration = Duration::from_secs(30);
/// Where the agent writes its status, on both images.
pub const STATUS_FILE: &str = "/run/vmmci/status.json";

pub fn image() -> Image {
    image_for(Init::Systemd)
}

pub fn image_for(init: Init) -> Image {
    let img = must(Image::locate_init(init), "distro image");
    eprintln!(
        "distro image {}:\n{}",
        img.dir.display(),
        img.manifest.trim()
    );
    img
}

pub fn boot(img: &Image, opts: BootOptions) -> Distro {
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

/// Boot the `init` image with `opts` and make the checks of a boot
/// ([`check_booted`], [`check_booted_openrc`]).
pub fn boot_checked(init: Init, opts: BootOptions) -> Distro {
    let d = boot(&image_for(init), opts);
    match init {
        Init::Systemd => {
            check_booted(&d);
        }
        Init::OpenRc => {
            check_booted_openrc(&d);
        }
    }
    d
}

/// Start the watcher of an agent restart ([`restart::watcher_cmd`]), with
/// the running agent as the old one; the console offset to read its
/// markers from.
pub fn watch_the_restart(d: &Distro, init: Init) -> usize {
    let (pid_cmd, poll) = match init {
        Init::Systemd => ("systemctl show -p MainPID --value vmmci.service", false),
        Init::OpenRc => ("pidof vmmci", true),
    };
    let from = d.vm.console_len();
    sh(
        d,
        &format!("{} true", restart::watcher_cmd(pid_cmd, poll, STATUS_FILE)),
    );
    from
}

/// A command in the guest's root shell that must succeed: its output.
pub fn sh(d: &Distro, cmd: &str) -> String {
    match d.sh(cmd, SH) {
        Ok(s) => s,
        Err(e) => panic!("guest command {cmd:?}: {e}\n{}", d.dump()),
    }
}

/// A command whose exit status is part of its answer (`systemctl
/// is-active`, `pidof`, a loop of tests): its output, whatever the status;
/// the caller checks the output.
pub fn sh_any(d: &Distro, cmd: &str) -> String {
    match d.sh_status(cmd, SH) {
        Ok(r) => r.output,
        Err(e) => panic!("guest command {cmd:?}: {e}\n{}", d.dump()),
    }
}

/// DRIVER_OK set, the handshake in order as vmd saw it, no access-rule
/// violation.
fn assert_driver_ok_in_order(d: &Distro) {
    must(
        d.vm.wait_vmd("DRIVER_OK", Duration::from_secs(30), |v| {
            v.device_status() & status::DRIVER_OK != 0
        }),
        "DRIVER_OK",
    );
    assert_handshake_in_order(d);
}

/// The checks every boot makes once systemd has finished starting up:
/// nothing failed, vmmci.service is running and was (also) wanted by the
/// device unit udev made for vmd's device, the simulator saw the handshake
/// in order, and no access broke vmd's rules. Returns the device unit name.
pub fn check_booted(d: &Distro) -> String {
    assert_eq!(
        d.system_state,
        "running",
        "systemctl is-system-running: {}; failed units:\n{}\n{}",
        d.system_state,
        sh(d, "systemctl --failed --no-legend"),
        d.dump()
    );
    let active = sh_any(d, "systemctl is-active vmmci.service");
    assert_eq!(active, "active", "vmmci.service\n{}", d.dump());
    // The device as udev and systemd see it (the loop's status is its last
    // test's).
    let syspath = sh_any(
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
    assert_driver_ok_in_order(d);
    unit
}

/// After boot: every sysinit/default service started, the agent running
/// under supervise-daemon, the handshake seen by vmd, no access violations.
/// Returns the agent's pid.
pub fn check_booted_openrc(d: &Distro) -> String {
    assert_eq!(
        d.system_state,
        "runlevel=default",
        "OpenRC runlevel and services not started:\n{}\n{}",
        d.system_state,
        d.dump()
    );
    let st = sh_any(d, "rc-service vmmci status");
    assert!(
        st.contains("status: started"),
        "rc-service vmmci status: {st}\n{}",
        d.dump()
    );
    let pid = sh_any(d, "pidof vmmci");
    assert!(
        pid.parse::<u32>().is_ok_and(|p| p > 1),
        "one vmmci process, got {pid:?}\n{}",
        d.dump()
    );
    assert_supervised(d, &pid, "vmmci's parent is not supervise-daemon");
    assert_driver_ok_in_order(d);
    pid
}

/// The agent `pid` runs under OpenRC's supervise-daemon.
pub fn assert_supervised(d: &Distro, pid: &str, what: &str) {
    // A restart's watcher may speak on the console meanwhile.
    let parent =
        restart::without_markers(&sh(d, &format!("ps -o args= -p $(ps -o ppid= -p {pid})")));
    assert!(
        parent.starts_with("supervise-daemon vmmci"),
        "{what}: {parent:?}\n{}",
        d.dump()
    );
}

/// A restarted agent finds DRIVER_OK set and keeps it: after `from` it
/// writes DRIVER_OK again and never a status without it (vmd would refuse
/// a stop in that window).
pub fn assert_rehandshake(d: &Distro, writes: &[u8], from: usize) {
    let w = &writes[from.min(writes.len())..];
    assert!(
        !w.is_empty() && w.iter().all(|x| x & 7 == 7),
        "restarted agent: status writes {writes:x?} (from {from}) drop DRIVER_OK or lack it\n{}",
        d.dump()
    );
}

/// Wait for the DRIVER_OK of the agent started again after the `nw`th
/// status write, and check its handshake ([`assert_rehandshake`]).
pub fn wait_rehandshake(d: &Distro, nw: usize, what: &str) {
    must(
        d.vm.wait_vmd(
            &format!("DRIVER_OK from the {what} agent"),
            Duration::from_secs(30),
            |v| {
                v.status_writes()[nw..]
                    .iter()
                    .any(|w| w & status::DRIVER_OK != 0)
            },
        ),
        what,
    );
    let writes = d.vm.with_vmd(|v| v.status_writes().to_vec());
    assert_rehandshake(d, &writes, nw);
}

/// The guest acknowledged REBOOT since the `ev0`th event.
pub fn assert_reboot_acked(d: &Distro, ev0: usize) {
    assert!(
        events::any(&d.vm.event_kinds_since(ev0), is_reboot_ack),
        "REBOOT not acknowledged\n{}",
        d.dump()
    );
}

/// `e2fsck -fn` finds the root file system copy clean, and its superblock
/// says so.
pub fn assert_disk_clean(d: &Distro) {
    assert_fsck_clean(d);
    let state = must(image::superblock_state(&d.disk), "dumpe2fs");
    assert_eq!(state, "clean", "superblock state of {}", d.disk.display());
}
