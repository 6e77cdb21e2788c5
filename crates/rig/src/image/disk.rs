//! The ext4 data disk: made with `mke2fs`, checked with `e2fsck -fn`,
//! read with `debugfs` and `dumpe2fs` (e2fsprogs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::RigError;

fn run_tool(cmd: &mut Command, what: &str) -> Result<Output, RigError> {
    cmd.output().map_err(|e| {
        RigError::Io(
            format!("{what}: cannot run (apt-get install e2fsprogs; scripts/rig/install-deps.sh)"),
            e,
        )
    })
}

/// [`run_tool`], and a failure (`what` failed: its stderr) unless it exits 0.
fn run_tool_ok(cmd: &mut Command, what: &str) -> Result<Output, RigError> {
    let out = run_tool(cmd, what)?;
    if !out.status.success() {
        return Err(RigError::Missing(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

fn e2tool(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// A fresh ext4 image of `size_mb` MiB.
pub fn make_data_disk(path: &Path, size_mb: u64) -> Result<(), RigError> {
    let f = fs::File::create(path)
        .map_err(|e| RigError::Io(format!("create {}", path.display()), e))?;
    f.set_len(size_mb << 20)
        .map_err(|e| RigError::Io(format!("size {}", path.display()), e))?;
    drop(f);
    run_tool_ok(
        Command::new(e2tool("mke2fs"))
            .args(["-q", "-t", "ext4", "-F", "-L", "rigdata"])
            .arg(path),
        "mke2fs",
    )?;
    Ok(())
}

/// Result of `e2fsck -fn`.
#[derive(Clone, Debug)]
pub struct FsckReport {
    pub clean: bool,
    pub exit_code: i32,
    pub output: String,
}

pub fn fsck(path: &Path) -> Result<FsckReport, RigError> {
    let out = run_tool(
        Command::new(e2tool("e2fsck")).arg("-fn").arg(path),
        "e2fsck",
    )?;
    let code = out.status.code().unwrap_or(-1);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // -n never fixes; exit 0 means no problems. A journal needing recovery
    // or the "not cleanly unmounted" state also show up as non-zero/warnings.
    let clean =
        code == 0 && !text.contains("needs_recovery") && !text.contains("recovering journal");
    Ok(FsckReport {
        clean,
        exit_code: code,
        output: text,
    })
}

/// `debugfs -R 'cat <file>'`.
pub fn read_file(image: &Path, file: &str) -> Result<Vec<u8>, RigError> {
    let out = run_tool_ok(
        Command::new(e2tool("debugfs"))
            .arg("-R")
            .arg(format!("cat {file}"))
            .arg(image),
        &format!("debugfs cat {file}"),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("File not found") {
        return Err(RigError::Missing(format!(
            "{file} not in {}: {err}",
            image.display()
        )));
    }
    Ok(out.stdout)
}

/// Whether the superblock says the fs was not cleanly unmounted
/// (`dumpe2fs -h`: state "not clean" or needs_recovery).
pub fn superblock_state(image: &Path) -> Result<String, RigError> {
    let out = run_tool(
        Command::new(e2tool("dumpe2fs")).arg("-h").arg(image),
        "dumpe2fs",
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let state = text
        .lines()
        .find(|l| l.starts_with("Filesystem state:"))
        .map(|l| l["Filesystem state:".len()..].trim().to_string())
        .unwrap_or_default();
    let features = text
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or("")
        .to_string();
    Ok(if features.contains("needs_recovery") {
        format!("{state} needs_recovery")
    } else {
        state
    })
}
