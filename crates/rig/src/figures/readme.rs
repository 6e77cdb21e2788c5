//! The README's generated sections: their markers, and the README rewritten
//! between them from the newest results.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{newest, results_dir, sections};

/// The README's generated sections, in the order they appear.
pub const SECTIONS: [&str; 5] = ["main", "clock", "rates", "window", "load"];

/// The README as the newest results in `<repo>/bench/results` make it, and
/// which file that was.
pub fn generate(repo: &Path) -> Result<(String, PathBuf), String> {
    let path = newest(&results_dir(repo))?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let r: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("a results file name that is not UTF-8")?;
    let readme_path = repo.join("README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .map_err(|e| format!("{}: {e}", readme_path.display()))?;
    Ok((rewrite(&readme, &sections(file, &r)?)?, path))
}

/// `readme` with each section's text between its markers (each marker
/// exactly once, begin before end).
pub fn rewrite(readme: &str, sections: &[(&str, String)]) -> Result<String, String> {
    let mut out = readme.to_string();
    for (name, body) in sections {
        let (b, e) = (begin_marker(name), end_marker(name));
        if out.matches(&b).count() != 1 || out.matches(&e).count() != 1 {
            return Err(format!("README: {b} and {e} must appear once each"));
        }
        let i = out.find(&b).expect("counted") + b.len();
        let j = out.find(&e).expect("counted");
        if j < i {
            return Err(format!("README: {e} before {b}"));
        }
        out.replace_range(i..j, &format!("\n{}\n", body.trim_end()));
    }
    Ok(out)
}

/// The comments around section `name`'s text in the README.
pub fn begin_marker(name: &str) -> String {
    format!("<!-- figures:{name}:begin -->")
}
pub fn end_marker(name: &str) -> String {
    format!("<!-- figures:{name}:end -->")
}
