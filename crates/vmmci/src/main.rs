//! `vmmci`: the thin binary. Each subcommand lives in its own module; the
//! work is done by the library crates.

mod cli;
mod config;
mod daemon;
mod device;
mod generate;
mod oneshot;
mod probe;
mod simulate;
mod status;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Cmd};
use crate::config::{Config, ConfigError};

/// Everything a subcommand can fail with, each with a message that says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Transport(#[from] vmmci_transport::TransportError),
    #[error(transparent)]
    Agent(#[from] vmmci_agent::AgentError),
    #[error(transparent)]
    Status(#[from] vmmci_report::StatusError),
    #[error("{0}")]
    Failed(String),
}

/// Unix time this binary was built, less a day of slack for build hosts
/// whose clock runs ahead.
pub fn not_before_sec() -> u32 {
    let built: u64 = env!("VMMCI_BUILD_TIME").parse().unwrap_or(0);
    built.saturating_sub(86_400).min(u32::MAX as u64) as u32
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let named = cli.config.as_os_str() != config::DEFAULT_CONFIG;
    let config = match Config::load(&cli.config, named) {
        Ok(c) => Config {
            sysfs_root: cli.sysfs_root.clone(),
            ..c
        },
        Err(e) => return fail(&e.into()),
    };
    // simulate tells its own story on stdout; the agent's logs would repeat it.
    let quiet = matches!(cli.command, Cmd::Simulate(_)) && !cli.debug;
    init_logging(cli.debug || config.debug, quiet);
    let result = match cli.command {
        Cmd::Daemon(args) => daemon::run(config, args, &cli.config, named),
        Cmd::Status(args) => status::run(&config, args),
        Cmd::Probe(args) => probe::run(&config, args),
        Cmd::Sync(args) => oneshot::sync(&config, args),
        Cmd::Simulate(args) => simulate::run(&config, args),
        Cmd::Generate(args) => generate::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(e: &CliError) -> ExitCode {
    eprintln!("vmmci: error: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
    ExitCode::FAILURE
}

/// Logs go to stderr: the journal under systemd, the console or syslog
/// elsewhere. No timestamps under systemd, which adds its own.
fn init_logging(debug: bool, quiet: bool) {
    let level = match (debug, quiet) {
        (true, _) => tracing::Level::DEBUG,
        // `simulate` tells every decision, warnings included, itself.
        (false, true) => tracing::Level::ERROR,
        (false, false) => tracing::Level::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
