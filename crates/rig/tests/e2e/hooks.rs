//! Issue 12 §1: hooks around host events, on a real kernel.

use std::time::Duration;

use vmmci_rig::events::{first_at, is_reboot_ack, is_reboot_posted};
use vmmci_rig::guest::Guest;
use vmmci_rig::image;
use vmmci_rig::units::SEC;
use vmmci_rig::vm::Outcome;

use crate::common::*;

/// Issue 12 §1, hooks around host events, in one boot of the busybox guest
/// (a real kernel; the agent as busybox init runs it): hooks and a config
/// are put in place and the agent reloads them (SIGHUP). A missing
/// `[hooks]` program and a non-executable file in the drop-in directory
/// are reported once and harm nothing. A host clock jump of +90 s: the
/// SYNCRTC's step runs the after-step hook, which sees the step size. Then
/// `vmctl stop`: the REBOOT is acknowledged at once; the before-reboot
/// hooks run in name order, the one that hangs is killed at its limit (2 s)
/// and the next still runs; the stop is clean, and the file a hook wrote
/// (without a sync) is on the data disk after it.
pub fn hooks_before_reboot_and_after_step() {
    let _g = serial();
    let b = boot(BOOKWORM_CLOUD, Guest::agent().with_disk(), "hooks");
    driver_ok(&b);
    let d = "/etc/vmmci/hooks.d";
    for cmd in [
        format!("mkdir -p {d}/before-reboot {d}/after-step"),
        "printf '[hooks]\\ntimeout = \"2s\"\\nbefore_reboot = [\"no-such-hook-vmmci\"]\\n' > /etc/vmmci.toml".into(),
        format!("printf '#!/bin/sh\\necho \"$VMMCI_EVENT $VMMCI_COMMAND\" > /data/before-reboot\\n' > {d}/before-reboot/10-mark"),
        format!("printf '#!/bin/sh\\necho hanging\\nsleep 60\\n' > {d}/before-reboot/20-hang"),
        format!("printf 'not a hook\\n' > {d}/before-reboot/25-notes"),
        format!("printf '#!/bin/sh\\necho after the hang >> /data/before-reboot\\n' > {d}/before-reboot/30-after"),
        format!("printf '#!/bin/sh\\necho \"$VMMCI_EVENT $VMMCI_CAUSE $VMMCI_COMMAND $VMMCI_STEP_NS\" | tee /data/after-step\\n' > {d}/after-step/10-note"),
        format!("chmod 755 {d}/before-reboot/10-mark {d}/before-reboot/20-hang {d}/before-reboot/30-after {d}/after-step/10-note"),
        "kill -HUP $(pidof vmmci)".into(),
    ] {
        must(b.vm.run(&cmd, Duration::from_secs(20)), &cmd);
    }
    let st = wait_status(&b, "the hooks' problems", Duration::from_secs(30), |s| {
        s.hooks.problems.len() == 2
    });
    eprintln!("  problems: {:?}", st.hooks.problems);
    assert!(
        st.hooks
            .problems
            .iter()
            .any(|p| p.contains("\"no-such-hook-vmmci\" not found"))
            && st
                .hooks
                .problems
                .iter()
                .any(|p| p.contains("25-notes is not executable")),
        "{:?}",
        st.hooks.problems
    );

    // After a step.
    let n = b.vm.n_events();
    b.vm.jump_host_clock(90 * SEC);
    wait_rtc_acked(&b, n, "SYNCRTC acked after +90 s");
    let st = wait_status(
        &b,
        "the after-step hook's run",
        Duration::from_secs(30),
        |s| s.hooks.runs.iter().any(|r| r.event == "after-step"),
    );
    let run = st
        .hooks
        .runs
        .iter()
        .find(|r| r.event == "after-step")
        .unwrap();
    eprintln!(
        "  after-step: {} in {} ms: {:?}",
        run.result, run.duration_ms, run.output
    );
    assert!(run.success(), "{run:?}\n{}", b.dump());
    let fields: Vec<&str> = run.output.split_whitespace().collect();
    assert_eq!(
        fields.get(..3),
        Some(&["after-step", "request", "SYNCRTC"][..]),
        "{run:?}"
    );
    let step_ns: i64 = fields[3].parse().expect("VMMCI_STEP_NS");
    assert!((step_ns - 90 * SEC).abs() < 2 * SEC, "step {step_ns} ns");
    let last_step = st.last_step.as_ref().expect("a step in the status");
    assert_eq!(step_ns, last_step.delta_ns, "the hook saw the agent's step");

    // Before the reboot `vmctl stop` asks for.
    let n = b.vm.n_events();
    let t0 = b.vm.elapsed();
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
    let took = e.at.saturating_sub(t0);
    eprintln!("  stop took {:.2}s", took.as_secs_f64());
    let evs = b.vm.events_since(n);
    let posted = first_at(&evs, is_reboot_posted);
    let acked = first_at(&evs, is_reboot_ack);
    let (Some(posted), Some(acked)) = (posted, acked) else {
        panic!("REBOOT posted and acknowledged\n{}", b.dump());
    };
    assert!(
        acked.saturating_sub(posted) < Duration::from_secs(1),
        "ACK {:?} after the post: it waited for a hook?\n{}",
        acked.saturating_sub(posted),
        b.dump()
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "stop took {took:?} (the hanging hook has 2 s)\n{}",
        b.dump()
    );
    let console = b.vm.console_text();
    assert!(
        console.contains(
            "before-reboot hook /etc/vmmci/hooks.d/before-reboot/20-hang: killed at its limit (2s)"
        ),
        "{}",
        b.dump()
    );
    // In the log (not the status JSON the test printed): once each, at the
    // reload, and not again at the event.
    for once in [
        "program \"no-such-hook-vmmci\" not found",
        "25-notes is not executable",
    ] {
        let logged = console
            .lines()
            .filter(|l| l.contains("WARN hook") && l.contains(once))
            .count();
        assert_eq!(logged, 1, "{once:?} logged once\n{}", b.dump());
    }
    assert!(console.contains("RIG: fs clean"), "{}", b.dump());
    assert_fsck_clean(&b);
    let disk = b.disk.as_ref().unwrap();
    let mark = must(image::read_file(disk, "/before-reboot"), "read back");
    assert_eq!(
        String::from_utf8_lossy(&mark),
        "before-reboot REBOOT\nafter the hang\n",
        "the before-reboot hooks, in name order"
    );
    let note = must(image::read_file(disk, "/after-step"), "read back");
    assert_eq!(String::from_utf8_lossy(&note), run.output);
}
