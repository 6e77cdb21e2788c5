//! Least privilege: once the device is open, the daemon needs only
//! CAP_SYS_TIME (clock steps) and CAP_SYS_BOOT (the forced reboot). Every
//! other capability is dropped from the bounding, permitted, effective and
//! inheritable sets, so neither the agent nor the `reboot`/`poweroff` it
//! runs can use them. Register access needs none: `resource0` is owned by
//! root and checked by file mode only.

use std::io;

/// `CAP_SYS_BOOT` and `CAP_SYS_TIME` from linux/capability.h.
pub const CAP_SYS_BOOT: u32 = 22;
pub const CAP_SYS_TIME: u32 = 25;
/// The capabilities the daemon keeps.
pub const KEPT: [u32; 2] = [CAP_SYS_BOOT, CAP_SYS_TIME];

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The mask of `KEPT` as the kernel's two 32-bit words.
fn kept_words() -> [u32; 2] {
    let mut words = [0u32; 2];
    for cap in KEPT {
        words[(cap / 32) as usize] |= 1 << (cap % 32);
    }
    words
}

/// Highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drop every capability but [`KEPT`]. A process that has already lost the
/// others (a hardened unit) has nothing to do here and gets no error.
pub fn drop_to_kept() -> io::Result<()> {
    for cap in 0..=last_cap() {
        // Only what is still there: under a unit that already bounds the
        // set (and took CAP_SETPCAP away) there is nothing to drop.
        // SAFETY: prctl with integer arguments only.
        let present =
            unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } == 1;
        if KEPT.contains(&cap) || !present {
            continue;
        }
        // SAFETY: as above.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: a capability this kernel does not have.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and data are the layout capget(2) documents for v3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let kept = kept_words();
    for (d, mask) in data.iter_mut().zip(kept) {
        d.effective &= mask;
        d.permitted &= mask;
        d.inheritable = 0;
    }
    // SAFETY: as above; capset only lowers the sets here.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_mask_is_sys_boot_and_sys_time() {
        assert_eq!(kept_words(), [0x0240_0000, 0]);
    }
}
