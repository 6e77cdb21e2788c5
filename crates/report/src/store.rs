//! The status file: written whole or not at all (temp file + rename), so a
//! reader never sees half a record.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::Status;

pub const DEFAULT_RUN_DIR: &str = "/run/vmmci";
pub const STATUS_FILE: &str = "status.json";

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0}: is a symbolic link; refusing to write status through it")]
    Symlink(PathBuf),
    #[error("cannot write status in {dir}: {source}")]
    Write {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no status at {0}: is `vmmci daemon` running? (start it, or pass --run-dir)")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a vmmci status record: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// Write `status` to `dir/status.json` atomically, world-readable.
pub fn write_status(dir: &Path, status: &Status) -> Result<(), StatusError> {
    let werr = |source| StatusError::Write {
        dir: dir.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => return Err(StatusError::Symlink(dir.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(werr)?;
        }
        Err(e) => return Err(werr(e)),
    }
    let body = serde_json::to_vec_pretty(status).map_err(|e| werr(io::Error::other(e)))?;
    write_atomic(&dir.join(STATUS_FILE), &body, b"\n").map_err(werr)
}

/// Replace `path` with `body` + `tail` whole or not at all: a temp file
/// beside it, then rename. World-readable; never through a symlink.
pub(crate) fn write_atomic(path: &Path, body: &[u8], tail: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = file.write_all(body).and_then(|_| file.write_all(tail));
    drop(file);
    if let Err(e) = written.and_then(|_| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Read `dir/status.json`.
pub fn read_status(dir: &Path) -> Result<Status, StatusError> {
    let path = dir.join(STATUS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StatusError::Missing(path)),
        Err(source) => return Err(StatusError::Read { path, source }),
    };
    serde_json::from_str(&text).map_err(|e| StatusError::Corrupt {
        path,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_then_read_back_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run/vmmci");
        let s = crate::tests::sample_status();
        write_status(&run, &s).unwrap();
        write_status(&run, &s).unwrap(); // overwrite in place
        assert_eq!(read_status(&run).unwrap(), s);
        let mode = fs::metadata(run.join(STATUS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let leftovers: Vec<_> = fs::read_dir(&run).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }

    #[test]
    fn missing_and_corrupt_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_status(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("is `vmmci daemon` running"),
            "{err}"
        );
        fs::write(dir.path().join(STATUS_FILE), "{not json").unwrap();
        let err = read_status(dir.path()).unwrap_err();
        assert!(matches!(err, StatusError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn refuses_a_planted_symlink_dir() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        let link = dir.path().join("vmmci");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = write_status(&link, &crate::tests::sample_status()).unwrap_err();
        assert!(matches!(err, StatusError::Symlink(_)), "{err}");
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
    }
}
