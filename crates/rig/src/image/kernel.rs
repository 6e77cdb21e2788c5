//! A Debian kernel from the rig's cache, and the modules the guest loads
//! from it (resolved through `modules.builtin` and each module's
//! `depends=`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::RigError;

/// A kernel unpacked by `scripts/rig/fetch-kernels.sh`.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>`
    pub modules: PathBuf,
    pub version: String,
}

impl Kernel {
    /// `<cache>/kernels/<name>` as laid out by fetch-kernels.sh.
    pub fn from_cache(cache: &Path, name: &str) -> Result<Kernel, RigError> {
        let dir = cache.join("kernels").join(name);
        let version = fs::read_to_string(dir.join("VERSION")).map_err(|e| {
            RigError::Missing(format!(
                "kernel {name} not in {} ({e}); run scripts/rig/fetch-kernels.sh",
                dir.display()
            ))
        })?;
        let vmlinuz = dir.join("vmlinuz");
        if !vmlinuz.exists() {
            return Err(RigError::Missing(format!(
                "{} missing; rerun fetch-kernels.sh",
                vmlinuz.display()
            )));
        }
        Ok(Kernel {
            name: name.to_string(),
            vmlinuz,
            modules: dir.join("modules"),
            version: version.trim().into(),
        })
    }

    fn builtin(&self) -> io::Result<BTreeSet<String>> {
        let text = fs::read_to_string(self.modules.join("modules.builtin"))?;
        Ok(text.lines().filter_map(module_name_of).collect())
    }

    fn module_files(&self) -> io::Result<HashMap<String, PathBuf>> {
        let mut map = HashMap::new();
        let mut stack = vec![self.modules.join("kernel")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d)? {
                let e = e?;
                let p = e.path();
                if e.file_type()?.is_dir() {
                    stack.push(p);
                } else if let Some(n) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(module_name_of)
                {
                    map.insert(n, p);
                }
            }
        }
        Ok(map)
    }

    /// The modules (decompressed, in load order) needed for `wanted` on this
    /// kernel: built-in ones are dropped, dependencies (from each module's
    /// `depends=` modinfo) come first.
    pub fn resolve_modules(&self, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>, RigError> {
        let builtin = self
            .builtin()
            .map_err(|e| RigError::Io(format!("{}: modules.builtin: {e}", self.name), e))?;
        let files = self
            .module_files()
            .map_err(|e| RigError::Io(format!("{}: module tree: {e}", self.name), e))?;
        let mut loaded: BTreeMap<String, usize> = BTreeMap::new();
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        fn visit(
            name: &str,
            builtin: &BTreeSet<String>,
            files: &HashMap<String, PathBuf>,
            loaded: &mut BTreeMap<String, usize>,
            out: &mut Vec<(String, Vec<u8>)>,
            depth: usize,
        ) -> Result<(), RigError> {
            let name = name.replace('-', "_");
            if builtin.contains(&name) || loaded.contains_key(&name) || depth > 32 {
                return Ok(());
            }
            let Some(path) = files.get(&name) else {
                return Err(RigError::Missing(format!(
                    "module {name} neither built in nor shipped"
                )));
            };
            let data = decompress(path)?;
            loaded.insert(name.clone(), usize::MAX);
            for dep in modinfo_field(&data, "depends")
                .split(',')
                .filter(|s| !s.is_empty())
            {
                visit(dep, builtin, files, loaded, out, depth + 1)?;
            }
            loaded.insert(name.clone(), out.len());
            out.push((name, data));
            Ok(())
        }
        for w in wanted {
            let n = w.replace('-', "_");
            if OPTIONAL_GUEST_MODULES.contains(&n.as_str())
                && !builtin.contains(&n)
                && !files.contains_key(&n)
            {
                continue;
            }
            visit(w, &builtin, &files, &mut loaded, &mut out, 0)?;
        }
        Ok(out)
    }
}

/// `kernel/fs/ext4/ext4.ko.xz` -> `ext4`
pub(super) fn module_name_of(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let stem = base.strip_suffix(".ko").or_else(|| {
        [".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .find_map(|s| base.strip_suffix(s))
    })?;
    Some(stem.replace('-', "_"))
}

fn decompress(path: &Path) -> Result<Vec<u8>, RigError> {
    let s = path.to_string_lossy();
    let tool = if s.ends_with(".xz") {
        Some("xz")
    } else if s.ends_with(".zst") {
        Some("zstd")
    } else if s.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).map_err(|e| RigError::Io(format!("read {}", path.display()), e)),
        Some(t) => {
            let out = Command::new(t).arg("-dc").arg(path).output().map_err(|e| {
                RigError::Io(format!("run {t} -dc {} (install it)", path.display()), e)
            })?;
            if !out.status.success() {
                return Err(RigError::Missing(format!(
                    "{t} -dc {} failed",
                    path.display()
                )));
            }
            Ok(out.stdout)
        }
    }
}

/// A `key=value` string from a module's .modinfo section (scanned crudely:
/// the section is a run of NUL-terminated strings).
pub(super) fn modinfo_field(data: &[u8], key: &str) -> String {
    let pat = format!("{key}=");
    let pat = pat.as_bytes();
    let mut i = 0;
    while i + pat.len() <= data.len() {
        if &data[i..i + pat.len()] == pat && (i == 0 || data[i - 1] == 0) {
            let start = i + pat.len();
            let end = data[start..]
                .iter()
                .position(|&b| b == 0)
                .map(|p| start + p)
                .unwrap_or(data.len());
            return String::from_utf8_lossy(&data[start..end]).into_owned();
        }
        i += 1;
    }
    String::new()
}

/// Modules the guest needs for /dev/vda as ext4, in the order the cloud
/// kernels need them. `crc32c_generic` is ext4's soft dependency.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "crc16",
    "mbcache",
    "jbd2",
    "ext4",
];

/// Of the modules asked for, those a kernel may lack altogether (neither
/// built in nor shipped), skipped there: virtio_pci's legacy and modern
/// parts became modules of their own after 5.10, and by 7.x
/// crc32c_generic is gone (ext4 uses the built-in crc32 library; the
/// crypto API's crc32c is crc32c-cryptoapi).
pub const OPTIONAL_GUEST_MODULES: &[&str] = &[
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "crc32c_generic",
];
