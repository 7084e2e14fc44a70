//! The debug-exit port (0xf4..=0xf7): a guest ends the run with a status code by writing it there.
//!
//! Any write inside the range asks the VMM to exit with the written value, read little-endian from
//! the access (1, 2 or 4 bytes; a longer access contributes its first 4). The VMM clamps the code
//! to its exit-status range. Reads return 0. The device has no state; it still implements
//! `Persist` so that every device is saved and restored the same way.

use serde::{Deserialize, Serialize};
use snapshot::{Persist, PersistError};

use crate::{DeviceAction, PioDevice, RestoreInPlace};

/// First port of the debug-exit device.
pub const DEBUG_EXIT_PORT_BASE: u16 = 0xf4;
/// Number of ports it claims (a 4-byte write at the base covers all of them).
pub const DEBUG_EXIT_PORT_LEN: u16 = 4;

/// The debug-exit device's state: there is none, but it is saved like every other device's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugExitState {}

#[derive(Debug, Default)]
pub struct DebugExitDevice;

impl DebugExitDevice {
    pub fn new() -> Self {
        DebugExitDevice
    }
}

impl PioDevice for DebugExitDevice {
    fn pio_read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn pio_write(&mut self, _offset: u16, data: &[u8]) -> DeviceAction {
        let mut code = [0u8; 4];
        let len = data.len().min(code.len());
        code[..len].copy_from_slice(&data[..len]);
        DeviceAction::DebugExit(u32::from_le_bytes(code))
    }
}

impl Persist for DebugExitDevice {
    type State = DebugExitState;
    type ConstructorArgs = ();

    fn save(&self) -> DebugExitState {
        DebugExitState {}
    }

    fn restore(_args: (), _state: &DebugExitState) -> Result<Self, PersistError> {
        Ok(DebugExitDevice)
    }
}

impl RestoreInPlace for DebugExitDevice {
    fn restore_in_place(&mut self, _state: &DebugExitState) -> Result<(), PersistError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_of_each_width_exit_with_the_little_endian_code() {
        let mut device = DebugExitDevice::new();
        assert_eq!(device.pio_write(0, &[0x2a]), DeviceAction::DebugExit(0x2a));
        assert_eq!(
            device.pio_write(0, &[0x34, 0x12]),
            DeviceAction::DebugExit(0x1234)
        );
        assert_eq!(
            device.pio_write(0, &[0x78, 0x56, 0x34, 0x12]),
            DeviceAction::DebugExit(0x1234_5678)
        );
        assert_eq!(device.pio_write(0, &[0]), DeviceAction::DebugExit(0));
    }

    #[test]
    fn odd_accesses_neither_panic_nor_lose_the_exit() {
        let mut device = DebugExitDevice::new();
        assert_eq!(device.pio_write(3, &[5]), DeviceAction::DebugExit(5));
        assert_eq!(device.pio_write(0, &[]), DeviceAction::DebugExit(0));
        assert_eq!(
            device.pio_write(1, &[1, 2, 3, 4, 5, 6, 7, 8]),
            DeviceAction::DebugExit(0x0403_0201)
        );
    }

    #[test]
    fn reads_return_zero() {
        let mut device = DebugExitDevice::new();
        for len in [1, 2, 4] {
            let mut data = vec![0xaa; len];
            device.pio_read(0, &mut data);
            assert!(data.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn state_round_trips() {
        let mut device = DebugExitDevice::restore((), &DebugExitState::default()).unwrap();
        assert_eq!(device.save(), DebugExitState::default());
        device.restore_in_place(&device.save()).unwrap();
        let rebuilt = DebugExitDevice::restore((), &device.save()).unwrap();
        assert_eq!(rebuilt.save(), device.save());
    }
}
