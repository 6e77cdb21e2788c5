//! `discipline`, the default, standing back for every time daemon our users
//! run, in the Debian 12 image under the packaged unit with the default
//! configuration: chronyd, systemd-timesyncd, ntpsec's ntpd, OpenNTPD and
//! ptp4l, one after the other in one boot
//! (Debian's packages conflict with each other), installed from Debian's
//! own packages (`scripts/rig/fetch-time-daemons.sh`) and started as their
//! packages start them. With each running, the agent stands back at its
//! next sample and sets no rate; stopped cleanly (and removed, for the
//! next), it disciplines again at its next sample. With none, the clock
//! probe finds the guest within 1 ms of the host.
//!
//! The guest has no network: every daemon runs with sources it cannot
//! reach, as at boot before the network is up; `docs/clock.md` says why a
//! daemon counts whether or not its sources answer.
//!
//! Not here: busybox's ntpd (Debian's busybox has no ntpd applet; the
//! agent knows it by the same name, `ntpd`, as ntpsec's and OpenNTPD's, from
//! /proc, which ptp4l run from a shell exercises) and phc2sys (it needs a
//! PTP hardware clock or a ptp4l to follow).

use std::path::PathBuf;
use std::time::Duration;

use vmmci_rig::distro::{self, BootOptions, Distro};
use vmmci_rig::{artifacts, clock, guest, units};

use crate::common::*;

/// The agent's sample interval once locked (the default), plus a TCG
/// guest's slack for a status read.
const NEXT_SAMPLE: Duration = Duration::from_secs(15 + 20);
/// Where the clock probe goes in the image.
const PROBE: &str = "/usr/local/bin/rig-clockprobe";

struct Daemon {
    /// What the agent's status names (`disciplined_by` starts with it).
    seen_as: &'static str,
    /// Install (if need be) and start it, as its package does.
    start: &'static str,
    /// Stop it cleanly and remove it (the next one conflicts with it).
    stop: &'static str,
}

const DAEMONS: [Daemon; 5] = [
    Daemon {
        seen_as: "chronyd",
        start: "systemctl start chrony.service",
        stop: "systemctl stop chrony.service && dpkg -r chrony >/dev/null",
    },
    Daemon {
        seen_as: "systemd-timesyn",
        // The image's systemd may be a point release behind the package's
        // exact dependency; the daemon is the same.
        start: "dpkg -i --force-depends /root/systemd-timesyncd_*.deb >/dev/null 2>&1; \
                systemctl start systemd-timesyncd.service",
        stop: "systemctl stop systemd-timesyncd.service && \
               dpkg -r --force-depends systemd-timesyncd >/dev/null 2>&1",
    },
    Daemon {
        seen_as: "ntpd",
        // ntpsec's Python tools are not needed for the daemon.
        start: "dpkg -i --force-depends /root/ntpsec_*.deb >/dev/null 2>&1; \
                systemctl start ntpsec.service",
        stop: "systemctl stop ntpsec.service && dpkg -r --force-depends ntpsec >/dev/null 2>&1",
    },
    Daemon {
        seen_as: "ntpd",
        // netbase's /etc/services names its port; a server by address, as
        // the guest resolves no names.
        start: "dpkg -i /root/netbase_*.deb /root/openntpd_*.deb >/dev/null 2>&1; \
                echo 'server 192.0.2.1' > /etc/openntpd/ntpd.conf; \
                systemctl restart openntpd.service",
        stop: "systemctl stop openntpd.service && dpkg -r --force-depends openntpd >/dev/null 2>&1",
    },
    Daemon {
        seen_as: "ptp4l",
        // From a root shell, outside any unit (seen in /proc, not in a
        // unit's cgroup); software time stamps on the loopback: the guest
        // has no NIC.
        start: "dpkg -i /root/linuxptp_*.deb >/dev/null 2>&1; \
                (setsid ptp4l -i lo -S >/dev/null 2>&1 &); sleep 1; pidof ptp4l",
        stop: "kill $(pidof ptp4l) && while pidof ptp4l >/dev/null; do sleep 0.2; done",
    },
];

fn time_daemon_debs() -> Vec<PathBuf> {
    let dir = artifacts::cache_dir().join("time-daemons");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let has = |p: &str| {
        debs.iter().any(|d| {
            d.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(p))
        })
    };
    let missing: Vec<&str> = [
        "ntpsec_",
        "openntpd_",
        "netbase_",
        "systemd-timesyncd_",
        "linuxptp_",
    ]
    .into_iter()
    .filter(|p| !has(p))
    .collect();
    assert!(
        missing.is_empty(),
        "no {missing:?} in {}: run scripts/rig/fetch-time-daemons.sh",
        dir.display()
    );
    debs
}

pub fn discipline_stands_back_for_every_time_daemon() {
    let _g = serial();
    let debs = time_daemon_debs();
    let probe = must(artifacts::static_bin("rig-clockprobe"), "the clock probe");
    let mut o = BootOptions::new("timedaemons");
    o.prepare = Some(Box::new(move |disk| {
        for deb in &debs {
            let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or("x.deb");
            distro::install_file(disk, deb, &format!("/root/{name}"))?;
        }
        distro::install_file(disk, &probe, PROBE)
    }));
    let d = boot(&image(), o);
    let st = wait_status(
        &d,
        "discipline, the default, locked",
        NEXT_SAMPLE * 3,
        |s| s.clock.mode == "discipline" && s.clock.locked_since_ns.is_some(),
    );
    eprintln!(
        "  default config: {}, {} slews, learned {:+.3} ppm",
        st.clock.mode,
        st.clock.slews,
        st.clock.learned_frequency_ppm.unwrap_or(f64::NAN)
    );
    // With no other daemon, the clock is held to the host within 1 ms.
    let held = clock::check_within(5, 0, units::MS, 5, Duration::from_secs(1), |n| {
        guest::probe_points(&d.vm, PROBE, n as u32)
    });
    let held = must(held, "clock probe");
    eprintln!("  no other time daemon: {}", held.summary());
    assert!(held.passed(), "{}\n{}", held.summary(), d.dump());
    for daemon in &DAEMONS {
        stands_back_then_disciplines(&d, daemon);
    }
}

fn stands_back_then_disciplines(d: &Distro, daemon: &Daemon) {
    sh(d, daemon.start);
    let st = wait_status(d, daemon.seen_as, NEXT_SAMPLE, |s| {
        s.clock.disciplined_by.is_some()
    });
    let by = st.clock.disciplined_by.clone().unwrap_or_default();
    eprintln!("  {}: standing back for {by:?}", daemon.seen_as);
    assert!(
        by.starts_with(daemon.seen_as),
        "stood back for {by:?}, not {}\n{:?}",
        daemon.seen_as,
        st.clock
    );
    // Another sample while it runs: no rate set, no step (handing the
    // clock over at the learned rate is not a slew).
    let samples = st.drift_samples;
    let held = wait_status(d, "a sample while it runs", NEXT_SAMPLE, |s| {
        s.drift_samples > samples
    });
    assert_eq!(
        (held.clock.slews, held.clock.steps_periodic),
        (st.clock.slews, st.clock.steps_periodic),
        "the agent set a rate or stepped while {} ran\n{:?}",
        daemon.seen_as,
        held.clock
    );
    assert!(held.clock.disciplined_by.is_some(), "{:?}", held.clock);

    sh(d, daemon.stop);
    let st = wait_status(d, "disciplining again", NEXT_SAMPLE, |s| {
        s.clock.disciplined_by.is_none() && s.clock.slews > held.clock.slews
    });
    eprintln!(
        "  {} stopped: disciplining again ({} slews)",
        daemon.seen_as, st.clock.slews
    );
    assert_no_violations(d);
}
