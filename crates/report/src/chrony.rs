//! Every time sample to chronyd's SOCK refclock, so chrony can use the host
//! as a reference clock with no network:
//!
//! ```text
//! refclock SOCK /run/chrony.vmmci.sock refid VMM poll 2 precision 1e-6
//! ```
//!
//! chronyd creates the socket; the agent sends one datagram per sample,
//! chrony's `struct sock_sample` (refclock_sock.c) in native byte order:
//! the guest clock at the sample (`struct timeval`), the offset true − guest
//! in seconds (the host is "true" here), not a pulse, no leap second, and
//! the magic "SOCK".

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use vmmci_agent::DriftPoint;

/// `SOCK_MAGIC` in refclock_sock.c.
pub const SOCK_MAGIC: i32 = 0x534f_434b;
/// sizeof(struct sock_sample) on 64-bit Linux: timeval 16, double 8, 4 ints.
pub const SAMPLE_LEN: usize = 40;

/// One sample as chrony reads it.
pub fn encode(point: &DriftPoint) -> [u8; SAMPLE_LEN] {
    let sec = point.at_ns.div_euclid(1_000_000_000);
    let usec = point.at_ns.rem_euclid(1_000_000_000) / 1_000;
    let offset = point.offset_ns as f64 * 1e-9;
    let mut b = [0u8; SAMPLE_LEN];
    b[0..8].copy_from_slice(&sec.to_ne_bytes());
    b[8..16].copy_from_slice(&usec.to_ne_bytes());
    b[16..24].copy_from_slice(&offset.to_ne_bytes());
    // pulse (0), leap (0) and padding (0) stay zero.
    b[36..40].copy_from_slice(&SOCK_MAGIC.to_ne_bytes());
    b
}

/// The sending side of the refclock socket.
pub struct ChronySock {
    path: PathBuf,
    sock: Option<UnixDatagram>,
    /// The last send's result, as said in status (changes are logged once).
    state: String,
}

impl ChronySock {
    pub fn new(path: &Path) -> ChronySock {
        ChronySock {
            path: path.to_path_buf(),
            sock: None,
            state: format!("configured for {}, nothing sent yet", path.display()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last sample reached a listening chronyd.
    pub fn listening(&self) -> bool {
        self.state.starts_with("sending")
    }

    /// No chronyd has the socket (the usual case without chrony): nothing
    /// to warn about.
    pub fn absent(&self) -> bool {
        self.state.contains(" is not there: ")
    }

    /// For status: how the feed is doing.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// Send one sample. Returns `Some(new state)` when the state changed
    /// (chronyd went away or came back), for the caller to log.
    pub fn send(&mut self, point: &DriftPoint) -> Option<String> {
        let result = self.try_send(&encode(point));
        let state = match result {
            Ok(()) => format!("sending to {}", self.path.display()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                format!(
                    "{} is not there: is chronyd running with `refclock SOCK {}`?",
                    self.path.display(),
                    self.path.display()
                )
            }
            Err(e) => format!("cannot send to {}: {e}", self.path.display()),
        };
        if state == self.state {
            return None;
        }
        self.state = state.clone();
        Some(state)
    }

    fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let sock = match self.sock.take() {
            Some(s) => s,
            None => UnixDatagram::unbound()?,
        };
        let sent = sock.send_to(bytes, &self.path);
        self.sock = Some(sock);
        sent.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_chronys_sock_sample() {
        let p = DriftPoint {
            at_ns: 1_900_000_000_250_000_999,
            offset_ns: -1_500_000,
            round_trip_ns: 40_000,
            error_bound_ns: 20_500,
        };
        let b = encode(&p);
        let word = |r: std::ops::Range<usize>| i64::from_ne_bytes(b[r].try_into().unwrap());
        assert_eq!(word(0..8), 1_900_000_000);
        assert_eq!(word(8..16), 250_000);
        assert_eq!(f64::from_ne_bytes(b[16..24].try_into().unwrap()), -0.0015);
        assert_eq!(&b[24..36], &[0; 12]);
        assert_eq!(
            i32::from_ne_bytes(b[36..40].try_into().unwrap()),
            SOCK_MAGIC
        );
    }

    #[test]
    fn sends_to_a_listening_socket_and_says_when_none_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chrony.vmmci.sock");
        let mut feed = ChronySock::new(&path);
        let p = DriftPoint {
            at_ns: 1_900_000_000_000_000_000,
            offset_ns: 42_000,
            round_trip_ns: 1,
            error_bound_ns: 501,
        };
        let changed = feed.send(&p).expect("state changes on first send");
        assert!(changed.contains("is chronyd running"), "{changed}");
        assert_eq!(feed.send(&p), None, "said once");

        let chronyd = UnixDatagram::bind(&path).unwrap();
        assert!(feed.send(&p).unwrap().starts_with("sending"));
        let mut buf = [0u8; 64];
        let n = chronyd.recv(&mut buf).unwrap();
        assert_eq!(n, SAMPLE_LEN);
        assert_eq!(&buf[..n], &encode(&p));
    }
}
