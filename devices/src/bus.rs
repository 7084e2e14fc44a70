//! Port I/O dispatch.

/// What a device asks of the VMM after a guest access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing beyond the access itself.
    None,
    /// The guest asked for a CPU reset (i8042 pulse of the reset line).
    Reset,
    /// The guest wrote a code to the debug-exit port.
    DebugExit(u32),
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
