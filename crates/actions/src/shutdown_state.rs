//! Whether the guest is already shutting down (its own reboot or power-off
//! under way), so that a stop from the host is acknowledged but no second
//! power command disturbs it: sysvinit's `reboot` in runlevel 0 or 6 resets
//! the machine at once, without unmounting anything. systemd refuses a
//! second shutdown transaction by itself, and busybox init ignores one.

use std::path::{Path, PathBuf};

/// sysvinit's record of the current runlevel.
pub const UTMP: &str = "/run/utmp";
/// OpenRC's runlevel being entered (`reboot`, `shutdown` while going down).
pub const OPENRC_SOFTLEVEL: &str = "/run/openrc/softlevel";

/// `struct utmp` on Linux x86_64 and aarch64 (glibc and musl agree).
const UTMP_RECORD: usize = 384;
/// `ut_type` of the runlevel record; its `ut_pid` holds the runlevel
/// character (and the previous one times 256).
const RUN_LVL: i16 = 1;

/// Where the init systems say where they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownProbe {
    pub utmp: PathBuf,
    pub openrc_softlevel: PathBuf,
}

impl Default for ShutdownProbe {
    fn default() -> Self {
        ShutdownProbe {
            utmp: PathBuf::from(UTMP),
            openrc_softlevel: PathBuf::from(OPENRC_SOFTLEVEL),
        }
    }
}

impl ShutdownProbe {
    /// Why the guest is going down, if it is.
    pub fn under_way(&self) -> Option<String> {
        if let Some(level @ (b'0' | b'6')) = utmp_runlevel(&self.utmp) {
            return Some(format!("runlevel {}", level as char));
        }
        let soft = std::fs::read_to_string(&self.openrc_softlevel).ok()?;
        let soft = soft.trim();
        matches!(soft, "reboot" | "shutdown").then(|| format!("OpenRC runlevel {soft}"))
    }
}

/// The runlevel of the last runlevel record in a utmp file.
fn utmp_runlevel(path: &Path) -> Option<u8> {
    let bytes = std::fs::read(path).ok()?;
    bytes
        .chunks_exact(UTMP_RECORD)
        .rfind(|r| i16::from_ne_bytes([r[0], r[1]]) == RUN_LVL)
        .map(|r| i32::from_ne_bytes([r[4], r[5], r[6], r[7]]).to_le_bytes()[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ut_type: i16, pid: i32) -> Vec<u8> {
        let mut r = vec![0u8; UTMP_RECORD];
        r[0..2].copy_from_slice(&ut_type.to_ne_bytes());
        r[4..8].copy_from_slice(&pid.to_ne_bytes());
        r
    }

    fn probe(dir: &Path) -> ShutdownProbe {
        ShutdownProbe {
            utmp: dir.join("utmp"),
            openrc_softlevel: dir.join("softlevel"),
        }
    }

    #[test]
    fn sysvinit_runlevel_0_or_6_is_a_shutdown_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let p = probe(dir.path());
        assert_eq!(p.under_way(), None, "no files: not shutting down");
        // BOOT_TIME, then runlevel 2 (previous N), then a login (USER_PROCESS).
        let mut utmp = record(2, 0);
        utmp.extend(record(RUN_LVL, i32::from(b'2') + 256 * i32::from(b'N')));
        utmp.extend(record(7, 1234));
        std::fs::write(&p.utmp, &utmp).unwrap();
        assert_eq!(p.under_way(), None, "runlevel 2");
        utmp.extend(record(RUN_LVL, i32::from(b'6') + 256 * i32::from(b'2')));
        std::fs::write(&p.utmp, &utmp).unwrap();
        assert_eq!(p.under_way().as_deref(), Some("runlevel 6"));
    }

    #[test]
    fn openrc_going_down_is_a_shutdown_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let p = probe(dir.path());
        std::fs::write(&p.openrc_softlevel, "default\n").unwrap();
        assert_eq!(p.under_way(), None);
        std::fs::write(&p.openrc_softlevel, "reboot\n").unwrap();
        assert_eq!(p.under_way().as_deref(), Some("OpenRC runlevel reboot"));
        std::fs::write(&p.openrc_softlevel, "shutdown").unwrap();
        assert_eq!(p.under_way().as_deref(), Some("OpenRC runlevel shutdown"));
    }
}
