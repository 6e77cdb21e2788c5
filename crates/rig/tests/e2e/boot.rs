//! The boot: the device enumerated, the agent's handshake, and the rig
//! itself without the agent.

use std::time::Duration;

use vmmci_rig::guest::Guest;
use vmmci_rig::units::SEC;
use vmmci_rig::vm::{Outcome, Vm, VmOptions};

use crate::common::*;

/// The agent's handshake in order (ACKNOWLEDGE, DRIVER, DRIVER_OK keeping
/// the other two), no access-rule violation; then a clean stop.
pub fn boot_with_agent(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::agent(), "boot");
    let t_ok = driver_ok(&b);
    let writes = assert_handshake_in_order(&b);
    eprintln!(
        "  [{kernel}] boot: ready {:.2}s, DRIVER_OK {:.2}s, status writes {writes:x?}",
        b.ready_at.as_secs_f64(),
        t_ok.as_secs_f64()
    );
    // And it stops cleanly.
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
}

/// The rig itself, without the agent: device enumerated, probe works.
pub fn boot_no_agent_probe(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::no_agent().with_disk(), "noagent");
    let lspci = must(
        b.vm.run(
            "cat /sys/bus/pci/devices/*/vendor /sys/bus/pci/devices/*/device",
            Duration::from_secs(20),
        ),
        "sysfs",
    );
    assert!(
        lspci.contains("0x0b5d") && lspci.contains("0x0777"),
        "device not enumerated: {lspci}"
    );
    let r = probe(&b, 5);
    // The guest set its clock from the CMOS RTC at boot: 1 s resolution.
    assert!(
        r.abs() < 3 * SEC / 2,
        "guest clock vs simulated host off by {r} ns before any jump"
    );
    b.vm.send_console("reboot").unwrap();
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::GuestReset);
    assert_fsck_clean(&b);
}

/// (b) No agent: DRIVER_OK never set, vmctl stop is refused and vmd ends
/// the VM at once.
pub fn no_agent_stop_refused() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::no_agent(), "refused");
    assert_eq!(b.vm.with_vmd(|v| v.device_status()), 0);
    assert!(
        b.vm.vmctl_stop().is_err(),
        "stop must be refused without DRIVER_OK"
    );
    let e = end(&b, Duration::from_secs(10));
    assert_outcome(&b, &e, Outcome::Refused);
}

/// No QEMU is an error that says what to install, never a skip.
pub fn qemu_missing_is_an_error() {
    let _g = serial();
    let old = std::env::var_os("VMMCI_QEMU");
    std::env::set_var("VMMCI_QEMU", "/nonexistent/qemu-system-x86_64");
    let r = Vm::start(VmOptions::new(
        "/nonexistent".into(),
        "/nonexistent".into(),
        std::env::temp_dir().join("rig-noqemu.log"),
    ));
    match old {
        Some(v) => std::env::set_var("VMMCI_QEMU", v),
        None => std::env::remove_var("VMMCI_QEMU"),
    }
    let err = r
        .err()
        .expect("Vm::start without QEMU must fail")
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}
