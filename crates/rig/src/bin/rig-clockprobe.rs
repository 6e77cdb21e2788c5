//! Guest-side clock probe, independent of the agent.
//!
//! Finds the vmmci device (vendor 0x0b5d, device 0x0777) in sysfs, then N
//! times takes one bracketed point, as 4-byte writes to QUEUE_ADDRESS (0x08)
//! in resource0 (vmd stores QUEUE_ADDRESS and does nothing with it; the
//! simulator records each write with its host time):
//!
//! 1. read CLOCK_REALTIME: `g_before`;
//! 2. write the marker `PROBE_MARK`: the host stamps it on arrival (`h`),
//!    and the write returns only after the host has answered;
//! 3. read CLOCK_REALTIME: `g_after`;
//! 4. write `g_before`'s seconds (low 32 bits), its nanoseconds, and
//!    `g_after − g_before` in ns (saturated to u32): data, not stamped.
//!
//! The host's stamp fell between the two reads, so at that moment guest −
//! host lay in `[g_before − h, g_after − h]` (`vmmci_rig::clock`).
//!
//! One warm-up point with the marker `PROBE_WARMUP` comes first; the host
//! skips it.
//!
//! Usage: `rig-clockprobe [COUNT [INTERVAL_MS]]`   (defaults 5, 100)

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vmmci_rig::clock::{PROBE_MARK, PROBE_WARMUP};

const QUEUE_ADDRESS: u64 = 0x08;

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_nanos() as i128
}

fn find_device() -> Option<PathBuf> {
    let root = "/sys/bus/pci/devices";
    let mut found = Vec::new();
    for e in fs::read_dir(root).ok()? {
        let p = e.ok()?.path();
        let read = |f: &str| {
            fs::read_to_string(p.join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        if read("vendor") == "0x0b5d" && read("device") == "0x0777" {
            found.push(p);
        }
    }
    found.sort();
    found.into_iter().next()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let interval: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let Some(dev) = find_device() else {
        eprintln!("rig-clockprobe: no 0b5d:0777 device in /sys/bus/pci/devices");
        std::process::exit(2);
    };
    let res = dev.join("resource0");
    let f = match OpenOptions::new().read(true).write(true).open(&res) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rig-clockprobe: open {}: {e}", res.display());
            std::process::exit(2);
        }
    };
    let write = |what: &str, v: u32| {
        if let Err(e) = f.write_all_at(&v.to_le_bytes(), QUEUE_ADDRESS) {
            eprintln!("rig-clockprobe: write {what}: {e}");
            std::process::exit(1);
        }
    };
    let point = |mark: u32| {
        let before = now_ns();
        write("marker", mark);
        let after = now_ns();
        let sec = (before / 1_000_000_000) as u64;
        let nsec = (before % 1_000_000_000) as u32;
        let width = u32::try_from(after - before).unwrap_or(u32::MAX);
        write("seconds", sec as u32);
        write("nanoseconds", nsec);
        write("width", width);
        (sec, nsec, width)
    };
    // The first pass through this path (page faults, a cold vDSO, TCG
    // translating the code) is slow and would give a wide first point:
    // run it once with a marker the host does not take.
    point(PROBE_WARMUP);
    // Printed at the end: console output between points would keep the
    // serial port's interrupts busy during the next one.
    let mut lines = Vec::new();
    for i in 0..count {
        let (sec, nsec, width) = point(PROBE_MARK);
        lines.push(format!("RIG-PROBE {i} {sec}.{nsec:09} +{width}ns"));
        if i + 1 < count {
            std::thread::sleep(Duration::from_millis(interval));
        }
    }
    for l in lines {
        println!("{l}");
    }
    println!("RIG-PROBE-DONE {count}");
}
