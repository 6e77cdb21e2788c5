//! `vmmci-figures`: the README's figure tables from the newest bench results.
//!
//! Reads the newest `bench/results/*.json` (names start with the UTC date),
//! renders each table and rewrites README.md between its marker comments
//! (`<!-- figures:NAME:begin -->` … `<!-- figures:NAME:end -->`).
//! `--check` writes nothing and exits 1 when the README differs (the test
//! `readme_figures` does the same). No QEMU: it only reads files.
//!
//! Usage: vmmci-figures [--check] [--repo DIR]

use std::path::PathBuf;

use vmmci_rig::{artifacts, figures};

fn main() {
    let mut check = false;
    let mut repo: PathBuf = artifacts::repo_root();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--check" => check = true,
            "--repo" => match it.next() {
                Some(d) => repo = PathBuf::from(d),
                None => fail("--repo needs a directory", 2),
            },
            "-h" | "--help" => {
                println!("usage: vmmci-figures [--check] [--repo DIR]");
                return;
            }
            other => fail(&format!("unknown argument {other}"), 2),
        }
    }
    let (readme, from) = figures::generate(&repo).unwrap_or_else(|e| fail(&e, 1));
    let path = repo.join("README.md");
    let now = std::fs::read_to_string(&path).unwrap_or_default();
    if now == readme {
        eprintln!(
            "vmmci-figures: README.md is up to date with {}",
            from.display()
        );
        return;
    }
    if check {
        fail(
            &format!(
                "README.md's figures differ from {} (run vmmci-figures)",
                from.display()
            ),
            1,
        );
    }
    std::fs::write(&path, readme).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display()), 1));
    eprintln!("vmmci-figures: README.md rewritten from {}", from.display());
}

fn fail(msg: &str, code: i32) -> ! {
    eprintln!("vmmci-figures: {msg}");
    std::process::exit(code);
}
