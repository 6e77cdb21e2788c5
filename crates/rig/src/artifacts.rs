//! Where the rig finds its inputs. Everything can be overridden by
//! environment variables; defaults follow `scripts/rig/*.sh`.
//!
//! - `VMMCI_CACHE`       download cache (default `~/.cache/vmmci`, as scripts/lib.sh)
//! - `VMMCI_RIG_BIN`     directory with static `vmmci` and `rig-clockprobe`
//!   (default `<repo>/target/static/x86_64-unknown-linux-gnu/release`)
//! - `VMMCI_RIG_WORK`    scratch dir for images, disks and logs
//!   (default `<repo>/target/rig-work`)
//! - `VMMCI_QEMU`        qemu-system-x86_64 binary
//! - `VMMCI_BUSYBOX`     static busybox (default /bin/busybox)

use std::path::{Path, PathBuf};

use crate::RigError;

pub fn repo_root() -> PathBuf {
    // crates/rig -> repo
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub fn cache_dir() -> PathBuf {
    env_path("VMMCI_CACHE").unwrap_or_else(|| {
        let base = env_path("XDG_CACHE_HOME")
            .or_else(|| env_path("HOME").map(|h| h.join(".cache")))
            .unwrap_or_else(|| repo_root().join(".cache"));
        base.join("vmmci")
    })
}

pub const STATIC_TRIPLE: &str = "x86_64-unknown-linux-gnu";

pub fn static_bin_dir() -> PathBuf {
    env_path("VMMCI_RIG_BIN").unwrap_or_else(|| {
        repo_root()
            .join("target/static")
            .join(STATIC_TRIPLE)
            .join("release")
    })
}

pub fn work_dir() -> PathBuf {
    let p = env_path("VMMCI_RIG_WORK").unwrap_or_else(|| repo_root().join("target/rig-work"));
    let _ = std::fs::create_dir_all(&p);
    p
}

pub fn busybox() -> PathBuf {
    env_path("VMMCI_BUSYBOX").unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// The QEMU binary, or an error saying how to get it.
pub fn qemu() -> Result<PathBuf, RigError> {
    if let Some(p) = env_path("VMMCI_QEMU") {
        if p.is_file() {
            return Ok(p);
        }
        return Err(RigError::Missing(format!(
            "VMMCI_QEMU={} does not exist",
            p.display()
        )));
    }
    for d in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        let p = Path::new(d).join("qemu-system-x86_64");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(RigError::Missing(
        "qemu-system-x86_64 not found: run scripts/rig/install-deps.sh as root (apt-get install qemu-system-x86)".into(),
    ))
}

/// A static guest binary (`vmmci`, `rig-clockprobe`), or what to run.
pub fn static_bin(name: &str) -> Result<PathBuf, RigError> {
    let p = static_bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(RigError::Missing(format!(
            "{} missing: run scripts/rig/build-guest-bins.sh (static build of vmmci and rig-clockprobe)",
            p.display()
        )))
    }
}
