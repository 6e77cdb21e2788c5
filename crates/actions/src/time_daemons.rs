//! Is another time daemon running? `discipline` must not fight one.
//!
//! Three ways to see one: a process scan of /proc; the systemd units of
//! those daemons, whose cgroups list their processes in world-readable
//! files (`ProtectControlGroups=` only makes them read-only); and each
//! daemon's pid file plus `kill(pid, 0)` (EPERM means "exists").
//!
//! Under the packaged unit (checked in Debian 12, `crates/rig/tests/
//! standback.rs`): `ProtectProc=invisible` hides nothing from the agent,
//! since the kernel's hidepid= exempts its gid= group, 0 by default, and
//! the agent runs as uid/gid 0; but Debian's chronyd keeps its pid file in
//! /run/chrony, mode 0700 for `_chrony`, which root without
//! CAP_DAC_OVERRIDE cannot enter. The cgroups need neither /proc nor the
//! pid files: a unit running the agent with another group, or a
//! `ProcSubset=pid`-like /proc, still sees the daemons there.

use std::path::Path;

/// Process names (`/proc/PID/comm`, 15 characters at most) of daemons that
/// discipline the clock.
pub const DAEMONS: &[&str] = &[
    "chronyd",
    "ntpd",
    "openntpd",
    "ntpsec",
    "systemd-timesyn",
    "ptp4l",
    "phc2sys",
];

/// Pid files those daemons write, with the name to report.
const PID_FILES: &[(&str, &str)] = &[
    ("/run/chrony/chronyd.pid", "chronyd"),
    ("/run/chronyd.pid", "chronyd"),
    ("/var/run/chrony/chronyd.pid", "chronyd"),
    ("/run/ntpd.pid", "ntpd"),
    ("/var/run/ntpd.pid", "ntpd"),
    ("/run/openntpd.pid", "openntpd"),
];

/// systemd units of those daemons, with the name to report. Templates
/// (`ptp4l@eth0.service`) are found by their prefix.
const UNITS: &[(&str, &str)] = &[
    ("chrony.service", "chronyd"),
    ("chronyd.service", "chronyd"),
    ("ntp.service", "ntpd"),
    ("ntpd.service", "ntpd"),
    ("ntpsec.service", "ntpd"),
    ("openntpd.service", "openntpd"),
    ("systemd-timesyncd.service", "systemd-timesyncd"),
    ("ptp4l.service", "ptp4l"),
    ("phc2sys.service", "phc2sys"),
    ("ptp4l", "ptp4l"),
    ("phc2sys", "phc2sys"),
];

/// Where systemd keeps system.slice: cgroup v2, then v1's named hierarchy.
const CGROUP_SLICES: &[&str] = &[
    "/sys/fs/cgroup/system.slice",
    "/sys/fs/cgroup/systemd/system.slice",
];

/// The first time daemon found running, as `chronyd (pid 412)` or
/// `chronyd (chrony.service, pid 412)`.
pub fn running() -> Option<String> {
    in_proc(Path::new("/proc"))
        .or_else(|| CGROUP_SLICES.iter().find_map(|s| in_cgroups(Path::new(s))))
        .or_else(from_pid_files)
}

/// A unit of [`UNITS`] with a process in `slice` (a system.slice cgroup
/// directory): its cgroup.procs is not empty. Template instances live in a
/// slice of their own (`system-ptp4l.slice/ptp4l@eth0.service`).
pub fn in_cgroups(slice: &Path) -> Option<String> {
    let entries = std::fs::read_dir(slice).ok()?;
    let mut dirs: Vec<(String, std::path::PathBuf)> = vec![];
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if let Some(sub) = name
            .strip_prefix("system-")
            .and_then(|n| n.strip_suffix(".slice"))
        {
            if UNITS.iter().any(|(u, _)| *u == sub) {
                for inner in std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Some(n) = inner.file_name().to_str() {
                        dirs.push((n.to_string(), inner.path()));
                    }
                }
            }
        } else {
            dirs.push((name, entry.path()));
        }
    }
    dirs.sort();
    dirs.into_iter().find_map(|(unit, dir)| {
        let (_, daemon) = UNITS.iter().find(|(u, _)| {
            unit == *u || unit.strip_prefix(u).is_some_and(|r| r.starts_with('@'))
        })?;
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        let pid = procs.split_whitespace().next()?;
        Some(format!("{daemon} ({unit}, pid {pid})"))
    })
}

/// Scan `proc_root` (a /proc) for a process named in [`DAEMONS`].
pub fn in_proc(proc_root: &Path) -> Option<String> {
    let entries = std::fs::read_dir(proc_root).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        if DAEMONS.contains(&comm) {
            return Some(format!("{comm} (pid {pid})"));
        }
    }
    None
}

fn from_pid_files() -> Option<String> {
    PID_FILES.iter().find_map(|(path, name)| {
        let pid: libc::pid_t = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        (pid > 1 && alive(pid)).then(|| format!("{name} (pid {pid})"))
    })
}

/// `kill(pid, 0)`: 0 or EPERM means the process exists.
fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_daemon_by_its_comm_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let proc_dir = |pid: &str, comm: &str| {
            let d = dir.path().join(pid);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        };
        proc_dir("1", "systemd");
        proc_dir("77", "chronyc");
        std::fs::create_dir(dir.path().join("self")).unwrap();
        assert_eq!(in_proc(dir.path()), None);
        proc_dir("412", "chronyd");
        assert_eq!(in_proc(dir.path()).as_deref(), Some("chronyd (pid 412)"));
        assert_eq!(in_proc(&dir.path().join("missing")), None);
    }

    #[test]
    fn finds_a_daemon_by_its_unit_cgroup_when_it_has_processes() {
        let dir = tempfile::tempdir().unwrap();
        let unit = |path: &str, procs: &str| {
            let d = dir.path().join(path);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup.procs"), procs).unwrap();
        };
        unit("vmmci.service", "139\n");
        unit("cron.service", "201\n");
        // A stopped unit whose cgroup systemd has not removed yet.
        unit("chrony.service", "");
        assert_eq!(in_cgroups(dir.path()), None);
        unit("chrony.service", "193\n194\n");
        assert_eq!(
            in_cgroups(dir.path()).as_deref(),
            Some("chronyd (chrony.service, pid 193)")
        );
        std::fs::remove_dir_all(dir.path().join("chrony.service")).unwrap();
        unit("system-ptp4l.slice/ptp4l@eth0.service", "88\n");
        assert_eq!(
            in_cgroups(dir.path()).as_deref(),
            Some("ptp4l (ptp4l@eth0.service, pid 88)")
        );
        assert_eq!(in_cgroups(&dir.path().join("missing")), None);
    }

    #[test]
    fn this_process_is_alive_and_an_unused_pid_is_not() {
        assert!(alive(std::process::id() as libc::pid_t));
        assert!(!alive(libc::pid_t::MAX - 1));
    }
}
