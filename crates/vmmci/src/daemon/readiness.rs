//! Telling systemd how the daemon is doing: readiness (`Type=notify`) and
//! the watchdog (`WatchdogSec=`). The sd_notify protocol is one datagram,
//! so no crate is needed; without `NOTIFY_SOCKET` nothing is sent.

use std::time::{Duration, Instant};

use tracing::warn;

/// systemd's watchdog (`WatchdogSec=`): a loop that stops polling is
/// restarted. Fed at half the interval systemd asks for.
pub(super) struct Watchdog {
    every: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    pub(super) fn from_env() -> Watchdog {
        let var = |name| std::env::var(name).ok();
        Watchdog::from_vars(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// `WATCHDOG_PID`, when set, names the process meant (not a child).
    fn from_vars(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Watchdog {
        let usec = usec.and_then(|v| v.parse::<u64>().ok()).filter(|&u| u > 0);
        let ours = pid.is_none_or(|p| p.parse::<u32>() == Ok(own_pid));
        Watchdog {
            every: usec.filter(|_| ours).map(|u| Duration::from_micros(u / 2)),
            last: None,
        }
    }

    pub(super) fn feed(&mut self) {
        let Some(every) = self.every else {
            return;
        };
        if self.last.is_none_or(|t| t.elapsed() >= every) {
            notify_systemd("WATCHDOG=1");
            self.last = Some(Instant::now());
        }
    }
}

/// Tell systemd (`Type=notify`) how the service is doing; nothing without
/// `NOTIFY_SOCKET`.
pub(super) fn notify_systemd(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        let path = path.to_string_lossy();
        if let Err(e) = notify_at(&path, state) {
            warn!("cannot notify systemd at {path}: {e}");
        }
    }
}

/// The sd_notify protocol is one datagram to a path or an abstract socket
/// (`@name`), so no crate is needed.
fn notify_at(path: &str, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify_at(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn the_watchdog_is_fed_at_half_systemds_interval_and_only_when_meant() {
        let every = |usec, pid| Watchdog::from_vars(usec, pid, 42).every;
        assert_eq!(every(Some("10000000"), None), Some(Duration::from_secs(5)));
        assert_eq!(
            every(Some("10000000"), Some("42")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            every(Some("10000000"), Some("7")),
            None,
            "another process's"
        );
        assert_eq!(every(Some("0"), None), None);
        assert_eq!(every(Some("soon"), None), None);
        assert_eq!(every(None, None), None);
    }
}
