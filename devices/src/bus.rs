//! Port I/O dispatch.

use std::sync::{Arc, Mutex, PoisonError};

use crate::pci::BarRelocations;
use crate::snapshot_device::SnapshotCommand;

/// What a device asks of the VMM after a guest access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing beyond the access itself.
    None,
    /// The guest asked for a CPU reset (i8042 pulse of the reset line).
    Reset,
    /// The guest wrote a code to the debug-exit port.
    DebugExit(u32),
    /// The guest entered ACPI S5 (soft off) through the PM1 control register.
    PowerOff,
    /// A PCI config write moved memory BARs or switched their decoding on or off. The VMM moves
    /// host-memory-backed BARs (memslots) accordingly; MMIO-trapped BARs need nothing, the
    /// `PciBus` routes them itself.
    BarsRelocated(BarRelocations),
    /// The guest wrote a command to the snapshot device (save, restore, crash, run done). The
    /// VMM carries it out and reports back through the device's host API.
    Snapshot(SnapshotCommand),
}

/// A device on the port I/O bus. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    fn pio_read(&mut self, offset: u16, data: &mut [u8]);
    fn pio_write(&mut self, offset: u16, data: &[u8]) -> DeviceAction;
}

/// Maps port ranges to devices. Reads of a port nobody claims return all ones, like a real bus.
#[derive(Default)]
pub struct PioBus {
    ranges: Vec<(u16, u16, Box<dyn PioDevice>)>,
}

impl PioBus {
    /// Claims `len` ports starting at `base`. Overlaps are a programming error of the VMM.
    pub fn insert(&mut self, base: u16, len: u16, device: Box<dyn PioDevice>) {
        let end = base as u32 + len as u32;
        assert!(
            self.ranges
                .iter()
                .all(|(b, l, _)| end <= *b as u32 || base as u32 >= *b as u32 + *l as u32),
            "port range {base:#x}+{len:#x} overlaps another device"
        );
        self.ranges.push((base, len, device));
    }

    fn find(&mut self, port: u16) -> Option<(u16, &mut Box<dyn PioDevice>)> {
        self.ranges
            .iter_mut()
            .find(|(b, l, _)| port >= *b && (port as u32) < *b as u32 + *l as u32)
            .map(|(b, _, d)| (port - *b, d))
    }

    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((offset, dev)) => dev.pio_read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&mut self, port: u16, data: &[u8]) -> DeviceAction {
        match self.find(port) {
            Some((offset, dev)) => dev.pio_write(offset, data),
            None => DeviceAction::None,
        }
    }
}

/// Shares one device between the vCPU thread and a host thread (the serial console's stdin reader).
/// A poisoned lock means another thread panicked while holding the device; its state is still
/// plain data that every access path keeps consistent, so the guest access goes on.
impl<T: PioDevice> PioDevice for Arc<Mutex<T>> {
    fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pio_read(offset, data)
    }

    fn pio_write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pio_write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access so tests can see what offset the bus passed on.
    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u16, Vec<u8>)>,
    }

    impl PioDevice for Recorder {
        fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }

        fn pio_write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
            self.last_write = Some((offset, data.to_vec()));
            DeviceAction::DebugExit(offset as u32)
        }
    }

    #[test]
    fn bus_passes_offsets_and_unclaimed_ports_read_all_ones() {
        let mut bus = PioBus::default();
        bus.insert(0x60, 5, Box::new(Recorder::default()));
        let mut data = [0u8; 2];
        bus.read(0x64, &mut data);
        assert_eq!(data, [4, 4]);
        bus.read(0x65, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(bus.write(0x62, &[1]), DeviceAction::DebugExit(2));
        assert_eq!(bus.write(0x5f, &[1]), DeviceAction::None);
    }

    #[test]
    fn shared_device_works_through_the_bus_and_survives_a_poisoned_lock() {
        let shared = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::default();
        bus.insert(0x3f8, 8, Box::new(shared.clone()));

        let poisoner = shared.clone();
        let joined = std::thread::spawn(move || {
            let _guard = poisoner.lock();
            panic!("poison the lock on purpose");
        })
        .join();
        assert!(joined.is_err());
        assert!(shared.is_poisoned());

        assert_eq!(bus.write(0x3f9, &[7]), DeviceAction::DebugExit(1));
        let mut data = [0u8; 1];
        bus.read(0x3fb, &mut data);
        assert_eq!(data, [3]);
        let recorder = shared.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(recorder.last_write, Some((1, vec![7])));
    }
}
