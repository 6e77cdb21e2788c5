//! The README's figure tables are what `vmmci-figures` makes from the newest
//! `bench/results/*.json`: a figure edited by hand in the README, or a
//! summary edited in the JSON, fails here. No QEMU.
//! Fix: `cargo run -p vmmci-rig --bin vmmci-figures` (after a bench run).

use vmmci_rig::{artifacts, figures};

#[test]
fn readme_figures_are_generated_from_the_newest_results() {
    let repo = artifacts::repo_root();
    let (want, from) = match figures::generate(&repo) {
        Ok(x) => x,
        Err(e) => panic!("vmmci-figures: {e}"),
    };
    let have = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    if have != want {
        let diff: Vec<String> = have
            .lines()
            .zip(want.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  README: {a}\n  wanted: {b}", i + 1))
            .collect();
        panic!(
            "README.md's generated figures differ from {} (run `cargo run -p vmmci-rig --bin \
             vmmci-figures`; never edit them by hand):\n{}",
            from.display(),
            diff.join("\n")
        );
    }
}

#[test]
fn every_results_file_is_well_formed() {
    let dir = figures::results_dir(&artifacts::repo_root());
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("bench/results") {
        let p = e.expect("dir entry").path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read");
        let r: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        // Stored summaries agree with the points (checked while rendering).
        if let Err(e) = figures::sections(&name, &r) {
            panic!("{}: {e}", p.display());
        }
        for k in ["date", "qemu", "kernels", "counts", "git"] {
            assert!(r.get(k).is_some(), "{}: no {k}", p.display());
        }
        let want = figures::result_file_name(
            r["date"].as_str().unwrap(),
            r["git"]["short"].as_str().unwrap(),
        );
        assert_eq!(
            name, want,
            "a results file is named after its date and revision"
        );
        n += 1;
    }
    assert!(n > 0, "no results in {}", dir.display());
}
