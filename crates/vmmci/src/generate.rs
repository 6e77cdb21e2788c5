//! `vmmci generate`: the man page and shell completions, from the same CLI
//! definition that parses the command line, so they never drift apart.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs, Generated};
use crate::CliError;

const MAN_EXTRA: &str = r#".SH FILES
.TP
.I /etc/vmmci.toml
Configuration; every key is optional and flags override it.
.TP
.I /run/vmmci/status.json
The daemon's status record, written atomically; read by \fBvmmci status\fR.
.SH EXIT STATUS
0 on success; 1 on an error, with a message on standard error that says what to do;
2 on a usage error.
.SH NOTES
vmd's \fBvmctl stop\fR sends REBOOT and ends the VM when the guest resets.
The agent acknowledges within vmd's 3 s and reboots through init; a guest
that powers off should run \fBvmmci notify-poweroff\fR after its file systems
are read-only, so vmd ends the VM 3 s later instead of leaving it halted.
.SH SEE ALSO
vmctl(8), vmd(8), vmmci(4) on OpenBSD; chronyd(8)
"#;

pub fn run(args: GenerateArgs) -> Result<ExitCode, CliError> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| CliError::Failed(format!("cannot write: {e}"));
    let result = write(args.what, &mut cmd, &mut out);
    match result {
        // `vmmci generate man | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => other.map(|()| ExitCode::SUCCESS).map_err(io),
    }
}

fn write(what: Generated, cmd: &mut clap::Command, out: &mut impl Write) -> std::io::Result<()> {
    match what {
        Generated::Man => {
            let man = clap_mangen::Man::new(cmd.clone())
                .section("8")
                .manual("System Manager's Manual");
            let mut page = Vec::new();
            man.render(&mut page)?;
            out.write_all(&page)?;
            out.write_all(MAN_EXTRA.as_bytes())?;
        }
        shell => {
            let shell = match shell {
                Generated::Bash => Shell::Bash,
                Generated::Zsh => Shell::Zsh,
                _ => Shell::Fish,
            };
            clap_complete::generate(shell, cmd, "vmmci", out);
        }
    }
    out.flush()
}
