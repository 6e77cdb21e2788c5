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
    vmmci_report::rfc3339_secs(unix_secs as i64)
}
