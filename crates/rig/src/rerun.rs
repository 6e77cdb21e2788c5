//! The one exception to "a failing scenario fails at once": trixie's 6.12
//! kernel crashes now and then under QEMU 7.2's TCG (a double fault or
//! general protection fault in interrupt context, at boot or at shutdown:
//! about 1 boot in 12 here, with any CPU model, with and without the
//! agent), an emulator defect. A scenario on such a kernel runs again when,
//! and only when, the end the rig recorded for its VM is a guest kernel
//! crash ([`crate::vm::GUEST_CRASH`]): at most [`ATTEMPTS`] runs of one
//! test, and at most [`MAX_RERUNS`] reruns in one test binary, beyond which
//! a crash fails the test. Each crashed run's console is kept beside the
//! log, and every rerun (and every crash that was not rerun) is written as
//! one line to [`summary_file`], which `scripts/test` prints at the end of
//! its end-to-end step, so that a rising crash rate shows in CI.

use std::io::Write;
use std::panic::{self, RefUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::artifacts;
use crate::vm::guest_crash_in_log;

/// Runs of one test: the first and at most two reruns.
pub const ATTEMPTS: u32 = 3;
/// Reruns one test binary may make, all its tests together.
pub const MAX_RERUNS: u32 = 3;

/// Reruns made so far by this test binary.
static RERUNS: AtomicU32 = AtomicU32::new(0);

/// `<work dir>/reruns.txt` (see [`artifacts::work_dir`]).
pub fn summary_file() -> PathBuf {
    artifacts::work_dir().join("reruns.txt")
}

/// The running test, as libtest names its thread, after the test binary
/// (`e2e::a_boot_agent_trixie_cloud`).
fn test_name() -> String {
    let binary = std::env::args()
        .next()
        .and_then(|a| {
            let stem = Path::new(&a).file_stem()?.to_string_lossy().into_owned();
            // Cargo names test binaries `<target>-<hash>`.
            Some(
                stem.rsplit_once('-')
                    .map_or(stem.clone(), |(t, _)| t.to_string()),
            )
        })
        .unwrap_or_default();
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed)")
        .to_string();
    format!("{binary}::{test}")
}

fn note(path: &Path, line: &str) {
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!("  WARNING: cannot write {}: {e}", path.display());
    }
}

/// Run `scenario`, which boots `kernel` with its console log at `log`;
/// run it again (see the module's rule) when its VM ended on a guest
/// kernel crash. Any other failure fails at once.
pub fn on_guest_crash(kernel: &str, log: &Path, scenario: impl Fn() + RefUnwindSafe) {
    on_guest_crash_noted_in(&summary_file(), kernel, log, scenario)
}

fn on_guest_crash_noted_in(
    summary: &Path,
    kernel: &str,
    log: &Path,
    scenario: impl Fn() + RefUnwindSafe,
) {
    let write_down = |line: String| note(summary, &line);
    for attempt in 1..=ATTEMPTS {
        let Err(failure) = panic::catch_unwind(&scenario) else {
            return;
        };
        let console = std::fs::read_to_string(log).unwrap_or_default();
        let Some(crash) = guest_crash_in_log(&console) else {
            panic::resume_unwind(failure);
        };
        let kept = log.with_extension(format!("guest-crash-{attempt}.log"));
        let _ = std::fs::copy(log, &kept);
        let what = format!(
            "{}  kernel={kernel}  crash={crash:?}  console={}",
            test_name(),
            kept.display()
        );
        if attempt == ATTEMPTS {
            write_down(format!(
                "failed, not rerun (run {attempt} of {ATTEMPTS}): {what}"
            ));
            panic::resume_unwind(failure);
        }
        let n = RERUNS.fetch_add(1, Ordering::SeqCst) + 1;
        if n > MAX_RERUNS {
            write_down(format!(
                "failed, not rerun (this test binary made its {MAX_RERUNS} reruns): {what}"
            ));
            panic!(
                "the guest kernel crashed ({crash}; console kept in {}), and this test binary \
                 has already rerun {MAX_RERUNS} scenarios after guest kernel crashes: not again",
                kept.display()
            );
        }
        write_down(format!("rerun {n} of {MAX_RERUNS}: {what}"));
        eprintln!(
            "  WARNING: the guest kernel crashed under TCG ({crash}; console kept in {}); \
             running the scenario again (rerun {n} of at most {MAX_RERUNS} in this test binary)",
            kept.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// The only test here that reruns: the binary's cap is all its own.
    #[test]
    fn reruns_on_a_recorded_crash_only_and_within_the_cap() {
        let dir = std::env::temp_dir().join(format!("vmmci-rerun-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (log, summary) = (dir.join("t-trixie.log"), dir.join("reruns.txt"));
        let crashed = "### rig [   3.000s] VM ended: QemuDied(\"guest kernel crash\"): \
                       guest kernel crash: Kernel panic - not syncing: Fatal exception\n";
        let runs = AtomicUsize::new(0);
        // Crashes once, then passes: one rerun, noted.
        on_guest_crash_noted_in(&summary, "trixie-cloud", &log, || {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                std::fs::write(&log, crashed).unwrap();
                panic!("scenario failed");
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        let noted = std::fs::read_to_string(&summary).unwrap();
        assert!(
            noted.starts_with("rerun 1 of 3: ")
                && noted.contains("kernel=trixie-cloud")
                && noted.contains("crash=\"Kernel panic - not syncing: Fatal exception\"")
                && noted.contains("t-trixie.guest-crash-1.log"),
            "{noted}"
        );
        // A scenario that fails every time; the test fails in the end.
        let always_failing = || {
            let r = panic::catch_unwind(|| {
                on_guest_crash_noted_in(&summary, "trixie-cloud", &log, || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    panic!("scenario failed");
                })
            });
            assert!(r.is_err());
        };
        // Any other failure is not rerun.
        std::fs::write(&log, "### rig [   3.000s] VM ended: CleanStop: reset\n").unwrap();
        runs.store(0, Ordering::SeqCst);
        always_failing();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Crashing every time: two more reruns reach the binary's cap of
        // three, and the crash after them fails the test.
        std::fs::write(&log, crashed).unwrap();
        runs.store(0, Ordering::SeqCst);
        always_failing();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let noted = std::fs::read_to_string(&summary).unwrap();
        let lines: Vec<&str> = noted.lines().collect();
        assert_eq!(lines.len(), 4, "{noted}");
        assert!(
            lines[3].starts_with("failed, not rerun (run 3 of 3)"),
            "{noted}"
        );
        // Beyond the cap, a crash fails at once.
        runs.store(0, Ordering::SeqCst);
        always_failing();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let noted = std::fs::read_to_string(&summary).unwrap();
        assert!(
            noted
                .lines()
                .nth(4)
                .is_some_and(|l| l.starts_with("failed, not rerun (this test binary made its 3")),
            "{noted}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
