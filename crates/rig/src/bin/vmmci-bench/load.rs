//! Part `load`: the ACK of `vmctl stop` in busybox guests with one busy loop
//! per vCPU and a disk writer running.

use std::time::Duration;

use serde_json::{json, Value};
use vmmci_rig::figures::{self, figure};
use vmmci_rig::guest::{self, Guest};
use vmmci_rig::{load, RigError};

use crate::clean_stop;

/// `n` loaded stops, one boot each: REBOOT posted → ACK, and the VM's end.
pub fn measure(kernel: &str, n: usize) -> Result<Value, RigError> {
    let (mut acks, mut ends, mut busy) = (vec![], vec![], vec![]);
    for i in 0..n {
        let b = guest::boot(
            kernel,
            &Guest::agent().with_disk().args("daemon"),
            "bench-load",
        )?;
        b.driver_ok(Duration::from_secs(60))?;
        let l = load::start(&b.vm, "/data")?;
        let stop = load::stop_and_time(&b.vm, Duration::from_secs(150))?;
        let ack = clean_stop::acked(&format!("loaded stop {i}"), &stop.ended, stop.ack, || {
            b.dump()
        })?;
        eprintln!(
            "loaded stop {:>2}: CPU {:.0}% busy, ack {:>8.3} ms, VM ended {:>9.3} ms after vmctl stop",
            i + 1,
            l.busy * 100.0,
            figures::ms(ack),
            figures::ms(stop.end)
        );
        acks.push(figures::ms(ack));
        ends.push(figures::ms(stop.end));
        busy.push((l.busy * 1000.0).round() / 10.0);
    }
    Ok(json!({
        "ack_ms": figure("ms", &acks),
        "stop_to_end_ms": figure("ms", &ends),
        "busy_percent": figure("%", &busy),
    }))
}
