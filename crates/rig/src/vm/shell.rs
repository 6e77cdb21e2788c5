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
        let output = String::from_utf8_lossy(&data[..e - end.len() - b])
            .trim()
            .to_string();
        let status = String::from_utf8_lossy(&data[e - b..s - 1 - b]);
        let status = status.trim().parse().map_err(|_| {
            RigError::Missing(format!(
                "guest command {cmd:?}: no exit status after its output ({status:?})"
            ))
        })?;
        Ok(Ran { status, output })
    }
}
