//! How the agent reaches the vmmci device.
//!
//! [`RegisterIo`] is the one interface between the agent and a device: the
//! production implementation is [`sysfs::SysfsBar`] (the PCI `resource0`
//! file), tests use the vmd simulator. Accesses go by [`Register`], never by
//! raw offset, so an implementation cannot break vmd's access rule (one
//! access at the register's own offset, of its own width).

pub mod discover;
pub mod sysfs;

use vmmci_protocol::Register;

/// Register access to a vmmci device.
pub trait RegisterIo {
    /// One read of `reg` at its natural width, zero-extended.
    fn read(&mut self, reg: Register) -> Result<u32, TransportError>;
    /// One write of `reg` at its natural width (upper bits of `value` beyond
    /// the width are dropped).
    fn write(&mut self, reg: Register, value: u32) -> Result<(), TransportError>;
}

impl<T: RegisterIo + ?Sized> RegisterIo for &mut T {
    fn read(&mut self, reg: Register) -> Result<u32, TransportError> {
        (**self).read(reg)
    }
    fn write(&mut self, reg: Register, value: u32) -> Result<(), TransportError> {
        (**self).write(reg, value)
    }
}

impl<T: RegisterIo + ?Sized> RegisterIo for Box<T> {
    fn read(&mut self, reg: Register) -> Result<u32, TransportError> {
        (**self).read(reg)
    }
    fn write(&mut self, reg: Register, value: u32) -> Result<(), TransportError> {
        (**self).write(reg, value)
    }
}

/// Why the device could not be reached. Each variant's message says what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "no vmmci device (PCI 0b5d:0777) under {0}: this is not an OpenBSD vmd guest, or vmd is too old to offer vmmci"
    )]
    NoDevice(String),
    #[error("{path}: not a vmmci device ({reason})")]
    NotVmmci { path: String, reason: String },
    #[error("{path}: permission denied; run as root (resource0 is mode 0600)")]
    NotRoot { path: String },
    #[error(
        "{path}: the kernel refused a register write (EPERM) while reads work: kernel lockdown is on (Secure Boot?). \
         Boot without lockdown (lockdown=none, or Secure Boot off) to let vmmci drive the device"
    )]
    Lockdown { path: String },
    #[error(
        "{path}: BAR0 is not an I/O-port BAR; vmd's vmmci has one I/O BAR, so this is not vmd's device"
    )]
    NotIoBar { path: String },
    #[error(
        "{path}: I/O decode is off and could not be enabled ({reason}); write 1 to the device's 'enable' file as root"
    )]
    IoDecodeOff { path: String, reason: String },
    #[error("{path}: {op} of {reg} failed: {source}")]
    Io {
        path: String,
        op: &'static str,
        reg: Register,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: short {op} of {reg}: {done} of {want} bytes")]
    Short {
        path: String,
        op: &'static str,
        reg: Register,
        done: usize,
        want: usize,
    },
    #[error("device is gone: {0}")]
    Gone(String),
}
