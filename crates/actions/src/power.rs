//! Reboot and power-off: through the init system first, by force last.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tracing::{info, warn};
use vmmci_agent::{Power, PowerAction, PowerError};

use crate::shutdown_state::ShutdownProbe;

/// Every init system ships these names (systemd, OpenRC, busybox, sysvinit).
pub const DEFAULT_REBOOT: &[&str] = &["reboot"];
pub const DEFAULT_POWEROFF: &[&str] = &["poweroff"];

/// Where a bare command name is looked up: a fixed list, not the caller's
/// PATH, since the agent runs as root.
pub(crate) const SEARCH_PATH: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Resolve a bare program name against [`SEARCH_PATH`]; absolute and
/// relative paths are kept as given.
pub fn resolve_argv(argv: &[String]) -> Option<(PathBuf, Vec<String>)> {
    let (prog, args) = argv.split_first()?;
    let path = if prog.contains('/') {
        PathBuf::from(prog)
    } else {
        SEARCH_PATH
            .iter()
            .map(|d| Path::new(d).join(prog))
            .find(|p| p.exists())?
    };
    Some((path, args.to_vec()))
}

/// Power through the init system's own commands (argv lists, no shell),
/// with PID 1's own signals as the fallback.
#[derive(Clone, Debug)]
pub struct InitPower {
    reboot: Vec<String>,
    poweroff: Vec<String>,
    init: Pid1,
    shutdown: ShutdownProbe,
}

impl Default for InitPower {
    fn default() -> Self {
        InitPower::new(
            DEFAULT_REBOOT.iter().map(|s| s.to_string()).collect(),
            DEFAULT_POWEROFF.iter().map(|s| s.to_string()).collect(),
        )
    }
}

impl InitPower {
    /// The commands are resolved now (at start and on SIGHUP), so a missing
    /// one is said at once, not when the host asks for a stop.
    pub fn new(reboot: Vec<String>, poweroff: Vec<String>) -> InitPower {
        let init = Pid1::detect();
        for (action, argv) in [
            (PowerAction::Reboot, &reboot),
            (PowerAction::Poweroff, &poweroff),
        ] {
            if resolve_argv(argv).is_none() {
                warn!(
                    "{action} command {argv:?} not found in {SEARCH_PATH:?}: {}",
                    match init.signal(action) {
                        Some(_) => format!("PID 1 ({}) will be signalled instead", init.name()),
                        None => "the agent will sync and force it after the grace".into(),
                    }
                );
            }
        }
        InitPower {
            reboot,
            poweroff,
            init,
            shutdown: ShutdownProbe::default(),
        }
    }

    fn argv(&self, action: PowerAction) -> &[String] {
        match action {
            PowerAction::Reboot => &self.reboot,
            PowerAction::Poweroff => &self.poweroff,
        }
    }

    fn run_command(&self, action: PowerAction) -> Result<(), String> {
        let argv = self.argv(action);
        let (path, args) = resolve_argv(argv)
            .ok_or_else(|| format!("command {argv:?} not found in {SEARCH_PATH:?}"))?;
        let mut child = Command::new(&path)
            .args(&args)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        info!("{action}: started {} {}", path.display(), args.join(" "));
        // Reap it so it does not linger as a zombie; a command that fails
        // (e.g. refused during a shutdown already under way) hands over to
        // PID 1's signal.
        let init = self.init.clone();
        std::thread::spawn(move || match child.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                warn!("{action} command exited with {s}");
                if let Err(e) = init.ask(action) {
                    warn!("{e}; the agent syncs and forces it after the grace");
                }
            }
            Err(e) => warn!("{action} command: {e}"),
        });
        Ok(())
    }
}

impl Power for InitPower {
    fn begin(&mut self, action: PowerAction) -> Result<(), PowerError> {
        // The guest's own reboot or power-off is under way: the stop is
        // acknowledged, and a second command would only disturb it (the
        // grace sync and the force still stand).
        if let Some(why) = self.shutdown.under_way() {
            info!("{action}: the guest is already shutting down ({why}); not asked again");
            return Ok(());
        }
        let command = match self.run_command(action) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        warn!("{action}: {command}; asking PID 1 directly");
        self.init.ask(action).map_err(|signal| PowerError {
            action,
            reason: format!("{command}; {signal}"),
        })
    }

    fn sync_disks(&mut self, wait: Duration) -> bool {
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: sync(2) has no preconditions.
            unsafe { libc::sync() };
            let _ = done.send(());
        });
        finished.recv_timeout(wait).is_ok()
    }

    fn force(&mut self, action: PowerAction) -> Result<(), PowerError> {
        let cmd = match action {
            PowerAction::Reboot => libc::RB_AUTOBOOT,
            PowerAction::Poweroff => libc::RB_POWER_OFF,
        };
        // SAFETY: reboot(2) takes a plain command; it returns only on error.
        unsafe { libc::reboot(cmd) };
        Err(PowerError {
            action,
            reason: format!("reboot(2): {}", std::io::Error::last_os_error()),
        })
    }
}

/// The init system running as PID 1, for its own reboot and power-off
/// signals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pid1 {
    /// SIGRTMIN+5: reboot, SIGRTMIN+4: power-off (systemd(1) "Signals").
    Systemd,
    /// SIGTERM: reboot, SIGUSR2: power-off (busybox init.c).
    Busybox,
    /// Anything else (sysvinit, openrc-init, ...): no signal is relied on.
    Other(String),
}

impl Pid1 {
    /// From `/proc/1/comm` (readable after the capability drop, unlike
    /// `/proc/1/exe`) and, for a plain "init", where `/sbin/init` leads.
    pub fn detect() -> Pid1 {
        let comm = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
        let init = std::fs::canonicalize("/sbin/init").unwrap_or_default();
        Pid1::from_facts(comm.trim(), &init)
    }

    pub fn from_facts(comm: &str, sbin_init: &Path) -> Pid1 {
        let target = sbin_init.file_name().and_then(|n| n.to_str());
        match comm {
            "systemd" => Pid1::Systemd,
            "init" if target == Some("busybox") => Pid1::Busybox,
            "init" if target == Some("systemd") => Pid1::Systemd,
            other => Pid1::Other(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Pid1::Systemd => "systemd",
            Pid1::Busybox => "busybox init",
            Pid1::Other(name) => name,
        }
    }

    pub fn signal(&self, action: PowerAction) -> Option<libc::c_int> {
        match (self, action) {
            (Pid1::Systemd, PowerAction::Reboot) => Some(libc::SIGRTMIN() + 5),
            (Pid1::Systemd, PowerAction::Poweroff) => Some(libc::SIGRTMIN() + 4),
            (Pid1::Busybox, PowerAction::Reboot) => Some(libc::SIGTERM),
            (Pid1::Busybox, PowerAction::Poweroff) => Some(libc::SIGUSR2),
            (Pid1::Other(_), _) => None,
        }
    }

    fn ask(&self, action: PowerAction) -> Result<(), String> {
        let name = self.name();
        let sig = self
            .signal(action)
            .ok_or_else(|| format!("no known {action} signal for PID 1 ({name})"))?;
        // SAFETY: kill(2) with a plain pid and signal number.
        if unsafe { libc::kill(1, sig) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("cannot signal PID 1 ({name}): {e}"));
        }
        info!("{action}: asked PID 1 ({name}) with signal {sig}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_resolve_against_the_fixed_path() {
        let (path, args) = resolve_argv(&["sh".into(), "-c".into(), "true".into()]).unwrap();
        assert!(path.is_absolute() && path.ends_with("sh"));
        assert_eq!(args, vec!["-c", "true"]);
        assert!(resolve_argv(&["no-such-program-vmmci".into()]).is_none());
        assert!(resolve_argv(&[]).is_none());
        let (path, _) = resolve_argv(&["/opt/x/reboot".into()]).unwrap();
        assert_eq!(path, PathBuf::from("/opt/x/reboot"));
    }

    #[test]
    fn begin_runs_the_configured_argv_without_a_shell() {
        let dir = std::env::temp_dir().join(format!("vmmci-power-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("ran");
        let mut power = InitPower {
            reboot: vec!["touch".into(), marker.display().to_string()],
            poweroff: vec!["/nonexistent/poweroff".into()],
            // Never signal this machine's PID 1 from a test.
            init: Pid1::Other("test".into()),
            shutdown: ShutdownProbe {
                utmp: dir.join("utmp"),
                openrc_softlevel: dir.join("softlevel"),
            },
        };
        power.begin(PowerAction::Reboot).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !marker.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(marker.exists(), "reboot argv was not run");
        let err = power.begin(PowerAction::Poweroff).unwrap_err();
        assert!(
            err.reason.contains("cannot run /nonexistent/poweroff")
                && err
                    .reason
                    .contains("no known poweroff signal for PID 1 (test)"),
            "{err}"
        );
        // A guest already going down is not asked again.
        std::fs::write(dir.join("softlevel"), "reboot\n").unwrap();
        std::fs::remove_file(&marker).unwrap();
        power.begin(PowerAction::Reboot).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!marker.exists(), "reboot argv run during a shutdown");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pid1_is_told_apart_by_its_name_and_where_sbin_init_leads() {
        use PowerAction::*;
        let systemd = Pid1::from_facts("systemd", Path::new("/usr/lib/systemd/systemd"));
        assert_eq!(systemd, Pid1::Systemd);
        assert_eq!(systemd.signal(Reboot), Some(libc::SIGRTMIN() + 5));
        assert_eq!(systemd.signal(Poweroff), Some(libc::SIGRTMIN() + 4));
        let busybox = Pid1::from_facts("init", Path::new("/bin/busybox"));
        assert_eq!(busybox, Pid1::Busybox);
        assert_eq!(busybox.signal(Reboot), Some(libc::SIGTERM));
        assert_eq!(busybox.signal(Poweroff), Some(libc::SIGUSR2));
        let sysv = Pid1::from_facts("init", Path::new("/sbin/init"));
        assert_eq!(sysv, Pid1::Other("init".into()));
        assert_eq!(sysv.signal(Reboot), None);
    }
}
