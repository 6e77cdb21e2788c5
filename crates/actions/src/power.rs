//! Reboot and power-off: through the init system first, by force last.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tracing::{info, warn};
use vmmci_agent::{Power, PowerAction, PowerError};

/// Every init system ships these names (systemd, OpenRC, busybox, sysvinit).
pub const DEFAULT_REBOOT: &[&str] = &["reboot"];
pub const DEFAULT_POWEROFF: &[&str] = &["poweroff"];

/// Where a bare command name is looked up: a fixed list, not the caller's
/// PATH, since the agent runs as root.
const SEARCH_PATH: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

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

/// Power through the init system's own commands (argv lists, no shell).
#[derive(Clone, Debug)]
pub struct InitPower {
    pub reboot: Vec<String>,
    pub poweroff: Vec<String>,
}

impl Default for InitPower {
    fn default() -> Self {
        InitPower {
            reboot: DEFAULT_REBOOT.iter().map(|s| s.to_string()).collect(),
            poweroff: DEFAULT_POWEROFF.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Power for InitPower {
    fn begin(&mut self, action: PowerAction) -> Result<(), PowerError> {
        let argv = match action {
            PowerAction::Reboot => &self.reboot,
            PowerAction::Poweroff => &self.poweroff,
        };
        let fail = |reason: String| PowerError { action, reason };
        let (path, args) = resolve_argv(argv)
            .ok_or_else(|| fail(format!("command {argv:?} not found in {SEARCH_PATH:?}")))?;
        let mut child = Command::new(&path)
            .args(&args)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", path.display())))?;
        info!("{action}: started {} {}", path.display(), args.join(" "));
        // Reap it so it does not linger as a zombie, and say how it went:
        // a failed command is forced by the agent when the grace runs out.
        std::thread::spawn(move || match child.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => warn!(
                "{action} command exited with {s}; the agent forces it after the grace period"
            ),
            Err(e) => warn!("{action} command: {e}"),
        });
        Ok(())
    }

    fn sync_disks(&mut self) {
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
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
        };
        power.begin(PowerAction::Reboot).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !marker.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(marker.exists(), "reboot argv was not run");
        let err = power.begin(PowerAction::Poweroff).unwrap_err();
        assert!(
            err.reason.contains("cannot run /nonexistent/poweroff"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
