//! Part `distro`: `vmctl stop` in the Debian 12 images, each on a fresh boot
//! and each held to a clean end and a clean file system.

use std::time::Duration;

use serde_json::{Map, Value};
use vmmci_rig::distro::{self, BootOptions, Image, Init};
use vmmci_rig::figures::{self, figure};
use vmmci_rig::{image, load, RigError};

use crate::clean_stop;
use crate::cli::Args;

/// systemd (`distro_stops`), OpenRC (`openrc_stops`), and loaded stops
/// through the systemd unit (`distro_load_stops`).
pub fn measure(args: &Args) -> Result<Value, RigError> {
    let mut out = Map::new();
    let runs = [
        ("systemd", Init::Systemd, args.distro_stops, false),
        ("openrc", Init::OpenRc, args.openrc_stops, false),
        ("systemd_load", Init::Systemd, args.distro_load_stops, true),
    ];
    for (key, init, n, loaded) in runs {
        if n == 0 {
            continue;
        }
        let img = Image::locate_init(init)?;
        let (mut acks, mut ends) = (vec![], vec![]);
        for i in 0..n {
            let (ack, end) = stop(&img, key, i, loaded)?;
            acks.push(figures::ms(ack));
            ends.push((end.as_secs_f64() * 1e3).round() / 1e3);
        }
        out.insert(format!("{key}_ack_ms"), figure("ms", &acks));
        out.insert(format!("{key}_stop_s"), figure("s", &ends));
    }
    Ok(Value::Object(out))
}

/// Stop `i` of `key`: boot, wait for DRIVER_OK, start the load when
/// `loaded`, `vmctl stop`, then `e2fsck -fn` the disk. The ACK's delay and
/// the time to the VM's end.
fn stop(img: &Image, key: &str, i: usize, loaded: bool) -> Result<(Duration, Duration), RigError> {
    let d = distro::boot(img, BootOptions::new(&format!("bench-{key}-{i}")))?;
    d.vm.wait_vmd("DRIVER_OK", Duration::from_secs(60), |v| {
        v.device_status() & vmmci_protocol::status::DRIVER_OK != 0
    })?;
    if loaded {
        load::start(&d.vm, "/root")?;
    }
    let stop = load::stop_and_time(&d.vm, Duration::from_secs(150))?;
    let ack = clean_stop::acked(&format!("{key} stop {i}"), &stop.ended, stop.ack, || {
        d.dump()
    })?;
    let fsck = image::fsck(&d.disk)?;
    if !fsck.clean {
        return Err(RigError::Missing(format!(
            "{key} stop {i}: e2fsck -fn not clean (exit {}):\n{}\n{}",
            fsck.exit_code,
            fsck.output,
            d.dump()
        )));
    }
    eprintln!(
        "{key} stop {:>2}: ack {:>8.3} ms, VM ended {:>7.2} s after vmctl stop, file system clean",
        i + 1,
        figures::ms(ack),
        stop.end.as_secs_f64()
    );
    d.discard();
    Ok((ack, stop.end))
}
