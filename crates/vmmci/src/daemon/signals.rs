//! What the loop listens to: stop (SIGTERM, SIGINT) and reload (SIGHUP).
//! The handlers only set flags; the loop looks at them between ticks and
//! sleeps in short slices so that it sees them promptly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::CliError;

/// The longest the loop sleeps before it looks at the flags again.
const SLICE: Duration = Duration::from_millis(250);

#[derive(Clone, Default)]
pub(super) struct Signals {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) hup: Arc<AtomicBool>,
}

impl Signals {
    /// Flags set by SIGTERM and SIGINT (stop) and SIGHUP (reload).
    pub(super) fn install() -> Result<Signals, CliError> {
        let signals = Signals::default();
        for (sig, flag) in [
            (SIGTERM, &signals.stop),
            (SIGINT, &signals.stop),
            (SIGHUP, &signals.hup),
        ] {
            signal_hook::flag::register(sig, Arc::clone(flag))
                .map_err(|e| CliError::Failed(format!("cannot install signal handler: {e}")))?;
        }
        Ok(signals)
    }

    pub(super) fn stop_asked(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether a reload was asked for since the last call.
    pub(super) fn take_reload(&self) -> bool {
        self.hup.swap(false, Ordering::Relaxed)
    }

    /// Sleep until `deadline`, or until a stop or a reload is asked for.
    pub(super) fn sleep_until(&self, deadline: Instant) {
        while !self.stop_asked() && !self.hup.load(Ordering::Relaxed) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(SLICE));
        }
    }
}
