//! The command line, defined once for parsing, `--help`, the man page and
//! shell completions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::parse_duration;

/// Guest agent for OpenBSD vmd's VMM Control Interface (vmmci).
///
/// Drives vmd's control device from userspace through sysfs: shuts the
/// guest down cleanly on `vmctl stop`, steps the clock when the host asks
/// (SYNCRTC), and tracks drift against the host clock. No kernel module.
#[derive(Debug, Parser)]
#[command(
    name = "vmmci",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Configuration file (flags override it).
    #[arg(long, global = true, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Verbose trace of every decision (the old driver's debug=1).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Where PCI devices are listed (tests point it at a fake tree).
    #[arg(long, global = true, hide = true, value_name = "DIR", default_value = vmmci_transport::discover::SYSFS_PCI_DEVICES)]
    pub sysfs_root: PathBuf,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the agent: handshake, poll for commands, track drift, write status.
    Daemon(DaemonArgs),
    /// Show what the running agent is doing.
    Status(StatusArgs),
    /// Find the device and explain what vmmci sees (changes nothing).
    Probe(ProbeArgs),
    /// Step the clock to the host's once (with --dry-run, only show the offset).
    Sync(SyncArgs),
    /// Run the real agent against the built-in vmd simulator with a
    /// scripted host (boot, host suspend, vmctl stop) and show what
    /// happened. Touches nothing on this machine.
    Simulate(SimulateArgs),
    /// Write the man page or shell completions (for packagers).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(value_enum)]
    pub what: Generated,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Generated {
    /// vmmci(8) in roff.
    Man,
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct DeviceArg {
    /// PCI address of the vmmci device (default: found by its ids).
    #[arg(long, value_name = "BDF")]
    pub device: Option<String>,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub device: DeviceArg,
    /// Print nothing; exit 0 when the device is there, 1 when not (for
    /// service conditions).
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub device: DeviceArg,
    /// How often to read COMMAND (at most 2s: vmd wants an ACK within 3 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub poll_interval: Option<Duration>,
    /// How often to measure drift against the host clock.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub sample_interval: Option<Duration>,
    /// After a stop's ACK: when to sync file systems if still up.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// After a stop's ACK: when to force the reboot/power-off (before vmd's 120 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub force_after: Option<Duration>,
    /// Write device status 0 on exit (vmd then ends the VM at once on a stop).
    #[arg(long)]
    pub release_on_exit: bool,
    /// Where the status file goes.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// What to do to the clock: discipline (the default), step-on-request or off.
    #[arg(long, value_name = "MODE")]
    pub clock_mode: Option<vmmci_agent::ClockMode>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status record as JSON.
    #[arg(long, conflicts_with = "sysctl")]
    pub json: bool,
    /// Print vmmci.drift_sec / vmmci.drift_nsec like the old kernel driver.
    #[arg(long)]
    pub sysctl: bool,
    /// Where the daemon writes its status.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub device: DeviceArg,
    /// Only print the offset and its error bound.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Guest clock error at boot, in seconds (host − guest).
    #[arg(
        long,
        default_value_t = 1.5,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub boot_offset: f64,
    /// How long the simulated host sleeps (a suspend), in seconds.
    #[arg(long, default_value_t = 90, value_name = "SECONDS")]
    pub suspend: u32,
    /// How fast the simulated host's clock runs against the guest's, ppm.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "PPM",
        allow_negative_numbers = true
    )]
    pub host_ppm: f64,
    /// What the agent does to the clock: discipline (the default), step-on-request or off.
    #[arg(long, value_name = "MODE")]
    pub clock_mode: Option<vmmci_agent::ClockMode>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "vmmci",
            "daemon",
            "--poll-interval",
            "100ms",
            "--device",
            "0000:00:05.0",
        ])
        .unwrap();
        let Cmd::Daemon(d) = cli.command else {
            panic!()
        };
        assert_eq!(d.poll_interval, Some(Duration::from_millis(100)));
        assert_eq!(d.device.device.as_deref(), Some("0000:00:05.0"));
        assert!(Cli::try_parse_from(["vmmci", "daemon", "--poll-interval", "soon"]).is_err());
        assert!(Cli::try_parse_from(["vmmci", "status", "--json", "--sysctl"]).is_err());
    }
}
