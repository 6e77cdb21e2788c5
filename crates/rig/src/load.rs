//! A guest under load when vmd asks it to stop: one busy loop per vCPU and
//! a disk writer (dd of 8 MiB with fsync, over and over), then `vmctl
//! stop`, and how long vmd waited for the ACK. vmd kills the VM if the ACK
//! takes more than 3 s, loaded or not.

use std::time::Duration;

use crate::events::{first_at, is_reboot_ack, is_reboot_posted};
use crate::vm::{Ended, Vm};
use crate::RigError;

/// A shell command that starts the load and returns at once (the load runs
/// detached from the console shell): one `while :; do :; done` per CPU and
/// a writer of `dir/rig-load`. The processes carry the markers `rig-spin`
/// and `rig-load` in their command lines.
pub fn start_cmd(dir: &str) -> String {
    format!(
        "sh -c 'n=$(grep -c ^processor /proc/cpuinfo); i=0; \
         while [ $i -lt $n ]; do sh -c \": rig-spin; while :; do :; done\" & i=$((i+1)); done; \
         sh -c \": rig-load; while :; do dd if=/dev/zero of={dir}/rig-load bs=1M count=8 conv=fsync 2>/dev/null; done\" &' \
         </dev/null >/dev/null 2>&1"
    )
}

/// What the load looked like just before the stop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// Guest CPU time not idle (nor waiting for I/O) over one second, 0..1.
    pub busy: f64,
    /// Busy loops running, and how many CPUs the guest has.
    pub spinners: usize,
    pub cpus: usize,
    /// Disk writer loops running.
    pub writers: usize,
}

/// Start the load (see [`start_cmd`]), let it settle for a second and
/// measure it.
pub fn start(vm: &Vm, dir: &str) -> Result<Load, RigError> {
    let t = Duration::from_secs(60);
    vm.run(&start_cmd(dir), t)?;
    std::thread::sleep(Duration::from_secs(1));
    // `[r]ig-…`: the grep's own command line does not match itself.
    let out = vm.run(
        "echo LOAD $(grep -c ^processor /proc/cpuinfo) \
         $(grep -l '[r]ig-spin' /proc/[0-9]*/cmdline 2>/dev/null | wc -l) \
         $(grep -l '[r]ig-load' /proc/[0-9]*/cmdline 2>/dev/null | wc -l); \
         head -n1 /proc/stat; sleep 1; head -n1 /proc/stat",
        t,
    )?;
    parse_load(&out)
        .ok_or_else(|| RigError::Missing(format!("cannot read the guest's load: {out}")))
}

fn parse_load(out: &str) -> Option<Load> {
    let counts: Vec<usize> = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("LOAD "))?
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let stats: Vec<Vec<u64>> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cpu "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .collect();
    let (&[cpus, spinners, writers], [a, b]) = (&counts[..], &stats[..]) else {
        return None;
    };
    // user nice system idle iowait irq softirq steal …
    let total = |v: &Vec<u64>| v.iter().take(8).sum::<u64>();
    let idle = |v: &Vec<u64>| v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let dt = total(b).saturating_sub(total(a));
    let di = idle(b).saturating_sub(idle(a));
    let busy = if dt == 0 {
        0.0
    } else {
        1.0 - di as f64 / dt as f64
    };
    Some(Load {
        busy,
        spinners,
        cpus,
        writers,
    })
}

/// One `vmctl stop` and its timing.
#[derive(Clone, Debug)]
pub struct Stop {
    /// REBOOT posted → the guest's ACK (vmd's events); `None`: never.
    pub ack: Option<Duration>,
    /// `vmctl stop` → the VM's end (host).
    pub end: Duration,
    pub ended: Ended,
}

/// `vmctl stop` now, wait (up to `timeout`) for the VM to end, and time it.
pub fn stop_and_time(vm: &Vm, timeout: Duration) -> Result<Stop, RigError> {
    let ev0 = vm.n_events();
    let t0 = vm.elapsed();
    vm.vmctl_stop()
        .map_err(|e| RigError::Missing(format!("vmctl stop refused: {e}")))?;
    let ended = vm.wait_end(timeout)?;
    let evs = vm.events_since(ev0);
    let ack = first_at(&evs, is_reboot_posted).and_then(|posted| {
        evs.iter()
            .find(|e| is_reboot_ack(&e.kind) && e.at >= posted)
            .map(|e| e.at - posted)
    });
    Ok(Stop {
        ack,
        end: ended.at.saturating_sub(t0),
        ended,
    })
}

/// Median and maximum of some durations (`None` when empty; see
/// [`crate::stats::median_max`]).
pub fn median_max(v: &[Duration]) -> Option<(Duration, Duration)> {
    crate::stats::median_max(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_parsed() {
        let out = "LOAD 1 1 1\ncpu  100 0 50 1000 10 0 0 0 0 0\ncpu  190 0 60 1002 10 0 0 0 0 0\n";
        let l = parse_load(out).unwrap();
        assert_eq!((l.cpus, l.spinners, l.writers), (1, 1, 1));
        assert!((l.busy - 100.0 / 102.0).abs() < 1e-9, "{}", l.busy);
        assert_eq!(parse_load("LOAD 1 1\n"), None);
    }

    #[test]
    fn median_and_max() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&x| Duration::from_millis(x))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            median_max(&ms(&[300, 100, 200])),
            Some((Duration::from_millis(200), Duration::from_millis(300)))
        );
        assert_eq!(
            median_max(&ms(&[100, 200])),
            Some((Duration::from_millis(150), Duration::from_millis(200)))
        );
        assert_eq!(median_max(&[]), None);
    }
}
