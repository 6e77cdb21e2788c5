//! Finding the vmmci device in sysfs and checking that it can be driven.

use std::fs;
use std::path::{Path, PathBuf};

use vmmci_protocol::pci;

use crate::TransportError;

/// Where Linux lists PCI devices.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";
/// Where Linux says whether kernel lockdown is on.
pub const SYSFS_LOCKDOWN: &str = "/sys/kernel/security/lockdown";

/// `IORESOURCE_IO` in the flags column of sysfs `resource`.
const IORESOURCE_IO: u64 = 0x100;
/// Bit 0 of the PCI command register: I/O space decode.
const PCI_COMMAND_IO: u16 = 0x1;
const PCI_COMMAND_OFFSET: u64 = 0x04;

/// A PCI function as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    /// Domain:bus:device.function, e.g. `0000:00:05.0`.
    pub bdf: String,
    pub path: PathBuf,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    pub revision: u8,
    pub class: u32,
    /// Kernel driver bound to it, if any (normally none for vmmci on Linux).
    pub driver: Option<String>,
}

impl PciDevice {
    pub fn read(path: &Path) -> Result<PciDevice, TransportError> {
        let hex = |name: &str| -> Result<u64, TransportError> {
            let p = path.join(name);
            let text = fs::read_to_string(&p).map_err(|e| TransportError::NotVmmci {
                path: path.display().to_string(),
                reason: format!("cannot read {}: {e}", p.display()),
            })?;
            parse_hex(text.trim()).ok_or_else(|| TransportError::NotVmmci {
                path: path.display().to_string(),
                reason: format!("{} holds {:?}, not a hex number", p.display(), text.trim()),
            })
        };
        let driver = fs::read_link(path.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        Ok(PciDevice {
            bdf: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            vendor: hex("vendor")? as u16,
            device: hex("device")? as u16,
            subsystem_vendor: hex("subsystem_vendor").unwrap_or(0) as u16,
            subsystem_device: hex("subsystem_device").unwrap_or(0) as u16,
            revision: hex("revision").unwrap_or(0) as u8,
            class: hex("class").unwrap_or(0) as u32,
            driver,
        })
    }

    pub fn is_vmmci(&self) -> bool {
        self.vendor == pci::VENDOR_ID && self.device == pci::DEVICE_ID
    }

    /// Differences from vmd's identity beyond vendor/device, worth a warning.
    pub fn identity_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if (self.subsystem_vendor, self.subsystem_device)
            != (pci::SUBSYSTEM_VENDOR_ID, pci::SUBSYSTEM_DEVICE_ID)
        {
            notes.push(format!(
                "subsystem {:04x}:{:04x}, vmd gives {:04x}:{:04x}",
                self.subsystem_vendor,
                self.subsystem_device,
                pci::SUBSYSTEM_VENDOR_ID,
                pci::SUBSYSTEM_DEVICE_ID
            ));
        }
        if self.revision != pci::REVISION {
            notes.push(format!(
                "revision {}, vmd gives {}",
                self.revision,
                pci::REVISION
            ));
        }
        notes
    }

    pub fn resource0(&self) -> PathBuf {
        self.path.join("resource0")
    }

    /// BAR0 from the `resource` file.
    pub fn bar0(&self) -> Result<Bar0, TransportError> {
        let path = self.path.join("resource");
        let text = fs::read_to_string(&path).map_err(|e| TransportError::NotVmmci {
            path: self.path.display().to_string(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let fields: Vec<u64> = text
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(parse_hex)
            .collect();
        match fields[..] {
            [start, end, flags] => Ok(Bar0 { start, end, flags }),
            _ => Err(TransportError::NotVmmci {
                path: self.path.display().to_string(),
                reason: format!("unreadable BAR0 line in {}", path.display()),
            }),
        }
    }

    /// Make sure BAR0 is an I/O BAR and the device decodes I/O; turn decode
    /// on through the `enable` file if it is off. Returns whether it had to.
    pub fn ensure_io_decode(&self) -> Result<bool, TransportError> {
        let bar0 = self.bar0()?;
        if !bar0.is_io() || bar0.size() == 0 {
            return Err(TransportError::NotIoBar {
                path: self.path.display().to_string(),
            });
        }
        if self.io_decode_on()? {
            return Ok(false);
        }
        fs::write(self.path.join("enable"), "1").map_err(|e| TransportError::IoDecodeOff {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        if self.io_decode_on()? {
            Ok(true)
        } else {
            Err(TransportError::IoDecodeOff {
                path: self.path.display().to_string(),
                reason: "still off after writing 1 to 'enable'".into(),
            })
        }
    }

    /// I/O decode bit of the PCI command register, from the `config` file.
    pub fn io_decode_on(&self) -> Result<bool, TransportError> {
        use std::os::unix::fs::FileExt;
        let path = self.path.join("config");
        let mut buf = [0u8; 2];
        let file = fs::File::open(&path).map_err(|e| TransportError::IoDecodeOff {
            path: self.path.display().to_string(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        file.read_exact_at(&mut buf, PCI_COMMAND_OFFSET)
            .map_err(|e| TransportError::IoDecodeOff {
                path: self.path.display().to_string(),
                reason: format!("cannot read the command register: {e}"),
            })?;
        Ok(u16::from_le_bytes(buf) & PCI_COMMAND_IO != 0)
    }
}

/// BAR0 as sysfs reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar0 {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
}

impl Bar0 {
    pub fn is_io(&self) -> bool {
        self.flags & IORESOURCE_IO != 0
    }
    pub fn size(&self) -> u64 {
        if self.end >= self.start && self.end != 0 {
            self.end - self.start + 1
        } else {
            0
        }
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// Find the vmmci device under `root` (normally [`SYSFS_PCI_DEVICES`]), or
/// check the one named by `bdf`.
pub fn find(root: &Path, bdf: Option<&str>) -> Result<PciDevice, TransportError> {
    if let Some(bdf) = bdf {
        let path = root.join(bdf);
        if !path.exists() {
            return Err(TransportError::NotVmmci {
                path: path.display().to_string(),
                reason: "no such PCI device".into(),
            });
        }
        let dev = PciDevice::read(&path)?;
        if !dev.is_vmmci() {
            return Err(TransportError::NotVmmci {
                path: path.display().to_string(),
                reason: format!(
                    "it is {:04x}:{:04x}, vmmci is {:04x}:{:04x}",
                    dev.vendor,
                    dev.device,
                    pci::VENDOR_ID,
                    pci::DEVICE_ID
                ),
            });
        }
        return Ok(dev);
    }
    let entries =
        fs::read_dir(root).map_err(|_| TransportError::NoDevice(root.display().to_string()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| PciDevice::read(p).ok())
        .find(PciDevice::is_vmmci)
        .ok_or_else(|| TransportError::NoDevice(root.display().to_string()))
}

/// Kernel lockdown mode, if the kernel reports one other than `none`.
pub fn lockdown_mode(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    let mode = &text[start + 1..end];
    (mode != "none").then(|| mode.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs device directory as the kernel lays it out.
    pub(crate) fn fake_device(
        root: &Path,
        bdf: &str,
        vendor: u16,
        device: u16,
        bar_flags: u64,
        command: u16,
    ) -> PathBuf {
        let dir = root.join(bdf);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vendor"), format!("0x{vendor:04x}\n")).unwrap();
        fs::write(dir.join("device"), format!("0x{device:04x}\n")).unwrap();
        fs::write(dir.join("subsystem_vendor"), "0x0b5d\n").unwrap();
        fs::write(dir.join("subsystem_device"), "0xffff\n").unwrap();
        fs::write(dir.join("revision"), "0x00\n").unwrap();
        fs::write(dir.join("class"), "0x078000\n").unwrap();
        fs::write(
            dir.join("resource"),
            format!("0x000000000000c000 0x000000000000cfff 0x{bar_flags:016x}\n0x0 0x0 0x0\n"),
        )
        .unwrap();
        let mut config = vec![0u8; 64];
        config[4..6].copy_from_slice(&command.to_le_bytes());
        fs::write(dir.join("config"), config).unwrap();
        dir
    }

    #[test]
    fn finds_vmmci_among_other_devices() {
        let root = tempfile::tempdir().unwrap();
        fake_device(root.path(), "0000:00:00.0", 0x0b5d, 0x0666, 0x40101, 1);
        fake_device(root.path(), "0000:00:03.0", 0x1af4, 0x1001, 0x40101, 1);
        fake_device(root.path(), "0000:00:05.0", 0x0b5d, 0x0777, 0x40101, 1);
        let dev = find(root.path(), None).unwrap();
        assert_eq!(dev.bdf, "0000:00:05.0");
        assert!(dev.identity_notes().is_empty());
        assert_eq!(dev.bar0().unwrap().size(), 0x1000);
        assert!(!dev.ensure_io_decode().unwrap(), "already decoding");
    }

    #[test]
    fn no_device_says_not_a_vmd_guest() {
        let root = tempfile::tempdir().unwrap();
        fake_device(root.path(), "0000:00:03.0", 0x1af4, 0x1001, 0x40101, 1);
        let err = find(root.path(), None).unwrap_err();
        assert!(
            err.to_string().contains("not an OpenBSD vmd guest"),
            "{err}"
        );
        let err = find(Path::new("/nonexistent/sysfs"), None).unwrap_err();
        assert!(matches!(err, TransportError::NoDevice(_)));
    }

    #[test]
    fn named_device_must_be_vmmci() {
        let root = tempfile::tempdir().unwrap();
        fake_device(root.path(), "0000:00:03.0", 0x1af4, 0x1001, 0x40101, 1);
        let err = find(root.path(), Some("0000:00:03.0")).unwrap_err();
        assert!(err.to_string().contains("vmmci is 0b5d:0777"), "{err}");
        let err = find(root.path(), Some("0000:00:09.0")).unwrap_err();
        assert!(err.to_string().contains("no such PCI device"), "{err}");
    }

    #[test]
    fn memory_bar_is_refused() {
        let root = tempfile::tempdir().unwrap();
        fake_device(root.path(), "0000:00:05.0", 0x0b5d, 0x0777, 0x40200, 1);
        let err = find(root.path(), None)
            .unwrap()
            .ensure_io_decode()
            .unwrap_err();
        assert!(matches!(err, TransportError::NotIoBar { .. }), "{err}");
    }

    #[test]
    fn io_decode_off_is_enabled_or_explained() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_device(root.path(), "0000:00:05.0", 0x0b5d, 0x0777, 0x40101, 0);
        let dev = find(root.path(), None).unwrap();
        // A plain file stands in for 'enable': writing it does not turn
        // decode on, so the agent must say so rather than go on.
        fs::write(dir.join("enable"), "0").unwrap();
        let err = dev.ensure_io_decode().unwrap_err();
        assert!(err.to_string().contains("still off"), "{err}");
    }

    #[test]
    fn lockdown_mode_parses_the_selected_entry() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lockdown");
        fs::write(&p, "[none] integrity confidentiality\n").unwrap();
        assert_eq!(lockdown_mode(&p), None);
        fs::write(&p, "none [integrity] confidentiality\n").unwrap();
        assert_eq!(lockdown_mode(&p).as_deref(), Some("integrity"));
        assert_eq!(lockdown_mode(&dir.path().join("missing")), None);
    }
}
