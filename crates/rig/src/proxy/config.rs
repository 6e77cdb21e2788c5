//! PCI config space of vmd's vmmci device, as real hardware answers it
//! (BAR sizing, writable bits).

use vmmci_protocol::pci;

/// PCI config space of vmd's vmmci device (type 0 header, 256 bytes).
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; 256],
    wmask: [u8; 256],
}

const BAR0: usize = 0x10;
const COMMAND: usize = 0x04;

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigSpace {
    pub fn new() -> ConfigSpace {
        let mut c = ConfigSpace {
            bytes: [0; 256],
            wmask: [0; 256],
        };
        c.put16(0x00, pci::VENDOR_ID);
        c.put16(0x02, pci::DEVICE_ID);
        c.bytes[0x08] = pci::REVISION;
        c.bytes[0x09] = 0; // prog-if
        c.bytes[0x0a] = pci::SUBCLASS;
        c.bytes[0x0b] = pci::CLASS;
        c.bytes[0x0e] = 0; // header type 0, single function
        c.put32(BAR0 as u32, 0x1); // I/O space indicator
        c.put16(0x2c, pci::SUBSYSTEM_VENDOR_ID);
        c.put16(0x2e, pci::SUBSYSTEM_DEVICE_ID);
        c.bytes[0x3d] = 1; // INTA
                           // Writable bits: command (IO, MEM, MASTER, PARITY, SERR, INTX_DISABLE),
                           // BAR0 address bits above the size, interrupt line.
        c.wmask[COMMAND] = 0x47;
        c.wmask[COMMAND + 1] = 0x05;
        let bar_mask = !(pci::BAR0_SIZE - 1) & !0x3;
        c.wmask[BAR0..BAR0 + 4].copy_from_slice(&bar_mask.to_le_bytes());
        c.wmask[0x3c] = 0xff;
        c
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(&mut self, off: u32, v: u32) {
        let off = off as usize;
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Read `len` (1, 2, 4) bytes at `addr`; outside the header: 0.
    pub fn read(&self, addr: u32, len: u32) -> u32 {
        let mut v = 0u32;
        for i in 0..len.min(4) {
            let a = (addr + i) as usize;
            let b = if a < 256 { self.bytes[a] } else { 0 };
            v |= (b as u32) << (8 * i);
        }
        v
    }

    pub fn write(&mut self, addr: u32, val: u32, len: u32) {
        for i in 0..len.min(4) {
            let a = (addr + i) as usize;
            if a >= 256 {
                break;
            }
            let b = (val >> (8 * i)) as u8;
            self.bytes[a] = (self.bytes[a] & !self.wmask[a]) | (b & self.wmask[a]);
        }
    }

    /// The I/O port base the guest programmed in BAR0.
    pub fn bar0_base(&self) -> u64 {
        (self.read(BAR0 as u32, 4) & !0x3) as u64
    }

    pub fn command(&self) -> u16 {
        self.read(COMMAND as u32, 2) as u16
    }

    /// Power-on state.
    pub fn reset(&mut self) {
        *self = ConfigSpace::new();
    }
}
