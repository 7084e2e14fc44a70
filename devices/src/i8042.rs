//! Just enough of an i8042 keyboard controller for Linux's probe to finish quickly and quietly,
//! and for a guest to reboot the machine through it.
//!
//! Mapping: ONE port range, base [`I8042_PORT_BASE`] (0x60), [`I8042_PORT_LEN`] (5) ports: offset 0 is
//! the data port (0x60), offset 4 the status (read) / command (write) port (0x64). Offsets 1..=3
//! (0x61..=0x63) are not the controller's: reads return all ones, writes are ignored (with KVM's
//! in-kernel PIT, port 0x61 never reaches userspace anyway).
//!
//! No keyboard or mouse is attached and no IRQ 1/12 is wired: bytes the guest sends to the devices
//! are dropped, so Linux's atkbd/psmouse probes time out and give up without messages.
//!
//! Commands (written to 0x64; "param" is the next byte written to 0x60, results are read at 0x60):
//! 0x20..=0x3F read controller RAM byte (0x20 = command byte), 0x60..=0x7F + param write it;
//! 0xA7/0xA8 disable/enable the aux port, 0xAD/0xAE the keyboard port (command byte bits 5/4);
//! 0xA9/0xAB interface tests -> 0x00; 0xAA self test -> 0x55; 0xD0 read output port;
//! 0xD1 + param write output port (bit 0 clear = reset); 0xD2/0xD3 + param echo the byte as if
//! from the keyboard/aux device (Linux's aux loopback test); 0xD4 + param send to the mouse
//! (dropped); 0xF0..=0xFF pulse output lines: an even command (0xFE above all) pulses the reset
//! line -> [`DeviceAction::Reset`]. Other commands are ignored.

use serde::{Deserialize, Serialize};
use snapshot::{Persist, PersistError};

use crate::{DeviceAction, PioDevice, RestoreInPlace};

/// Base of the controller's port range (the data port).
pub const I8042_PORT_BASE: u16 = 0x60;
/// 0x60..=0x64: data at offset 0, status/command at offset [`COMMAND_OFFSET`].
pub const I8042_PORT_LEN: u16 = 5;
pub const DATA_OFFSET: u16 = 0;
pub const COMMAND_OFFSET: u16 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WRITE_WAS_COMMAND: u8 = 0x08;
/// "Keyboard not inhibited": without it Linux warns that the keylock is active.
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX_DATA: u8 = 0x20;

const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KEYBOARD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
/// What a BIOS leaves behind: keyboard and aux interrupts enabled, POST passed, scancode
/// translation on.
const DEFAULT_COMMAND_BYTE: u8 = 0x47;
/// Reset line deasserted (bit 0 high) and A20 enabled (bit 1).
const DEFAULT_OUTPUT_PORT: u8 = 0x03;
const OUTPUT_PORT_RESET_DEASSERTED: u8 = 0x01;

const CMD_READ_RAM_FIRST: u8 = 0x20;
const CMD_READ_RAM_LAST: u8 = 0x3f;
const CMD_WRITE_RAM_FIRST: u8 = 0x60;
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX_INTERFACE: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KEYBOARD_INTERFACE: u8 = 0xab;
const CMD_DISABLE_KEYBOARD: u8 = 0xad;
const CMD_ENABLE_KEYBOARD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KEYBOARD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_TO_AUX: u8 = 0xd4;
const CMD_PULSE_FIRST: u8 = 0xf0;

const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_TEST_PASSED: u8 = 0x00;

/// Number of bytes of controller RAM reachable by the read/write RAM commands.
pub const CONTROLLER_RAM_SIZE: usize = 32;

fn takes_parameter(command: u8) -> bool {
    matches!(
        command,
        CMD_WRITE_RAM_FIRST
            ..=CMD_WRITE_RAM_LAST
                | CMD_WRITE_OUTPUT_PORT
                | CMD_WRITE_KEYBOARD_OUTPUT
                | CMD_WRITE_AUX_OUTPUT
                | CMD_WRITE_TO_AUX
    )
}

/// The controller's guest-visible state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Controller RAM; byte 0 is the command byte (CTR).
    pub ram: [u8; CONTROLLER_RAM_SIZE],
    /// The output buffer (read at 0x60). Keeps its last value after being read, like the chip.
    pub output: u8,
    pub output_full: bool,
    /// The byte in the output buffer came from the aux (mouse) side.
    pub output_from_aux: bool,
    /// A command written to 0x64 that waits for its parameter byte on 0x60.
    pub pending_command: Option<u8>,
    /// Whether the last byte written went to the command port (status bit 3).
    pub last_write_was_command: bool,
    pub output_port: u8,
}

impl Default for I8042State {
    fn default() -> Self {
        let mut ram = [0; CONTROLLER_RAM_SIZE];
        ram[0] = DEFAULT_COMMAND_BYTE;
        I8042State {
            ram,
            output: 0,
            output_full: false,
            output_from_aux: false,
            pending_command: None,
            last_write_was_command: false,
            output_port: DEFAULT_OUTPUT_PORT,
        }
    }
}

impl I8042State {
    pub fn validate(&self) -> Result<(), PersistError> {
        if let Some(command) = self.pending_command {
            if !takes_parameter(command) {
                return Err(PersistError::invalid(
                    "i8042",
                    format!("pending command {command:#04x} takes no parameter"),
                ));
            }
        }
        if self.output_from_aux && !self.output_full {
            return Err(PersistError::invalid(
                "i8042",
                "output buffer marked as aux data while empty",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct I8042Device {
    state: I8042State,
}

impl I8042Device {
    /// The controller as a BIOS leaves it (the same path as a restore from the default state).
    pub fn new() -> Self {
        I8042Device {
            state: I8042State::default(),
        }
    }

    fn command_byte(&self) -> u8 {
        self.state.ram[0]
    }

    fn status(&self) -> u8 {
        let state = &self.state;
        let mut status = STATUS_UNLOCKED;
        if state.output_full {
            status |= STATUS_OUTPUT_FULL;
            if state.output_from_aux {
                status |= STATUS_AUX_DATA;
            }
        }
        if self.command_byte() & CTR_SYSTEM_FLAG != 0 {
            status |= STATUS_SYSTEM_FLAG;
        }
        if state.last_write_was_command {
            status |= STATUS_LAST_WRITE_WAS_COMMAND;
        }
        status
    }

    fn push_output(&mut self, value: u8, from_aux: bool) {
        self.state.output = value;
        self.state.output_full = true;
        self.state.output_from_aux = from_aux;
    }

    fn read_data(&mut self) -> u8 {
        self.state.output_full = false;
        self.state.output_from_aux = false;
        self.state.output
    }

    fn write_command(&mut self, command: u8) -> DeviceAction {
        self.state.last_write_was_command = true;
        // A new command abandons one still waiting for its parameter, as on the chip.
        self.state.pending_command = None;
        let ctr = &mut self.state.ram[0];
        match command {
            CMD_READ_RAM_FIRST..=CMD_READ_RAM_LAST => {
                let value = self.state.ram[usize::from(command - CMD_READ_RAM_FIRST)];
                self.push_output(value, false);
            }
            CMD_DISABLE_AUX => *ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => *ctr &= !CTR_AUX_DISABLED,
            CMD_DISABLE_KEYBOARD => *ctr |= CTR_KEYBOARD_DISABLED,
            CMD_ENABLE_KEYBOARD => *ctr &= !CTR_KEYBOARD_DISABLED,
            CMD_TEST_AUX_INTERFACE | CMD_TEST_KEYBOARD_INTERFACE => {
                self.push_output(INTERFACE_TEST_PASSED, false)
            }
            CMD_SELF_TEST => {
                *ctr |= CTR_SYSTEM_FLAG;
                self.push_output(SELF_TEST_PASSED, false);
            }
            CMD_READ_OUTPUT_PORT => self.push_output(self.state.output_port, false),
            CMD_PULSE_FIRST..=u8::MAX if command & OUTPUT_PORT_RESET_DEASSERTED == 0 => {
                return DeviceAction::Reset
            }
            command if takes_parameter(command) => self.state.pending_command = Some(command),
            _ => tracing::trace!(command, "i8042: ignoring unsupported command"),
        }
        DeviceAction::None
    }

    fn write_data(&mut self, value: u8) -> DeviceAction {
        self.state.last_write_was_command = false;
        match self.state.pending_command.take() {
            Some(command @ CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST) => {
                self.state.ram[usize::from(command - CMD_WRITE_RAM_FIRST)] = value;
            }
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.state.output_port = value;
                if value & OUTPUT_PORT_RESET_DEASSERTED == 0 {
                    return DeviceAction::Reset;
                }
            }
            Some(CMD_WRITE_KEYBOARD_OUTPUT) => self.push_output(value, false),
            Some(CMD_WRITE_AUX_OUTPUT) => self.push_output(value, true),
            // To the mouse (0xD4) or, without a pending command, to the keyboard: neither is there.
            _ => tracing::trace!(value, "i8042: dropping a byte for an absent device"),
        }
        DeviceAction::None
    }
}

impl PioDevice for I8042Device {
    fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
        for (port, byte) in (u32::from(offset)..).zip(data.iter_mut()) {
            *byte = match port {
                0 => self.read_data(),
                4 => self.status(),
                _ => 0xff,
            };
        }
    }

    fn pio_write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let mut action = DeviceAction::None;
        for (port, &value) in (u32::from(offset)..).zip(data) {
            let result = match port {
                0 => self.write_data(value),
                4 => self.write_command(value),
                _ => DeviceAction::None,
            };
            if result != DeviceAction::None {
                action = result;
            }
        }
        action
    }
}

impl Persist for I8042Device {
    type State = I8042State;
    type ConstructorArgs = ();

    fn save(&self) -> I8042State {
        self.state.clone()
    }

    fn restore(_args: (), state: &I8042State) -> Result<Self, PersistError> {
        state.validate()?;
        Ok(I8042Device {
            state: state.clone(),
        })
    }
}

impl RestoreInPlace for I8042Device {
    fn restore_in_place(&mut self, state: &I8042State) -> Result<(), PersistError> {
        state.validate()?;
        self.state.clone_from(state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::TestRng;

    fn status(device: &mut I8042Device) -> u8 {
        let mut data = [0];
        device.pio_read(COMMAND_OFFSET, &mut data);
        data[0]
    }

    fn command(device: &mut I8042Device, value: u8) -> DeviceAction {
        device.pio_write(COMMAND_OFFSET, &[value])
    }

    fn write_data(device: &mut I8042Device, value: u8) -> DeviceAction {
        device.pio_write(DATA_OFFSET, &[value])
    }

    fn read_data(device: &mut I8042Device) -> u8 {
        let mut data = [0];
        device.pio_read(DATA_OFFSET, &mut data);
        data[0]
    }

    /// The way Linux's i8042_command() waits for a result.
    fn expect_result(device: &mut I8042Device, expected: u8) {
        assert_ne!(status(device) & STATUS_OUTPUT_FULL, 0, "no result byte");
        assert_eq!(read_data(device), expected);
        assert_eq!(status(device) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn idle_status_is_not_all_ones_and_has_no_data() {
        let mut device = I8042Device::new();
        let status = status(&mut device);
        assert_ne!(status, 0xff, "Linux takes 0xff as 'no controller'");
        assert_eq!(status & STATUS_OUTPUT_FULL, 0);
        assert_ne!(status & STATUS_UNLOCKED, 0);
        assert_eq!(status & 0x02, 0, "input buffer is never busy");
    }

    #[test]
    fn linux_probe_sequence_gets_its_answers() {
        let mut device = I8042Device::new();
        command(&mut device, CMD_SELF_TEST);
        expect_result(&mut device, SELF_TEST_PASSED);

        command(&mut device, 0x20);
        expect_result(&mut device, DEFAULT_COMMAND_BYTE);
        // Disable keyboard interface and interrupt, as i8042_controller_init() does.
        let ctr = (DEFAULT_COMMAND_BYTE | CTR_KEYBOARD_DISABLED) & !0x01;
        command(&mut device, 0x60);
        assert_ne!(status(&mut device) & STATUS_LAST_WRITE_WAS_COMMAND, 0);
        write_data(&mut device, ctr);
        assert_eq!(status(&mut device) & STATUS_LAST_WRITE_WAS_COMMAND, 0);
        command(&mut device, 0x20);
        expect_result(&mut device, ctr);

        // Aux loopback: the echoed byte is flagged as aux data.
        command(&mut device, CMD_WRITE_AUX_OUTPUT);
        write_data(&mut device, 0x5a);
        assert_ne!(status(&mut device) & STATUS_AUX_DATA, 0);
        expect_result(&mut device, 0x5a);
        assert_eq!(status(&mut device) & STATUS_AUX_DATA, 0);

        command(&mut device, CMD_TEST_AUX_INTERFACE);
        expect_result(&mut device, 0);
        command(&mut device, CMD_TEST_KEYBOARD_INTERFACE);
        expect_result(&mut device, 0);
    }

    #[test]
    fn enable_and_disable_commands_flip_command_byte_bits() {
        let mut device = I8042Device::new();
        command(&mut device, CMD_DISABLE_AUX);
        command(&mut device, CMD_DISABLE_KEYBOARD);
        command(&mut device, 0x20);
        expect_result(&mut device, DEFAULT_COMMAND_BYTE | 0x30);
        command(&mut device, CMD_ENABLE_AUX);
        command(&mut device, 0x20);
        expect_result(&mut device, DEFAULT_COMMAND_BYTE | 0x10);
        command(&mut device, CMD_ENABLE_KEYBOARD);
        command(&mut device, 0x20);
        expect_result(&mut device, DEFAULT_COMMAND_BYTE);
    }

    #[test]
    fn controller_ram_reads_back_what_was_written() {
        let mut device = I8042Device::new();
        command(&mut device, 0x65);
        write_data(&mut device, 0xab);
        command(&mut device, 0x25);
        expect_result(&mut device, 0xab);
    }

    #[test]
    fn reset_requests() {
        let mut device = I8042Device::new();
        assert_eq!(command(&mut device, 0xfe), DeviceAction::Reset);
        assert_eq!(command(&mut device, 0xff), DeviceAction::None);
        command(&mut device, CMD_WRITE_OUTPUT_PORT);
        assert_eq!(write_data(&mut device, 0x03), DeviceAction::None);
        command(&mut device, CMD_WRITE_OUTPUT_PORT);
        assert_eq!(write_data(&mut device, 0x02), DeviceAction::Reset);
        // A wide access that carries the reset command still reports it.
        assert_eq!(
            device.pio_write(COMMAND_OFFSET, &[0xfe, 0x00]),
            DeviceAction::Reset
        );
    }

    #[test]
    fn bytes_for_absent_devices_are_dropped() {
        let mut device = I8042Device::new();
        write_data(&mut device, 0xf2); // keyboard "get id"
        command(&mut device, CMD_WRITE_TO_AUX);
        write_data(&mut device, 0xf2); // mouse "get id"
        assert_eq!(status(&mut device) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn ports_between_data_and_status_are_not_decoded() {
        let mut device = I8042Device::new();
        for offset in 1..=3 {
            let mut data = [0];
            device.pio_read(offset, &mut data);
            assert_eq!(data, [0xff]);
            assert_eq!(device.pio_write(offset, &[0xfe]), DeviceAction::None);
        }
    }

    #[test]
    fn state_round_trips() {
        let mut device = I8042Device::restore((), &I8042State::default()).unwrap();
        command(&mut device, CMD_DISABLE_KEYBOARD);
        command(&mut device, CMD_WRITE_AUX_OUTPUT);
        write_data(&mut device, 0x77);
        command(&mut device, 0x61);
        let saved = device.save();
        saved.validate().unwrap();
        let encoded = postcard::to_stdvec(&saved).unwrap();
        assert_eq!(postcard::from_bytes::<I8042State>(&encoded).unwrap(), saved);

        let mut rebuilt = I8042Device::restore((), &saved).unwrap();
        assert_eq!(rebuilt.save(), saved);
        // The rebuilt controller continues the interrupted command.
        write_data(&mut rebuilt, 0x99);
        command(&mut rebuilt, 0x21);
        assert_eq!(status(&mut rebuilt) & STATUS_AUX_DATA, 0);
        assert_eq!(read_data(&mut rebuilt), 0x99);

        rebuilt.restore_in_place(&saved).unwrap();
        assert_eq!(rebuilt.save(), saved);
        assert_eq!(read_data(&mut rebuilt), 0x77);
    }

    #[test]
    fn invalid_states_are_rejected() {
        let mut device = I8042Device::new();
        let bad_pending = I8042State {
            pending_command: Some(CMD_SELF_TEST),
            ..Default::default()
        };
        let bad_aux = I8042State {
            output_from_aux: true,
            ..Default::default()
        };
        for state in [bad_pending, bad_aux] {
            assert!(I8042Device::restore((), &state).is_err());
            assert!(device.restore_in_place(&state).is_err());
            assert_eq!(device.save(), I8042State::default());
        }
    }

    #[test]
    fn random_traffic_never_panics_and_keeps_the_state_valid() {
        let mut device = I8042Device::new();
        let mut rng = TestRng::new(0x64);
        let mut resets = 0;
        for _ in 0..50_000 {
            let offset = (rng.next_u64() % 8) as u16;
            let len = [1usize, 2, 4][(rng.next_u64() % 3) as usize];
            if rng.one_in(2) {
                let mut data = vec![0; len];
                device.pio_read(offset, &mut data);
            } else if device.pio_write(offset, &rng.next_u32().to_le_bytes()[..len])
                == DeviceAction::Reset
            {
                resets += 1;
            }
            device.save().validate().unwrap();
        }
        assert!(resets > 0, "random traffic should hit a reset command");
    }
}
