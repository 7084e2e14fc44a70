//! The ACPI fixed-hardware power management registers a classic (not hardware-reduced) FADT points
//! at: the PM1a event block (status and enable) and the PM1a control block. Writing SLP_EN with
//! the S5 sleep type is how an ACPI guest powers the machine off: the device answers with
//! [`DeviceAction::PowerOff`].
//!
//! Mapping: one range, base [`ACPI_PM_PORT_BASE`] (0x600), [`ACPI_PM_PORT_LEN`] (6) ports:
//! - offset 0: PM1_STS (16 bits, write 1 to clear),
//! - offset 2: PM1_EN (16 bits),
//! - offset 4: PM1_CNT (16 bits).
//!
//! Accesses of any width are split into byte accesses at consecutive ports, so a guest may use
//! byte, word or dword accesses. ACPI mode is on from power-up (the FADT's SMI_CMD is 0): SCI_EN
//! reads 1 and cannot be cleared. No event source exists (no PM timer, no fixed buttons, no
//! GPEs), so no status bit is ever set and the SCI (IRQ [`SCI_IRQ`]) is never raised.
//! Sleep types other than S5 are not advertised by the DSDT; writing them with SLP_EN is ignored.

use serde::{Deserialize, Serialize};
use snapshot::{Persist, PersistError};

use crate::{DeviceAction, PioDevice, RestoreInPlace};

/// First port of the PM registers (PM1a_EVT_BLK).
pub const ACPI_PM_PORT_BASE: u16 = 0x600;
/// PM1a_EVT_BLK (4 ports) then PM1a_CNT_BLK (2 ports).
pub const ACPI_PM_PORT_LEN: u16 = 6;
/// PM1a_EVT_BLK is the first 4 ports: PM1_STS then PM1_EN.
pub const PM1_EVENT_BLOCK_PORT: u16 = ACPI_PM_PORT_BASE;
pub const PM1_EVENT_BLOCK_LEN: u8 = 4;
/// PM1a_CNT_BLK follows the event block.
pub const PM1_CONTROL_BLOCK_PORT: u16 = ACPI_PM_PORT_BASE + PM1_EVENT_BLOCK_LEN as u16;
pub const PM1_CONTROL_BLOCK_LEN: u8 = 2;
/// The SLP_TYP value of S5 (soft off); the DSDT's `\_S5` package carries the same number.
pub const SLEEP_TYPE_S5: u8 = 5;
/// The SCI's ISA interrupt, as PCs have it.
pub const SCI_IRQ: u8 = 9;

const STATUS_OFFSET: u16 = 0;
const ENABLE_OFFSET: u16 = 2;
const CONTROL_OFFSET: u16 = 4;

/// PM1_STS bits that exist: TMR, BM, GBL, PWRBTN, SLPBTN, RTC, PCIEXP_WAKE, WAK.
const STATUS_VALID_BITS: u16 = 0xc731;
/// PM1_EN bits that exist: TMR, GBL, PWRBTN, SLPBTN, RTC, PCIEXP_WAKE_DIS.
const ENABLE_VALID_BITS: u16 = 0x4721;
pub const CONTROL_SCI_EN: u16 = 1 << 0;
const CONTROL_BM_RLD: u16 = 1 << 1;
const CONTROL_SLP_TYP_SHIFT: u16 = 10;
const CONTROL_SLP_TYP_MASK: u16 = 0x7 << CONTROL_SLP_TYP_SHIFT;
pub const CONTROL_SLP_EN: u16 = 1 << 13;
/// PM1_CNT bits that hold a value (GBL_RLS and SLP_EN are write-only strobes).
const CONTROL_STORED_BITS: u16 = CONTROL_SCI_EN | CONTROL_BM_RLD | CONTROL_SLP_TYP_MASK;

/// The PM1a registers as the guest sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    pub status: u16,
    pub enable: u16,
    /// PM1_CNT without its write-only bits; SCI_EN is always set.
    pub control: u16,
}

impl Default for AcpiPmState {
    fn default() -> Self {
        AcpiPmState {
            status: 0,
            enable: 0,
            control: CONTROL_SCI_EN,
        }
    }
}

impl AcpiPmState {
    pub fn validate(&self) -> Result<(), PersistError> {
        let invalid = |why: String| Err(PersistError::invalid("ACPI PM", why));
        if self.status & !STATUS_VALID_BITS != 0 {
            return invalid(format!("PM1_STS {:#06x} has undefined bits", self.status));
        }
        if self.enable & !ENABLE_VALID_BITS != 0 {
            return invalid(format!("PM1_EN {:#06x} has undefined bits", self.enable));
        }
        if self.control & !CONTROL_STORED_BITS != 0 || self.control & CONTROL_SCI_EN == 0 {
            return invalid(format!(
                "PM1_CNT {:#06x} has undefined or write-only bits, or SCI_EN clear",
                self.control
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct AcpiPmDevice {
    state: AcpiPmState,
}

impl AcpiPmDevice {
    /// The registers at power-up, ACPI mode on (the same path as a restore from the default).
    pub fn new() -> Self {
        AcpiPmDevice {
            state: AcpiPmState::default(),
        }
    }

    fn read_byte(&self, port: u16) -> u8 {
        let (register, high) = match port {
            0..=1 => (self.state.status, port == 1),
            2..=3 => (self.state.enable, port == 3),
            4..=5 => (self.state.control, port == 5),
            _ => return 0xff,
        };
        let [low_byte, high_byte] = register.to_le_bytes();
        if high {
            high_byte
        } else {
            low_byte
        }
    }

    fn write_byte(&mut self, port: u16, value: u8) -> DeviceAction {
        let shift = if port % 2 == 1 { 8 } else { 0 };
        let bits = u16::from(value) << shift;
        let byte_mask = 0xffu16 << shift;
        match port {
            STATUS_OFFSET..=1 => self.state.status &= !(bits & STATUS_VALID_BITS),
            ENABLE_OFFSET..=3 => {
                self.state.enable =
                    (self.state.enable & !byte_mask) | (bits & ENABLE_VALID_BITS & byte_mask)
            }
            CONTROL_OFFSET..=5 => {
                let writable = (CONTROL_STORED_BITS & !CONTROL_SCI_EN) & byte_mask;
                self.state.control = (self.state.control & !writable) | (bits & writable);
                if bits & CONTROL_SLP_EN != 0 {
                    return self.sleep();
                }
            }
            _ => {}
        }
        DeviceAction::None
    }

    /// SLP_EN was written: enter the sleep state in SLP_TYP.
    fn sleep(&mut self) -> DeviceAction {
        let sleep_type = (self.state.control & CONTROL_SLP_TYP_MASK) >> CONTROL_SLP_TYP_SHIFT;
        if sleep_type == u16::from(SLEEP_TYPE_S5) {
            DeviceAction::PowerOff
        } else {
            tracing::debug!(
                sleep_type,
                "ACPI PM: ignoring a sleep state the DSDT does not offer"
            );
            DeviceAction::None
        }
    }
}

impl PioDevice for AcpiPmDevice {
    fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
        for (port, byte) in (u32::from(offset)..).zip(data.iter_mut()) {
            *byte = u16::try_from(port).map_or(0xff, |port| self.read_byte(port));
        }
    }

    fn pio_write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let mut action = DeviceAction::None;
        for (port, &value) in (u32::from(offset)..).zip(data) {
            let Ok(port) = u16::try_from(port) else {
                break;
            };
            let result = self.write_byte(port, value);
            if result != DeviceAction::None {
                action = result;
            }
        }
        action
    }
}

impl Persist for AcpiPmDevice {
    type State = AcpiPmState;
    type ConstructorArgs = ();

    fn save(&self) -> AcpiPmState {
        self.state.clone()
    }

    fn restore(_args: (), state: &AcpiPmState) -> Result<Self, PersistError> {
        state.validate()?;
        Ok(AcpiPmDevice {
            state: state.clone(),
        })
    }
}

impl RestoreInPlace for AcpiPmDevice {
    fn restore_in_place(&mut self, state: &AcpiPmState) -> Result<(), PersistError> {
        state.validate()?;
        self.state.clone_from(state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::TestRng;

    fn read16(device: &mut AcpiPmDevice, offset: u16) -> u16 {
        let mut data = [0; 2];
        device.pio_read(offset, &mut data);
        u16::from_le_bytes(data)
    }

    fn write16(device: &mut AcpiPmDevice, offset: u16, value: u16) -> DeviceAction {
        device.pio_write(offset, &value.to_le_bytes())
    }

    fn sleep_command(sleep_type: u8, enable: bool) -> u16 {
        (u16::from(sleep_type) << CONTROL_SLP_TYP_SHIFT)
            | if enable { CONTROL_SLP_EN } else { 0 }
            | CONTROL_SCI_EN
    }

    #[test]
    fn acpi_mode_is_on_from_power_up_and_stays_on() {
        let mut device = AcpiPmDevice::new();
        assert_eq!(read16(&mut device, CONTROL_OFFSET), CONTROL_SCI_EN);
        write16(&mut device, CONTROL_OFFSET, 0);
        assert_eq!(read16(&mut device, CONTROL_OFFSET), CONTROL_SCI_EN);
        assert_eq!(read16(&mut device, STATUS_OFFSET), 0);
        assert_eq!(read16(&mut device, ENABLE_OFFSET), 0);
    }

    /// The order of ACPICA's acpi_hw_legacy_sleep(): clear WAK_STS, write SLP_TYP, then SLP_TYP
    /// with SLP_EN.
    #[test]
    fn linux_s5_sequence_powers_off_on_slp_en_only() {
        let mut device = AcpiPmDevice::new();
        assert_eq!(
            write16(&mut device, STATUS_OFFSET, 0x8000),
            DeviceAction::None
        );
        assert_eq!(
            write16(
                &mut device,
                CONTROL_OFFSET,
                sleep_command(SLEEP_TYPE_S5, false)
            ),
            DeviceAction::None
        );
        assert_eq!(
            read16(&mut device, CONTROL_OFFSET),
            sleep_command(SLEEP_TYPE_S5, false),
            "SLP_TYP reads back"
        );
        assert_eq!(
            write16(
                &mut device,
                CONTROL_OFFSET,
                sleep_command(SLEEP_TYPE_S5, true)
            ),
            DeviceAction::PowerOff
        );
        assert_eq!(
            read16(&mut device, CONTROL_OFFSET) & CONTROL_SLP_EN,
            0,
            "SLP_EN is write-only"
        );
    }

    #[test]
    fn byte_and_dword_accesses_reach_the_same_registers() {
        let mut device = AcpiPmDevice::new();
        // SLP_TYP and SLP_EN live in the high byte of PM1_CNT.
        let high = (sleep_command(SLEEP_TYPE_S5, true) >> 8) as u8;
        assert_eq!(device.pio_write(5, &[high]), DeviceAction::PowerOff);
        // A dword write at the enable register spills into PM1_CNT.
        let mut device = AcpiPmDevice::new();
        let dword = u32::from(0x0100u16) | u32::from(sleep_command(SLEEP_TYPE_S5, true)) << 16;
        assert_eq!(
            device.pio_write(ENABLE_OFFSET, &dword.to_le_bytes()),
            DeviceAction::PowerOff
        );
        assert_eq!(read16(&mut device, ENABLE_OFFSET), 0x0100);
        let mut data = [0u8; 4];
        device.pio_read(STATUS_OFFSET, &mut data);
        assert_eq!(data, [0, 0, 0x00, 0x01]);
    }

    #[test]
    fn other_sleep_states_do_not_power_off() {
        let mut device = AcpiPmDevice::new();
        for sleep_type in (0..8).filter(|&t| t != SLEEP_TYPE_S5) {
            assert_eq!(
                write16(&mut device, CONTROL_OFFSET, sleep_command(sleep_type, true)),
                DeviceAction::None,
                "SLP_TYP {sleep_type}"
            );
        }
    }

    #[test]
    fn enable_keeps_defined_bits_and_status_is_write_one_to_clear() {
        let mut device = AcpiPmDevice::new();
        write16(&mut device, ENABLE_OFFSET, 0xffff);
        assert_eq!(read16(&mut device, ENABLE_OFFSET), ENABLE_VALID_BITS);
        let mut device = AcpiPmDevice::restore(
            (),
            &AcpiPmState {
                status: 0x8100,
                ..Default::default()
            },
        )
        .unwrap();
        write16(&mut device, STATUS_OFFSET, 0x0100);
        assert_eq!(read16(&mut device, STATUS_OFFSET), 0x8000);
        write16(&mut device, STATUS_OFFSET, 0);
        assert_eq!(read16(&mut device, STATUS_OFFSET), 0x8000);
    }

    #[test]
    fn ports_past_the_registers_read_all_ones() {
        let mut device = AcpiPmDevice::new();
        let mut data = [0u8; 4];
        device.pio_read(4, &mut data);
        assert_eq!(data, [1, 0, 0xff, 0xff]);
        assert_eq!(device.pio_write(6, &[0xff, 0xff]), DeviceAction::None);
        assert_eq!(device.save(), AcpiPmState::default());
    }

    #[test]
    fn state_round_trips_and_invalid_states_are_rejected() {
        let mut device = AcpiPmDevice::new();
        write16(&mut device, ENABLE_OFFSET, 0x0100);
        write16(&mut device, CONTROL_OFFSET, sleep_command(3, false));
        let saved = device.save();
        let encoded = postcard::to_stdvec(&saved).unwrap();
        assert_eq!(
            postcard::from_bytes::<AcpiPmState>(&encoded).unwrap(),
            saved
        );
        let mut rebuilt = AcpiPmDevice::restore((), &saved).unwrap();
        assert_eq!(rebuilt.save(), saved);
        write16(&mut rebuilt, ENABLE_OFFSET, 0);
        rebuilt.restore_in_place(&saved).unwrap();
        assert_eq!(read16(&mut rebuilt, ENABLE_OFFSET), 0x0100);

        let bad = [
            AcpiPmState {
                control: 0,
                ..Default::default()
            },
            AcpiPmState {
                control: CONTROL_SCI_EN | CONTROL_SLP_EN,
                ..Default::default()
            },
            AcpiPmState {
                status: 0x0002,
                ..Default::default()
            },
            AcpiPmState {
                enable: 0x8000,
                ..Default::default()
            },
        ];
        for state in bad {
            assert!(AcpiPmDevice::restore((), &state).is_err(), "{state:?}");
            assert!(rebuilt.restore_in_place(&state).is_err(), "{state:?}");
            assert_eq!(rebuilt.save(), saved);
        }
    }

    #[test]
    fn random_traffic_never_panics_and_keeps_the_state_valid() {
        let mut device = AcpiPmDevice::new();
        let mut rng = TestRng::new(0x600);
        let mut power_offs = 0;
        for _ in 0..50_000 {
            let offset = (rng.next_u64() % 8) as u16;
            let len = [1usize, 2, 4][(rng.next_u64() % 3) as usize];
            if rng.one_in(2) {
                let mut data = vec![0; len];
                device.pio_read(offset, &mut data);
            } else if device.pio_write(offset, &rng.next_u32().to_le_bytes()[..len])
                == DeviceAction::PowerOff
            {
                power_offs += 1;
            }
            device.save().validate().unwrap();
        }
        assert!(power_offs > 0, "random traffic should hit SLP_EN with S5");
    }
}
