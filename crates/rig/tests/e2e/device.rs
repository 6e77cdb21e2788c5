//! The device leaves the guest's PCI bus and comes back.

use std::time::Duration;

use vmmci_protocol::status;
use vmmci_rig::guest::Guest;
use vmmci_rig::vm::Outcome;

use crate::common::*;

/// The device vanishes from the guest's PCI bus (hot-remove) and comes
/// back (rescan): the agent logs it, reopens `resource0`, redoes the
/// handshake, and the next `vmctl stop` is handled.
pub fn device_removed_and_rescanned_agent_recovers() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent(), "hotplug");
    driver_ok(&b);
    let bdf = must(
        b.vm.run(
            "basename $(dirname $(grep -l 0x0777 /sys/bus/pci/devices/*/device))",
            Duration::from_secs(20),
        ),
        "find the device",
    );
    let bdf = bdf.trim().to_string();
    assert!(bdf.starts_with("0000:"), "device not found: {bdf}");
    let writes_before = b.vm.n_status_writes();
    let from = b.vm.console_len();
    must(
        b.vm.run(
            &format!("echo 1 > /sys/bus/pci/devices/{bdf}/remove"),
            Duration::from_secs(20),
        ),
        "remove",
    );
    // The agent's next poll fails and it says so, once; then the device
    // comes back.
    must(
        b.vm.wait_console_from(from, "ERROR", Duration::from_secs(20)),
        "agent noticing the removal",
    );
    must(
        b.vm.run("echo 1 > /sys/bus/pci/rescan", Duration::from_secs(20)),
        "rescan",
    );
    must(
        b.vm.wait_console_from(from, "device answers again", Duration::from_secs(20)),
        "agent recovery",
    );
    // The device kept DRIVER_OK through the removal: the second handshake
    // only writes DRIVER_OK again, never a status without it.
    let writes = b.vm.with_vmd(|v| v.status_writes().to_vec());
    assert!(
        writes.len() > writes_before,
        "no second handshake: {writes:x?}\n{}",
        b.dump()
    );
    assert!(
        writes[writes_before..]
            .iter()
            .all(|w| w & status::DRIVER_OK != 0),
        "DRIVER_OK dropped by the second handshake: {writes:x?}"
    );
    b.vm.vmctl_stop().expect("stop accepted after recovery");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
}
