//! QEMU's command line: a small PC without ACPI (as vmd has none), memfd
//! RAM, `-no-reboot`, the serial console on stdio, the data disk, and the
//! proxy device last on the bus (as vmd creates vmmci last).

use std::os::fd::RawFd;

use super::QemuOptions;

/// QEMU's arguments for `opts`, the proxy device on the inherited socket
/// `proxy_fd`.
pub(super) fn args(opts: &QemuOptions, proxy_fd: RawFd) -> Vec<String> {
    let mut append = String::from("console=ttyS0");
    append.push_str(&guest_clock_params());
    if opts.data_disk.is_some() {
        append.push_str(" rig.data");
    }
    if !opts.append.is_empty() {
        append.push(' ');
        append.push_str(&opts.append);
    }
    let mem = format!("{}M", opts.memory_mb);
    let mut args: Vec<String> = vec![
        "-accel".into(),
        "tcg".into(),
        "-machine".into(),
        "pc,acpi=off,memory-backend=mem".into(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-m".into(),
        mem,
        "-smp".into(),
        "1".into(),
        "-nodefaults".into(),
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        "-kernel".into(),
        opts.kernel.display().to_string(),
        "-initrd".into(),
        opts.initramfs.display().to_string(),
        "-append".into(),
        append,
    ];
    if let Some(disk) = &opts.data_disk {
        args.push("-drive".into());
        args.push(format!(
            "file={},format=raw,if=none,id=data0,cache=writeback",
            disk.display()
        ));
        args.push("-device".into());
        args.push("virtio-blk-pci,drive=data0".into());
    }
    args.extend(opts.extra_args.iter().cloned());
    // vmd creates vmmci last: keep the proxy device last on the bus.
    args.push("-device".into());
    args.push(format!("x-pci-proxy-dev,id=vmmci0,fd={proxy_fd}"));
    args
}

/// Kernel parameters that give the guest a real clock under TCG. With
/// `acpi=off` (vmd has no ACPI) there is no HPET, and the kernel cannot
/// calibrate the TSC against the emulated PIT, so it falls back to a
/// jiffies clock with 4 ms steps that loses time whenever TCG delivers a
/// tick late: useless for measuring a clock agent. Under TCG the guest's
/// TSC is the host's, so when the host's TSC is constant, hand its
/// frequency to the guest. (Under vmd, Linux guests get the TSC and a
/// pvclock: a fine clock, as this gives.)
pub fn guest_clock_params() -> String {
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return String::new();
    };
    if !cpuinfo.contains(" constant_tsc") {
        return String::new();
    }
    let mhz = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("cpu MHz")?
            .split(':')
            .nth(1)?
            .trim()
            .parse::<f64>()
            .ok()
    });
    match mhz {
        Some(mhz) if mhz > 100.0 => format!(
            " tsc_early_khz={} tsc=reliable",
            (mhz * 1000.0).round() as u64
        ),
        _ => String::new(),
    }
}
