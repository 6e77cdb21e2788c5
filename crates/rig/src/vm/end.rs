//! How a VM ended: vmd's ends, a guest reset, QEMU gone, or a guest kernel
//! crash, and the line the rig writes to the console log about it.

use std::time::Duration;

use vmd_sim::VmEnd;

/// How the VM ended, as the host sees it. All but two are vmd's ends, of
/// the same names ([`VmEnd`] says what each means), grouped here by who
/// ended the VM; the rig adds a guest reset with no stop in progress and
/// QEMU gone on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    // The guest ended it: QEMU exited on its reset (stopping or not), or
    // it halted with interrupts off (a Linux power-off or halt without
    // ACPI; not a clean stop: vmd logs a failed vcpu), or it wrote a
    // power-down (the agent never does).
    CleanStop,
    /// A reboot inside the guest, no stop in progress (vmd would restart
    /// the VM; the rig does not).
    GuestReset,
    Halted,
    PowerDown,
    // vmd ended it: a deadline ran out, a stop was refused, or forced.
    AckTimeout,
    LongTimeout,
    Refused,
    Forced,
    /// QEMU went away on its own (crash, or a clean exit we cannot
    /// explain), or the rig ended it on a guest kernel crash
    /// ([`GUEST_CRASH`]).
    QemuDied(String),
}

impl From<VmEnd> for Outcome {
    fn from(e: VmEnd) -> Outcome {
        match e {
            VmEnd::CleanStop => Outcome::CleanStop,
            VmEnd::AckTimeout => Outcome::AckTimeout,
            VmEnd::LongTimeout => Outcome::LongTimeout,
            VmEnd::PowerDown => Outcome::PowerDown,
            VmEnd::Halted => Outcome::Halted,
            VmEnd::Refused => Outcome::Refused,
            VmEnd::Forced => Outcome::Forced,
        }
    }
}

/// The end of a VM, with why and when (monotonic since QEMU was spawned).
#[derive(Clone, Debug)]
pub struct Ended {
    pub outcome: Outcome,
    pub at: Duration,
    pub why: String,
    pub qemu_status: Option<String>,
}

/// The guest kernel's last line before `cli; hlt` on a power-off or halt
/// without ACPI (6.12 says "Power off not available: System halted instead").
pub(super) const HALT_MARKERS: &[&str] = &[
    "reboot: Power down",
    "System halted",
    "reboot: System halted",
];

/// What a guest kernel prints when it crashes (an oops may leave it hung).
pub const GUEST_CRASH_MARKERS: &[&str] = &["Kernel panic - not syncing", "Oops: "];

/// [`Outcome::QemuDied`] of a VM the rig ended on a guest kernel crash.
pub const GUEST_CRASH: &str = "guest kernel crash";

/// The console line that shows a guest kernel crash in `text`, if any
/// (what follows the first marker, up to the end of its line).
pub(super) fn crash_line(text: &str) -> Option<String> {
    let at = GUEST_CRASH_MARKERS
        .iter()
        .filter_map(|m| text.find(m))
        .min()?;
    let line = text[at..].lines().next().unwrap_or_default();
    Some(line.trim().to_string())
}

/// The line the ticker writes to the console log when the VM ends.
pub(super) fn end_line(outcome: &Outcome, why: &str) -> String {
    format!("VM ended: {outcome:?}: {why}")
}

/// Why the VM whose console log is `log` ended, if the rig ended it on a
/// guest kernel crash: the crash's console line. Reads the end the rig
/// recorded (the first "VM ended" line), not the console: a crash message
/// after the VM had ended some other way does not count.
pub fn guest_crash_in_log(log: &str) -> Option<String> {
    let ended = log
        .lines()
        .filter_map(|l| l.strip_prefix("### rig [")?.split_once("] "))
        .map(|(_, said)| said)
        .find(|said| said.starts_with("VM ended: "))?;
    let why = ended.strip_prefix(&end_line(&Outcome::QemuDied(GUEST_CRASH.into()), ""))?;
    let line = why
        .strip_prefix(GUEST_CRASH)
        .and_then(|w| w.strip_prefix(": "));
    Some(line.unwrap_or(why).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_is_read_from_the_recorded_end() {
        let console = "[ 1.0] x\n[ 2.5] Kernel panic - not syncing: Fatal exception\r\nmore";
        let line = crash_line(console).unwrap();
        assert_eq!(line, "Kernel panic - not syncing: Fatal exception");
        assert_eq!(crash_line("[ 1.0] all well"), None);
        let why = format!("{GUEST_CRASH}: {line}");
        let log = format!(
            "### rig: qemu ...\n{console}\n### rig [   3.000s] {}\n### rig [   3.100s] {}\n",
            end_line(&Outcome::QemuDied(GUEST_CRASH.into()), &why),
            end_line(&Outcome::CleanStop, "later")
        );
        assert_eq!(guest_crash_in_log(&log), Some(line));
        // The first recorded end counts, not a crash on the console after it.
        let log = format!(
            "{console}\n### rig [   3.000s] {}\n",
            end_line(&Outcome::CleanStop, "guest reset while stopping")
        );
        assert_eq!(guest_crash_in_log(&log), None);
        assert_eq!(guest_crash_in_log(console), None);
    }
}
