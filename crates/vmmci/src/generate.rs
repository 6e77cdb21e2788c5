//! `vmmci generate`: the man page and shell completions, from the same CLI
//! definition that parses the command line, so they never drift apart.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs, Generated};
use crate::CliError;

const MAN_EXTRA: &str = r#".SH CLOCK
\fB[clock] mode\fR (\fB--clock-mode\fR) says what the agent does to the
guest clock. \fBdiscipline\fR, the default, steps when the host asks
(SYNCRTC), steps an offset beyond 1 ms in its first three samples and one
beyond \fBstep_threshold\fR (128 ms) at any time, both ways (a host clock
set back sends no SYNCRTC), and slews the rest through the kernel's tick and
frequency (\fBadjtimex\fR(2) ADJ_TICK, ADJ_FREQUENCY), so a clock up to
10 % off is followed; it samples every 2 s until locked, then every
\fBsample_interval\fR, and stands back while chronyd, ntpd, openntpd,
systemd-timesyncd, ptp4l or phc2sys runs. On exit or standing back it
leaves the kernel at the learned rate with the tick it found.
\fBstep-on-request\fR steps only on SYNCRTC and warns when the clock is far
off; \fBoff\fR never touches the clock.
.PP
Earlier builds defaulted to \fBstep-on-request\fR. A configuration file
that names a mode keeps it across upgrades; to go back, put
\fBmode = "step-on-request"\fR under \fB[clock]\fR in /etc/vmmci.toml.
.SH HOOKS
Programs of the administrator's own run around host events, as
open-vm-tools runs its power-operation scripts:
.B before-reboot
when the host asked for a reboot (REBOOT, \fBvmctl stop\fR), before the
init system's reboot command;
.B before-poweroff
when it asked for a power-off (SHUTDOWN), before the power-off command; and
.B after-step
after each step of the clock (SYNCRTC, \fBvmmci sync\fR, or
\fBdiscipline\fR finding the clock far off).
.PP
Each event runs the argv of its \fB[hooks]\fR key in /etc/vmmci.toml
(\fBbefore_reboot\fR, \fBbefore_poweroff\fR, \fBafter_step\fR; no shell,
bare names looked up in /usr/sbin:/usr/bin:/sbin:/bin), then every executable
regular file in /etc/vmmci/hooks.d/\fIevent\fR/ (\fBdir\fR) in name order,
one at a time. README files, hidden files and backups are passed over; a
missing or non-executable hook is reported once in the log and in
\fBvmmci status\fR, and skipped.
.PP
The acknowledgement to vmd never waits for a hook: the agent acknowledges,
then runs the before-* hooks and the init command in a thread of their own
while it goes on polling. Each hook runs as root with no standard input, in
its own process group, for at most \fBtimeout\fR (5 s; 100 ms to 20 s), and
is then killed with its group; all hooks of one event together get at most
20 s, well inside vmd's budgets. Its exit status, the time it took and the last
4 KiB of its output go to the log and to \fBvmmci status\fR (\fBhooks\fR in
the JSON).
.PP
Environment: \fBVMMCI_EVENT\fR (the event); \fBVMMCI_COMMAND\fR (REBOOT,
SHUTDOWN or SYNCRTC: the host's command behind the event; unset for a
periodic step or \fBvmmci sync\fR); after a step \fBVMMCI_STEP_NS\fR (the
step, ns, positive forward) and \fBVMMCI_CAUSE\fR (\fBrequest\fR or
\fBperiodic\fR).
.PP
Under systemd a hook runs in vmmci.service's sandbox: a read-only file
system (writable: /run/vmmci), no /tmp, no network, only CAP_SYS_TIME and
CAP_SYS_BOOT. Give a hook what it writes with a drop-in
(\fBsystemctl edit vmmci\fR: \fBReadWritePaths=\fR).
.SH FILES
.TP
.I /etc/vmmci.toml
Configuration; every key is optional and flags override it.
.TP
.I /etc/vmmci/hooks.d/
Hooks, one directory per event (before-reboot/, before-poweroff/,
after-step/), run in name order (see HOOKS).
.TP
.I /run/vmmci/status.json
The daemon's status record, written atomically; read by \fBvmmci status\fR.
.SH EXIT STATUS
0 on success; 1 on an error, with a message on standard error that says what to do;
2 on a usage error.
.SH NOTES
vmd's \fBvmctl stop\fR sends REBOOT and ends the VM when the guest resets.
The agent acknowledges within vmd's 3 s and reboots through init.
A power-off or halt inside a Linux guest needs nothing from vmmci: vmd has
no ACPI, so Linux ends it by halting the CPU with interrupts off, and vmm
ends the VM at once. Nothing is written to vmd on a power-off or a reboot.
.PP
At boot the agent claims the device (DRIVER_OK) as early as the init system
starts it; until then vmd ends the VM at once on \fBvmctl stop\fR. It never
clears DRIVER_OK afterwards: not when it exits (unless
\fBrelease_on_exit\fR), and a restarted agent only negotiates the features
again. A stop posted while no agent runs stays pending and the next agent
acknowledges it. During a shutdown it keeps running to the end and keeps
acknowledging.
.PP
Budgets: vmd allows 3 s for the acknowledgement, then 120 s (30 s before
2019) for the guest to reset; \fBrcctl stop vmd\fR kills its guests after
about 30 s. The agent calls sync(2) \fBgrace\fR (25 s) after the
acknowledgement if the guest is still up, and forces the reboot or power-off
\fBforce_after\fR (110 s) after it. Give slow services a stop timeout that
ends well before 110 s (systemd: \fBTimeoutStopSec=\fR).
.PP
SYNCRTC is acknowledged before the clock is stepped, because vmd's SYNCRTC
acknowledgement clears any command pending, a stop included.
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
