//! vmd's deadline for the ACK under load.

use std::time::Duration;

use vmmci_rig::guest::Guest;
use vmmci_rig::{load, stats};

use crate::common::*;

/// vmd's deadline for the ACK holds under load: 10 boots of the busybox
/// guest with the agent at its defaults (poll every 250 ms, nice 0: no
/// priority help from an init system), each with one busy loop per vCPU and
/// a disk writer (dd with fsync to the data disk, in a loop) running when
/// `vmctl stop` comes. Every stop is acknowledged within 3 s and ends
/// clean, with an fsck-clean data disk. (The full-distro test
/// `i_boot_window_and_stop_under_load` does one such stop through the
/// packaged unit and its priorities; a distro boot costs ~10 busybox boots.)
pub fn ack_under_load_10_stops() {
    let _g = serial();
    let mut acks = vec![];
    for i in 1..=10 {
        let b = boot(
            BOOKWORM_CLOUD,
            Guest::agent().with_disk().args("daemon"),
            "load",
        );
        driver_ok(&b);
        let load = must(load::start(&b.vm, "/data"), "load");
        assert!(
            load.spinners >= load.cpus && load.writers >= 1 && load.busy > 0.9,
            "stop {i}: the load is not running: {load:?}\n{}",
            b.dump()
        );
        let stop = must(
            load::stop_and_time(&b.vm, Duration::from_secs(150)),
            "stop under load",
        );
        assert_outcome(&b, &stop.ended, vmmci_rig::vm::Outcome::CleanStop);
        let Some(ack) = stop.ack else {
            panic!("stop {i}: REBOOT not acknowledged\n{}", b.dump());
        };
        assert!(
            ack < Duration::from_secs(3),
            "stop {i}: ACK after {ack:?}\n{}",
            b.dump()
        );
        assert_fsck_clean(&b);
        eprintln!(
            "  stop {i:2} under load (CPU {:.0}% busy, {} spinner(s), {} writer(s)): ACK {:.3} s, VM end {:.2} s",
            load.busy * 100.0,
            load.spinners,
            load.writers,
            ack.as_secs_f64(),
            stop.end.as_secs_f64()
        );
        acks.push(ack);
    }
    let (m, max) = stats::median_max(&acks).unwrap();
    eprintln!(
        "  ACK under load: n={}, median {:.3} s, max {:.3} s (vmd allows 3 s); 10/10 clean stops",
        acks.len(),
        m.as_secs_f64(),
        max.as_secs_f64()
    );
}
