//! The host bridge at 00:00.0. Its class (06/00/00) is what Linux's conf1 sanity check looks for
//! before it trusts mechanism #1 without ACPI. No BARs, no interrupt.

use snapshot::{Persist, PersistError};

use super::{PciBar, PciConfigSpace, PciConfigState, PciDevice, PciHeader, BAR_COUNT};
use crate::RestoreInPlace;

/// Red Hat, Inc.: QEMU's PCIe host bridge identity (1b36:0008), known to every guest OS.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x1b36;
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;
/// Bridge device, host bridge.
pub const HOST_BRIDGE_CLASS: u8 = 0x06;
pub const HOST_BRIDGE_SUBCLASS: u8 = 0x00;

fn host_bridge_header() -> PciHeader {
    PciHeader {
        vendor_id: HOST_BRIDGE_VENDOR_ID,
        device_id: HOST_BRIDGE_DEVICE_ID,
        revision: 0,
        prog_if: 0,
        subclass: HOST_BRIDGE_SUBCLASS,
        class: HOST_BRIDGE_CLASS,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        interrupt_pin: 0,
        bars: [None; BAR_COUNT],
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBridge {
    config: PciConfigSpace,
}

impl HostBridge {
    pub fn new() -> Self {
        HostBridge {
            config: PciConfigSpace::with_constant_header(host_bridge_header()),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge::new()
    }
}

impl PciDevice for HostBridge {
    fn config_read(&self, register: usize) -> u32 {
        self.config.read(register)
    }

    fn config_write(&mut self, register: usize, byte_mask: u8, value: u32) {
        self.config.write(register, byte_mask, value)
    }

    fn bars(&self) -> [Option<PciBar>; BAR_COUNT] {
        self.config.bars()
    }
}

impl Persist for HostBridge {
    type State = PciConfigState;
    type ConstructorArgs = ();

    fn save(&self) -> PciConfigState {
        self.config.save()
    }

    fn restore(_args: (), state: &PciConfigState) -> Result<Self, PersistError> {
        Ok(HostBridge {
            config: PciConfigSpace::restore(host_bridge_header(), state)?,
        })
    }
}

impl RestoreInPlace for HostBridge {
    fn restore_in_place(&mut self, state: &PciConfigState) -> Result<(), PersistError> {
        self.config.restore_in_place(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_matches_the_platform_contract() {
        assert_eq!(host_bridge_header().validate(), Ok(()));
        let bridge = HostBridge::new();
        assert_eq!(bridge.config_read(0), 0x0008_1b36);
        assert_eq!(
            bridge.config_read(2),
            0x0600_0000,
            "class 06/00/00, revision 0"
        );
        assert_eq!((bridge.config_read(3) >> 16) & 0xff, 0, "type-0 header");
        assert!(bridge.bars().iter().all(Option::is_none));
        for register in 4..10 {
            assert_eq!(bridge.config_read(register), 0, "no BAR{}", register - 4);
        }
    }

    #[test]
    fn state_round_trips() {
        let mut bridge = HostBridge::restore((), &PciConfigState::default()).unwrap();
        bridge.config_write(1, 0b11, 0x0006);
        bridge.config_write(3, 0b1, 0x10);
        let saved = bridge.save();
        assert_eq!(saved.command, 0x0006);
        let encoded = postcard::to_stdvec(&saved).unwrap();
        assert_eq!(
            postcard::from_bytes::<PciConfigState>(&encoded).unwrap(),
            saved
        );
        let rebuilt = HostBridge::restore((), &saved).unwrap();
        assert_eq!(rebuilt, bridge);
        bridge.config_write(1, 0b11, 0);
        bridge.restore_in_place(&saved).unwrap();
        assert_eq!(bridge, rebuilt);
    }

    #[test]
    fn a_state_with_bar_addresses_is_rejected() {
        let state = PciConfigState {
            bar_addresses: [0, 0, 0xc000_0000, 0, 0, 0],
            ..Default::default()
        };
        assert!(HostBridge::restore((), &state).is_err());
    }
}
