//! Agent restarts under a `vmctl stop` (issue 10 §3): who answered, and
//! when the device status changed.
//!
//! The simulator knows *when* REBOOT was acknowledged but not *which*
//! process wrote the ACK; the guest knows. [`watcher_cmd`] starts a guest
//! shell watcher that prints the old agent's pid, the new agent's pid once
//! it runs, and the pid in the status file once that file shows REBOOT
//! acknowledged (the status file is written by the agent that handled the
//! command, right after the tick that acknowledged it). [`StatusWatch`]
//! polls the simulator's status writes and stamps each with the simulator's
//! time, so a test can say when the new agent set DRIVER_OK.

use std::time::{Duration, Instant};

use vmmci_protocol::status;

use crate::vm::Vm;

/// Console marker: the agent's pid before the signal.
pub const OLD_PID: &str = "RIG-OLDPID:";
/// Console marker: the first agent pid seen that is not the old one.
pub const NEW_PID: &str = "RIG-NEWPID:";
/// Console marker: the `pid` of the status file that shows REBOOT acknowledged.
pub const ACKED_BY: &str = "RIG-ACKEDBY:";

/// One shell line (POSIX sh: busybox ash and bash) that sets `$old` to the
/// running agent's pid (`pid_cmd`, which prints one pid, or nothing or 0
/// when none runs), prints [`OLD_PID`], then starts a background watcher
/// (immune to SIGTERM/SIGHUP, so a shutdown's "kill -TERM -1" does not end
/// it before it has spoken; it gives up after about 20 s) that prints
/// [`NEW_PID`] and [`ACKED_BY`] to `/dev/console` (a shutdown hangs up the
/// shell's own terminal, e.g. systemd's getty stop, and later writes there
/// are lost; the kernel console is the same serial line and stays open).
/// Follow it with the signal, e.g.
/// `{watcher} kill -KILL $old` (the line ends in `&`).
///
/// The new pid comes from `pid_cmd` when `poll_pid_cmd` (an independent
/// look at the process table; use it only where it is quick, e.g. `pidof`
/// in a busybox guest), otherwise from the status file's `pid` once it
/// differs from the old one (a new agent writes the file right after its
/// DRIVER_OK): during a systemd shutdown a `systemctl` call can stall for
/// longer than the watcher lives. The status file is parsed with shell
/// builtins only. The markers are split in the command text
/// (`RIG-NEW""PID:`) so the console's echo of the line never matches.
pub fn watcher_cmd(pid_cmd: &str, poll_pid_cmd: bool, status_file: &str) -> String {
    let split = |m: &str| format!("{}\"\"{}", &m[..7], &m[7..]);
    let (old_m, new_m, acked_m) = (split(OLD_PID), split(NEW_PID), split(ACKED_BY));
    let new_pid = if poll_pid_cmd {
        format!("$({pid_cmd})")
    } else {
        "$pid".to_string()
    };
    // The status file is pretty JSON: `  "pid": 123,` at the top level and
    // `"raw": 2,` then `"acked": true,` inside "last_command".
    format!(
        "old=$({pid_cmd}); echo {old_m}$old; \
         ( trap '' TERM HUP; say() {{ {{ echo \"$1\" > /dev/console; }} 2>/dev/null || echo \"$1\"; }}; \
         new=; n=0; while [ $n -lt 1000 ]; do \
         pid=; r=; a=; \
         if [ -f {status_file} ]; then while IFS= read -r l; do case \"$l\" in \
         *'\"pid\": '*) pid=${{l#*: }}; pid=${{pid%,}};; \
         *'\"raw\": 2,'*) r=1;; \
         *'\"acked\": true'*) [ -n \"$r\" ] && a=1;; \
         esac; done < {status_file}; fi; \
         if [ -z \"$new\" ]; then p={new_pid}; \
         if [ -n \"$p\" ] && [ \"$p\" != 0 ] && [ \"$p\" != \"$old\" ]; then new=$p; say {new_m}$p; fi; fi; \
         if [ -n \"$a\" ]; then say {acked_m}$pid; break; fi; \
         sleep 0.02; n=$((n+1)); done ) &"
    )
}

/// The value after the first `marker` in `console[from..]` (up to the end
/// of its line), if it is a number.
pub fn marker_pid(console: &str, from: usize, marker: &str) -> Option<u32> {
    let mut from = from.min(console.len());
    while !console.is_char_boundary(from) {
        from -= 1;
    }
    let text = &console[from..];
    let i = text.find(marker)? + marker.len();
    let digits: String = text[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// `out` without the watcher's marker lines: the watcher writes them to the
/// console whenever it sees something, so they can fall into the output of
/// a command that runs meanwhile.
pub fn without_markers(out: &str) -> String {
    out.lines()
        .filter(|l| ![OLD_PID, NEW_PID, ACKED_BY].iter().any(|m| l.contains(m)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The simulator's status writes from index `from` on, each stamped with
/// the simulator's time when a poll first saw it (polls every 2 ms while a
/// test waits through [`StatusWatch::wait_until`] / [`StatusWatch::wait_end`]).
pub struct StatusWatch {
    from: usize,
    /// (simulator time first seen, value).
    pub writes: Vec<(Duration, u8)>,
}

impl StatusWatch {
    pub fn new(vm: &Vm) -> StatusWatch {
        StatusWatch {
            from: vm.with_vmd(|v| v.status_writes().len()),
            writes: vec![],
        }
    }

    /// Record the writes made since the last poll; the simulator's time now.
    pub fn poll(&mut self, vm: &Vm) -> Duration {
        let seen = self.from + self.writes.len();
        let (now, new) = vm.with_vmd(|v| (v.elapsed(), v.status_writes()[seen..].to_vec()));
        self.writes.extend(new.into_iter().map(|w| (now, w)));
        now
    }

    /// Poll until the simulator's clock reaches `at` (or the VM ends).
    pub fn wait_until(&mut self, vm: &Vm, at: Duration) {
        while self.poll(vm) < at && vm.ended().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Poll until the VM ends or `timeout` passes; whether it ended.
    pub fn wait_end(&mut self, vm: &Vm, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll(vm);
            if vm.ended().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// When the first write with DRIVER_OK was seen.
    pub fn first_driver_ok(&self) -> Option<Duration> {
        self.writes
            .iter()
            .find(|(_, w)| w & status::DRIVER_OK != 0)
            .map(|(t, _)| *t)
    }
}

/// Status writes that lack DRIVER_OK after the first one that has it: each
/// one opens a window in which `vmctl stop` is refused and the VM ended at
/// once (issue 10 §3). `(index, value)`.
pub fn driver_ok_dropped(writes: &[u8]) -> Vec<(usize, u8)> {
    let Some(first) = writes.iter().position(|w| w & status::DRIVER_OK != 0) else {
        return vec![];
    };
    writes
        .iter()
        .enumerate()
        .skip(first)
        .filter(|(_, w)| *w & status::DRIVER_OK == 0)
        .map(|(i, w)| (i, *w))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_split_in_the_command_text() {
        let c = watcher_cmd("pidof vmmci", true, "/run/vmmci/status.json");
        for m in [OLD_PID, NEW_PID, ACKED_BY] {
            assert!(!c.contains(m), "{m} unsplit in {c}");
        }
        assert!(c.contains("RIG-NEW\"\"PID:"), "{c}");
        assert!(c.ends_with('&'), "{c}");
    }

    #[test]
    fn marker_pid_reads_the_number_after_from() {
        let con = "x RIG-NEWPID:1 \nRIG-NEWPID:42\r\nRIG-ACKEDBY:\n";
        assert_eq!(marker_pid(con, 0, NEW_PID), Some(1));
        assert_eq!(marker_pid(con, 5, NEW_PID), Some(42));
        assert_eq!(marker_pid(con, 0, ACKED_BY), None);
        assert_eq!(marker_pid(con, 999, NEW_PID), None);
    }

    #[test]
    fn markers_are_taken_out_of_other_output() {
        assert_eq!(without_markers("123\nRIG-NEWPID:456\n"), "123");
        assert_eq!(without_markers("a\nb"), "a\nb");
    }

    #[test]
    fn dropped_driver_ok_is_found_after_the_first_driver_ok_only() {
        assert!(driver_ok_dropped(&[0, 1, 3, 7, 7]).is_empty());
        assert!(driver_ok_dropped(&[]).is_empty());
        assert_eq!(
            driver_ok_dropped(&[0, 1, 3, 7, 0, 1, 3, 7]),
            vec![(4, 0), (5, 1), (6, 3)]
        );
        assert_eq!(driver_ok_dropped(&[7, 0x87, 3]), vec![(2, 3)]);
    }
}
