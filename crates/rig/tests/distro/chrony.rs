//! chronyd with the vmmci SOCK refclock as its only source.

use std::time::{Duration, Instant};

use vmmci_rig::distro::BootOptions;

use crate::common::*;

/// `chronyc tracking`'s "System time" (guest − reference, s; "fast" is
/// positive) and "Frequency" (ppm; "slow" is negative), if it has them.
pub fn tracking(text: &str) -> Option<(f64, f64)> {
    let field = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let words: Vec<&str> = line.split(':').nth(1)?.split_whitespace().collect();
        let v: f64 = words.first()?.parse().ok()?;
        let sign = if words.contains(&"slow") { -1.0 } else { 1.0 };
        Some(sign * v)
    };
    Some((field("System time")?, field("Frequency")?))
}

/// chronyd with vmmci as its only source, no network: the agent sends every
/// sample to chrony's SOCK refclock, chrony selects it and locks the guest
/// clock to the host, whose clock runs 50 ppm fast. The agent, in
/// `discipline` mode (the default, and then named in the file), stands
/// back for chrony, sets no rate while chrony has the clock, and says so in
/// status and metrics.
pub fn chrony_selects_the_vmmci_refclock_and_converges() {
    let _g = serial();
    let img = image();
    let mut o = BootOptions::new("chrony");
    o.host_clock = vmmci_rig::guest::HostClockError {
        ppm: 50.0,
        jitter_ns: 20_000,
    };
    let d = boot(&img, o);
    check_booted(&d);
    let t0 = Instant::now();
    // The one step: chrony installed (started); the agent's defaults and
    // the package's /etc/chrony/conf.d/vmmci.conf do the rest.
    if let Err(e) = d.start_chrony_as_installed() {
        panic!("{e}\n{}", d.dump());
    }
    let deadline = t0 + Duration::from_secs(300);
    let mut selected_at = None;
    let (mut sources, mut track);
    let converged = loop {
        // chronyc's status is its answer (it fails while chronyd starts).
        sources = sh_any(&d, "chronyc -n sources");
        if selected_at.is_none() && sources.lines().any(|l| l.starts_with("#* VMM")) {
            selected_at = Some(t0.elapsed());
        }
        track = sh_any(&d, "chronyc -n tracking");
        let locked = track.contains("(VMM)");
        if let (true, Some((offset, freq))) = (locked, tracking(&track)) {
            if selected_at.is_some() && offset.abs() < 0.001 && (freq + 50.0).abs() < 10.0 {
                break Some((offset, freq));
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_secs(5));
    };
    let Some((offset, freq)) = converged else {
        panic!(
            "chrony did not select VMM and converge in 300 s:\n{sources}\n{track}\n{}\n{}",
            sh(
                &d,
                "journalctl -b -u chrony -u vmmci --no-pager | tail -n 40"
            ),
            d.dump()
        );
    };
    eprintln!(
        "  chrony: VMM selected {:.0} s after start; converged at {:.0} s: system time {:+.6} ms, frequency {freq:+.3} ppm (host 50 ppm fast)",
        selected_at.unwrap_or_default().as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        offset * 1e3
    );
    let fed = agent_status(&d);
    let st = &fed;
    assert!(
        st.clock.disciplined_by.is_some(),
        "chronyd takes the samples: the agent stands back\n{:?}",
        st.clock
    );
    let feed = st.clock.chrony.clone().unwrap_or_default();
    assert!(
        feed.starts_with("sending"),
        "chrony feed: {feed}\n{}",
        d.dump()
    );
    assert_eq!(
        st.sample_interval_ms, 2000,
        "every 2 s while chronyd listens"
    );
    // `discipline` stands back for chronyd (SIGHUP reloads the config).
    sh(
        &d,
        "printf '[clock]\\nmode = \"discipline\"\\n[metrics]\\ntextfile = \"/run/vmmci/vmmci.prom\"\\n' \
         > /etc/vmmci.toml && systemctl kill -s HUP vmmci.service",
    );
    let t1 = Instant::now();
    let st = loop {
        let st = agent_status(&d);
        if st.clock.mode == "discipline" && st.clock.disciplined_by.is_some() {
            break st;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "no reload: {st:?}\n{}",
            d.dump()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert_eq!(st.clock.mode, "discipline");
    let by = st.clock.disciplined_by.clone().unwrap_or_default();
    assert!(
        by.contains("chronyd"),
        "discipline did not stand back: {st:?}"
    );
    // `discipline` is the default: the agent had the clock from boot until
    // chronyd came; from then on it sets no rate.
    assert_eq!(
        st.clock.slews, fed.clock.slews,
        "the agent slewed while chrony had the clock"
    );
    let drift = st.drift_ns.expect("a sample");
    assert!(
        drift.abs() < 2_000_000,
        "agent's own sample: host − guest {drift} ns"
    );
    let prom = sh(&d, "cat /run/vmmci/vmmci.prom");
    for want in [
        "vmmci_up 1",
        "vmmci_clock_standing_back 1",
        "clock_mode=\"discipline\"",
    ] {
        assert!(prom.contains(want), "{want} not in metrics:\n{prom}");
    }
    d.vm.kill();
    d.discard();
}
