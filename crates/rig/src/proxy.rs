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

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmmci_protocol::pci;

pub const CMD_SYNC_SYSMEM: i32 = 0;
pub const CMD_RET: i32 = 1;
pub const CMD_PCI_CFGWRITE: i32 = 2;
pub const CMD_PCI_CFGREAD: i32 = 3;
pub const CMD_BAR_WRITE: i32 = 4;
pub const CMD_BAR_READ: i32 = 5;
pub const CMD_SET_IRQFD: i32 = 6;
pub const CMD_DEVICE_RESET: i32 = 7;

pub const HEADER_LEN: usize = 16;
/// Largest payload QEMU sends (SyncSysmemMsg: 3 arrays of 8 u64).
pub const MAX_PAYLOAD: usize = 192;
const MAX_FDS: usize = 8;

/// What sits behind BAR0.
pub trait BarDevice: Send {
    /// `offset` within BAR0, `size` 1/2/4 (or 8).
    fn bar_read(&mut self, offset: u64, size: u8) -> u32;
    fn bar_write(&mut self, offset: u64, size: u8, value: u32);
}

/// PCI config space of vmd's vmmci device (type 0 header, 256 bytes).
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; 256],
    wmask: [u8; 256],
}

const BAR0: usize = 0x10;
const COMMAND: usize = 0x04;

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigSpace {
    pub fn new() -> ConfigSpace {
        let mut c = ConfigSpace {
            bytes: [0; 256],
            wmask: [0; 256],
        };
        c.put16(0x00, pci::VENDOR_ID);
        c.put16(0x02, pci::DEVICE_ID);
        c.bytes[0x08] = pci::REVISION;
        c.bytes[0x09] = 0; // prog-if
        c.bytes[0x0a] = pci::SUBCLASS;
        c.bytes[0x0b] = pci::CLASS;
        c.bytes[0x0e] = 0; // header type 0, single function
        c.put32(BAR0 as u32, 0x1); // I/O space indicator
        c.put16(0x2c, pci::SUBSYSTEM_VENDOR_ID);
        c.put16(0x2e, pci::SUBSYSTEM_DEVICE_ID);
        c.bytes[0x3d] = 1; // INTA
                           // Writable bits: command (IO, MEM, MASTER, PARITY, SERR, INTX_DISABLE),
                           // BAR0 address bits above the size, interrupt line.
        c.wmask[COMMAND] = 0x47;
        c.wmask[COMMAND + 1] = 0x05;
        let bar_mask = !(pci::BAR0_SIZE - 1) & !0x3;
        c.wmask[BAR0..BAR0 + 4].copy_from_slice(&bar_mask.to_le_bytes());
        c.wmask[0x3c] = 0xff;
        c
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(&mut self, off: u32, v: u32) {
        let off = off as usize;
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Read `len` (1, 2, 4) bytes at `addr`; outside the header: 0.
    pub fn read(&self, addr: u32, len: u32) -> u32 {
        let mut v = 0u32;
        for i in 0..len.min(4) {
            let a = (addr + i) as usize;
            let b = if a < 256 { self.bytes[a] } else { 0 };
            v |= (b as u32) << (8 * i);
        }
        v
    }

    pub fn write(&mut self, addr: u32, val: u32, len: u32) {
        for i in 0..len.min(4) {
            let a = (addr + i) as usize;
            if a >= 256 {
                break;
            }
            let b = (val >> (8 * i)) as u8;
            self.bytes[a] = (self.bytes[a] & !self.wmask[a]) | (b & self.wmask[a]);
        }
    }

    /// The I/O port base the guest programmed in BAR0.
    pub fn bar0_base(&self) -> u64 {
        (self.read(BAR0 as u32, 4) & !0x3) as u64
    }

    pub fn command(&self) -> u16 {
        self.read(COMMAND as u32, 2) as u16
    }

    /// Power-on state.
    pub fn reset(&mut self) {
        *self = ConfigSpace::new();
    }
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

/// One message as received.
#[derive(Debug)]
pub struct Message {
    pub cmd: i32,
    pub payload: Vec<u8>,
    pub fds: Vec<RawFd>,
}

fn recv_with_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<RawFd>) -> io::Result<usize> {
    let mut cmsg = [0u64; 16]; // 128 bytes, aligned: room for 8 fds
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all pointers refer to live local buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
    let n = loop {
        // SAFETY: valid fd and msghdr built above.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break n as usize;
    };
    // SAFETY: walking the control buffer the kernel just filled.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(std::ptr::read_unaligned(data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(n)
}

/// Read one message. `Ok(None)` on a clean EOF at a message boundary.
pub fn recv_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; HEADER_LEN];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < HEADER_LEN {
        let n = recv_with_fds(sock, &mut hdr[got..], &mut fds)?;
        if n == 0 {
            close_fds(&fds);
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF inside a message header",
            ));
        }
        got += n;
    }
    let cmd = i32::from_ne_bytes(hdr[0..4].try_into().unwrap());
    let size = u64::from_ne_bytes(hdr[8..16].try_into().unwrap());
    if size as usize > MAX_PAYLOAD {
        close_fds(&fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message cmd {cmd} with payload {size} > {MAX_PAYLOAD}"),
        ));
    }
    let mut payload = vec![0u8; size as usize];
    let mut got = 0;
    while got < payload.len() {
        let n = recv_with_fds(sock, &mut payload[got..], &mut fds)?;
        if n == 0 {
            close_fds(&fds);
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF inside a message payload",
            ));
        }
        got += n;
    }
    if fds.len() > MAX_FDS {
        // QEMU never does this; do not leak them either way.
        close_fds(&fds);
        fds.clear();
    }
    Ok(Some(Message { cmd, payload, fds }))
}

fn close_fds(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: we own every fd received via SCM_RIGHTS.
        unsafe { libc::close(fd) };
    }
}

/// Encode a message (no fds).
pub fn encode(cmd: i32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&cmd.to_ne_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u64).to_ne_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn encode_ret(value: u64) -> Vec<u8> {
    encode(CMD_RET, &value.to_ne_bytes())
}

/// Payload of PCI_CFGREAD/WRITE: `{ u32 addr; u32 val; i32 len }`.
pub fn cfg_payload(addr: u32, val: u32, len: i32) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&addr.to_ne_bytes());
    p.extend_from_slice(&val.to_ne_bytes());
    p.extend_from_slice(&len.to_ne_bytes());
    p
}

/// Payload of BAR_READ/WRITE: `{ u64 addr; u64 val; u32 size; u8 memory; pad }`.
pub fn bar_payload(addr: u64, val: u64, size: u32, memory: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(24);
    p.extend_from_slice(&addr.to_ne_bytes());
    p.extend_from_slice(&val.to_ne_bytes());
    p.extend_from_slice(&size.to_ne_bytes());
    p.push(memory as u8);
    p.extend_from_slice(&[0; 3]);
    p
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

/// Read a RET reply (test/client side).
pub fn read_ret(sock: &mut UnixStream) -> io::Result<u64> {
    let mut hdr = [0u8; HEADER_LEN];
    sock.read_exact(&mut hdr)?;
    let cmd = i32::from_ne_bytes(hdr[0..4].try_into().unwrap());
    let size = u64::from_ne_bytes(hdr[8..16].try_into().unwrap());
    if cmd != CMD_RET || size != 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad reply cmd {cmd} size {size}"),
        ));
    }
    let mut v = [0u8; 8];
    sock.read_exact(&mut v)?;
    Ok(u64::from_ne_bytes(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<(bool, u64, u8, u32)>>>;
    #[derive(Default, Clone)]
    struct Recorder(Log);
    impl BarDevice for Recorder {
        fn bar_read(&mut self, offset: u64, size: u8) -> u32 {
            self.0.lock().unwrap().push((false, offset, size, 0));
            0x1234_0000 | offset as u32
        }
        fn bar_write(&mut self, offset: u64, size: u8, value: u32) {
            self.0.lock().unwrap().push((true, offset, size, value));
        }
    }

    #[test]
    fn identity() {
        let c = ConfigSpace::new();
        assert_eq!(c.read(0, 2), 0x0b5d);
        assert_eq!(c.read(2, 2), 0x0777);
        assert_eq!(c.read(0, 4), 0x0777_0b5d);
        assert_eq!(c.read(0x08, 4), 0x0780_0000); // rev 0, prog-if 0, class 07/80
        assert_eq!(c.read(0x0a, 2), 0x0780);
        assert_eq!(c.read(0x0e, 1), 0);
        assert_eq!(c.read(0x2c, 4), 0xffff_0b5d);
        assert_eq!(c.read(0x3d, 1), 1);
        assert_eq!(c.read(0x06, 2), 0); // no capability list
        assert_eq!(c.read(0x34, 1), 0);
        assert_eq!(c.read(0x10, 4), 1);
        for bar in 1..6 {
            assert_eq!(c.read(0x10 + 4 * bar, 4), 0);
        }
        assert_eq!(c.read(0x30, 4), 0); // no ROM
    }

    #[test]
    fn bar_sizing_like_hardware() {
        let mut c = ConfigSpace::new();
        // What QEMU's probe does for BAR0..BAR5 and 0x28.
        for i in 0..7u32 {
            let a = 0x10 + 4 * i;
            let orig = c.read(a, 4);
            c.write(a, 0xffff_ffff, 4);
            let new = c.read(a, 4);
            c.write(a, orig, 4);
            let size = (!(new & 0xffff_fff0)).wrapping_add(1);
            if i == 0 {
                assert_eq!(new, !(0x1000 - 1) | 1);
                assert_eq!(size, 0x1000);
                assert_eq!(new & 1, 1, "I/O BAR");
            } else {
                assert_eq!(size, 0, "BAR{i} absent");
            }
            assert_eq!(c.read(a, 4), orig);
        }
        // Programming a base.
        c.write(0x10, 0xc000, 4);
        assert_eq!(c.read(0x10, 4), 0xc001);
        assert_eq!(c.bar0_base(), 0xc000);
        // Unaligned bits are dropped.
        c.write(0x10, 0xc123, 4);
        assert_eq!(c.bar0_base(), 0xc000);
        // Byte/word writes.
        c.write(0x11, 0xd0, 1);
        assert_eq!(c.bar0_base(), 0xd000);
    }

    #[test]
    fn command_register_and_readonly_fields() {
        let mut c = ConfigSpace::new();
        c.write(0x04, 0xffff, 2);
        assert_eq!(c.command(), 0x0547);
        c.write(0x04, 0x0001, 2);
        assert_eq!(c.command(), 1);
        c.write(0x00, 0xffff_ffff, 4);
        assert_eq!(c.read(0, 4), 0x0777_0b5d);
        c.write(0x3c, 0x0b, 1);
        assert_eq!(c.read(0x3c, 2), 0x010b);
        c.reset();
        assert_eq!(c.read(0x3c, 1), 0);
        assert_eq!(c.command(), 0);
    }

    fn send(s: &mut UnixStream, cmd: i32, payload: &[u8]) {
        s.write_all(&encode(cmd, payload)).unwrap();
    }

    fn send_fds(s: &UnixStream, cmd: i32, payload: &[u8], fds: &[RawFd]) {
        let buf = encode(cmd, payload);
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut cmsg = [0u64; 16];
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = libc::CMSG_SPACE((fds.len() * 4) as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c) as *mut RawFd,
                fds.len(),
            );
            assert_eq!(libc::sendmsg(s.as_raw_fd(), &msg, 0), buf.len() as isize);
        }
    }

    fn open_fd_count() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn link_round_trip() {
        let (mut qemu, dev_sock) = UnixStream::pair().unwrap();
        let rec = Recorder::default();
        let log = rec.0.clone();
        let t = std::thread::spawn(move || {
            let mut dev = ProxyDevice::new(rec);
            serve_owned(dev_sock, &mut dev).unwrap();
            dev.stats
        });
        // irqfd + sysmem with fds: no reply, fds closed.
        let before = open_fd_count();
        let (a, b) = UnixStream::pair().unwrap();
        send_fds(&qemu, CMD_SET_IRQFD, &[], &[a.as_raw_fd(), b.as_raw_fd()]);
        send_fds(&qemu, CMD_SYNC_SYSMEM, &[0u8; 192], &[a.as_raw_fd()]);
        drop((a, b));
        // Config.
        send(&mut qemu, CMD_PCI_CFGREAD, &cfg_payload(0, 0, 2));
        assert_eq!(read_ret(&mut qemu).unwrap(), 0x0b5d);
        send(
            &mut qemu,
            CMD_PCI_CFGWRITE,
            &cfg_payload(0x10, 0xffff_ffff, 4),
        );
        assert_eq!(read_ret(&mut qemu).unwrap(), 0);
        send(&mut qemu, CMD_PCI_CFGREAD, &cfg_payload(0x10, 0, 4));
        assert_eq!(read_ret(&mut qemu).unwrap(), 0xffff_f001);
        send(&mut qemu, CMD_PCI_CFGWRITE, &cfg_payload(0x10, 0xc000, 4));
        read_ret(&mut qemu).unwrap();
        // BAR access at absolute addresses.
        send(&mut qemu, CMD_BAR_READ, &bar_payload(0xc014, 0, 4, false));
        assert_eq!(read_ret(&mut qemu).unwrap(), 0x1234_0014);
        send(&mut qemu, CMD_BAR_WRITE, &bar_payload(0xc012, 7, 1, false));
        assert_eq!(read_ret(&mut qemu).unwrap(), 0);
        // Outside the BAR: not forwarded.
        send(&mut qemu, CMD_BAR_READ, &bar_payload(0xd000, 0, 4, false));
        assert_eq!(read_ret(&mut qemu).unwrap(), 0xffff_ffff);
        send(&mut qemu, CMD_DEVICE_RESET, &[]);
        assert_eq!(read_ret(&mut qemu).unwrap(), 0);
        send(&mut qemu, CMD_PCI_CFGREAD, &cfg_payload(0x10, 0, 4));
        assert_eq!(read_ret(&mut qemu).unwrap(), 1);
        drop(qemu);
        let stats = t.join().unwrap();
        assert_eq!(stats.fds_closed, 3);
        assert_eq!(stats.out_of_bar, 1);
        assert_eq!(
            *log.lock().unwrap(),
            vec![(false, 0x14, 4, 0), (true, 0x12, 1, 7)]
        );
        assert!(open_fd_count() <= before, "received fds leaked");
    }
}
