//! Guest images: a busybox initramfs (newc cpio, written here, uncompressed)
//! with the kernel's virtio-blk/ext4 modules, the agent and the clock probe,
//! and a small ext4 data disk made and checked with e2fsprogs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::RigError;

/// A kernel unpacked by `scripts/rig/fetch-kernels.sh`.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>`
    pub modules: PathBuf,
    pub version: String,
}

impl Kernel {
    /// `<cache>/kernels/<name>` as laid out by fetch-kernels.sh.
    pub fn from_cache(cache: &Path, name: &str) -> Result<Kernel, RigError> {
        let dir = cache.join("kernels").join(name);
        let version = fs::read_to_string(dir.join("VERSION")).map_err(|e| {
            RigError::Missing(format!(
                "kernel {name} not in {} ({e}); run scripts/rig/fetch-kernels.sh",
                dir.display()
            ))
        })?;
        let vmlinuz = dir.join("vmlinuz");
        if !vmlinuz.exists() {
            return Err(RigError::Missing(format!(
                "{} missing; rerun fetch-kernels.sh",
                vmlinuz.display()
            )));
        }
        Ok(Kernel {
            name: name.to_string(),
            vmlinuz,
            modules: dir.join("modules"),
            version: version.trim().into(),
        })
    }

    fn builtin(&self) -> io::Result<BTreeSet<String>> {
        let text = fs::read_to_string(self.modules.join("modules.builtin"))?;
        Ok(text.lines().filter_map(module_name_of).collect())
    }

    fn module_files(&self) -> io::Result<HashMap<String, PathBuf>> {
        let mut map = HashMap::new();
        let mut stack = vec![self.modules.join("kernel")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d)? {
                let e = e?;
                let p = e.path();
                if e.file_type()?.is_dir() {
                    stack.push(p);
                } else if let Some(n) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(module_name_of)
                {
                    map.insert(n, p);
                }
            }
        }
        Ok(map)
    }

    /// The modules (decompressed, in load order) needed for `wanted` on this
    /// kernel: built-in ones are dropped, dependencies (from each module's
    /// `depends=` modinfo) come first.
    pub fn resolve_modules(&self, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>, RigError> {
        let builtin = self
            .builtin()
            .map_err(|e| RigError::Io(format!("{}: modules.builtin: {e}", self.name), e))?;
        let files = self
            .module_files()
            .map_err(|e| RigError::Io(format!("{}: module tree: {e}", self.name), e))?;
        let mut loaded: BTreeMap<String, usize> = BTreeMap::new();
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        fn visit(
            name: &str,
            builtin: &BTreeSet<String>,
            files: &HashMap<String, PathBuf>,
            loaded: &mut BTreeMap<String, usize>,
            out: &mut Vec<(String, Vec<u8>)>,
            depth: usize,
        ) -> Result<(), RigError> {
            let name = name.replace('-', "_");
            if builtin.contains(&name) || loaded.contains_key(&name) || depth > 32 {
                return Ok(());
            }
            let Some(path) = files.get(&name) else {
                return Err(RigError::Missing(format!(
                    "module {name} neither built in nor shipped"
                )));
            };
            let data = decompress(path)?;
            loaded.insert(name.clone(), usize::MAX);
            for dep in modinfo_field(&data, "depends")
                .split(',')
                .filter(|s| !s.is_empty())
            {
                visit(dep, builtin, files, loaded, out, depth + 1)?;
            }
            loaded.insert(name.clone(), out.len());
            out.push((name, data));
            Ok(())
        }
        for w in wanted {
            visit(w, &builtin, &files, &mut loaded, &mut out, 0)?;
        }
        Ok(out)
    }
}

/// `kernel/fs/ext4/ext4.ko.xz` -> `ext4`
fn module_name_of(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let stem = base.strip_suffix(".ko").or_else(|| {
        [".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .find_map(|s| base.strip_suffix(s))
    })?;
    Some(stem.replace('-', "_"))
}

fn decompress(path: &Path) -> Result<Vec<u8>, RigError> {
    let s = path.to_string_lossy();
    let tool = if s.ends_with(".xz") {
        Some("xz")
    } else if s.ends_with(".zst") {
        Some("zstd")
    } else if s.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).map_err(|e| RigError::Io(format!("read {}", path.display()), e)),
        Some(t) => {
            let out = Command::new(t).arg("-dc").arg(path).output().map_err(|e| {
                RigError::Io(format!("run {t} -dc {} (install it)", path.display()), e)
            })?;
            if !out.status.success() {
                return Err(RigError::Missing(format!(
                    "{t} -dc {} failed",
                    path.display()
                )));
            }
            Ok(out.stdout)
        }
    }
}

/// A `key=value` string from a module's .modinfo section (scanned crudely:
/// the section is a run of NUL-terminated strings).
fn modinfo_field(data: &[u8], key: &str) -> String {
    let pat = format!("{key}=");
    let pat = pat.as_bytes();
    let mut i = 0;
    while i + pat.len() <= data.len() {
        if &data[i..i + pat.len()] == pat && (i == 0 || data[i - 1] == 0) {
            let start = i + pat.len();
            let end = data[start..]
                .iter()
                .position(|&b| b == 0)
                .map(|p| start + p)
                .unwrap_or(data.len());
            return String::from_utf8_lossy(&data[start..end]).into_owned();
        }
        i += 1;
    }
    String::new()
}

/// Modules the guest needs for /dev/vda as ext4, in the order the cloud
/// kernels need them. `crc32c_generic` is ext4's soft dependency.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "crc16",
    "mbcache",
    "jbd2",
    "ext4",
];

// ---------------------------------------------------------------- cpio ----

/// A newc cpio archive builder.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    pub fn new() -> Cpio {
        Cpio::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.buf.extend_from_slice(hdr.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn parents(&mut self, path: &str) {
        let path = path.trim_start_matches('/');
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            if self.dirs.insert(acc.clone()) {
                let a = acc.clone();
                self.entry(&a, 0o040755, &[], (0, 0));
            }
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.parents(path);
        let p = path.trim_start_matches('/').to_string();
        if self.dirs.insert(p.clone()) {
            self.entry(&p, 0o040755, &[], (0, 0));
        }
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, 0o100000 | perm, data, (0, 0));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, 0o120777, target.as_bytes(), (0, 0));
    }

    pub fn chardev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.parents(path);
        self.entry(path, 0o020000 | perm, &[], (major, minor));
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        while self.buf.len() % 512 != 0 {
            self.buf.push(0);
        }
        self.buf
    }
}

// -------------------------------------------------------------- initramfs --

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

// -------------------------------------------------------------- data disk --

fn run_tool(cmd: &mut Command, what: &str) -> Result<std::process::Output, RigError> {
    cmd.output().map_err(|e| {
        RigError::Io(
            format!("{what}: cannot run (apt-get install e2fsprogs; scripts/rig/install-deps.sh)"),
            e,
        )
    })
}

fn e2tool(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// A fresh ext4 image of `size_mb` MiB.
pub fn make_data_disk(path: &Path, size_mb: u64) -> Result<(), RigError> {
    let f = fs::File::create(path)
        .map_err(|e| RigError::Io(format!("create {}", path.display()), e))?;
    f.set_len(size_mb << 20)
        .map_err(|e| RigError::Io(format!("size {}", path.display()), e))?;
    drop(f);
    let out = run_tool(
        Command::new(e2tool("mke2fs"))
            .args(["-q", "-t", "ext4", "-F", "-L", "rigdata"])
            .arg(path),
        "mke2fs",
    )?;
    if !out.status.success() {
        return Err(RigError::Missing(format!(
            "mke2fs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Result of `e2fsck -fn`.
#[derive(Clone, Debug)]
pub struct FsckReport {
    pub clean: bool,
    pub exit_code: i32,
    pub output: String,
}

pub fn fsck(path: &Path) -> Result<FsckReport, RigError> {
    let out = run_tool(
        Command::new(e2tool("e2fsck")).arg("-fn").arg(path),
        "e2fsck",
    )?;
    let code = out.status.code().unwrap_or(-1);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // -n never fixes; exit 0 means no problems. A journal needing recovery
    // or the "not cleanly unmounted" state also show up as non-zero/warnings.
    let clean =
        code == 0 && !text.contains("needs_recovery") && !text.contains("recovering journal");
    Ok(FsckReport {
        clean,
        exit_code: code,
        output: text,
    })
}

/// `debugfs -R 'cat <file>'`.
pub fn read_file(image: &Path, file: &str) -> Result<Vec<u8>, RigError> {
    let out = run_tool(
        Command::new(e2tool("debugfs"))
            .arg("-R")
            .arg(format!("cat {file}"))
            .arg(image),
        "debugfs",
    )?;
    if !out.status.success() {
        return Err(RigError::Missing(format!(
            "debugfs cat {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("File not found") {
        return Err(RigError::Missing(format!(
            "{file} not in {}: {err}",
            image.display()
        )));
    }
    Ok(out.stdout)
}

/// Whether the superblock says the fs was not cleanly unmounted
/// (`dumpe2fs -h`: state "not clean" or needs_recovery).
pub fn superblock_state(image: &Path) -> Result<String, RigError> {
    let out = run_tool(
        Command::new(e2tool("dumpe2fs")).arg("-h").arg(image),
        "dumpe2fs",
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let state = text
        .lines()
        .find(|l| l.starts_with("Filesystem state:"))
        .map(|l| l["Filesystem state:".len()..].trim().to_string())
        .unwrap_or_default();
    let features = text
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or("")
        .to_string();
    Ok(if features.contains("needs_recovery") {
        format!("{state} needs_recovery")
    } else {
        state
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_layout() {
        let mut c = Cpio::new();
        c.file("etc/x", 0o644, b"hello");
        c.symlink("bin/sh", "/bin/busybox");
        let data = c.finish();
        assert!(data.starts_with(b"070701"));
        assert_eq!(data.len() % 512, 0);
        let s = String::from_utf8_lossy(&data);
        assert!(s.contains("etc\0"));
        assert!(s.contains("etc/x\0"));
        assert!(s.contains("hello"));
        assert!(s.contains("TRAILER!!!"));
        // Every header starts 4-aligned.
        for (i, _) in s.match_indices("070701") {
            assert_eq!(i % 4, 0);
        }
    }

    #[test]
    fn module_names_and_modinfo() {
        assert_eq!(
            module_name_of("kernel/fs/ext4/ext4.ko").as_deref(),
            Some("ext4")
        );
        assert_eq!(
            module_name_of("virtio_blk.ko.xz").as_deref(),
            Some("virtio_blk")
        );
        assert_eq!(
            module_name_of("crc32c-generic.ko").as_deref(),
            Some("crc32c_generic")
        );
        assert_eq!(module_name_of("foo.txt"), None);
        let blob = b"\x7fELF junk\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0";
        assert_eq!(modinfo_field(blob, "depends"), "virtio,virtio_ring");
        assert_eq!(modinfo_field(blob, "softdep"), "");
    }
}
