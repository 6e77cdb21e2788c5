//! A guest booted for a scenario or a bench run: kernel from the cache, an
//! initramfs with (or without) the static agent and the clock probe, an
//! optional data disk, the VM started and booted to `RIG: ready`.

use std::path::PathBuf;
use std::time::Duration;

use vmd_sim::{HostClock, SkewedClock, SystemClock, VmdConfig};

use crate::artifacts;
use crate::clock;
use crate::image::{self, ImageOptions, Kernel};
use crate::vm::{Vm, VmOptions};
use crate::RigError;

/// How the simulated host's clock is off: its rate against this machine's
/// clock (which the guest's TSC follows under TCG) and its read noise.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostClockError {
    pub ppm: f64,
    pub jitter_ns: i64,
}

impl HostClockError {
    /// The clock for [`VmOptions::clock`]: none (the real one) when perfect.
    pub fn clock(self) -> Option<Box<dyn HostClock>> {
        if self == HostClockError::default() {
            return None;
        }
        Some(Box::new(SkewedClock::new(
            Box::new(SystemClock),
            self.ppm,
            self.jitter_ns,
        )))
    }
}

/// What to put in the guest.
#[derive(Clone, Debug)]
pub struct Guest {
    pub agent: bool,
    /// Arguments of the supervised agent (default: the image's).
    pub agent_args: Option<String>,
    pub disk: bool,
    pub vmd: VmdConfig,
    pub host_clock: HostClockError,
}

impl Guest {
    pub fn agent() -> Guest {
        Guest {
            agent: true,
            agent_args: None,
            disk: false,
            vmd: VmdConfig::default(),
            host_clock: HostClockError::default(),
        }
    }
    pub fn no_agent() -> Guest {
        Guest {
            agent: false,
            ..Guest::agent()
        }
    }
    pub fn with_disk(mut self) -> Guest {
        self.disk = true;
        self
    }
    pub fn args(mut self, a: &str) -> Guest {
        self.agent_args = Some(a.to_string());
        self
    }
    pub fn host_clock(mut self, ppm: f64, jitter_ns: i64) -> Guest {
        self.host_clock = HostClockError { ppm, jitter_ns };
        self
    }
}

/// A booted guest.
pub struct Booted {
    pub vm: Vm,
    pub disk: Option<PathBuf>,
    /// When the guest printed `RIG: ready`, since QEMU started.
    pub ready_at: Duration,
    pub log: PathBuf,
}

/// Run the clock probe (`prog`, as the guest finds it) for `count` points
/// and return them as the simulator saw them: each a bracketed interval of
/// guest − host (see [`clock`]).
pub fn probe_points(vm: &Vm, prog: &str, count: u32) -> Result<Vec<clock::ProbeSample>, RigError> {
    let skip = vm.with_vmd(|v| v.probe_writes().len());
    let out = vm.run(&format!("{prog} {count} 50"), Duration::from_secs(60))?;
    if !out.contains("RIG-PROBE-DONE") {
        return Err(RigError::Missing(format!(
            "clock probe did not finish: {out}"
        )));
    }
    Ok(vm.with_vmd(|v| clock::points_since(v.probe_writes(), skip)))
}

/// [`probe_points`]' midpoints of guest − host (ns).
pub fn probe(vm: &Vm, prog: &str, count: u32) -> Result<Vec<i64>, RigError> {
    Ok(probe_points(vm, prog, count)?
        .iter()
        .map(|p| p.residual_ns())
        .collect())
}

/// The JSON object in a command's console output: from its first `{` to
/// its last `}`, without the kernel's messages that landed between its
/// lines (they share the console: `random: crng init done` once broke a
/// status; [`Vm::run`] already leaves the agent's log lines out).
pub fn json_in(out: &str) -> Option<String> {
    let kept: Vec<&str> = out
        .lines()
        .filter(|l| !crate::vm::is_kernel_log_line(l))
        .collect();
    let out = kept.join("\n");
    match (out.find('{'), out.rfind('}')) {
        (Some(i), Some(j)) if i < j => Some(out[i..=j].to_string()),
        _ => None,
    }
}

/// The agent's status record, from `vmmci status --json` in the guest.
/// A kernel message can land inside one of its lines on the shared serial
/// console (the UART takes printk between any two bytes of a write), which
/// no filter can undo: a status that does not parse is read once more, and
/// the rig says so on stderr; a second failure is the answer.
pub fn agent_status(vm: &Vm) -> Result<vmmci_report::Status, RigError> {
    match read_status(vm) {
        Err(RigError::Missing(why)) => {
            eprintln!("  rig: `vmmci status --json` read again: {why}");
            read_status(vm)
        }
        other => other,
    }
}

fn read_status(vm: &Vm) -> Result<vmmci_report::Status, RigError> {
    let out = vm.run("vmmci status --json", Duration::from_secs(30))?;
    let json = json_in(&out)
        .ok_or_else(|| RigError::Missing(format!("no JSON from `vmmci status --json`: {out}")))?;
    serde_json::from_str(&json)
        .map_err(|e| RigError::Missing(format!("`vmmci status --json`: {e}: {json}")))
}

/// Build the guest's image and boot it on the cached kernel `kernel`
/// (`bookworm-cloud`, …); `tag` names the files in the work dir.
pub fn boot(kernel: &str, g: &Guest, tag: &str) -> Result<Booted, RigError> {
    artifacts::qemu()?;
    let k = Kernel::from_cache(&artifacts::cache_dir(), kernel)?;
    let probe = artifacts::static_bin("rig-clockprobe")?;
    let agent = if g.agent {
        Some(artifacts::static_bin("vmmci")?)
    } else {
        None
    };
    let work = artifacts::work_dir();
    let name = format!("{tag}-{kernel}");
    let initrd = work.join(format!("{name}.cpio"));
    let mut io = ImageOptions {
        agent,
        clockprobe: Some(probe),
        busybox: artifacts::busybox(),
        ..Default::default()
    };
    if let Some(a) = &g.agent_args {
        io.agent_args = a.clone();
    }
    image::build_initramfs(&k, &io, &initrd)?;
    let disk = if g.disk {
        let d = work.join(format!("{name}.ext4"));
        image::make_data_disk(&d, 32)?;
        Some(d)
    } else {
        None
    };
    let log = work.join(format!("{name}.log"));
    let _ = std::fs::remove_file(&log);
    let mut o = VmOptions::new(k.vmlinuz.clone(), initrd, log.clone());
    o.data_disk = disk.clone();
    o.vmd_config = g.vmd.clone();
    o.clock = g.host_clock.clock();
    let vm = Vm::start(o)?;
    vm.wait_console("RIG: ready", Duration::from_secs(180))?;
    let ready_at = vm.elapsed();
    Ok(Booted {
        vm,
        disk,
        ready_at,
        log,
    })
}

impl Booted {
    /// Wait until the agent has set DRIVER_OK; returns when (since QEMU start).
    pub fn driver_ok(&self, timeout: Duration) -> Result<Duration, RigError> {
        self.vm.wait_vmd("DRIVER_OK from the agent", timeout, |v| {
            v.device_status() & vmmci_protocol::status::DRIVER_OK != 0
        })?;
        Ok(self.vm.elapsed())
    }

    /// Midpoints of guest − host (ns) of `count` clock-probe points,
    /// measured independently of the agent (see `rig-clockprobe`).
    pub fn probe(&self, count: u32) -> Result<Vec<i64>, RigError> {
        probe(&self.vm, "rig-clockprobe", count)
    }

    /// `count` clock-probe points, each an interval of guest − host.
    pub fn probe_points(&self, count: u32) -> Result<Vec<clock::ProbeSample>, RigError> {
        probe_points(&self.vm, "rig-clockprobe", count)
    }

    /// The vmd log, the rig's actions and the console tail, for failures.
    pub fn dump(&self) -> String {
        format!("{}(full log: {})", self.vm.dump(4000), self.log.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_read_without_the_kernels_messages_between_its_lines() {
        let out = "RIG\n{\n  \"a\": 1,\n[   21.107039] random: crng init done\n  \"b\": 2\n}\n";
        let json = json_in(out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!((v["a"].as_i64(), v["b"].as_i64()), (Some(1), Some(2)));
        assert_eq!(json_in("no json"), None);
    }
}
