//! What an event runs: the `[hooks]` program, then the executables of its
//! drop-in directory by name, and what is wrong with any of them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{HookEvent, HookSettings};
use crate::power::{resolve_argv, SEARCH_PATH};

/// One program to run for an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub path: PathBuf,
    pub args: Vec<String>,
}

impl Hook {
    /// The program and its arguments, for the log and the status.
    pub fn display(&self) -> String {
        let mut s = self.path.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// What `event` runs under `settings`, and what is wrong.
pub(super) fn plan(settings: &HookSettings, event: HookEvent) -> (Vec<Hook>, Vec<String>) {
    let mut hooks = Vec::new();
    let mut problems = Vec::new();
    let argv = settings.argv(event);
    if !argv.is_empty() {
        match resolve_argv(argv) {
            None => problems.push(format!(
                "{event}: [hooks] {} program {:?} not found in {}; not run",
                event.key(),
                argv[0],
                SEARCH_PATH.join(":")
            )),
            Some((path, args)) => match check_executable(&path) {
                Ok(()) => hooks.push(Hook { path, args }),
                Err(why) => problems.push(format!(
                    "{event}: [hooks] {} program {} {why}; not run",
                    event.key(),
                    path.display()
                )),
            },
        }
    }
    if let Some(dir) = &settings.dir {
        scan_dir(&dir.join(event.name()), event, &mut hooks, &mut problems);
    }
    (hooks, problems)
}

/// Every executable in `dir`, by name (byte order); a missing directory
/// has none. README files, hidden files and the leftovers of editors and
/// package managers are passed over without a word.
fn scan_dir(dir: &Path, event: HookEvent, hooks: &mut Vec<Hook>, problems: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            problems.push(format!("{event}: cannot list {}: {e}", dir.display()));
            return;
        }
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        if passed_over(&name.to_string_lossy()) {
            continue;
        }
        let path = dir.join(&name);
        if path.is_dir() {
            continue;
        }
        match check_executable(&path) {
            Ok(()) => hooks.push(Hook {
                path,
                args: Vec::new(),
            }),
            Err(why) => problems.push(format!("{event}: {} {why}; skipped", path.display())),
        }
    }
}

fn passed_over(name: &str) -> bool {
    const LEFTOVERS: &[&str] = &[".dpkg-", ".ucf-", ".apk-new", ".rpmnew", ".rpmsave"];
    name.starts_with('.')
        || name.ends_with('~')
        || name.to_ascii_lowercase().starts_with("readme")
        || LEFTOVERS.iter().any(|l| name.contains(l))
}

/// A regular file with an execute bit (root may run any such file).
fn check_executable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("is missing".into()),
        Err(e) => Err(format!("cannot be read ({e})")),
        Ok(m) if !m.is_file() => Err("is not a regular file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err("is not executable (chmod +x to run it)".into())
        }
        Ok(_) => Ok(()),
    }
}
