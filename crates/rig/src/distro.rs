//! The full-distro guest: the Debian 12 image of `scripts/package/distro-image`
//! (systemd as PID 1, udev, the vmmci .deb installed as `dpkg -i` leaves it)
//! booted in QEMU with the simulated vmd device, one fresh copy of the root
//! file system per boot so boots never see each other's writes and the copy
//! can be checked with `e2fsck -fn` / `debugfs` afterwards.
//!
//! Where the image is: `VMMCI_DISTRO_DIR` (default `<repo>/target/distro`,
//! where `scripts/package/distro-image` writes it). Missing pieces fail with
//! the commands that make them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmd_sim::VmdConfig;

use crate::artifacts;
use crate::guest::HostClockError;
use crate::vm::{Ran, Vm, VmOptions};
use crate::RigError;

/// The shell prompt of the systemd image's auto-logged-in root shell on ttyS0.
pub const PROMPT: &str = "vmmci-debian# ";
/// The same for the OpenRC image.
pub const PROMPT_OPENRC: &str = "vmmci-openrc# ";

/// The image's init system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Debian 12, systemd as PID 1 (`scripts/package/distro-image`).
    Systemd,
    /// Debian 12, sysvinit + OpenRC (`scripts/package/distro-image --init openrc`).
    OpenRc,
}

/// How to make the image (for "missing" errors).
pub fn how_to_build(init: Init) -> &'static str {
    match init {
        Init::Systemd => {
            "run (as root) scripts/rig/fetch-kernels.sh && \
             scripts/package/distro-image --deb \"$(scripts/package/deb | tail -n1)\" \
             (or set VMMCI_DISTRO_DIR to the directory it printed)"
        }
        Init::OpenRc => {
            "run (as root) scripts/rig/fetch-kernels.sh && \
             scripts/package/distro-image --init openrc --deb \"$(scripts/package/deb | tail -n1)\" \
             (or set VMMCI_DISTRO_OPENRC_DIR to the directory it printed)"
        }
    }
}

/// The image as `scripts/package/distro-image` leaves it.
#[derive(Clone, Debug)]
pub struct Image {
    pub init: Init,
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    /// The kernel command line from `cmdline`.
    pub cmdline: String,
    /// `manifest`: what went in.
    pub manifest: String,
}

impl Image {
    /// The systemd image in `VMMCI_DISTRO_DIR` (default `<repo>/target/distro`).
    pub fn locate() -> Result<Image, RigError> {
        Image::locate_init(Init::Systemd)
    }

    /// The image for `init`: systemd in `VMMCI_DISTRO_DIR` (default
    /// `<repo>/target/distro`), OpenRC in `VMMCI_DISTRO_OPENRC_DIR` (default
    /// `<repo>/target/distro-openrc`).
    pub fn locate_init(init: Init) -> Result<Image, RigError> {
        let (var, default) = match init {
            Init::Systemd => ("VMMCI_DISTRO_DIR", "target/distro"),
            Init::OpenRc => ("VMMCI_DISTRO_OPENRC_DIR", "target/distro-openrc"),
        };
        let dir = std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| artifacts::repo_root().join(default));
        let img = Image {
            init,
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.gz"),
            rootfs: dir.join("rootfs.ext4"),
            cmdline: String::new(),
            manifest: String::new(),
            dir,
        };
        for p in [
            &img.kernel,
            &img.initrd,
            &img.rootfs,
            &img.dir.join("cmdline"),
        ] {
            if !p.is_file() {
                return Err(RigError::Missing(format!(
                    "distro image: {} missing: {}",
                    p.display(),
                    how_to_build(init)
                )));
            }
        }
        let read = |name: &str| {
            std::fs::read_to_string(img.dir.join(name))
                .map_err(|e| RigError::Io(format!("read {}", img.dir.join(name).display()), e))
        };
        let cmdline = read("cmdline")?.trim().to_string();
        let manifest = read("manifest").unwrap_or_default();
        let want = match init {
            Init::Systemd => "init: systemd",
            Init::OpenRc => "init: openrc",
        };
        if !manifest.lines().any(|l| l.trim() == want) {
            return Err(RigError::Missing(format!(
                "distro image in {}: its manifest lacks {want:?} (an image of another init \
                 system, or an old one): {}",
                img.dir.display(),
                how_to_build(init)
            )));
        }
        Ok(Image {
            cmdline,
            manifest,
            ..img
        })
    }
}

/// A sparse copy of `src` at `dst` (the image is 1 GiB apparent, ~300 MiB used).
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<(), RigError> {
    let _ = std::fs::remove_file(dst);
    let out = Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(dst)
        .output()
        .map_err(|e| RigError::Io("run cp".into(), e))?;
    if !out.status.success() {
        return Err(RigError::Missing(format!(
            "cp --sparse=always {} {}: {}",
            src.display(),
            dst.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Run a host tool on an image copy (e.g. `debugfs -w` to change it before boot).
pub fn host_tool(prog: &str, args: &[&str]) -> Result<String, RigError> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| RigError::Io(format!("run {prog}"), e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(RigError::Missing(format!(
            "{prog} {}: exit {:?}: {text}",
            args.join(" "),
            out.status.code()
        )));
    }
    Ok(text)
}

/// Changes made to the fresh root file system copy before it boots.
pub type Prepare = Box<dyn FnOnce(&Path) -> Result<(), RigError>>;

/// What to boot.
pub struct BootOptions {
    /// Names the disk copy and the console log in the work dir.
    pub tag: String,
    pub vmd: VmdConfig,
    /// Extra kernel command line.
    pub append: String,
    /// Called on the fresh root file system copy before the boot.
    pub prepare: Option<Prepare>,
    /// How long to wait for `systemctl is-system-running --wait`.
    pub boot_timeout: Duration,
    /// The simulated host's clock rate error (ppm) and read noise (ns).
    pub host_clock: HostClockError,
}

impl BootOptions {
    pub fn new(tag: &str) -> BootOptions {
        BootOptions {
            tag: tag.to_string(),
            vmd: VmdConfig::default(),
            append: String::new(),
            prepare: None,
            boot_timeout: Duration::from_secs(150),
            host_clock: HostClockError::default(),
        }
    }
}

/// A booted full-distro guest.
pub struct Distro {
    pub vm: Vm,
    /// The root file system copy this boot runs on (`/dev/vda`).
    pub disk: PathBuf,
    pub log: PathBuf,
    /// When the root shell's prompt first appeared (since QEMU started).
    pub prompt_at: Duration,
    /// When the init system said it had finished starting up.
    pub ready_at: Duration,
    /// What it said: systemd's `is-system-running --wait` ("running" when all
    /// is well); OpenRC's runlevel and any crashed or failed services.
    pub system_state: String,
}

impl Image {
    /// The root shell's prompt on ttyS0.
    pub fn prompt(&self) -> &'static str {
        match self.init {
            Init::Systemd => PROMPT,
            Init::OpenRc => PROMPT_OPENRC,
        }
    }

    /// A shell command that waits until the boot is over and prints the state
    /// `Distro::system_state` holds.
    fn ready_cmd(&self) -> &'static str {
        match self.init {
            Init::Systemd => "systemctl is-system-running --wait",
            // sysvinit runs the default runlevel (an inittab `wait` entry)
            // before the getty: at the prompt it is over.
            // Then: the runlevel, and every sysinit or default service that
            // is not started (none when all is well).
            Init::OpenRc => {
                "echo runlevel=$(rc-status -r); for l in sysinit default; do \
                 rc-status -f ini $l; done | grep -v -e '^\\[' -e '= *started'; true"
            }
        }
    }
}

/// Copy the root file system, boot it, wait for the root shell and for
/// systemd to finish starting up.
pub fn boot(img: &Image, opts: BootOptions) -> Result<Distro, RigError> {
    artifacts::qemu()?;
    let work = artifacts::work_dir();
    let name = format!("distro-{}", opts.tag);
    let disk = work.join(format!("{name}.ext4"));
    let t0 = Instant::now();
    sparse_copy(&img.rootfs, &disk)?;
    if let Some(prep) = opts.prepare {
        prep(&disk)?;
    }
    let log = work.join(format!("{name}.log"));
    let _ = std::fs::remove_file(&log);
    let mut o = VmOptions::new(img.kernel.clone(), img.initrd.clone(), log.clone());
    o.data_disk = Some(disk.clone());
    // The rig puts console=ttyS0 first; the image's line adds root= etc.
    let mut append = img
        .cmdline
        .split_whitespace()
        .filter(|a| *a != "console=ttyS0")
        .collect::<Vec<_>>()
        .join(" ");
    if !opts.append.is_empty() {
        append.push(' ');
        append.push_str(&opts.append);
    }
    o.append = append;
    o.vmd_config = opts.vmd;
    o.clock = opts.host_clock.clock();
    // systemd, udev, journald, dbus: 256 MiB is tight for a full distro.
    o.memory_mb = 512;
    let vm = Vm::start(o)?;
    vm.qemu()
        .log_line(&format!("disk copy took {:?}", t0.elapsed()));
    vm.wait_console(img.prompt(), opts.boot_timeout)?;
    let prompt_at = vm.elapsed();
    if img.init == Init::Systemd {
        // The prompt can come before udev's coldplug has loaded its modules
        // (the agent no longer holds multi-user.target up): let it finish
        // first, or the kernel's lines about them land in the middle of the
        // tests' command output on the shared console.
        // Its status does not matter: a settle that times out only lets
        // the boot go on, as it always did.
        vm.run_status(
            "udevadm settle --timeout=120",
            opts.boot_timeout.saturating_sub(prompt_at),
        )?;
    }
    // systemd's state is the answer whatever it is ("degraded" exits 1):
    // the tests check it.
    let state = vm
        .run_status(img.ready_cmd(), opts.boot_timeout.saturating_sub(prompt_at))?
        .output;
    let ready_at = vm.elapsed();
    Ok(Distro {
        vm,
        disk,
        log,
        prompt_at,
        ready_at,
        system_state: clean(&state),
    })
}

/// Console output without carriage returns and terminal escapes.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                // CSI ... final byte, or a two-character escape.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out.trim().to_string()
}

/// Put a host file into the root file system copy (before boot), mode 0755.
pub fn install_file(disk: &Path, host: &Path, guest: &str) -> Result<(), RigError> {
    let d = disk.display().to_string();
    let h = host.display().to_string();
    host_tool("debugfs", &["-w", "-R", &format!("write {h} {guest}"), &d])?;
    host_tool(
        "debugfs",
        &["-w", "-R", &format!("sif {guest} mode 0100755"), &d],
    )?;
    Ok(())
}

impl Distro {
    /// Start chronyd as installing it does (its unit enabled and started),
    /// with Debian's own chrony.conf and the snippet the vmmci package put
    /// in /etc/chrony/conf.d/: nothing configured by hand.
    pub fn start_chrony_as_installed(&self) -> Result<(), RigError> {
        let out = self.sh(
            "systemctl enable --now chrony.service >/dev/null 2>&1 && echo started",
            Duration::from_secs(60),
        )?;
        if !out.ends_with("started") {
            return Err(RigError::Missing(format!("starting chronyd: {out}")));
        }
        Ok(())
    }

    /// Run a command in the guest's root shell; its output, cleaned. A
    /// non-zero exit status is an error (see [`Vm::run`]).
    pub fn sh(&self, cmd: &str, timeout: Duration) -> Result<String, RigError> {
        self.vm.run(cmd, timeout).map(|s| clean(&s))
    }

    /// Like [`Distro::sh`], but any exit status is an answer (see
    /// [`Vm::run_status`]).
    pub fn sh_status(&self, cmd: &str, timeout: Duration) -> Result<Ran, RigError> {
        let ran = self.vm.run_status(cmd, timeout)?;
        Ok(Ran {
            output: clean(&ran.output),
            ..ran
        })
    }

    /// The vmd log, the rig's actions and the console tail, for failures.
    pub fn dump(&self) -> String {
        format!(
            "{}(full log: {}; disk: {})",
            self.vm.dump(6000),
            self.log.display(),
            self.disk.display()
        )
    }

    /// After a passing test: end the VM and delete the disk copy (1 GiB
    /// apparent, ~300 MiB used); the console log stays. A failing test
    /// panics before this and leaves the copy for inspection.
    pub fn discard(self) {
        let disk = self.disk.clone();
        drop(self);
        let _ = std::fs::remove_file(disk);
    }
}
