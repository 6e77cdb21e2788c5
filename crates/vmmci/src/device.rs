//! Opening the real device: find it, check it, open `resource0`.

use std::path::Path;

use tracing::{info, warn};
use vmmci_transport::discover::{self, PciDevice, SYSFS_LOCKDOWN};
use vmmci_transport::sysfs::SysfsBar;
use vmmci_transport::TransportError;

pub struct OpenDevice {
    pub pci: PciDevice,
    pub bar: SysfsBar,
}

/// Find the device (or check the named one), make sure it decodes I/O, and
/// open its BAR for reading and writing.
pub fn open(sysfs_root: &Path, bdf: Option<&str>) -> Result<OpenDevice, TransportError> {
    let pci = discover::find(sysfs_root, bdf)?;
    for note in pci.identity_notes() {
        warn!(
            "{}: {note}; going on, but this may not be vmd's device",
            pci.bdf
        );
    }
    if pci.ensure_io_decode()? {
        info!("{}: I/O decode was off; enabled it", pci.bdf);
    }
    if let Some(mode) = discover::lockdown_mode(Path::new(SYSFS_LOCKDOWN)) {
        warn!("kernel lockdown is '{mode}': register writes will be refused (boot with lockdown=none)");
    }
    let bar = SysfsBar::open(&pci.resource0())?;
    Ok(OpenDevice { pci, bar })
}
