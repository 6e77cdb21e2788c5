//! [`SimBar`]: the simulator behind the agent's [`RegisterIo`] interface.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmmci_protocol::Register;
use vmmci_transport::{RegisterIo, TransportError};

use crate::device::Vmd;

/// What [`TransportError`]s name as the device path.
const PATH: &str = "vmd-sim";

/// Makes the next n accesses of every [`SimBar`] sharing it fail. Clones
/// share the count, so a test can inject faults while the agent owns the bar.
#[derive(Clone, Debug, Default)]
pub struct FaultInjector {
    remaining: Arc<AtomicU32>,
}

impl FaultInjector {
    /// The next `n` accesses return [`TransportError::Io`] and never reach
    /// the device. Replaces any count left.
    pub fn fail_next(&self, n: u32) {
        self.remaining.store(n, Ordering::SeqCst);
    }

    /// Faults still to come.
    pub fn remaining(&self) -> u32 {
        self.remaining.load(Ordering::SeqCst)
    }

    /// Use up one fault, if any is left.
    fn take(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The guest's view of the simulated device through [`RegisterIo`]: one
/// access per register, at its natural width.
#[derive(Clone, Debug)]
pub struct SimBar {
    vmd: Arc<Mutex<Vmd>>,
    faults: FaultInjector,
}

impl SimBar {
    pub fn new(vmd: Arc<Mutex<Vmd>>) -> SimBar {
        SimBar {
            vmd,
            faults: FaultInjector::default(),
        }
    }

    /// The simulator, for the host side of a test.
    pub fn vmd(&self) -> &Arc<Mutex<Vmd>> {
        &self.vmd
    }

    /// The next `n` accesses fail with an I/O error.
    pub fn fail_next(&self, n: u32) {
        self.faults.fail_next(n);
    }

    /// A handle on this bar's fault count.
    pub fn faults(&self) -> FaultInjector {
        self.faults.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Vmd> {
        // A test that panicked holding the lock leaves a usable simulator.
        self.vmd.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fault(&self, op: &'static str, reg: Register) -> Result<(), TransportError> {
        if self.faults.take() {
            return Err(TransportError::Io {
                path: PATH.to_string(),
                op,
                reg,
                source: std::io::Error::other("injected fault"),
            });
        }
        Ok(())
    }

    /// Run what is due, then refuse if the VM is gone.
    fn live(vmd: &mut Vmd) -> Result<(), TransportError> {
        vmd.poll();
        match vmd.ended() {
            Some(end) => Err(TransportError::Gone(format!("VM ended: {end}"))),
            None => Ok(()),
        }
    }
}

impl RegisterIo for SimBar {
    fn read(&mut self, reg: Register) -> Result<u32, TransportError> {
        self.fault("read", reg)?;
        let mut vmd = self.lock();
        Self::live(&mut vmd)?;
        Ok(vmd.bar_read(reg.offset(), reg.width().bytes() as u8))
    }

    fn write(&mut self, reg: Register, value: u32) -> Result<(), TransportError> {
        self.fault("write", reg)?;
        let mut vmd = self.lock();
        Self::live(&mut vmd)?;
        // pwrite of `width` bytes: nothing above them reaches the device.
        vmd.bar_write(
            reg.offset(),
            reg.width().bytes() as u8,
            value & reg.width().mask(),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vmmci_protocol::{status, Command, Features};

    use super::*;
    use crate::clock::ManualClock;
    use crate::device::VmdConfig;
    use crate::event::VmEnd;

    fn rig() -> (SimBar, ManualClock) {
        let clock = ManualClock::new(1_750_000_000_000_000_000);
        let vmd = Vmd::new(VmdConfig::default(), Box::new(clock.clone()));
        (SimBar::new(Arc::new(Mutex::new(vmd))), clock)
    }

    fn handshake(bar: &mut impl RegisterIo) {
        bar.write(Register::DeviceStatus, 0).unwrap();
        bar.write(Register::DeviceStatus, u32::from(status::ACKNOWLEDGE))
            .unwrap();
        bar.write(
            Register::DeviceStatus,
            u32::from(status::ACKNOWLEDGE | status::DRIVER),
        )
        .unwrap();
        let offered = bar.read(Register::DeviceFeatures).unwrap();
        bar.write(Register::GuestFeatures, offered & Features::SUPPORTED.0)
            .unwrap();
        let ok = status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK;
        bar.write(Register::DeviceStatus, u32::from(ok)).unwrap();
    }

    #[test]
    fn register_io_drives_the_device_without_violations() {
        let (mut bar, _) = rig();
        handshake(&mut bar);
        bar.vmd().lock().unwrap().vmctl_stop().unwrap();
        assert_eq!(bar.read(Register::Isr).unwrap(), 2);
        assert_eq!(bar.read(Register::Command).unwrap(), Command::REBOOT);
        bar.write(Register::Command, Command::REBOOT).unwrap();
        let vmd = bar.vmd().lock().unwrap();
        assert!(vmd.violations().is_empty());
        assert_eq!(vmd.status_writes(), &[0, 1, 3, 7]);
        assert!(vmd
            .events()
            .iter()
            .any(|e| e.to_string().contains("ack received for REBOOT")));
    }

    #[test]
    fn writes_are_masked_to_the_register_width() {
        let (mut bar, _) = rig();
        bar.write(Register::DeviceStatus, 0x0102_0307).unwrap();
        bar.write(Register::QueueSelect, 0x0001_0005).unwrap();
        let vmd = bar.vmd().lock().unwrap();
        assert_eq!(vmd.device_status(), 7);
        assert!(vmd.violations().is_empty());
    }

    #[test]
    fn gone_after_the_vm_ended() {
        let (mut bar, clock) = rig();
        handshake(&mut bar);
        bar.vmd().lock().unwrap().vmctl_stop().unwrap();
        // The ACK timer fires while nobody looks; the next access notices.
        clock.advance(Duration::from_secs(4));
        let err = bar.read(Register::Command).unwrap_err();
        match &err {
            TransportError::Gone(why) => assert_eq!(why, "VM ended: ack timeout"),
            other => panic!("expected Gone, got {other:?}"),
        }
        assert!(matches!(
            bar.write(Register::Command, 2),
            Err(TransportError::Gone(_))
        ));
        assert_eq!(bar.vmd().lock().unwrap().ended(), Some(VmEnd::AckTimeout));
    }

    #[test]
    fn injected_faults_fail_and_do_not_reach_the_device() {
        let (mut bar, _) = rig();
        let faults = bar.faults();
        faults.fail_next(2);
        let err = bar.read(Register::DeviceFeatures).unwrap_err();
        assert!(matches!(
            err,
            TransportError::Io {
                op: "read",
                reg: Register::DeviceFeatures,
                ..
            }
        ));
        assert!(err.to_string().contains("injected fault"));
        assert!(matches!(
            bar.write(Register::DeviceStatus, 1),
            Err(TransportError::Io { op: "write", .. })
        ));
        assert_eq!(faults.remaining(), 0);
        assert_eq!(bar.vmd().lock().unwrap().accesses(), 0);
        assert_eq!(bar.read(Register::DeviceFeatures).unwrap(), 7);
        // A clone shares the fault count.
        let mut other = bar.clone();
        bar.fail_next(1);
        assert!(other.read(Register::Isr).is_err());
        assert!(bar.read(Register::Isr).is_ok());
    }
}
