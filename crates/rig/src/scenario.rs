//! What the scenario tests (`tests/e2e`, `tests/distro`) share: a booted
//! guest of either kind (the busybox guest, the full distro) as a
//! [`Subject`], and the checks they make of it. Like a test's assertions,
//! the checks panic, with the guest's dump in the message.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmd_sim::Event;
use vmmci_protocol::{status, timeouts};

use crate::distro::Distro;
use crate::events::{self, first_at};
use crate::guest::{self, Booted};
use crate::image;
use crate::restart;
use crate::vm::{Ended, Outcome, Vm};

/// A booted guest a scenario drives.
pub trait Subject {
    fn vm(&self) -> &Vm;
    /// The disk it writes to: the busybox guest's data disk, the distro's
    /// root file system copy.
    fn disk(&self) -> Option<&Path>;
    /// The vmd log, the rig's actions, the console tail and where the log
    /// is, for a failure's message.
    fn dump(&self) -> String;
}

impl Subject for Booted {
    fn vm(&self) -> &Vm {
        &self.vm
    }
    fn disk(&self) -> Option<&Path> {
        self.disk.as_deref()
    }
    fn dump(&self) -> String {
        Booted::dump(self)
    }
}

impl Subject for Distro {
    fn vm(&self) -> &Vm {
        &self.vm
    }
    fn disk(&self) -> Option<&Path> {
        Some(&self.disk)
    }
    fn dump(&self) -> String {
        Distro::dump(self)
    }
}

/// One VM at a time in a test binary: every scenario holds this.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The value, or a panic that says `what` failed and why.
pub fn must<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Wait for the VM to end and print how.
pub fn end(s: &impl Subject, timeout: Duration) -> Ended {
    let e = match s.vm().wait_end(timeout) {
        Ok(e) => e,
        Err(err) => panic!("VM end: {err}\n{}", s.dump()),
    };
    eprintln!(
        "  ended at {:.2}s: {:?} ({})",
        e.at.as_secs_f64(),
        e.outcome,
        e.why
    );
    e
}

pub fn assert_outcome(s: &impl Subject, e: &Ended, want: Outcome) {
    assert_eq!(
        e.outcome,
        want,
        "unexpected outcome ({})\n{}",
        e.why,
        s.dump()
    );
}

/// `e2fsck -fn` finds the disk clean.
pub fn assert_fsck_clean(s: &impl Subject) {
    let d = s.disk().expect("no disk");
    let r = must(image::fsck(d), "e2fsck");
    assert!(
        r.clean,
        "e2fsck -fn {} not clean (exit {}):\n{}\n{}",
        d.display(),
        r.exit_code,
        r.output,
        s.dump()
    );
}

/// Lines of the file a scenario writes, without a sync, just before the
/// guest goes down.
pub const LINES: u32 = 20000;

/// What that file holds.
pub fn expected_file() -> String {
    (1..=LINES).map(|i| format!("{i}\n")).collect()
}

/// Write that file at `path` in the guest, without a sync.
pub fn write_unsynced(s: &impl Subject, path: &str) {
    must(
        s.vm()
            .run(&format!("seq 1 {LINES} > {path}"), Duration::from_secs(30)),
        &format!("write {path}"),
    );
}

/// The file at `path` on the disk (as the disk's root sees it) is whole.
pub fn assert_file_whole(s: &impl Subject, path: &str) {
    let disk = s.disk().expect("no disk");
    let got = must(image::read_file(disk, path), "debugfs cat");
    assert_whole(s, path, &got);
}

/// `got`, the file `what` read back from the disk, is the whole file
/// ([`expected_file`]).
pub fn assert_whole(s: &impl Subject, what: &str, got: &[u8]) {
    let want = expected_file();
    assert!(
        got == want.as_bytes(),
        "{what} not whole on disk: {} of {} bytes\n{}",
        got.len(),
        want.len(),
        s.dump()
    );
}

/// The VM ended at the guest's halt, as vmm ends it (HLT with interrupts
/// off): Halted, and the console showed the halt within a second of it.
pub fn assert_ended_at_the_halt(s: &impl Subject, e: &Ended) {
    assert_outcome(s, e, Outcome::Halted);
    let Some(h) = s.vm().halted_at() else {
        panic!("ended as Halted, but no halt on the console\n{}", s.dump());
    };
    assert!(
        e.at.saturating_sub(h) < Duration::from_secs(1),
        "the VM ended {:?} after the halt, not at it\n{}",
        e.at.saturating_sub(h),
        s.dump()
    );
}

/// From `writes[from..]`: ACKNOWLEDGE, then DRIVER, then DRIVER_OK (which
/// keeps the other two); the index of the DRIVER_OK write.
pub fn assert_handshake(s: &impl Subject, writes: &[u8], from: usize) -> usize {
    let w = &writes[from.min(writes.len())..];
    let first = |bit: u8| w.iter().position(|x| x & bit != 0);
    let (a, b, o) = (
        first(status::ACKNOWLEDGE),
        first(status::DRIVER),
        first(status::DRIVER_OK),
    );
    assert!(
        a.is_some() && b.is_some() && o.is_some() && a < b && b < o && w[o.unwrap()] & 7 == 7,
        "handshake ACKNOWLEDGE -> DRIVER -> DRIVER_OK not in status writes {writes:x?} (from {from})\n{}",
        s.dump()
    );
    from + o.unwrap()
}

/// The agent's handshake as vmd saw it, once DRIVER_OK is set: every status
/// write in order ([`assert_handshake`]), and no access that broke vmd's
/// rules. The status writes.
pub fn assert_handshake_in_order(s: &impl Subject) -> Vec<u8> {
    let (writes, violations) = s
        .vm()
        .with_vmd(|v| (v.status_writes().to_vec(), v.violations().to_vec()));
    assert_handshake(s, &writes, 0);
    assert!(
        violations.is_empty(),
        "access-rule violations: {violations:#?}\n{}",
        s.dump()
    );
    writes
}

/// No guest access broke vmd's access rules.
pub fn assert_no_violations(s: &impl Subject) {
    let violations = s.vm().with_vmd(|v| v.violations().len());
    assert_eq!(violations, 0, "access-rule violations\n{}", s.dump());
}

/// The agent's status record, from `vmmci status --json` in the guest.
pub fn agent_status(s: &impl Subject) -> vmmci_report::Status {
    match guest::agent_status(s.vm()) {
        Ok(st) => st,
        Err(e) => panic!("vmmci status: {e}\n{}", s.dump()),
    }
}

/// Poll the agent's status every 2 s until `cond` holds; the status it held on.
pub fn wait_status(
    s: &impl Subject,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&vmmci_report::Status) -> bool,
) -> vmmci_report::Status {
    let deadline = Instant::now() + timeout;
    loop {
        let st = agent_status(s);
        if cond(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {st:?}\n{}",
            s.dump()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The agent was ended under a stop and started again: the markers of the
/// watcher ([`restart::watcher_cmd`]) on the console since `from` show an
/// old and a new agent, and the status file that showed REBOOT
/// acknowledged was written by the new one. `(old, new)` pids.
pub fn assert_acked_by_new_agent(s: &impl Subject, from: usize, tag: &str) -> (u32, u32) {
    let console = s.vm().console_text();
    let pid = |m: &str| restart::marker_pid(&console, from, m);
    let (old, new, acked_by) = (
        pid(restart::OLD_PID),
        pid(restart::NEW_PID),
        pid(restart::ACKED_BY),
    );
    let (Some(o), Some(n)) = (old, new) else {
        panic!(
            "[{tag}] old agent {old:?}, new agent {new:?}: was it started again?\n{}",
            s.dump()
        );
    };
    assert_ne!(
        o,
        n,
        "[{tag}] the same agent pid before and after\n{}",
        s.dump()
    );
    assert_eq!(
        acked_by,
        new,
        "[{tag}] the status file showing REBOOT acknowledged was written by pid {acked_by:?}, \
         not the new agent {new:?} (old {old:?})\n{}",
        s.dump()
    );
    (o, n)
}

/// When a `vmctl stop` met an agent restart: the REBOOT posted and acknowledged.
pub struct StopThroughRestart {
    /// vmd's events from the scenario's start on.
    pub events: Vec<Event>,
    /// Simulator times of the stop and of the REBOOT's ACK.
    pub stop: Duration,
    pub ack: Duration,
}

/// Issue 10 §3: a `vmctl stop` during an agent restart ended `e` well. No
/// status write without DRIVER_OK after the first DRIVER_OK (a stop there
/// is refused and the VM ended at once), the stop scheduled inside the new
/// handshake (if any) ran, no stop refused, a clean stop, and REBOOT
/// acknowledged within vmd's 3 s. `ev0`: vmd's first event of the scenario.
pub fn assert_stop_through_restart(
    s: &impl Subject,
    e: &Ended,
    ev0: usize,
    tag: &str,
) -> StopThroughRestart {
    let vm = s.vm();
    let evs = vm.events_since(ev0);
    let (writes, left) = vm.with_vmd(|v| (v.status_writes().to_vec(), v.scheduled()));
    let dropped = restart::driver_ok_dropped(&writes);
    assert!(
        dropped.is_empty(),
        "[{tag}] status written without DRIVER_OK after DRIVER_OK (index, value): \
         {dropped:x?} in {writes:x?}: a `vmctl stop` there is refused and the VM ended at \
         once\n{}",
        s.dump()
    );
    assert_eq!(
        left,
        0,
        "[{tag}] the stop scheduled inside the new handshake never ran (the new agent \
         did not read the device features)\n{}",
        s.dump()
    );
    assert!(
        !evs.iter().any(|e| events::is_refused(&e.kind)),
        "[{tag}] vmctl stop refused\n{}",
        s.dump()
    );
    assert_outcome(s, e, Outcome::CleanStop);
    let (Some(stop), Some(ack)) = (
        first_at(&evs, events::is_reboot_stop),
        first_at(&evs, events::is_reboot_ack),
    ) else {
        panic!(
            "[{tag}] REBOOT posted and acknowledged in vmd's log\n{}",
            s.dump()
        );
    };
    let took = ack.saturating_sub(stop);
    assert!(
        took < timeouts::ACK,
        "[{tag}] REBOOT acknowledged {took:?} after the stop\n{}",
        s.dump()
    );
    StopThroughRestart {
        events: evs,
        stop,
        ack,
    }
}
