//! One-shot device commands: `sync`.

use std::process::ExitCode;

use vmmci_actions::{InitPower, SystemClock};
use vmmci_agent::{fmt_bound, fmt_ns, Agent, Outcome};

use crate::cli::{DeviceArg, SyncArgs};
use crate::config::Config;
use crate::daemon::agent_config;
use crate::{device, CliError};

/// An agent over the real device with no handshake: the time registers and
/// COMMAND work without one, and a running daemon keeps its own.
fn agent(
    config: &Config,
    arg: &DeviceArg,
) -> Result<Agent<vmmci_transport::sysfs::SysfsBar, SystemClock, InitPower>, CliError> {
    let dev = device::open(
        &config.sysfs_root,
        arg.device.as_deref().or(config.device.as_deref()),
    )?;
    // Power is never used here: nothing below handles commands.
    Ok(Agent::new(
        dev.bar,
        SystemClock,
        InitPower::default(),
        agent_config(config),
    ))
}

pub fn sync(config: &Config, args: SyncArgs) -> Result<ExitCode, CliError> {
    let mut agent = agent(config, &args.device)?;
    if args.dry_run {
        let s = agent.sample()?;
        println!(
            "offset {} (host − guest), error bound ±{}, round trip {}",
            fmt_ns(s.offset_ns()),
            fmt_bound(s.error_bound_ns()),
            fmt_bound(s.round_trip_ns())
        );
        return Ok(ExitCode::SUCCESS);
    }
    match agent.step_to_host() {
        outcome @ (Outcome::Stepped(_) | Outcome::AlreadyRight { .. }) => {
            let residual = match &outcome {
                Outcome::Stepped(st) => st
                    .residual_ns
                    .map(|r| format!(", residual {}", fmt_ns(r)))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            println!("{outcome}{residual}");
            if let Outcome::Stepped(st) = &outcome {
                // Like a SYNCRTC's step in the daemon, with no host command.
                let hooks = vmmci_actions::Hooks::new(config.hooks.settings());
                hooks.run(
                    vmmci_actions::HookEvent::AfterStep,
                    &vmmci_actions::HookFacts::step(st, None),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(CliError::Failed(other.to_string())),
    }
}
