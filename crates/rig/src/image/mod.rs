//! Guest images: a busybox initramfs (newc cpio, written here, uncompressed)
//! with the kernel's virtio-blk/ext4 modules, the agent and the clock probe,
//! and a small ext4 data disk made and checked with e2fsprogs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::RigError;

mod cpio;
mod disk;
mod kernel;
#[cfg(test)]
mod tests;

pub use cpio::Cpio;
pub use disk::{fsck, make_data_disk, read_file, superblock_state, FsckReport};
pub use kernel::{Kernel, GUEST_MODULES};

/// What to put in the guest.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// The static `vmmci` binary; `None` builds the no-agent variant.
    pub agent: Option<PathBuf>,
    /// Arguments of the supervised daemon.
    pub agent_args: String,
    /// The static `rig-clockprobe` binary.
    pub clockprobe: Option<PathBuf>,
    /// A static busybox (Debian's busybox-static: /bin/busybox).
    pub busybox: PathBuf,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            agent: None,
            agent_args: "daemon --poll-interval 100ms".into(),
            clockprobe: None,
            busybox: PathBuf::from("/bin/busybox"),
        }
    }
}

pub const RC_INIT: &str = r#"#!/bin/sh
# Rig guest: system init (busybox init ::sysinit).
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp /data
mount -t tmpfs -o mode=0755 run /run
mount -t tmpfs tmp /tmp
hostname rig
for m in $(cat /etc/rig-modules); do
    insmod /lib/modules/$m.ko || echo "RIG: insmod $m failed"
done
if grep -q 'rig\.data' /proc/cmdline; then
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    if mount -t ext4 /dev/vda /data; then
        echo "RIG: data mounted"
    else
        echo "RIG: data mount FAILED"
    fi
fi
echo "RIG: kernel $(uname -r)"
echo "RIG: ready"
"#;

pub const RC_SHUTDOWN: &str = r#"#!/bin/sh
# Rig guest: shutdown sequence (busybox init ::shutdown, for halt, poweroff
# and reboot alike), as a distro's busybox rc.shutdown. The agent is not
# stopped first: it lives until the kill of all processes, acknowledging.
# Nothing is written to vmd: the kernel's final halt (HLT with interrupts
# off) ends the VM on vmd, and a reboot's reset restarts it.
echo "RIG: shutdown begin"
kill -s TERM -1 2>/dev/null
sleep 0.3
kill -s KILL -1 2>/dev/null
sync
if grep -q ' /data ' /proc/mounts; then
    umount /data || mount -o remount,ro /data
fi
sync
if grep -q ' /data ' /proc/mounts && ! grep -q ' /data ext4 ro' /proc/mounts; then
    echo "RIG: fs NOT clean"
else
    echo "RIG: fs clean"
fi
echo "RIG: shutdown end"
"#;

pub const PROFILE: &str = r#"export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PS1='rig# '
cd /
"#;

fn inittab(agent: Option<&str>) -> String {
    let mut s = String::from("::sysinit:/etc/rc.init\n");
    if let Some(args) = agent {
        s.push_str(&format!("::respawn:/usr/sbin/vmmci {args}\n"));
    }
    // A login shell (leading '-') reads /etc/profile.
    s.push_str("ttyS0::respawn:-/bin/sh\n");
    s.push_str("::shutdown:/etc/rc.shutdown\n");
    s.push_str("::ctrlaltdel:/sbin/reboot\n");
    s
}

fn read_bin(p: &Path, what: &str) -> Result<Vec<u8>, RigError> {
    fs::read(p).map_err(|e| RigError::Io(format!("{what} {}", p.display()), e))
}

fn check_static(data: &[u8], p: &Path) -> Result<(), RigError> {
    if has_interp(data) {
        return Err(RigError::Missing(format!(
            "{} is dynamically linked; the guest has no libc (build with -C target-feature=+crt-static)",
            p.display()
        )));
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header.
fn has_interp(d: &[u8]) -> bool {
    let u16_at = |o: usize| {
        d.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        d.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        d.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if d.len() < 64 || &d[..4] != b"\x7fELF" || d[4] != 2 {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(3))
}

/// Build the initramfs for `kernel` and write it to `out`.
pub fn build_initramfs(kernel: &Kernel, opts: &ImageOptions, out: &Path) -> Result<(), RigError> {
    let mut c = Cpio::new();
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "data",
        "root",
        "lib/modules",
    ] {
        c.dir(d);
    }
    c.chardev("dev/console", 0o600, 5, 1);
    c.chardev("dev/null", 0o666, 1, 3);
    c.chardev("dev/ttyS0", 0o600, 4, 64);

    let bb = read_bin(&opts.busybox, "busybox")?;
    check_static(&bb, &opts.busybox)?;
    c.file("bin/busybox", 0o755, &bb);
    let list = Command::new(&opts.busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| RigError::Io(format!("{} --list-full", opts.busybox.display()), e))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        c.symlink(applet, "/bin/busybox");
    }
    c.symlink("init", "/bin/busybox");

    let modules = kernel.resolve_modules(GUEST_MODULES)?;
    let mut order = String::new();
    for (name, data) in &modules {
        c.file(&format!("lib/modules/{name}.ko"), 0o644, data);
        order.push_str(name);
        order.push('\n');
    }
    c.file("etc/rig-modules", 0o644, order.as_bytes());

    let agent_args = match &opts.agent {
        Some(p) => {
            let data = read_bin(p, "agent")?;
            check_static(&data, p)?;
            c.file("usr/sbin/vmmci", 0o755, &data);
            Some(opts.agent_args.as_str())
        }
        None => None,
    };
    if let Some(p) = &opts.clockprobe {
        let data = read_bin(p, "clock probe")?;
        check_static(&data, p)?;
        c.file("usr/sbin/rig-clockprobe", 0o755, &data);
    }
    c.file("etc/inittab", 0o644, inittab(agent_args).as_bytes());
    c.file("etc/rc.init", 0o755, RC_INIT.as_bytes());
    c.file("etc/rc.shutdown", 0o755, RC_SHUTDOWN.as_bytes());
    c.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    c.file("etc/group", 0o644, b"root:x:0:\n");
    c.file("etc/profile", 0o644, PROFILE.as_bytes());

    let data = c.finish();
    let tmp = out.with_extension("tmp");
    let mut f =
        fs::File::create(&tmp).map_err(|e| RigError::Io(format!("create {}", tmp.display()), e))?;
    f.write_all(&data)
        .map_err(|e| RigError::Io(format!("write {}", tmp.display()), e))?;
    drop(f);
    fs::rename(&tmp, out).map_err(|e| RigError::Io(format!("rename to {}", out.display()), e))?;
    Ok(())
}
