//! End-to-end rig: real Debian kernels in QEMU (TCG) with vmd's vmmci device
//! simulated by `vmd-sim` behind QEMU's `x-pci-proxy-dev`.
//!
//! See `scripts/rig/README.md` for how to run it.

pub mod artifacts;
pub mod clock;
pub mod clock_compare;
pub mod clock_rates;
pub mod distro;
pub mod events;
pub mod figures;
pub mod guest;
pub mod image;
pub mod load;
pub mod proxy;
pub mod qemu;
pub mod rerun;
pub mod restart;
pub mod scenario;
pub mod stats;
pub mod units;
pub mod vm;
pub mod window;

/// Everything that can go wrong setting up or driving a VM.
#[derive(Debug)]
pub enum RigError {
    /// A tool or artifact is missing: the message says what to run.
    Missing(String),
    Io(String, std::io::Error),
    /// `wait_console` timed out; carries the console tail.
    Timeout {
        what: String,
        tail: String,
    },
    /// QEMU exited while we were waiting for something else.
    Exited {
        what: String,
        tail: String,
    },
    /// A guest command (`Vm::run`) exited with a non-zero status.
    Failed {
        cmd: String,
        status: i32,
        output: String,
    },
}

impl std::fmt::Display for RigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RigError::Missing(s) => write!(f, "{s}"),
            RigError::Io(s, e) => write!(f, "{s}: {e}"),
            RigError::Timeout { what, tail } => write!(
                f,
                "timed out waiting for {what}\n--- console tail ---\n{tail}\n---"
            ),
            RigError::Exited { what, tail } => {
                write!(
                    f,
                    "VM ended while waiting for {what}\n--- console tail ---\n{tail}\n---"
                )
            }
            RigError::Failed {
                cmd,
                status,
                output,
            } => write!(f, "guest command {cmd:?} exited {status}: {output}"),
        }
    }
}

impl std::error::Error for RigError {}
