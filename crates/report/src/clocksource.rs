//! Why the guest clock drifts: the clock source the guest kernel uses, the
//! ones it could use, what the hypervisor offers (kvm-clock), the TSC flags
//! that matter, and the measured drift rate, turned into plain advice.
//! Pure: the facts are gathered by `vmmci_actions::clocksource`.

use serde::{Deserialize, Serialize};

use crate::DriftEntry;

/// Clock sources that lose or gain time badly in a guest.
const POOR: &[&str] = &["jiffies", "refined-jiffies", "pit"];

/// Beyond this the guest's oscillator is off by more than a plain quartz
/// clock would be (NTP allows ±500 ppm; a sound guest clock is within ±50).
const FAST_DRIFT_PPM: f64 = 100.0;
/// Beyond this the kernel's frequency alone (±500 ppm) cannot follow the
/// clock: `discipline` sets the tick too, and the clock source needs fixing.
const TICK_DRIFT_PPM: f64 = vmmci_agent::MAX_FREQUENCY_PPM;

/// A drift rate needs this much history after the last step.
const MIN_RATE_SPAN_NS: i64 = 60_000_000_000;

/// What the guest kernel and the CPU say about the guest's clock.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClockSource {
    /// `current_clocksource` (`None` when sysfs does not say).
    pub current: Option<String>,
    /// `available_clocksource`.
    pub available: Vec<String>,
    /// The hypervisor's CPUID signature at 0x40000000 (e.g. `OpenBSDVMM58`).
    pub hypervisor: Option<String>,
    /// A KVM signature with the kvm-clock feature at some CPUID base from
    /// 0x40000000 up (recent vmm offers it at 0x40000100).
    pub kvm_clock_offered: bool,
    /// `constant_tsc`: the TSC rate does not follow CPU frequency changes.
    pub tsc_constant: bool,
    /// `nonstop_tsc`: the TSC keeps counting in deep C-states.
    pub tsc_nonstop: bool,
    /// The guest clock's rate against the host's, ppm (positive: the guest
    /// runs slow, host − guest grows), from the drift history.
    pub drift_ppm: Option<f64>,
    /// What to do about it, in plain words; empty when all is well.
    pub advice: Vec<String>,
}

impl ClockSource {
    /// Whether the current source is one that drifts badly.
    pub fn is_poor(&self) -> bool {
        self.current.as_deref().is_some_and(|c| POOR.contains(&c))
    }

    /// One line for people: `tsc (available: tsc hpet); hypervisor
    /// OpenBSDVMM58, kvm-clock not offered; TSC: constant, no nonstop`.
    pub fn summary(&self) -> String {
        let flag = |on: bool, name: &str| {
            if on {
                name.to_string()
            } else {
                format!("no {name}")
            }
        };
        format!(
            "{} (available: {}); hypervisor {}, kvm-clock {}; TSC: {}, {}{}",
            self.current.as_deref().unwrap_or("unknown"),
            self.available.join(" "),
            self.hypervisor.as_deref().unwrap_or("unknown"),
            if self.kvm_clock_offered {
                "offered"
            } else {
                "not offered"
            },
            flag(self.tsc_constant, "constant"),
            flag(self.tsc_nonstop, "nonstop"),
            self.drift_ppm
                .map(|p| format!("; drift {p:+.1} ppm"))
                .unwrap_or_default()
        )
    }

    /// Fill in the drift rate and the advice from the facts.
    pub fn advise(mut self, drift_ppm: Option<f64>) -> ClockSource {
        self.drift_ppm = drift_ppm;
        self.advice = advice(&self);
        self
    }
}

fn advice(c: &ClockSource) -> Vec<String> {
    let mut out = Vec::new();
    let has = |name: &str| c.available.iter().any(|a| a == name);
    let current = c.current.as_deref().unwrap_or("unknown");
    let select = |name: &str| {
        format!(
            "echo {name} > /sys/devices/system/clocksource/clocksource0/current_clocksource \
             (for good: boot with clocksource={name})"
        )
    };
    if c.is_poor() {
        let better = ["kvm-clock", "tsc"].into_iter().find(|s| has(s));
        out.push(match better {
            Some(b) => format!(
                "the guest clock runs on {current}, which drifts badly in a VM: select {b}: {}",
                select(b)
            ),
            None => format!(
                "the guest clock runs on {current}, which drifts badly in a VM, and nothing \
                 better is available: keep [clock] mode = \"discipline\" (the default) or \
                 feed chrony through [chrony] socket"
            ),
        });
    }
    if c.kvm_clock_offered && c.current.as_deref() != Some("kvm-clock") {
        out.push(if has("kvm-clock") {
            format!(
                "the host offers kvm-clock and this kernel has it, but the clock runs on \
                 {current}: {}",
                select("kvm-clock")
            )
        } else {
            "the host offers kvm-clock but this kernel has none (built without \
             CONFIG_KVM_GUEST): a distribution kernel with it keeps better time"
                .to_string()
        });
    }
    if c.current.as_deref() == Some("tsc") && !(c.tsc_constant && c.tsc_nonstop) {
        out.push(
            "the clock runs on a TSC without constant_tsc and nonstop_tsc: it may change \
             rate with the host's CPU frequency; prefer kvm-clock where offered, or keep \
             [clock] mode = \"discipline\" (the default)"
                .to_string(),
        );
    }
    if let Some(ppm) = c.drift_ppm.filter(|p| p.abs() > TICK_DRIFT_PPM) {
        out.push(format!(
            "the guest clock drifts {ppm:+.0} ppm against the host ({:.1} s a day), more \
             than the kernel's frequency correction reaches: `discipline` follows it through \
             the tick, but the clock source ({current}) is the thing to fix",
            ppm.abs() * 86_400.0 / 1e6
        ));
    } else if let Some(ppm) = c.drift_ppm.filter(|p| p.abs() > FAST_DRIFT_PPM) {
        out.push(format!(
            "the guest clock drifts {ppm:+.0} ppm against the host ({:.1} s a day): keep \
             [clock] mode = \"discipline\" (the default), or use chrony with the vmmci refclock",
            ppm.abs() * 86_400.0 / 1e6
        ));
    }
    out
}

/// The drift rate over the history since the last step (a step breaks the
/// line): (last − first offset) / elapsed, ppm. `None` for under a minute.
pub fn drift_rate_ppm(history: &[DriftEntry], last_step_at_ns: Option<i64>) -> Option<f64> {
    let since = last_step_at_ns.unwrap_or(i64::MIN);
    let mut points = history.iter().filter(|p| p.at_ns > since);
    let first = points.next()?;
    let last = points.next_back()?;
    let span = last.at_ns - first.at_ns;
    (span >= MIN_RATE_SPAN_NS)
        .then(|| (last.offset_ns - first.offset_ns) as f64 / span as f64 * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(current: &str, available: &[&str]) -> ClockSource {
        ClockSource {
            current: Some(current.into()),
            available: available.iter().map(|s| s.to_string()).collect(),
            tsc_constant: true,
            tsc_nonstop: true,
            ..ClockSource::default()
        }
    }

    #[test]
    fn a_guest_on_refined_jiffies_is_told_to_select_a_better_source() {
        let c = source("refined-jiffies", &["tsc", "refined-jiffies"]).advise(None);
        assert!(c.is_poor());
        assert_eq!(c.advice.len(), 1, "{:?}", c.advice);
        assert!(c.advice[0].contains("select tsc") && c.advice[0].contains("clocksource=tsc"));
        let c = source("jiffies", &["jiffies"]).advise(None);
        assert!(c.advice[0].contains("discipline") && c.advice[0].contains("chrony"));
    }

    #[test]
    fn kvm_clock_offered_but_unused_says_how_to_select_it() {
        let offered = |c: ClockSource| ClockSource {
            kvm_clock_offered: true,
            ..c
        };
        let c = offered(source("tsc", &["kvm-clock", "tsc"])).advise(None);
        assert_eq!(c.advice.len(), 1, "{:?}", c.advice);
        assert!(c.advice[0].contains("echo kvm-clock >"), "{:?}", c.advice);
        let c = offered(source("tsc", &["tsc"])).advise(None);
        assert!(c.advice[0].contains("CONFIG_KVM_GUEST"), "{:?}", c.advice);
        let c = offered(source("kvm-clock", &["kvm-clock", "tsc"])).advise(None);
        assert!(c.advice.is_empty(), "{:?}", c.advice);
    }

    #[test]
    fn an_unstable_tsc_and_a_fast_drift_are_named() {
        let c = ClockSource {
            tsc_nonstop: false,
            ..source("tsc", &["tsc"])
        }
        .advise(Some(-250.0));
        assert_eq!(c.advice.len(), 2, "{:?}", c.advice);
        assert!(c.advice[0].contains("nonstop_tsc"));
        assert!(c.advice[1].contains("-250 ppm") && c.advice[1].contains("21.6 s a day"));
        assert!(source("tsc", &["tsc"]).advise(Some(20.0)).advice.is_empty());
    }

    #[test]
    fn a_drift_beyond_the_frequency_range_blames_the_clock_source() {
        let c = source("tsc", &["tsc"]).advise(Some(20_000.0));
        assert_eq!(c.advice.len(), 1, "{:?}", c.advice);
        let a = &c.advice[0];
        assert!(
            a.contains("+20000 ppm") && a.contains("through the tick"),
            "{a}"
        );
        assert!(
            a.contains("the clock source (tsc) is the thing to fix"),
            "{a}"
        );
    }

    #[test]
    fn the_drift_rate_comes_from_the_history_after_the_last_step() {
        let point = |at_s: i64, offset_us: i64| DriftEntry {
            at_ns: at_s * 1_000_000_000,
            offset_ns: offset_us * 1_000,
            round_trip_ns: 0,
        };
        // 50 µs per 10 s = 5 ppm, after a step at t = 25 s.
        let h = [
            point(0, 9_000_000),
            point(20, 9_000_100),
            point(30, 0),
            point(60, 150),
            point(90, 300),
        ];
        let rate = drift_rate_ppm(&h, Some(25_000_000_000)).unwrap();
        assert!((rate - 5.0).abs() < 1e-9, "{rate}");
        assert_eq!(drift_rate_ppm(&h[2..4], None), None, "under a minute");
        assert_eq!(drift_rate_ppm(&[], None), None);
    }
}
