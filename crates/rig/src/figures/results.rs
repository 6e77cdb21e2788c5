//! The results files in `bench/results/`: their names, which is newest,
//! and the UTC dates the names start with.

use std::path::{Path, PathBuf};

/// `<repo>/bench/results`.
pub fn results_dir(repo: &Path) -> PathBuf {
    repo.join("bench").join("results")
}

/// `YYYY-MM-DDTHHMMSSZ-<short rev>.json`: names sort by date.
pub fn result_file_name(date_utc: &str, short_rev: &str) -> String {
    // 2026-05-01T12:03:55Z -> 2026-05-01T120355Z
    format!("{}-{short_rev}.json", date_utc.replace(':', ""))
}

/// The newest results file in `dir` (the greatest name: names start with
/// the UTC date).
pub fn newest(dir: &Path) -> Result<PathBuf, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    names.pop().ok_or(format!(
        "no results in {} (run scripts/bench)",
        dir.display()
    ))
}

/// UTC date and time, `YYYY-MM-DDTHH:MM:SSZ`, of a Unix time.
pub fn utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
