//! What every timed `vmctl stop` must show: a clean end and vmd's ACK. Any
//! other stop fails the run, with the console.

use std::time::Duration;

use vmmci_rig::vm::{Ended, Outcome};
use vmmci_rig::RigError;

/// The ACK's delay when stop `which` ("stop 3", "loaded stop 3") ended
/// clean and was acknowledged; else an error with `dump()`.
pub fn acked(
    which: &str,
    ended: &Ended,
    ack: Option<Duration>,
    dump: impl Fn() -> String,
) -> Result<Duration, RigError> {
    if ended.outcome != Outcome::CleanStop {
        return Err(RigError::Missing(format!(
            "{which} ended as {:?}: {}\n{}",
            ended.outcome,
            ended.why,
            dump()
        )));
    }
    ack.ok_or_else(|| RigError::Missing(format!("no ACK seen in {which}\n{}", dump())))
}
