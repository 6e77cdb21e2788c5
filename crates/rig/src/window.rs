//! The boot window: from the guest kernel's start to the agent's DRIVER_OK.
//! Until DRIVER_OK, vmd refuses `vmctl stop` and ends the VM at once, with
//! no shutdown at all; so this is how long a freshly started guest is
//! unprotected. Beside it: where the old out-of-tree kernel module would
//! have claimed the device in the same boot. That module was loaded from
//! `/etc/modules` by the init system's module loading
//! (systemd-modules-load.service; OpenRC's `modules`, Debian's `kmod`) and
//! set DRIVER_OK in its probe, at once. A stand-in takes its place in the
//! measured boot: [`prepare_module_stand_in`] lists `loop` in `/etc/modules`,
//! and the kernel's "loop: module loaded" line stamps the moment.
//!
//! Clocks and the definition of "kernel start":
//!
//! - Host times are since QEMU was spawned (the rig's clock).
//! - The guest kernel's clock (printk's `[   1.234567]` stamps, and
//!   CLOCK_MONOTONIC, which systemd's `…TimestampMonotonic` properties use)
//!   reads 0 when the kernel starts. Under TCG with the rig's
//!   `tsc_early_khz` it runs at the host's rate.
//! - **Kernel start** is the host time at which that clock read 0. Every
//!   printk line reaches the host after it was stamped, so
//!   min(arrival − stamp) over the console's stamped lines is that moment
//!   (lines printed live give it to within the serial round trip, a few ms;
//!   lines replayed when the console registered only give upper bounds).
//!   Before it: SeaBIOS, loading and decompressing the kernel (TCG-slow;
//!   reported as `qemu_to_kernel`, not part of the window).
//! - **DRIVER_OK** is the host time of the guest's first status write with
//!   DRIVER_OK set, as the simulated vmd saw it.
//! - The module point is read in the guest's clock (the stand-in's printk
//!   stamp; systemd-modules-load.service's exit) and put on the same axis.

use std::fmt;
use std::time::Duration;

use vmmci_protocol::status;

use std::path::Path;

use crate::distro::{host_tool, Distro, Init};
use crate::vm::Vm;
use crate::RigError;

/// The figures of one boot, in seconds since kernel start unless named
/// otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct BootWindow {
    pub init: &'static str,
    /// QEMU spawned → kernel start (firmware, kernel load and decompression).
    pub qemu_to_kernel: f64,
    /// Kernel start → DRIVER_OK: the window in which `vmctl stop` kills.
    pub driver_ok: f64,
    /// Kernel start → the init system started the agent (systemd: the
    /// unit's start job ran; OpenRC: "Starting vmmci" on the console).
    pub agent_started: Option<f64>,
    /// Kernel start → the stand-in module listed in /etc/modules loaded:
    /// where the old kernel module would have set DRIVER_OK.
    pub module_loaded: Option<f64>,
    /// systemd only: kernel start → systemd-modules-load.service done.
    pub modules_service_done: Option<f64>,
    /// systemd only: the agent's own "DRIVER_OK" journal line, in the guest's
    /// clock (a cross-check of the host-side figure).
    pub driver_ok_journal: Option<f64>,
    /// How many stamped console lines went into the kernel-start estimate.
    pub stamped_lines: usize,
}

impl BootWindow {
    /// DRIVER_OK minus the module point: negative when the agent was there first.
    pub fn vs_module(&self) -> Option<f64> {
        self.module_loaded
            .or(self.modules_service_done)
            .map(|m| self.driver_ok - m)
    }

    /// The boot's record for the bench's JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "init": self.init,
            "qemu_to_kernel_s": self.qemu_to_kernel,
            "driver_ok_s": self.driver_ok,
            "agent_started_s": self.agent_started,
            "old_module_loaded_s": self.module_loaded,
            "modules_service_done_s": self.modules_service_done,
            "driver_ok_minus_old_module_s": self.vs_module(),
            "driver_ok_journal_s": self.driver_ok_journal,
            "stamped_lines": self.stamped_lines,
        })
    }
}

impl fmt::Display for BootWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2} s"));
        write!(
            f,
            "{}: kernel start → DRIVER_OK {:.2} s (agent started at {}); the old module \
             would have loaded at {} (DRIVER_OK {} that)",
            self.init,
            self.driver_ok,
            opt(self.agent_started),
            opt(self.module_loaded),
            match self.vs_module() {
                Some(d) if d <= 0.0 => format!("{:.2} s before", -d),
                Some(d) => format!("{d:.2} s after"),
                None => "unrelated to".to_string(),
            },
        )?;
        if let Some(m) = self.modules_service_done {
            write!(f, "; systemd-modules-load.service done at {m:.2} s")?;
        }
        write!(f, "; QEMU → kernel start {:.2} s", self.qemu_to_kernel)?;
        if let Some(j) = self.driver_ok_journal {
            write!(f, "; the agent's journal says DRIVER_OK at {j:.2} s")?;
        }
        Ok(())
    }
}

/// The printk stamp (seconds) at the start of a console line, if it has one:
/// `[    1.234567] …`. Leading carriage returns are skipped.
pub fn printk_stamp(line: &[u8]) -> Option<f64> {
    let mut i = 0;
    while i < line.len() && line[i] == b'\r' {
        i += 1;
    }
    let rest = line.get(i..)?.strip_prefix(b"[")?;
    let close = rest.iter().position(|&b| b == b']')?;
    let inner = std::str::from_utf8(&rest[..close]).ok()?.trim_start();
    let (s, us) = inner.split_once('.')?;
    if s.is_empty()
        || us.len() != 6
        || !s.bytes().all(|b| b.is_ascii_digit())
        || !us.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    inner.parse().ok()
}

/// When console byte `offset` reached the host: the arrival of the chunk
/// holding it (`arrivals`: (end offset, exclusive; time), ascending).
pub fn arrival_of(arrivals: &[(usize, Duration)], offset: usize) -> Option<Duration> {
    let i = arrivals.partition_point(|&(end, _)| end <= offset);
    arrivals.get(i).map(|&(_, t)| t)
}

/// Host time (s since QEMU spawned) at which the guest kernel's clock read
/// 0, from the stamped lines whose stamp is at most `max_stamp` (later lines
/// would add the guest clock's rate error), and how many lines it used.
pub fn kernel_zero(
    data: &[u8],
    arrivals: &[(usize, Duration)],
    max_stamp: f64,
) -> Option<(f64, usize)> {
    let mut best: Option<f64> = None;
    let mut n = 0;
    let mut start = 0;
    for (i, &b) in data.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = &data[start..i];
        start = i + 1;
        let Some(stamp) = printk_stamp(line) else {
            continue;
        };
        if stamp > max_stamp {
            continue;
        }
        let Some(at) = arrival_of(arrivals, i) else {
            continue;
        };
        n += 1;
        let zero = at.as_secs_f64() - stamp;
        best = Some(best.map_or(zero, |b: f64| b.min(zero)));
    }
    best.map(|b| (b, n))
}

/// Host time (since QEMU spawned) of the first status write with DRIVER_OK.
pub fn driver_ok_at(vm: &Vm) -> Option<Duration> {
    let at = vm.with_vmd(|v| {
        v.status_writes_at()
            .iter()
            .find(|&&(_, s)| s & status::DRIVER_OK != 0)
            .map(|&(t, _)| t)
    })?;
    Some(vm.host_time_of_vmd(at))
}

/// Host time (since QEMU spawned) at which `needle` first reached the
/// console (the arrival of its first byte), and of the end of its line.
pub fn console_line_at(vm: &Vm, needle: &str) -> Option<(Duration, Duration)> {
    let (data, arrivals) = vm.qemu().console_with_arrivals();
    let n = needle.as_bytes();
    let p = data.windows(n.len()).position(|w| w == n)?;
    let eol = data[p..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len().saturating_sub(1), |q| p + q);
    Some((arrival_of(&arrivals, p)?, arrival_of(&arrivals, eol)?))
}

/// The first console line from offset `from` on that `pred` accepts (after
/// its carriage returns and escapes are cleaned away), and when its first
/// byte reached the host (since QEMU spawned).
pub fn console_line_where(
    vm: &Vm,
    from: usize,
    pred: impl Fn(&str) -> bool,
) -> Option<(Duration, String)> {
    let (data, arrivals) = vm.qemu().console_with_arrivals();
    let mut start = from.min(data.len());
    while start < data.len() {
        let end = data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |q| start + q);
        let line = crate::distro::clean(&String::from_utf8_lossy(&data[start..end]));
        if pred(&line) {
            return Some((arrival_of(&arrivals, start)?, line));
        }
        start = end + 1;
    }
    None
}

/// Stamped lines up to this guest time go into the kernel-start estimate.
const MAX_STAMP: f64 = 20.0;

/// Measure the boot window of a booted full-distro guest (at the prompt).
pub fn measure(d: &Distro, init: Init) -> Result<BootWindow, RigError> {
    let vm = &d.vm;
    let (data, arrivals) = vm.qemu().console_with_arrivals();
    let (zero, stamped_lines) = kernel_zero(&data, &arrivals, MAX_STAMP).ok_or_else(|| {
        RigError::Missing("no printk-stamped console lines: cannot place the kernel's start".into())
    })?;
    let ok =
        driver_ok_at(vm).ok_or_else(|| RigError::Missing("no DRIVER_OK status write".into()))?;
    let since_zero = |t: Duration| t.as_secs_f64() - zero;
    let t = Duration::from_secs(30);
    let usecs = |unit: &str, prop: &str| -> Result<Option<f64>, RigError> {
        let v = d.sh(&format!("systemctl show -p {prop} --value {unit}"), t)?;
        Ok(v.trim()
            .parse::<u64>()
            .ok()
            .filter(|&x| x > 0)
            .map(crate::units::usecs_as_secs))
    };
    // The stand-in for the old module (prepare_module_stand_in), by its stamp.
    // grep's status is its answer: no such line, no module point.
    let dmesg = d
        .sh_status(&format!("dmesg | grep -m1 '{STAND_IN_LINE}'"), t)?
        .output;
    let module_loaded = printk_stamp(dmesg.trim_start().as_bytes());
    let w = match init {
        Init::Systemd => {
            let service = usecs(
                "systemd-modules-load.service",
                "ExecMainExitTimestampMonotonic",
            )?;
            let started = usecs("vmmci.service", "InactiveExitTimestampMonotonic")?;
            let journal = d
                .sh_status(
                    "journalctl -b -u vmmci.service -o short-monotonic --no-pager | grep -m1 DRIVER_OK",
                    t,
                )?
                .output;
            BootWindow {
                init: "systemd",
                qemu_to_kernel: zero,
                driver_ok: since_zero(ok),
                agent_started: started,
                module_loaded,
                modules_service_done: service,
                driver_ok_journal: printk_stamp(journal.as_bytes()),
                stamped_lines,
            }
        }
        Init::OpenRc => {
            let started = console_line_at(vm, "Starting vmmci").map(|(a, _)| since_zero(a));
            BootWindow {
                init: "openrc",
                qemu_to_kernel: zero,
                driver_ok: since_zero(ok),
                agent_started: started,
                module_loaded,
                modules_service_done: None,
                driver_ok_journal: None,
                stamped_lines,
            }
        }
    };
    Ok(w)
}

/// The stand-in for the old vmmci.ko: a module that says when it is loaded.
pub const STAND_IN_MODULE: &str = "loop";
/// What it prints (loop.c's init, KERN_INFO).
pub const STAND_IN_LINE: &str = "loop: module loaded";

/// Before the boot: list the stand-in module in the image copy's
/// `/etc/modules`, where the old vmmci.ko was listed, so the init system's
/// module loading (systemd-modules-load reads it through
/// /etc/modules-load.d/modules.conf; Debian's kmod service directly) loads
/// it and the kernel stamps the moment.
pub fn prepare_module_stand_in(disk: &Path) -> Result<(), RigError> {
    let host = disk.with_extension("etc-modules");
    std::fs::write(
        &host,
        format!("# vmmci-rig: stands in for the old vmmci.ko\n{STAND_IN_MODULE}\n"),
    )
    .map_err(|e| RigError::Io(format!("write {}", host.display()), e))?;
    let d = disk.display().to_string();
    let h = host.display().to_string();
    let r = (|| {
        host_tool("debugfs", &["-w", "-R", "rm /etc/modules", &d])?;
        host_tool(
            "debugfs",
            &["-w", "-R", &format!("write {h} /etc/modules"), &d],
        )?;
        host_tool(
            "debugfs",
            &["-w", "-R", "sif /etc/modules mode 0100644", &d],
        )
    })();
    let _ = std::fs::remove_file(&host);
    r.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        assert_eq!(
            printk_stamp(b"[    1.234567] EXT4-fs (vda): mounted"),
            Some(1.234567)
        );
        assert_eq!(printk_stamp(b"\r[   12.000001] x"), Some(12.000001));
        assert_eq!(printk_stamp(b"[  OK  ] Finished foo."), None);
        assert_eq!(printk_stamp(b"[    1.23] short"), None);
        assert_eq!(printk_stamp(b"no stamp"), None);
    }

    #[test]
    fn zero_is_the_tightest_line() {
        let text =
            b"[    0.000000] Linux version\n[    0.500000] replayed\n[    2.000000] live\nplain\n";
        // Chunk 1 (the first two lines) arrives at 3.0 s, chunk 2 at 3.1 s.
        let split = text.windows(4).position(|w| w == b"live").unwrap();
        let arrivals = [
            (split, Duration::from_millis(3000)),
            (text.len(), Duration::from_millis(3100)),
        ];
        let (z, n) = kernel_zero(text, &arrivals, 20.0).unwrap();
        assert_eq!(n, 3);
        assert!((z - 1.1).abs() < 1e-9, "{z}");
        assert_eq!(arrival_of(&arrivals, 0), Some(Duration::from_millis(3000)));
        assert_eq!(
            arrival_of(&arrivals, split),
            Some(Duration::from_millis(3100))
        );
        assert_eq!(arrival_of(&arrivals, text.len()), None);
    }
}
