//! Part `window`: kernel start → DRIVER_OK in both Debian 12 images, beside
//! the point where the old kernel module would have claimed the device.

use serde_json::{json, Map, Value};
use vmmci_rig::distro::{self, BootOptions, Image, Init};
use vmmci_rig::figures::figure;
use vmmci_rig::window::{self, BootWindow};
use vmmci_rig::RigError;

/// `n` boots of each image, printed as a table and as JSON.
pub fn measure(n: usize) -> Result<Value, RigError> {
    let mut out = Map::new();
    let mut all: Vec<BootWindow> = vec![];
    for (key, init) in [("systemd", Init::Systemd), ("openrc", Init::OpenRc)] {
        let ws = boots(init, n)?;
        out.insert(key.into(), windows_json(&ws));
        all.extend(ws);
    }
    print(&all);
    Ok(Value::Object(out))
}

/// `n` fresh boots of the `init` image, each with the module's stand-in.
fn boots(init: Init, n: usize) -> Result<Vec<BootWindow>, RigError> {
    let img = Image::locate_init(init)?;
    let mut ws = vec![];
    for i in 0..n {
        let mut o = BootOptions::new(&format!(
            "bench-window-{}-{i}",
            img.prompt().trim_end_matches("# ")
        ));
        o.prepare = Some(Box::new(window::prepare_module_stand_in));
        let d = distro::boot(&img, o)?;
        let w = window::measure(&d, init)?;
        eprintln!("boot window: {w}");
        d.vm.kill();
        d.discard();
        ws.push(w);
    }
    Ok(ws)
}

/// One image's figures and every boot's record.
fn windows_json(ws: &[BootWindow]) -> Value {
    let pts =
        |f: &dyn Fn(&BootWindow) -> Option<f64>| -> Vec<f64> { ws.iter().filter_map(f).collect() };
    let boots: Vec<Value> = ws.iter().map(BootWindow::json).collect();
    json!({
        "driver_ok_s": figure("s", &pts(&|w| Some(w.driver_ok))),
        "agent_started_s": figure("s", &pts(&|w| w.agent_started)),
        "old_module_s": figure("s", &pts(&|w| w.module_loaded)),
        "boots": boots,
    })
}

fn print(all: &[BootWindow]) {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
    println!(
        "\n{:<8} {:>14} {:>14} {:>16} {:>14}  note",
        "init", "DRIVER_OK (s)", "agent start", "old module (s)", "difference"
    );
    for w in all {
        println!(
            "{:<8} {:>14.2} {:>14} {:>16} {:>14}  kernel start = 0 (QEMU -> kernel {:.2} s){}",
            w.init,
            w.driver_ok,
            opt(w.agent_started),
            opt(w.module_loaded),
            opt(w.vs_module()),
            w.qemu_to_kernel,
            w.modules_service_done.map_or(String::new(), |m| format!(
                "; systemd-modules-load done {m:.2} s"
            ))
        );
    }
}
