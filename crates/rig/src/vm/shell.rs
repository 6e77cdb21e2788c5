//! Shell commands in the guest, typed on its serial console.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::Vm;
use crate::RigError;

/// What a guest command printed, and its exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ran {
    pub status: i32,
    pub output: String,
}

impl Vm {
    /// Run a shell command on the console and wait for it to finish; what
    /// it printed (between our markers). A non-zero exit status is an error
    /// ([`RigError::Failed`]): use [`Vm::run_status`] for a command whose
    /// status is part of its answer.
    pub fn run(&self, cmd: &str, timeout: Duration) -> Result<String, RigError> {
        let ran = self.run_status(cmd, timeout)?;
        if ran.status != 0 {
            return Err(RigError::Failed {
                cmd: cmd.to_string(),
                status: ran.status,
                output: ran.output,
            });
        }
        Ok(ran.output)
    }

    /// Like [`Vm::run`], but any exit status is an answer: the status and
    /// the output.
    pub fn run_status(&self, cmd: &str, timeout: Duration) -> Result<Ran, RigError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // The echoed command line shows `RIG-B""n`; only the output shows
        // `RIG-Bn`. The status follows the end marker, closed by a ':'.
        let begin = format!("RIG-B{n}:");
        let end = format!("RIG-E{n}:");
        let from = self.console_len();
        self.send_console(&format!("echo RIG-B\"\"{n}:; {cmd}; echo RIG-E\"\"{n}:$?:"))?;
        let b = self.wait_console_from(from, &begin, timeout)?;
        let e = self.wait_console_from(b, &end, timeout)?;
        let s = self.wait_console_from(e, ":", timeout)?;
        // Offsets are into the raw console bytes: slice them, not a lossy copy.
        let data = self.shared.console.lock().unwrap().data[b..s].to_vec();
        let output = without_agent_log(&String::from_utf8_lossy(&data[..e - end.len() - b]));
        let status = String::from_utf8_lossy(&data[e - b..s - 1 - b]);
        let status = status.trim().parse().map_err(|_| {
            RigError::Missing(format!(
                "guest command {cmd:?}: no exit status after its output ({status:?})"
            ))
        })?;
        Ok(Ran { status, output })
    }
}

/// The console is shared with the supervised agent, whose log lines land
/// between a command's lines whenever it logs meanwhile: leave them out of
/// the command's output. The agent writes a whole line at a time, so one of
/// its lines is never split; only a command that writes half a line and
/// then waits could have one glued to its own, which no rig command does.
/// The full console keeps them for the tests that wait for them. (The
/// kernel's messages land there too, but look like `dmesg`'s output, which
/// a command may want: JSON is read without them, in `guest::json_in`.)
fn without_agent_log(out: &str) -> String {
    let kept: Vec<&str> = out.lines().filter(|l| !is_agent_log_line(l)).collect();
    kept.join("\n").trim().to_string()
}

/// A kernel message: `[` seconds since boot with six decimals `] `.
pub(crate) fn is_kernel_log_line(line: &str) -> bool {
    let line = line.trim_start_matches('\r');
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once("] ") else {
        return false;
    };
    let Some((secs, micros)) = stamp.trim_start().split_once('.') else {
        return false;
    };
    !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && micros.len() == 6
        && micros.bytes().all(|b| b.is_ascii_digit())
}

/// A line of the agent's log: an RFC 3339 UTC time, then a level.
fn is_agent_log_line(line: &str) -> bool {
    let mut words = line.trim_start_matches('\r').split_whitespace();
    let (Some(time), Some(level)) = (words.next(), words.next()) else {
        return false;
    };
    let t = time.as_bytes();
    t.len() >= 20
        && t[4] == b'-'
        && t[10] == b'T'
        && time.ends_with('Z')
        && t[..4].iter().all(u8::is_ascii_digit)
        && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_log_lines_are_not_a_commands_output() {
        let out = "2026-11-30T05:56:03.880682Z  INFO chrony: /run/chrony.vmmci.sock is not there\n\
                   0000:00:02.0\n\
                   2026-11-30T05:56:04.1Z ERROR device gone\n";
        assert_eq!(without_agent_log(out), "0000:00:02.0");
    }

    #[test]
    fn kernel_messages_are_known_by_their_stamp() {
        assert!(is_kernel_log_line("[   21.107039] random: crng init done"));
        assert!(is_kernel_log_line("\r[12345.000001] loop: module loaded"));
        // dmesg's output is a command's output: kept.
        let dmesg = "[    4.930000] loop: module loaded";
        assert_eq!(without_agent_log(dmesg), dmesg);
    }

    #[test]
    fn output_that_only_looks_alike_is_kept() {
        for line in [
            "2026-11-30 INFO not a time",
            "2026-11-30T05:56:03Z NOTICE not a level",
            "INFO 2026-11-30T05:56:03Z",
            "{\"at\": \"2026-11-30T05:56:03Z\"}",
            "[1.5] not a kernel stamp",
            "[   21.107039]no space",
            "[x.123456] letters",
        ] {
            assert_eq!(without_agent_log(line), line);
            assert!(!is_kernel_log_line(line), "{line}");
        }
    }
}
