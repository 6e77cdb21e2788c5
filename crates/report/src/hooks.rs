//! The hooks in the status record: the last run of each program (`[hooks]`
//! and `/etc/vmmci/hooks.d/<event>/`) and what is wrong with them now.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HooksStatus {
    /// The latest run of each hook, oldest first.
    pub runs: Vec<HookRunStatus>,
    /// Hooks that are missing or not executable (skipped), as logged once.
    pub problems: Vec<String>,
}

/// One run of one hook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HookRunStatus {
    /// `before-reboot`, `before-poweroff` or `after-step`.
    pub event: String,
    /// The program and its arguments.
    pub program: String,
    /// When it started (guest clock, ns since the epoch).
    pub at_ns: i64,
    pub duration_ms: u64,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// It overran its limit and its process group was killed.
    pub killed: bool,
    /// Why it was not run (could not be started, or no time was left).
    pub error: Option<String>,
    /// How it ended, in words: `exit 0`, `killed at its limit (5s)`, ...
    pub result: String,
    /// The tail of its output (stdout and stderr), at most 4 KiB; starts
    /// with "…" when cut.
    pub output: String,
}

impl HookRunStatus {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// A line per run (and its last line of output), a line per problem.
pub(crate) fn render_hooks(out: &mut String, h: &HooksStatus, ago: impl Fn(i64) -> String) {
    for r in &h.runs {
        let took = if r.duration_ms < 1000 {
            format!("{} ms", r.duration_ms)
        } else {
            format!("{:.3} s", r.duration_ms as f64 / 1000.0)
        };
        let _ = writeln!(
            out,
            "hook:           {} {}: {} after {took}, at {}",
            r.event,
            r.program,
            r.result,
            ago(r.at_ns)
        );
        if let Some(last) = r.output.lines().rev().find(|l| !l.trim().is_empty()) {
            let last: String = last.chars().take(200).collect();
            let _ = writeln!(out, "  its output:   {last}");
        }
    }
    for p in &h.problems {
        let _ = writeln!(out, "hook problem:   {p}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_problems_read_well() {
        let h = HooksStatus {
            runs: vec![
                HookRunStatus {
                    event: "before-reboot".into(),
                    program: "/etc/vmmci/hooks.d/before-reboot/10-drain".into(),
                    at_ns: 1_900_000_000_000_000_000,
                    duration_ms: 5000,
                    killed: true,
                    result: "killed at its limit (5s)".into(),
                    output: "draining\nstill draining\n\n".into(),
                    ..HookRunStatus::default()
                },
                HookRunStatus {
                    event: "after-step".into(),
                    program: "/usr/local/sbin/note-step".into(),
                    duration_ms: 12,
                    exit_code: Some(0),
                    result: "exit 0".into(),
                    ..HookRunStatus::default()
                },
            ],
            problems: vec!["after-step: /etc/vmmci/hooks.d/after-step/x is not executable (chmod +x to run it); skipped".into()],
        };
        let mut out = String::new();
        render_hooks(&mut out, &h, |at| format!("T{}", at / 1_000_000_000));
        assert_eq!(
            out,
            "hook:           before-reboot /etc/vmmci/hooks.d/before-reboot/10-drain: killed at its limit (5s) after 5.000 s, at T1900000000\n\
             \x20 its output:   still draining\n\
             hook:           after-step /usr/local/sbin/note-step: exit 0 after 12 ms, at T0\n\
             hook problem:   after-step: /etc/vmmci/hooks.d/after-step/x is not executable (chmod +x to run it); skipped\n"
        );
        assert!(h.runs[1].success() && !h.runs[0].success());
    }
}
