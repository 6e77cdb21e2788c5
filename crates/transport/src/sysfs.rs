//! The production transport: BAR0 through `/sys/bus/pci/devices/<BDF>/resource0`.
//!
//! For an I/O BAR the kernel turns a `pread`/`pwrite` of exactly 1, 2 or 4
//! bytes at offset `off` into one `in`/`out` instruction at `start + off`
//! (`pci_resource_io` in drivers/pci/pci-sysfs.c); any other count is EINVAL.
//! Values travel in the CPU's byte order.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmmci_protocol::Register;

use crate::{RegisterIo, TransportError};

/// An open `resource0`. When the device goes away (hot-unplug, a rescan)
/// the file is dropped and reopened on the next access, so the agent
/// recovers when the device comes back.
#[derive(Debug)]
pub struct SysfsBar {
    file: Option<File>,
    path: PathBuf,
}

impl SysfsBar {
    /// Open for reading and writing (root only: the file is mode 0600).
    pub fn open(path: &Path) -> Result<SysfsBar, TransportError> {
        Ok(SysfsBar {
            file: Some(open_rw(path)?),
            path: path.to_path_buf(),
        })
    }

    /// The open file, reopened if the device went away before.
    fn file(&mut self) -> Result<&File, TransportError> {
        let file = match self.file.take() {
            Some(f) => f,
            None => open_rw(&self.path)?,
        };
        Ok(self.file.insert(file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&mut self, op: &'static str, reg: Register, e: io::Error) -> TransportError {
        let err = access_error(&self.path.display().to_string(), op, reg, e);
        if matches!(err, TransportError::Gone(_)) {
            self.file = None;
        }
        err
    }
}

fn open_rw(path: &Path) -> Result<File, TransportError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| open_error(&path.display().to_string(), e))
}

/// What a failed open of `resource0` means for the user.
fn open_error(path: &str, e: io::Error) -> TransportError {
    let path = path.to_string();
    match e.kind() {
        io::ErrorKind::PermissionDenied => TransportError::NotRoot { path },
        io::ErrorKind::NotFound => TransportError::Gone(format!("{path} does not exist")),
        _ => TransportError::NotVmmci {
            path,
            reason: e.to_string(),
        },
    }
}

/// What a failed register access means: under kernel lockdown the kernel
/// refuses writes to I/O BARs with EPERM while reads still work.
fn access_error(path: &str, op: &'static str, reg: Register, e: io::Error) -> TransportError {
    let path = path.to_string();
    match (op, e.raw_os_error()) {
        ("write", Some(libc::EPERM)) => TransportError::Lockdown { path },
        (_, Some(libc::ENODEV)) | (_, Some(libc::ENOENT)) => {
            TransportError::Gone(format!("{path}: {e}"))
        }
        _ => TransportError::Io {
            path,
            op,
            reg,
            source: e,
        },
    }
}

impl RegisterIo for SysfsBar {
    fn read(&mut self, reg: Register) -> Result<u32, TransportError> {
        let width = reg.width().bytes();
        let mut buf = [0u8; 4];
        let result = self.file()?.read_at(&mut buf[..width], reg.offset());
        let n = result.map_err(|e| self.io_error("read", reg, e))?;
        self.check_count("read", reg, n)?;
        Ok(match width {
            1 => buf[0] as u32,
            2 => u16::from_ne_bytes([buf[0], buf[1]]) as u32,
            _ => u32::from_ne_bytes(buf),
        })
    }

    fn write(&mut self, reg: Register, value: u32) -> Result<(), TransportError> {
        let width = reg.width().bytes();
        // Narrow by value, so the low bytes go out on any byte order.
        let (b1, b2, b4) = (
            [value as u8],
            (value as u16).to_ne_bytes(),
            value.to_ne_bytes(),
        );
        let buf: &[u8] = match width {
            1 => &b1,
            2 => &b2,
            _ => &b4,
        };
        let result = self.file()?.write_at(buf, reg.offset());
        let n = result.map_err(|e| self.io_error("write", reg, e))?;
        self.check_count("write", reg, n)
    }
}

impl SysfsBar {
    fn check_count(
        &self,
        op: &'static str,
        reg: Register,
        done: usize,
    ) -> Result<(), TransportError> {
        let want = reg.width().bytes();
        if done == want {
            return Ok(());
        }
        Err(TransportError::Short {
            path: self.path.display().to_string(),
            op,
            reg,
            done,
            want,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A regular file holding `regs` stands in for resource0.
    fn resource0(regs: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resource0");
        std::fs::write(&path, regs).unwrap();
        (dir, path)
    }

    /// A regular file stands in for resource0: each access must land at
    /// the register's offset with its width, nothing around it touched.
    #[test]
    fn accesses_hit_the_register_offset_with_its_width() {
        let (_dir, p) = resource0(&[0xaa; 0x40]);
        let mut bar = SysfsBar::open(&p).unwrap();
        bar.write(Register::Command, 0x0102_0304).unwrap();
        bar.write(Register::DeviceStatus, 0x7).unwrap();
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(&raw[0x14..0x18], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(raw[0x12], 0x7);
        assert_eq!(
            raw[0x13], 0xaa,
            "1-byte status write must not spill into ISR"
        );
        assert_eq!(raw[0x11], 0xaa);
        assert_eq!(bar.read(Register::Command).unwrap(), 0x0102_0304);
        assert_eq!(bar.read(Register::DeviceStatus).unwrap(), 0x7);
        assert_eq!(bar.read(Register::QueueSelect).unwrap(), 0xaaaa);
    }

    #[test]
    fn short_read_is_an_error() {
        let (_dir, p) = resource0(&[0; 0x16]);
        let mut bar = SysfsBar::open(&p).unwrap();
        let err = bar.read(Register::Command).unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Short {
                    done: 2,
                    want: 4,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = |errno| io::Error::from_raw_os_error(errno);
        let lockdown = access_error("r0", "write", Register::Command, e(libc::EPERM));
        assert!(matches!(lockdown, TransportError::Lockdown { .. }));
        assert!(lockdown.to_string().contains("lockdown=none"), "{lockdown}");
        // Reads are not refused by lockdown; an EPERM there is a plain error.
        let read = access_error("r0", "read", Register::Command, e(libc::EPERM));
        assert!(
            matches!(read, TransportError::Io { op: "read", .. }),
            "{read}"
        );
        let gone = access_error("r0", "read", Register::Command, e(libc::ENODEV));
        assert!(matches!(gone, TransportError::Gone(_)));
        let not_root = open_error("r0", e(libc::EACCES));
        assert!(not_root.to_string().contains("run as root"), "{not_root}");
    }

    #[test]
    fn a_vanished_device_is_reopened_when_it_returns() {
        let (_dir, p) = resource0(&[0; 0x28]);
        let mut bar = SysfsBar::open(&p).unwrap();
        bar.file = None; // as after an ENODEV
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(
            bar.read(Register::Command),
            Err(TransportError::Gone(_))
        ));
        let mut regs = [0u8; 0x28];
        regs[0x14..0x18].copy_from_slice(&2u32.to_ne_bytes());
        std::fs::write(&p, regs).unwrap();
        assert_eq!(bar.read(Register::Command).unwrap(), 2);
    }

    #[test]
    fn missing_file_is_gone() {
        let err = SysfsBar::open(Path::new("/nonexistent/resource0")).unwrap_err();
        assert!(matches!(err, TransportError::Gone(_)), "{err}");
    }
}
