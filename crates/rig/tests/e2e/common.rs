//! What the e2e scenarios share: the kernels, booting the busybox guest,
//! and the checks only it needs (the rest is `vmmci_rig::scenario`).

use std::time::Duration;

use vmd_sim::EventKind;
use vmmci_rig::guest::{self, Booted, Guest};
use vmmci_rig::vm::Ended;
use vmmci_rig::{artifacts, clock, events, rerun, stats, units};

pub use vmmci_rig::scenario::*;

pub const BOOKWORM_CLOUD: &str = "bookworm-cloud";
pub const BOOKWORM_GENERIC: &str = "bookworm-generic";
pub const TRIXIE_CLOUD: &str = "trixie-cloud";
/// Bullseye's 5.10, the oldest kernel the same static binary is run on.
pub const BULLSEYE_CLOUD: &str = "bullseye-cloud";
/// Forky's (Debian testing's) newest cloud kernel, fetched once and cached.
pub const FORKY_CLOUD: &str = "forky-cloud";

/// Where the busybox guest's agent writes its status.
pub const STATUS_FILE: &str = "/run/vmmci/status.json";

pub fn boot(kernel: &str, g: Guest, tag: &str) -> Booted {
    let b = must(guest::boot(kernel, &g, tag), "boot");
    eprintln!(
        "[{tag}-{kernel}] RIG: ready at {:.2}s (log {})",
        b.ready_at.as_secs_f64(),
        b.log.display()
    );
    b
}

pub fn driver_ok(b: &Booted) -> Duration {
    let t = must(b.driver_ok(Duration::from_secs(60)), "agent handshake");
    eprintln!("  DRIVER_OK at {:.2}s", t.as_secs_f64());
    t
}

/// The agent's pid. The agent logs to the same console, so its lines can
/// fall into the output: pidof's line is the one that is a number.
pub fn agent_pid(b: &Booted) -> u32 {
    let out = must(b.vm.run("pidof vmmci", Duration::from_secs(20)), "pidof");
    out.lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("one agent pid, got {out:?}\n{}", b.dump()))
}

/// `count` probe points, each an interval of guest − host (see
/// `vmmci_rig::clock`); logs each one's midpoint and width.
pub fn probe_points(b: &Booted, count: u32) -> Vec<clock::ProbeSample> {
    let p = must(b.probe_points(count), "clock probe");
    assert_eq!(p.len(), count as usize, "probe points: {p:?}");
    eprintln!(
        "  probe guest-host (midpoint, width): {}",
        clock::describe(&p)
    );
    p
}

/// Median midpoint of guest − host (ns) from `count` probe points.
pub fn probe(b: &Booted, count: u32) -> i64 {
    let mids: Vec<i64> = probe_points(b, count).iter().map(|p| p.mid_ns()).collect();
    stats::upper_median(&mids).unwrap()
}

/// The precision the agent claims after a step under TCG: |guest − host|
/// ≤ 5 ms.
pub const STEP_BOUND_NS: i64 = 5 * units::MS;

/// `count` probe points whose whole interval lies within `target ± bound`,
/// none wholly outside; points that straddle the bound are measured again,
/// never counted (`vmmci_rig::clock::check_within` says why).
pub fn assert_within(b: &Booted, count: usize, target: i64, bound: i64, what: &str) {
    let c = clock::check_within(count, target, bound, 5, Duration::from_secs(1), |n| {
        Ok::<_, ()>(probe_points(b, n as u32))
    })
    .unwrap();
    eprintln!("  {what}: {}", c.summary());
    assert!(c.passed(), "{what}: {}\n{}", c.summary(), b.dump());
}

/// Wait until the agent has acknowledged a SYNCRTC posted since the
/// `from`th event.
pub fn wait_rtc_acked(b: &Booted, from: usize, what: &str) {
    must(
        b.vm.wait_vmd(what, Duration::from_secs(20), |v| {
            v.events()[from.min(v.events().len())..]
                .iter()
                .any(|e| events::is_rtc_sync_acked(&e.kind))
        }),
        what,
    );
}

/// The VM ended at the guest's halt, as vmm ends it (HLT with interrupts
/// off): the console showed the halt, the end came with it, and vmd's last
/// word was that end.
pub fn assert_ended_at_the_halt(b: &Booted, e: &Ended) {
    vmmci_rig::scenario::assert_ended_at_the_halt(b, e);
    let last =
        b.vm.with_vmd(|v| v.events().last().map(|ev| ev.kind.clone()));
    assert_eq!(
        last,
        Some(EventKind::Ended(vmd_sim::VmEnd::Halted)),
        "{}",
        b.dump()
    );
}

/// A scenario on trixie's kernel, booted with `tag`: run again when its VM
/// ended on a guest kernel crash (see `vmmci_rig::rerun`).
pub fn on_trixie(tag: &str, scenario: impl Fn() + std::panic::RefUnwindSafe) {
    on_kernel(TRIXIE_CLOUD, tag, scenario);
}

/// The same rule on any kernel that crashes under QEMU 7.2's TCG now and
/// then (trixie's, bullseye's, forky's).
pub fn on_kernel(kernel: &str, tag: &str, scenario: impl Fn() + std::panic::RefUnwindSafe) {
    let log = artifacts::work_dir().join(format!("{tag}-{kernel}.log"));
    rerun::on_guest_crash(kernel, &log, scenario);
}
