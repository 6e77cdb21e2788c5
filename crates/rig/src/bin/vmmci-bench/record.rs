//! The results file: where and on what the bench ran, the counts it used,
//! and where the JSON is written.

use std::path::PathBuf;
use std::process::Command as Proc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use vmmci_rig::distro::{Image, Init};
use vmmci_rig::image::Kernel;
use vmmci_rig::{artifacts, figures, RigError};

use crate::cli::Args;

/// Where and on what the bench ran, and the counts: into `r`.
pub fn meta(args: &Args, parts: &[&str], r: &mut Map<String, Value>) -> Result<(), RigError> {
    let git = git();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let qemu = qemu_version()?;
    let kernels = kernels(args, parts)?;
    r.insert("schema".into(), json!(figures::SCHEMA));
    r.insert("git".into(), git);
    r.insert("date".into(), json!(figures::utc(now)));
    r.insert(
        "host".into(),
        json!({
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": output("uname", &["-r"]).unwrap_or_default(),
        }),
    );
    r.insert("qemu".into(), json!(qemu));
    r.insert("kernels".into(), json!(kernels));
    r.insert("counts".into(), counts(args, parts));
    Ok(())
}

/// stdout of a command, trimmed; `None` when it cannot run or fails.
fn output(prog: &str, args: &[&str]) -> Option<String> {
    let o = Proc::new(prog).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The revision, and whether tracked files differ from it.
fn git() -> Value {
    let repo = artifacts::repo_root().display().to_string();
    let git = |a: &[&str]| output("git", &[&["-C", repo.as_str()], a].concat());
    let rev = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let short = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_none_or(|s| !s.is_empty());
    json!({"rev": rev, "short": short, "dirty": dirty})
}

/// "QEMU 7.2.22 (...)", from `qemu --version`'s first line.
fn qemu_version() -> Result<String, RigError> {
    let qemu = artifacts::qemu()?;
    let line = output(&qemu.display().to_string(), &["--version"])
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    Ok(line
        .strip_prefix("QEMU emulator version ")
        .map_or(line.clone(), |v| format!("QEMU {v}")))
}

/// The guest kernels, each with the parts that boot it.
fn kernels(args: &Args, parts: &[&str]) -> Result<Vec<Value>, RigError> {
    let mut kernels = vec![];
    let busybox_parts: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| ["basic", "load", "clock"].contains(p))
        .collect();
    if !busybox_parts.is_empty() {
        let k = Kernel::from_cache(&artifacts::cache_dir(), &args.kernel)?;
        kernels.push(json!({
            "name": k.name,
            "version": k.version,
            "guest": "busybox initramfs",
            "used_by": busybox_parts,
        }));
    }
    for (init, used_by) in [
        (Init::Systemd, vec!["clock", "window", "distro"]),
        (Init::OpenRc, vec!["window", "distro"]),
    ] {
        let used_by: Vec<&str> = used_by.into_iter().filter(|p| parts.contains(p)).collect();
        if !used_by.is_empty() {
            kernels.push(debian_kernel(init, &used_by)?);
        }
    }
    Ok(kernels)
}

/// A Debian 12 image's kernel, from its manifest.
fn debian_kernel(init: Init, used_by: &[&str]) -> Result<Value, RigError> {
    let img = Image::locate_init(init)?;
    let line = |k: &str| {
        img.manifest
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    Ok(json!({
        "name": format!("Debian 12 image, {}", line("init:")),
        "version": line("kernel:"),
        "guest": line("suite:"),
        "package": line("package:"),
        "used_by": used_by,
    }))
}

fn counts(args: &Args, parts: &[&str]) -> Value {
    json!({
        "parts": parts,
        "short": args.short,
        "stops": args.stops,
        "resumes": args.resumes,
        "idle_secs": args.idle_secs,
        "clock_minutes": args.clock_minutes,
        "window_boots": args.window_boots,
        "load_stops": args.load_stops,
        "distro_stops": args.distro_stops,
        "openrc_stops": args.openrc_stops,
        "distro_load_stops": args.distro_load_stops,
    })
}

/// Writes `r` to `--json FILE` and, when the run saves there, to
/// `bench/results/<UTC date>-<short rev>.json`.
pub fn save(args: &Args, r: &Value) -> Result<(), RigError> {
    let text = serde_json::to_string_pretty(r).expect("JSON of plain values") + "\n";
    let results = figures::results_dir(&artifacts::repo_root());
    let mut paths: Vec<PathBuf> = args.json.iter().map(PathBuf::from).collect();
    if args.saves_to_results() {
        std::fs::create_dir_all(&results)
            .map_err(|e| RigError::Io(results.display().to_string(), e))?;
        paths.push(results.join(figures::result_file_name(
            r["date"].as_str().unwrap_or("unknown"),
            r["git"]["short"].as_str().unwrap_or("unknown"),
        )));
    }
    for path in &paths {
        std::fs::write(path, &text).map_err(|e| RigError::Io(path.display().to_string(), e))?;
        eprintln!("wrote {}", path.display());
    }
    if !paths.iter().any(|p| p.starts_with(&results)) {
        eprintln!("(not saved in bench/results: pass --save)");
    }
    Ok(())
}
