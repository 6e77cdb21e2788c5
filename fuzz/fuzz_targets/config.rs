//! `/etc/vmmci.toml` parsing on arbitrary text: `Config::parse` then
//! `validate`, and `parse_duration` on its own, must never panic, and what
//! `validate` accepts must be inside the documented limits.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

// The vmmci crate is a binary with no lib target: take its config module as
// it is. It names vmmci_actions, vmmci_report and vmmci_transport for its
// defaults; those are real dependencies of this crate (fuzz/Cargo.toml).
#[allow(dead_code)]
#[path = "../../crates/vmmci/src/config.rs"]
mod config;

use config::{parse_duration, Config, MAX_FORCE_AFTER, MAX_POLL_INTERVAL, MIN_POLL_INTERVAL};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // Durations: what a value in the file or a flag goes through.
    if let Ok(d) = parse_duration(text) {
        assert!(d <= Duration::from_secs(86_400), "{text:?} parsed to {d:?}");
    }

    let Ok(config) = Config::parse(text) else {
        return;
    };
    if config.validate().is_ok() {
        assert!(
            (MIN_POLL_INTERVAL..=MAX_POLL_INTERVAL).contains(&config.poll_interval),
            "validate accepted poll_interval {:?}",
            config.poll_interval
        );
        assert!(config.sample_interval >= Duration::from_secs(1));
        assert!(config.grace <= config.force_after && config.force_after <= MAX_FORCE_AFTER);
        assert!(config.power.reboot.first().is_some_and(|p| !p.is_empty()));
        assert!(config.power.poweroff.first().is_some_and(|p| !p.is_empty()));
        // Every hook ends well inside vmd's budgets.
        let hooks = config.hooks.settings();
        assert!(hooks.timeout <= vmmci_actions::hooks::MAX_HOOK_TIMEOUT);
        assert!(hooks.dir.as_deref().is_none_or(|d| d.is_absolute()));
    }
    // Parsing is a pure function of the text.
    assert_eq!(Config::parse(text).ok(), Some(config));
});
