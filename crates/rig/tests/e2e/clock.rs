//! The guest's clock: host clock jumps and SYNCRTC, the agent's status
//! against the clock probe, `discipline` in a real kernel, and the clock
//! source the agent reports.

use std::time::{Duration, Instant};

use vmd_sim::EventKind;
use vmmci_rig::events::{self, is_syncrtc_posted};
use vmmci_rig::guest::{self, Booted, Guest};
use vmmci_rig::units::{self, SEC};
use vmmci_rig::vm::Outcome;

use crate::common::*;

/// Host clock +90 s: vmd sends SYNCRTC, the agent acks and steps the guest.
pub fn host_clock_forward_syncrtc(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::agent(), "clockfwd");
    driver_ok(&b);
    let before = probe(&b, 3);
    let n = b.vm.n_events();
    b.vm.jump_host_clock(90 * SEC);
    wait_rtc_acked(&b, n, "SYNCRTC acked after +90 s");
    assert!(
        events::any(&b.vm.event_kinds_since(n), is_syncrtc_posted),
        "{}",
        b.dump()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        before.abs() < 3 * SEC / 2,
        "before (RTC-set clock, 1 s resolution): {before}"
    );
    assert_within(&b, 5, 0, STEP_BOUND_NS, "after the SYNCRTC step");
    assert!(b.vm.with_vmd(|v| v.violations().is_empty()), "{}", b.dump());
}

/// Host clock −40 s: vmd sends nothing; an explicit SYNCRTC then corrects.
/// (The old policy, so that only the SYNCRTC moves the clock: `discipline`
/// following a set-back is `discipline_converges_…`.)
pub fn host_clock_backward_explicit_syncrtc() {
    let _g = serial();
    let b = boot(
        BOOKWORM_CLOUD,
        Guest::agent().args("daemon --poll-interval 100ms --clock-mode step-on-request"),
        "clockback",
    );
    driver_ok(&b);
    let n = b.vm.n_events();
    b.vm.jump_host_clock(-40 * SEC);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !events::any(&b.vm.event_kinds_since(n), is_syncrtc_posted),
        "vmd must not send SYNCRTC for a backward jump\n{}",
        b.dump()
    );
    let r = probe(&b, 3);
    assert!(
        (r - 40 * SEC).abs() < 3 * SEC / 2,
        "guest should be ~40 s ahead before resync: {r}"
    );
    let n = b.vm.n_events();
    assert!(b.vm.request_syncrtc(), "SYNCRTC not posted\n{}", b.dump());
    wait_rtc_acked(&b, n, "explicit SYNCRTC acked");
    std::thread::sleep(Duration::from_millis(500));
    assert_within(
        &b,
        5,
        0,
        STEP_BOUND_NS,
        "after the explicit SYNCRTC step back",
    );
}

/// The integer at `key` of the JSON object in `out` (a command's console
/// output), if it has one.
pub fn json_i64(out: &str, key: &str) -> Option<i64> {
    let json: serde_json::Value = serde_json::from_str(&guest::json_in(out)?).ok()?;
    json.get(key)?.as_i64()
}

/// `vmmci status --json` agrees with the host offset the rig injected.
pub fn status_json_drift() {
    let _g = serial();
    let b = boot(
        BOOKWORM_CLOUD,
        Guest::agent()
            .args("daemon --poll-interval 100ms --sample-interval 2s --clock-mode step-on-request"),
        "status",
    );
    driver_ok(&b);
    // +3 s: below vmd's 5 s RTC threshold, so no SYNCRTC: only the drift shows.
    b.vm.jump_host_clock(3 * SEC);
    std::thread::sleep(Duration::from_secs(5));
    let out = must(
        b.vm.run("vmmci status --json", Duration::from_secs(20)),
        "status",
    );
    let drift =
        json_i64(&out, "drift_ns").unwrap_or_else(|| panic!("no drift_ns in: {out}\n{}", b.dump()));
    eprintln!("  status drift_ns {drift}");
    // The guest clock came from the RTC (1 s resolution) unless the agent
    // stepped it: compare loosely with the injection, tightly with the probe
    // (drift is host − guest, the probe guest − host).
    assert!(
        (drift - 3 * SEC).abs() < 3 * SEC / 2,
        "drift_ns {drift} vs injected +3 s\n{out}"
    );
    assert_within(
        &b,
        3,
        -drift,
        STEP_BOUND_NS,
        "the agent's drift against the probe",
    );
}

/// Switch the supervised agent's clock mode through `/etc/vmmci.toml` and
/// SIGHUP (`None`: the file says nothing, so the default), as a user would;
/// returns once the status shows it.
fn reload_clock_mode(b: &Booted, mode: Option<&str>) -> Instant {
    let file = match mode {
        Some(m) => format!("printf '[clock]\\nmode = \"{m}\"\\n' > /etc/vmmci.toml"),
        None => "printf '[clock]\\n' > /etc/vmmci.toml".to_string(),
    };
    must(
        b.vm.run(
            &format!("{file} && kill -HUP $(pidof vmmci) && echo reloaded"),
            Duration::from_secs(20),
        ),
        "reload",
    );
    let at = Instant::now();
    let want = mode.unwrap_or("discipline");
    wait_status(b, want, Duration::from_secs(30), |s| s.clock.mode == want);
    at
}

/// `discipline`, the default, in a real kernel with the host clock 50 ppm
/// fast: from each chosen start offset (set with the agent's clock mode
/// `off`, by moving the simulated host's clock, which sends no SYNCRTC for
/// these) it locks within 30 s and holds the clock within 1 ms; the 50 ppm
/// are learned. Then, locked, a host clock 50 ms ahead is slewed (no step)
/// and one set back 40 s is stepped within two samples, with no command.
pub fn discipline_converges_from_any_start_and_follows_the_host() {
    let _g = serial();
    let b = boot(
        BOOKWORM_CLOUD,
        Guest::agent().host_clock(50.0, 20_000),
        "discipline",
    );
    driver_ok(&b);
    for start_ns in [0, 50 * units::MS, -120 * units::MS, -5 * SEC] {
        reload_clock_mode(&b, Some("off"));
        // host − guest is −p now; move the host by start + p.
        let p = probe(&b, 3);
        let n = b.vm.n_events();
        b.vm.jump_host_clock(start_ns + p);
        let from = reload_clock_mode(&b, None);
        let st = wait_status(&b, "the lock", Duration::from_secs(45), |s| {
            s.clock.locked_since_ns.is_some()
        });
        let took = from.elapsed();
        eprintln!(
            "  discipline from {:+.3} ms: locked after {took:?} (status seen); {} slews, {} steps, learned {:+.3} ppm",
            units::secs(start_ns) * 1e3,
            st.clock.slews,
            st.clock.steps_periodic,
            st.clock.learned_frequency_ppm.unwrap_or(f64::NAN),
        );
        assert!(
            took < Duration::from_secs(30),
            "locked after {took:?} from {start_ns} ns\n{st:?}"
        );
        assert!(
            !events::any(&b.vm.event_kinds_since(n), is_syncrtc_posted),
            "the start offset is the agent's to find, with no SYNCRTC\n{}",
            b.dump()
        );
        assert_within(&b, 5, 0, units::MS, "once locked");
    }
    let st = agent_status(&b);
    let learned = st.clock.learned_frequency_ppm.unwrap_or(f64::NAN);
    assert!(
        (learned - 50.0).abs() < 15.0,
        "learned rate {learned} ppm; the host runs 50 ppm fast\n{st:?}"
    );

    // Locked: the host clock 50 ms ahead, below vmd's 5 s: slewed. The
    // first sample after the jump unlocks the servo and three more near
    // zero lock it again, so four samples on it holds again.
    let steps = st.clock.steps_periodic;
    let samples = st.drift_samples;
    let n = b.vm.n_events();
    b.vm.jump_host_clock(50 * units::MS);
    let at = Instant::now();
    let st = wait_status(&b, "the lock again", Duration::from_secs(60), |s| {
        s.drift_samples >= samples + 4 && s.clock.locked_since_ns.is_some()
    });
    eprintln!("  +50 ms: locked again after {:?}", at.elapsed());
    assert_eq!(
        st.clock.steps_periodic, steps,
        "slewed, not stepped\n{st:?}"
    );
    assert_within(&b, 5, 0, units::MS, "after slewing 50 ms");

    // The host clock set back 40 s: no SYNCRTC, stepped within two samples
    // (15 s apart once locked).
    b.vm.jump_host_clock(-40 * SEC);
    let st = wait_status(&b, "the periodic step", Duration::from_secs(35), |s| {
        s.clock.steps_periodic > steps
    });
    let step = st.last_step.clone().expect("a step");
    assert_eq!(step.cause, "periodic");
    assert!(
        (step.delta_ns + 40 * SEC).abs() < SEC / 10,
        "stepped by {} ns",
        step.delta_ns
    );
    let evs = b.vm.event_kinds_since(n);
    assert!(
        !evs.iter().any(|k| matches!(k, EventKind::Posted { .. })),
        "no command was involved: {evs:?}"
    );
    assert_within(&b, 5, 0, STEP_BOUND_NS, "after the set-back");
}

/// `vmmci status` reports the clock source the guest kernel itself names,
/// and the ones it offers, on two kernels (6.1 and 6.12).
pub fn clock_source_matches_the_kernel(kernel: &str) {
    let _g = serial();
    let b = boot(kernel, Guest::agent(), "clocksource");
    driver_ok(&b);
    let sysfs = "/sys/devices/system/clocksource/clocksource0";
    let read = |file: &str| {
        must(
            b.vm.run(&format!("cat {sysfs}/{file}"), Duration::from_secs(30)),
            file,
        )
    };
    let (current, available) = (read("current_clocksource"), read("available_clocksource"));
    let status = agent_status(&b);
    let source = status
        .clock_source
        .unwrap_or_else(|| panic!("no clock source in the status\n{}", b.dump()));
    eprintln!("  [{kernel}] kernel: {current:?} of {available:?}; agent: {source:?}");
    assert!(
        current
            .lines()
            .any(|l| Some(l.trim()) == source.current.as_deref()),
        "agent says {:?}, kernel {current:?}",
        source.current
    );
    let kernel_list: Vec<&str> = available
        .lines()
        .find(|l| l.contains(source.current.as_deref().unwrap_or("?")))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(source.available, kernel_list, "available clock sources");
    // QEMU's TCG offers no kvm-clock leaves, unlike a recent vmm.
    assert!(!source.kvm_clock_offered);
    b.vm.vmctl_stop().expect("stop accepted");
    let e = end(&b, Duration::from_secs(60));
    assert_outcome(&b, &e, Outcome::CleanStop);
}
