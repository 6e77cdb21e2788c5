//! The device side of QEMU's multi-process link (`-device x-pci-proxy-dev`).
//!
//! QEMU forwards every config-space and BAR access of the proxy device over a
//! connected UNIX stream socket. Wire format (QEMU 7.2, host endianness):
//! a 16-byte header `{ i32 cmd; 4 pad; u64 size }`, then `size` bytes of
//! payload; file descriptors ride as `SCM_RIGHTS` on the header. CFGREAD,
//! CFGWRITE, BAR_READ, BAR_WRITE and DEVICE_RESET wait for a RET carrying an
//! 8-byte value; SYNC_SYSMEM and SET_IRQFD get no reply.
//!
//! Config space is vmd's vmmci (see `docs/protocol.md`, "The device"); BAR0 is
//! an I/O BAR whose accesses go to a [`BarDevice`] at `addr - bar_base`.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;

use vmmci_protocol::pci;

mod config;
#[cfg(test)]
mod tests;
mod wire;

pub use config::ConfigSpace;
pub use wire::*;

/// What sits behind BAR0.
pub trait BarDevice: Send {
    /// `offset` within BAR0, `size` 1/2/4 (or 8).
    fn bar_read(&mut self, offset: u64, size: u8) -> u32;
    fn bar_write(&mut self, offset: u64, size: u8, value: u32);
}

/// Counters, for tests and logs.
#[derive(Clone, Debug, Default)]
pub struct ProxyStats {
    pub cfg_reads: u64,
    pub cfg_writes: u64,
    pub bar_reads: u64,
    pub bar_writes: u64,
    pub out_of_bar: u64,
    pub fds_closed: u64,
    pub sync_sysmem: u64,
    pub resets: u64,
}

/// The device state the link needs between messages.
pub struct ProxyDevice<D: BarDevice> {
    pub config: ConfigSpace,
    pub device: D,
    pub stats: ProxyStats,
    /// Diagnostics (out-of-range accesses, malformed messages), bounded.
    pub notes: Vec<String>,
}

impl<D: BarDevice> ProxyDevice<D> {
    pub fn new(device: D) -> Self {
        ProxyDevice {
            config: ConfigSpace::new(),
            device,
            stats: ProxyStats::default(),
            notes: Vec::new(),
        }
    }

    fn note(&mut self, s: String) {
        if self.notes.len() < 1000 {
            self.notes.push(s);
        }
    }

    /// Handle one message; returns the reply value if the command takes one.
    pub fn handle(&mut self, msg: &Message) -> Option<u64> {
        let p = &msg.payload;
        let u32_at = |o: usize| {
            p.get(o..o + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        };
        let u64_at = |o: usize| {
            p.get(o..o + 8)
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
        };
        match msg.cmd {
            CMD_SYNC_SYSMEM | CMD_SET_IRQFD => {
                if msg.cmd == CMD_SYNC_SYSMEM {
                    self.stats.sync_sysmem += 1;
                }
                None
            }
            CMD_PCI_CFGREAD => {
                self.stats.cfg_reads += 1;
                let (Some(addr), Some(len)) = (u32_at(0), u32_at(8)) else {
                    self.note(format!("short CFGREAD payload {}", p.len()));
                    return Some(u64::MAX);
                };
                Some(self.config.read(addr, len) as u64)
            }
            CMD_PCI_CFGWRITE => {
                self.stats.cfg_writes += 1;
                let (Some(addr), Some(val), Some(len)) = (u32_at(0), u32_at(4), u32_at(8)) else {
                    self.note(format!("short CFGWRITE payload {}", p.len()));
                    return Some(0);
                };
                self.config.write(addr, val, len);
                Some(0)
            }
            CMD_BAR_READ | CMD_BAR_WRITE => {
                let write = msg.cmd == CMD_BAR_WRITE;
                let (Some(addr), Some(val), Some(size)) = (u64_at(0), u64_at(8), u32_at(16)) else {
                    self.note(format!("short BAR payload {}", p.len()));
                    return Some(0);
                };
                let memory = p.get(20).copied().unwrap_or(0) != 0;
                let base = self.config.bar0_base();
                let off = addr.wrapping_sub(base);
                if memory || off >= pci::BAR0_SIZE as u64 || base == 0 {
                    self.stats.out_of_bar += 1;
                    self.note(format!(
                        "BAR {} outside BAR0: addr {addr:#x} base {base:#x} memory {memory}",
                        if write { "write" } else { "read" }
                    ));
                    return Some(if write { 0 } else { u64::from(u32::MAX) });
                }
                if write {
                    self.stats.bar_writes += 1;
                    self.device.bar_write(off, size as u8, val as u32);
                    Some(0)
                } else {
                    self.stats.bar_reads += 1;
                    Some(self.device.bar_read(off, size as u8) as u64)
                }
            }
            CMD_DEVICE_RESET => {
                // A PCI reset clears config space; vmd's device has no real
                // reset, so the device model itself is left alone.
                self.stats.resets += 1;
                self.config.reset();
                Some(0)
            }
            other => {
                self.note(format!("unknown command {other}, size {}", p.len()));
                None
            }
        }
    }
}

/// Serve the link until QEMU closes it (`Ok` on EOF).
pub fn serve_owned<D: BarDevice>(sock: UnixStream, dev: &mut ProxyDevice<D>) -> io::Result<()> {
    let mut w = sock.try_clone()?;
    loop {
        let Some(msg) = recv_message(&sock)? else {
            return Ok(());
        };
        close_fds(&msg.fds);
        dev.stats.fds_closed += msg.fds.len() as u64;
        if let Some(v) = dev.handle(&msg) {
            w.write_all(&encode_ret(v))?;
        }
    }
}
