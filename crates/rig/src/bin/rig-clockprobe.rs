//! Guest-side clock probe, independent of the agent.
//!
//! Finds the vmmci device (vendor 0x0b5d, device 0x0777) in sysfs, then N
//! times: reads CLOCK_REALTIME and writes its seconds (low 32 bits), then its
//! microseconds, as two 4-byte writes to QUEUE_ADDRESS (0x08) in resource0.
//! vmd stores QUEUE_ADDRESS and does nothing with it; the simulator records
//! each write with its host time, so the host can compute guest − host.
//!
//! Usage: rig-clockprobe [COUNT [INTERVAL_MS]]   (defaults 5, 100)

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const QUEUE_ADDRESS: u64 = 0x08;

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
    for i in 0..count {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock before 1970");
        let sec = now.as_secs() as u32;
        let usec = now.subsec_micros();
        if let Err(e) = f.write_all_at(&sec.to_le_bytes(), QUEUE_ADDRESS) {
            eprintln!("rig-clockprobe: write sec: {e}");
            std::process::exit(1);
        }
        if let Err(e) = f.write_all_at(&usec.to_le_bytes(), QUEUE_ADDRESS) {
            eprintln!("rig-clockprobe: write usec: {e}");
            std::process::exit(1);
        }
        println!("RIG-PROBE {i} {sec}.{usec:06}");
        if i + 1 < count {
            std::thread::sleep(Duration::from_millis(interval));
        }
    }
    println!("RIG-PROBE-DONE {count}");
}
