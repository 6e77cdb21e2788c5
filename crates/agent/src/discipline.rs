//! The clock policy (`[clock] mode`): what periodic samples do to the
//! guest clock. The loop that slews in `discipline` is [`crate::servo`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What the agent does to the guest clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClockMode {
    /// Step only when the host sends SYNCRTC (the old driver's behaviour,
    /// but from the time registers); warn when a sample finds the clock
    /// far off with no request.
    StepOnRequest,
    /// Slew small offsets through the kernel's rate correction, step large
    /// ones, both directions; stand back when another time daemon runs.
    /// The default: vmd asks for a step only after a forward jump of more
    /// than 5 s, so without it the drift of two free-running clocks and a
    /// host clock set back are never corrected.
    #[default]
    Discipline,
    /// Never touch the clock (SYNCRTC is still acknowledged); only measure.
    Off,
}

impl ClockMode {
    pub fn name(self) -> &'static str {
        match self {
            ClockMode::StepOnRequest => "step-on-request",
            ClockMode::Discipline => "discipline",
            ClockMode::Off => "off",
        }
    }
}

impl fmt::Display for ClockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ClockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<ClockMode, String> {
        match s {
            "step-on-request" => Ok(ClockMode::StepOnRequest),
            "discipline" => Ok(ClockMode::Discipline),
            "off" => Ok(ClockMode::Off),
            other => Err(format!(
                "unknown clock mode {other:?}: use \"step-on-request\", \"discipline\" or \"off\""
            )),
        }
    }
}

/// The mode and its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockPolicy {
    pub mode: ClockMode,
    /// Offsets beyond this are stepped in `discipline` (such an offset is a
    /// jump, a missed resume or a clock set by hand, not drift; below it the
    /// servo slews through the tick within seconds) and warned about in
    /// `step-on-request`. ntpd's default.
    pub step_threshold: Duration,
}

impl Default for ClockPolicy {
    fn default() -> ClockPolicy {
        ClockPolicy {
            mode: ClockMode::default(),
            step_threshold: DEFAULT_STEP_THRESHOLD,
        }
    }
}

pub const DEFAULT_STEP_THRESHOLD: Duration = Duration::from_millis(128);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discipline_is_the_default() {
        assert_eq!(ClockPolicy::default().mode, ClockMode::Discipline);
    }

    #[test]
    fn modes_parse_by_name() {
        for m in [
            ClockMode::StepOnRequest,
            ClockMode::Discipline,
            ClockMode::Off,
        ] {
            assert_eq!(m.name().parse::<ClockMode>(), Ok(m));
        }
        assert!("slew"
            .parse::<ClockMode>()
            .unwrap_err()
            .contains("discipline"));
    }
}
