//! `vmmci probe`: find the device and say what is there, reading only.
//! Nothing is written, ISR is not read (reading clears it).

use std::path::Path;
use std::process::ExitCode;

use vmmci_actions::clocksource::{
    self, HostCpuid, HypervisorFacts, PROC_CPUINFO, SYSFS_CLOCKSOURCE,
};
use vmmci_actions::SystemClock;
use vmmci_agent::{fmt_bound, fmt_ns, Agent};
use vmmci_protocol::{status, Command, Features, Register};
use vmmci_transport::discover::{self, SYSFS_LOCKDOWN};
use vmmci_transport::sysfs::SysfsBar;
use vmmci_transport::RegisterIo;

use crate::cli::ProbeArgs;
use crate::config::Config;
use crate::daemon::agent_config;
use crate::CliError;

pub fn run(config: &Config, args: ProbeArgs) -> Result<ExitCode, CliError> {
    let bdf = args.device.device.as_deref().or(config.device.as_deref());
    if args.quiet {
        let found = discover::find(&config.sysfs_root, bdf).is_ok();
        return Ok(if found {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let pci = discover::find(&config.sysfs_root, bdf)?;
    println!("device:    {} ({})", pci.bdf, pci.path.display());
    println!(
        "identity:  {:04x}:{:04x} subsystem {:04x}:{:04x} rev {} class {:#08x}: OpenBSD vmd VMM Control Interface",
        pci.vendor, pci.device, pci.subsystem_vendor, pci.subsystem_device, pci.revision, pci.class
    );
    for note in pci.identity_notes() {
        println!("warning:   {note}");
    }
    match &pci.driver {
        Some(d) => {
            println!("driver:    {d} is bound to it (unexpected: vmmci is driven from userspace)")
        }
        None => println!("driver:    none (as expected: vmmci drives it from userspace)"),
    }
    let bar0 = pci.bar0()?;
    let decode = pci.io_decode_on()?;
    println!(
        "BAR0:      {} {:#x}-{:#x}, I/O decode {}",
        if bar0.is_io() {
            "I/O"
        } else {
            "memory (not vmd's layout)"
        },
        bar0.start,
        bar0.end,
        if decode {
            "on"
        } else {
            "OFF (the daemon turns it on)"
        }
    );
    let lockdown = discover::lockdown_mode(Path::new(SYSFS_LOCKDOWN));
    match &lockdown {
        Some(mode) => {
            println!("lockdown:  {mode}: register writes will be refused; boot with lockdown=none")
        }
        None => println!("lockdown:  none"),
    }
    let mut bar = SysfsBar::open(&pci.resource0())?;
    let offered = Features(bar.read(Register::DeviceFeatures)?);
    let dev_status = bar.read(Register::DeviceStatus)? as u8;
    let pending = bar.read(Register::Command)?;
    println!(
        "features:  offered {offered}, accepted {}",
        Features(bar.read(Register::GuestFeatures)?)
    );
    println!(
        "status:    {dev_status:#04x} ({})",
        if dev_status & status::DRIVER_OK != 0 {
            "DRIVER_OK: an agent claimed the device (it keeps it set when it exits: see vmmci status)"
        } else {
            "no agent: vmctl stop would kill this VM at once"
        }
    );
    println!(
        "command:   {}",
        Command::from_raw(pending)
            .map(|c| c.to_string())
            .unwrap_or_else(|e| e.to_string())
    );
    let mut agent = Agent::new(
        bar,
        SystemClock,
        vmmci_actions::InitPower::default(),
        agent_config(config),
    );
    match agent.sample() {
        Ok(s) => println!(
            "host time: offset {} (host − guest), ±{}",
            fmt_ns(s.offset_ns()),
            fmt_bound(s.error_bound_ns())
        ),
        Err(e) => println!("host time: unusable: {e}"),
    }
    // The rate a running agent has learned says how bad the clock source
    // is; one sample here cannot.
    let learned = vmmci_report::read_status(&config.run_dir)
        .ok()
        .and_then(|s| s.clock.learned_frequency_ppm);
    if let Some(ppm) = learned {
        println!("drift:     {ppm:+.3} ppm, as the running agent learned it");
    }
    print_clock_source(learned);
    Ok(ExitCode::SUCCESS)
}

/// The guest's clock source, what the host offers, and advice (with the
/// drift rate, when known).
fn print_clock_source(drift_ppm: Option<f64>) {
    let hypervisor = HypervisorFacts::read(&HostCpuid);
    let c = clocksource::read(
        SYSFS_CLOCKSOURCE.as_ref(),
        PROC_CPUINFO.as_ref(),
        &hypervisor,
    )
    .advise(drift_ppm);
    println!("clock:     source {}", c.summary());
    for a in &c.advice {
        println!("advice:    {a}");
    }
}
