//! The link's wire format (QEMU 7.2, host endianness): a 16-byte header
//! `{ i32 cmd; 4 pad; u64 size }`, then `size` bytes of payload; file
//! descriptors ride as `SCM_RIGHTS` on the header.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

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

pub(super) fn close_fds(fds: &[RawFd]) {
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
