//! The ticker's work: vmd's timers, and the VM's end as vmd and vmm would
//! see it (vmd ending it, the guest's halt or reset, a guest kernel crash,
//! QEMU exiting).

use std::process::ExitStatus;

use vmd_sim::VmEnd;

use super::end::{crash_line, end_line, Ended, Outcome, GUEST_CRASH, HALT_MARKERS};
use super::Inner;

impl Inner {
    fn record(&self, outcome: Outcome, why: String, status: Option<ExitStatus>) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.ended.is_some() {
            return false;
        }
        let at = self.qemu.elapsed();
        self.qemu.log_line(&end_line(&outcome, &why));
        st.ended = Some(Ended {
            outcome,
            at,
            why,
            qemu_status: status.map(|s| format!("{s}")),
        });
        self.cv.notify_all();
        true
    }

    pub(super) fn tick(&self) -> bool {
        // vmd's timers and RTC.
        let end = {
            let mut v = self.vmd.lock().unwrap();
            v.poll();
            v.ended()
        };
        if let Some(end) = end {
            if self.state.lock().unwrap().ended.is_none() {
                self.record(end.into(), format!("vmd: {end}"), None);
                // vmd tears the VM down: the guest gets no say.
                self.qemu.kill();
            }
        }
        // A halted guest (acpi=off): QEMU just sits, vmm would fail the
        // vcpu at the HLT (interrupts off) and vmd end the VM at once.
        if self.state.lock().unwrap().halted_at.is_none() {
            let text = {
                let c = self.qemu.shared.console.lock().unwrap();
                let mut st = self.state.lock().unwrap();
                let from = st.halt_scan.saturating_sub(64);
                st.halt_scan = c.data.len();
                String::from_utf8_lossy(&c.data[from..]).into_owned()
            };
            // A crashed guest kernel never ends by itself: end the VM now
            // and say why, rather than wait for a timeout.
            if let Some(line) = crash_line(&text) {
                let why = format!("{GUEST_CRASH}: {line}");
                self.record(Outcome::QemuDied(GUEST_CRASH.into()), why, None);
                self.qemu.kill();
            }
            if HALT_MARKERS.iter().any(|m| text.contains(m)) {
                let at = self.qemu.elapsed();
                self.state.lock().unwrap().halted_at = Some(at);
                self.qemu.log_line("guest halted (console)");
                let end = {
                    let mut v = self.vmd.lock().unwrap();
                    v.guest_poweroff_halt();
                    v.ended()
                };
                if let Some(end) = end {
                    // Halted, or what ended it before (the record keeps the first).
                    self.record(end.into(), format!("vmm/vmd: {end}"), None);
                }
                // As vmm does: the guest has no say after its HLT.
                self.qemu.kill();
            }
        }
        if let Some(status) = self.qemu.try_wait() {
            if self.state.lock().unwrap().ended.is_none() {
                if status.success() {
                    // -no-reboot: QEMU exits on a guest reset. Tell vmd.
                    let end = {
                        let mut v = self.vmd.lock().unwrap();
                        v.guest_reset();
                        v.ended()
                    };
                    match end {
                        Some(VmEnd::CleanStop) => self.record(
                            Outcome::CleanStop,
                            "guest reset while stopping".into(),
                            Some(status),
                        ),
                        Some(e) => {
                            self.record(e.into(), format!("vmd: {e} (at reset)"), Some(status))
                        }
                        None => self.record(
                            Outcome::GuestReset,
                            "guest reset, no stop in progress".into(),
                            Some(status),
                        ),
                    };
                } else {
                    let tail = self.qemu.console_tail(500);
                    self.record(
                        Outcome::QemuDied(format!("{status}")),
                        format!("QEMU exited: {status}; console tail: {tail}"),
                        Some(status),
                    );
                }
            }
            return false;
        }
        true
    }
}
