//! `vmmci status`: what the running agent last wrote.

use std::process::ExitCode;

use vmmci_actions::SystemClock;
use vmmci_agent::GuestClock;
use vmmci_report::{read_status, render_sysctl, render_text};

use crate::cli::StatusArgs;
use crate::config::Config;
use crate::CliError;

pub fn run(config: &Config, args: StatusArgs) -> Result<ExitCode, CliError> {
    let dir = args.run_dir.as_deref().unwrap_or(&config.run_dir);
    let status = read_status(dir)?;
    if args.json {
        let text =
            serde_json::to_string_pretty(&status).map_err(|e| CliError::Failed(e.to_string()))?;
        println!("{text}");
    } else if args.sysctl {
        let text = render_sysctl(&status).ok_or_else(|| {
            CliError::Failed("no drift measured yet; try again in a few seconds".into())
        })?;
        print!("{text}");
    } else {
        print!(
            "{}",
            render_text(&status, process_alive(status.pid), SystemClock.now_ns())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `pid` still runs (a status left by a dead agent is stale).
fn process_alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}
