//! One agent per run directory, and what the previous one left there: two
//! agents polling one device would both act on a command, and a command the
//! last agent already handled this boot must not be acted on again.

use std::path::Path;

use tracing::warn;
use vmmci_report::read_status;

use crate::CliError;

/// Hold `run_dir/lock` for the life of the daemon: two agents polling one
/// device would both act on a command. A run directory that cannot be
/// written (read-only or full /run) only costs this check, not the service.
pub(super) fn single_instance(run_dir: &Path) -> Result<Option<std::fs::File>, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let opened = std::fs::create_dir_all(run_dir).and_then(|_| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(run_dir.join("lock"))
    });
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            warn!(
                "cannot create {}/lock ({e}); not checking for a second agent",
                run_dir.display()
            );
            return Ok(None);
        }
    };
    // SAFETY: flock on a valid, owned file descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = read_status(run_dir)
            .map(|s| format!(" (pid {})", s.pid))
            .unwrap_or_default();
        return Err(CliError::Failed(format!(
            "another vmmci daemon is running{pid} (it holds {}/lock); stop it first",
            run_dir.display()
        )));
    }
    Ok(Some(file))
}

/// The COMMAND value a previous agent handled this boot, from its status.
pub(super) fn previous_latch(run_dir: &Path, boot_id: Option<&str>) -> Option<u32> {
    let old = read_status(run_dir).ok()?;
    (old.boot_id.is_some() && old.boot_id.as_deref() == boot_id).then_some(old.latched_command?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmmci_report::Status;

    #[test]
    fn a_latch_is_trusted_only_from_this_boot() {
        let dir = tempfile::tempdir().unwrap();
        let old = Status {
            boot_id: Some("boot-a".into()),
            latched_command: Some(2),
            ..Status::default()
        };
        vmmci_report::write_status(dir.path(), &old).unwrap();
        assert_eq!(previous_latch(dir.path(), Some("boot-a")), Some(2));
        assert_eq!(previous_latch(dir.path(), Some("boot-b")), None);
        assert_eq!(previous_latch(dir.path(), None), None);
        assert_eq!(
            previous_latch(&dir.path().join("none"), Some("boot-a")),
            None
        );
    }
}
