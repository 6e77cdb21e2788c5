//! Unit tests of the link and the config space.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

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
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut RawFd, fds.len());
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
