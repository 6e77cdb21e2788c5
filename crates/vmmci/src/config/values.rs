//! The file's values that TOML has no type for: durations (`250ms`), the
//! clock mode, and a path where `""` means none.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use vmmci_agent::ClockMode;

/// `250ms`, `15s`, `2m`, `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("invalid duration {text:?}: use a number with ms, s or m, e.g. \"250ms\"")
    })?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?}; use ms, s or m, e.g. \"250ms\""
            ))
        }
    };
    if !secs.is_finite() || secs > 86_400.0 {
        return Err(format!("invalid duration {text:?}: too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(super) fn de_mode<'de, D: Deserializer<'de>>(d: D) -> Result<ClockMode, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

pub(super) fn de_socket<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").unwrap_err().contains("use a number"));
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
    }
}
