//! Is another time daemon running? `discipline` must not fight one.
//!
//! Two ways to see one, because the agent's systemd unit hides other users'
//! processes (`ProtectProc=invisible`) and chronyd, ntpd and timesyncd run
//! as their own users: a process scan of /proc finds those the agent may
//! see (OpenRC, busybox, a daemon running as root), and each daemon's pid
//! file plus `kill(pid, 0)` finds the rest (EPERM means "exists").

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

/// The first time daemon found running, as `chronyd (pid 412)`.
pub fn running() -> Option<String> {
    in_proc(Path::new("/proc")).or_else(from_pid_files)
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
    fn this_process_is_alive_and_an_unused_pid_is_not() {
        assert!(alive(std::process::id() as libc::pid_t));
        assert!(!alive(libc::pid_t::MAX - 1));
    }
}
