//! COM1: a 16550 UART built on vm-superio's `Serial`.
//!
//! vm-superio does the register model; this module adds what snapvmm needs around it: the interrupt
//! line as an eventfd (the VMM registers it as an irqfd on GSI 4), guest output to any writer, a
//! host-side input backlog that refills the 64-byte receive FIFO as the guest drains it (so a
//! stdin thread can hand over a paste in one call), and a serde-able mirror of `SerialState`.
//!
//! Multi-byte port accesses are split into byte accesses at consecutive ports, as the ISA bus does.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use snapshot::{Persist, PersistError};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::{DeviceAction, PioDevice, RestoreInPlace};

/// Base port of COM1.
pub const COM1_PORT_BASE: u16 = 0x3f8;
/// A 16550 decodes 8 consecutive ports.
pub const SERIAL_PORT_LEN: u16 = 8;
/// Interrupt line of COM1 (the GSI the VMM binds the eventfd to).
pub const COM1_IRQ: u32 = 4;
/// Size of the 16550's receive FIFO (vm-superio's, restated for state validation).
pub const RX_FIFO_SIZE: usize = 64;
/// Host input waiting for room in the receive FIFO is capped so a flood of input cannot grow
/// memory without bound; `enqueue_input` reports how much it took.
pub const INPUT_BACKLOG_LIMIT: usize = 64 * 1024;

const DATA_OFFSET: u8 = 0;
const IER_VALID_BITS: u8 = 0x0f;
const IIR_NO_INTERRUPT: u8 = 0x01;
const IIR_THR_EMPTY: u8 = 0x02;
const IIR_RECEIVED_DATA: u8 = 0x04;
const LSR_DATA_READY: u8 = 0x01;
/// THR empty and transmitter idle: vm-superio writes output at once, so these are always set.
const LSR_TRANSMITTER_EMPTY: u8 = 0x60;

/// Raises the UART's interrupt by signalling an eventfd that KVM injects as an IRQ (irqfd).
#[derive(Clone, Debug)]
pub struct EventFdTrigger(Arc<EventFd>);

impl EventFdTrigger {
    pub fn new(event: EventFd) -> Self {
        EventFdTrigger(Arc::new(event))
    }

    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    /// Never fails: the only way an eventfd write fails here is a saturated counter (EAGAIN), which
    /// means the interrupt is already pending, and nothing the UART could do about any other error
    /// would help the guest. Failures are logged instead.
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        if let Err(error) = self.0.write(1) {
            if error.kind() != io::ErrorKind::WouldBlock {
                tracing::warn!(%error, "serial: cannot signal the interrupt eventfd");
            }
        }
        Ok(())
    }
}

/// What the UART needs besides its state: where its interrupt goes and where its output goes.
pub struct SerialArgs {
    pub interrupt: EventFd,
    pub output: Box<dyn Write + Send>,
}

/// The guest-visible state of the UART: vm-superio's `SerialState`, mirrored to be serde-able.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Receive FIFO contents, oldest first.
    pub in_buffer: Vec<u8>,
}

impl Default for SerialDeviceState {
    fn default() -> Self {
        SerialState::default().into()
    }
}

impl From<SerialState> for SerialDeviceState {
    fn from(state: SerialState) -> Self {
        SerialDeviceState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer,
        }
    }
}

impl From<&SerialDeviceState> for SerialState {
    fn from(state: &SerialDeviceState) -> Self {
        SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        }
    }
}

impl SerialDeviceState {
    /// Rejects states vm-superio could never reach; vm-superio itself only checks the FIFO size.
    pub fn validate(&self) -> Result<(), PersistError> {
        let invalid = |why: String| Err(PersistError::invalid("serial", why));
        if self.in_buffer.len() > RX_FIFO_SIZE {
            return invalid(format!(
                "receive FIFO holds {} bytes, more than {RX_FIFO_SIZE}",
                self.in_buffer.len()
            ));
        }
        if self.interrupt_enable & !IER_VALID_BITS != 0 {
            return invalid(format!(
                "interrupt enable {:#04x} has bits a 16550 does not have",
                self.interrupt_enable
            ));
        }
        let iir = self.interrupt_identification;
        let pending_only = iir & !(IIR_THR_EMPTY | IIR_RECEIVED_DATA) == 0 && iir != 0;
        if iir != IIR_NO_INTERRUPT && !pending_only {
            return invalid(format!(
                "interrupt identification {iir:#04x} is not a valid one"
            ));
        }
        let data_ready = !self.in_buffer.is_empty();
        let expected_lsr = LSR_TRANSMITTER_EMPTY | if data_ready { LSR_DATA_READY } else { 0 };
        if self.line_status != expected_lsr {
            return invalid(format!(
                "line status {:#04x} disagrees with a receive FIFO of {} bytes (expected {expected_lsr:#04x})",
                self.line_status,
                self.in_buffer.len()
            ));
        }
        Ok(())
    }
}

type Uart = Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// COM1. Implements `PioDevice` for its 8 ports; share it with a stdin thread through
/// `Arc<Mutex<SerialDevice>>`, which is a `PioDevice` too.
pub struct SerialDevice {
    uart: Uart,
    trigger: EventFdTrigger,
    /// Host input that did not fit in the receive FIFO yet. Host-side, not guest state: it is not
    /// saved, and a restore does not drop it.
    input_backlog: VecDeque<u8>,
    /// Output errors are reported once, not once per byte.
    output_error_reported: bool,
}

impl SerialDevice {
    /// A UART in its power-on state (the same path as a restore from the default state).
    pub fn new(interrupt: EventFd, output: Box<dyn Write + Send>) -> Result<Self, PersistError> {
        Self::restore(
            SerialArgs { interrupt, output },
            &SerialDeviceState::default(),
        )
    }

    /// The eventfd the VMM registers as an irqfd on GSI [`COM1_IRQ`].
    pub fn interrupt_event(&self) -> &EventFd {
        self.trigger.event_fd()
    }

    /// Queues bytes typed on the host for the guest. Moves what fits into the receive FIFO now
    /// (raising the received-data interrupt) and keeps the rest until the guest reads; returns how
    /// many bytes were taken, fewer than `input.len()` only when the backlog is full.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = INPUT_BACKLOG_LIMIT.saturating_sub(self.input_backlog.len());
        let taken = input.len().min(room);
        self.input_backlog.extend(&input[..taken]);
        self.refill_fifo();
        taken
    }

    /// Host input not yet in the receive FIFO.
    pub fn pending_input(&self) -> usize {
        self.input_backlog.len()
    }

    fn refill_fifo(&mut self) {
        let room = self.uart.fifo_capacity().min(self.input_backlog.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.input_backlog.iter().take(room).copied().collect();
        // In loopback mode the UART accepts nothing (Ok(0)); the bytes then wait in the backlog.
        let accepted = self.uart.enqueue_raw_bytes(&chunk).unwrap_or(0);
        self.input_backlog.drain(..accepted);
    }

    fn report_output_error(&mut self, error: impl std::fmt::Display) {
        if !self.output_error_reported {
            self.output_error_reported = true;
            tracing::warn!(%error, "serial: guest output lost");
        }
    }

    fn uart_from_state(
        trigger: &EventFdTrigger,
        output: Box<dyn Write + Send>,
        state: &SerialDeviceState,
    ) -> Result<Uart, PersistError> {
        Serial::from_state(&state.into(), trigger.clone(), NoEvents, output)
            .map_err(|error| PersistError::invalid("serial", error.to_string()))
    }
}

impl PioDevice for SerialDevice {
    fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
        for (port, byte) in (offset..).zip(data.iter_mut()) {
            *byte = match u8::try_from(port) {
                Ok(register) if port < SERIAL_PORT_LEN => self.uart.read(register),
                _ => 0xff,
            };
            if port == u16::from(DATA_OFFSET) {
                self.refill_fifo();
            }
        }
    }

    fn pio_write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        for (port, &value) in (offset..).zip(data) {
            let Ok(register) = u8::try_from(port) else {
                break;
            };
            if port >= SERIAL_PORT_LEN {
                break;
            }
            if let Err(error) = self.uart.write(register, value) {
                self.report_output_error(error);
            }
        }
        DeviceAction::None
    }
}

impl Persist for SerialDevice {
    type State = SerialDeviceState;
    type ConstructorArgs = SerialArgs;

    fn save(&self) -> SerialDeviceState {
        self.uart.state().into()
    }

    fn restore(args: SerialArgs, state: &SerialDeviceState) -> Result<Self, PersistError> {
        state.validate()?;
        let trigger = EventFdTrigger::new(args.interrupt);
        let uart = Self::uart_from_state(&trigger, args.output, state)?;
        Ok(SerialDevice {
            uart,
            trigger,
            input_backlog: VecDeque::new(),
            output_error_reported: false,
        })
    }
}

impl RestoreInPlace for SerialDevice {
    fn restore_in_place(&mut self, state: &SerialDeviceState) -> Result<(), PersistError> {
        state.validate()?;
        // vm-superio only builds a UART from a state by value, so lend it a sink while taking the
        // output writer back from the old one.
        let placeholder = Serial::new(self.trigger.clone(), Box::new(io::sink()) as Box<_>);
        let output = std::mem::replace(&mut self.uart, placeholder).into_writer();
        self.uart = Self::uart_from_state(&self.trigger, output, state)?;
        self.refill_fifo();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::test_rng::TestRng;

    const IER: u16 = 1;
    const IIR: u16 = 2;
    const LCR: u16 = 3;
    const MCR: u16 = 4;
    const LSR: u16 = 5;
    const SCR: u16 = 7;

    /// Output the test can read back after handing a writer to the device.
    #[derive(Clone, Default)]
    struct SharedOutput(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedOutput {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SharedOutput {
        fn contents(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    struct BrokenOutput;

    impl Write for BrokenOutput {
        fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn device() -> (SerialDevice, SharedOutput, EventFd) {
        let output = SharedOutput::default();
        let interrupt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = interrupt.try_clone().unwrap();
        let device = SerialDevice::new(interrupt, Box::new(output.clone())).unwrap();
        (device, output, irq)
    }

    fn read_reg(device: &mut SerialDevice, register: u16) -> u8 {
        let mut data = [0u8];
        device.pio_read(register, &mut data);
        data[0]
    }

    #[test]
    fn transmitted_bytes_reach_the_output_and_lsr_reports_thr_empty() {
        let (mut device, output, _irq) = device();
        for &byte in b"hello\n" {
            assert_eq!(device.pio_write(0, &[byte]), DeviceAction::None);
        }
        assert_eq!(output.contents(), b"hello\n");
        assert_eq!(read_reg(&mut device, LSR) & 0x60, 0x60);
    }

    #[test]
    fn host_input_raises_the_interrupt_and_is_read_in_order() {
        let (mut device, _output, irq) = device();
        device.pio_write(IER, &[0x01]);
        assert_eq!(device.enqueue_input(b"ab"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read_reg(&mut device, LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(read_reg(&mut device, IIR) & 0x0f, IIR_RECEIVED_DATA);
        assert_eq!(read_reg(&mut device, 0), b'a');
        assert_eq!(read_reg(&mut device, 0), b'b');
        assert_eq!(read_reg(&mut device, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn input_beyond_the_fifo_waits_in_the_backlog_until_the_guest_reads() {
        let (mut device, _output, _irq) = device();
        let input: Vec<u8> = (0..200u8).collect();
        assert_eq!(device.enqueue_input(&input), 200);
        assert_eq!(device.pending_input(), 200 - RX_FIFO_SIZE);
        let received: Vec<u8> = (0..200).map(|_| read_reg(&mut device, 0)).collect();
        assert_eq!(received, input);
        assert_eq!(device.pending_input(), 0);
        assert_eq!(read_reg(&mut device, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn backlog_is_capped() {
        let (mut device, _output, _irq) = device();
        let flood = vec![b'x'; INPUT_BACKLOG_LIMIT + RX_FIFO_SIZE + 10];
        assert_eq!(device.enqueue_input(&flood), INPUT_BACKLOG_LIMIT);
        // The FIFO took the first 64 bytes, which frees exactly that much backlog.
        assert_eq!(device.pending_input(), INPUT_BACKLOG_LIMIT - RX_FIFO_SIZE);
        assert_eq!(device.enqueue_input(&[b'y'; 100]), RX_FIFO_SIZE);
        assert_eq!(device.enqueue_input(b"z"), 0);
    }

    #[test]
    fn word_access_is_split_into_consecutive_byte_registers() {
        let (mut device, _output, _irq) = device();
        // LCR and MCR in one 16-bit write, read back the same way.
        device.pio_write(LCR, &[0x1b, 0x03]);
        let mut data = [0u8; 2];
        device.pio_read(LCR, &mut data);
        assert_eq!(data, [0x1b, 0x03]);
        // Bytes past the last register read all ones and are not written anywhere.
        device.pio_write(SCR, &[0x5a, 0xa5]);
        device.pio_read(SCR, &mut data);
        assert_eq!(data, [0x5a, 0xff]);
    }

    #[test]
    fn shared_with_a_stdin_thread_through_the_bus() {
        let (device, output, _irq) = device();
        let shared = Arc::new(Mutex::new(device));
        let mut bus = crate::PioBus::default();
        bus.insert(COM1_PORT_BASE, SERIAL_PORT_LEN, Box::new(shared.clone()));
        let typist = shared.clone();
        std::thread::spawn(move || typist.lock().unwrap().enqueue_input(b"k"))
            .join()
            .unwrap();
        let mut data = [0u8];
        bus.read(COM1_PORT_BASE, &mut data);
        assert_eq!(data, *b"k");
        bus.write(COM1_PORT_BASE, b"o");
        assert_eq!(output.contents(), b"o");
    }

    #[test]
    fn divisor_latch_is_reachable_with_dlab() {
        let (mut device, output, _irq) = device();
        device.pio_write(LCR, &[0x80]);
        device.pio_write(0, &[0x01]);
        device.pio_write(1, &[0x00]);
        device.pio_write(LCR, &[0x03]);
        assert!(output.contents().is_empty(), "DLAB writes are not output");
        assert_eq!(device.save().baud_divisor_low, 0x01);
    }

    #[test]
    fn broken_output_does_not_stop_the_uart() {
        let interrupt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut device = SerialDevice::new(interrupt, Box::new(BrokenOutput)).unwrap();
        assert_eq!(device.pio_write(0, b"x"), DeviceAction::None);
        assert_eq!(device.pio_write(0, b"y"), DeviceAction::None);
        assert_eq!(read_reg(&mut device, LSR) & 0x60, 0x60);
    }

    #[test]
    fn state_round_trips_through_restore_and_restore_in_place() {
        let (mut device, output, _irq) = device();
        device.pio_write(LCR, &[0x80]);
        device.pio_write(0, &[0x03]);
        device.pio_write(LCR, &[0x03]);
        device.pio_write(IER, &[0x01]);
        device.pio_write(MCR, &[0x0b]);
        device.pio_write(SCR, &[0x42]);
        device.enqueue_input(b"xyz");
        let saved = device.save();
        assert_eq!(saved.in_buffer, b"xyz");
        saved.validate().unwrap();

        let encoded = postcard::to_stdvec(&saved).unwrap();
        let decoded: SerialDeviceState = postcard::from_bytes(&encoded).unwrap();
        assert_eq!(decoded, saved);

        let rebuilt = SerialDevice::restore(
            SerialArgs {
                interrupt: EventFd::new(EFD_NONBLOCK).unwrap(),
                output: Box::new(io::sink()),
            },
            &saved,
        )
        .unwrap();
        assert_eq!(rebuilt.save(), saved);

        // Diverge, then roll back in place: registers and FIFO return, the output stream stays.
        read_reg(&mut device, 0);
        device.pio_write(SCR, &[0x00]);
        device.restore_in_place(&saved).unwrap();
        assert_eq!(device.save(), saved);
        device.pio_write(0, b"!");
        assert_eq!(output.contents(), b"!");
    }

    #[test]
    fn invalid_states_are_rejected_and_leave_the_device_untouched() {
        let (mut device, _output, _irq) = device();
        device.pio_write(SCR, &[0x77]);
        let before = device.save();
        let mut bad_states = Vec::new();
        let mut state = SerialDeviceState {
            in_buffer: vec![0; RX_FIFO_SIZE + 1],
            ..Default::default()
        };
        state.line_status |= LSR_DATA_READY;
        bad_states.push(state);
        bad_states.push(SerialDeviceState {
            interrupt_enable: 0x10,
            ..Default::default()
        });
        bad_states.push(SerialDeviceState {
            interrupt_identification: 0x08,
            ..Default::default()
        });
        bad_states.push(SerialDeviceState {
            in_buffer: vec![1],
            ..Default::default()
        });
        bad_states.push(SerialDeviceState {
            line_status: 0,
            ..Default::default()
        });
        for state in &bad_states {
            assert!(state.validate().is_err(), "{state:?}");
            assert!(device.restore_in_place(state).is_err());
            assert_eq!(device.save(), before);
        }
    }

    #[test]
    fn random_register_traffic_keeps_the_state_valid() {
        let (mut device, _output, _irq) = device();
        let mut rng = TestRng::new(0x3f8);
        for _ in 0..20_000 {
            let offset = (rng.next_u64() % 10) as u16;
            let len = [1usize, 2, 4][(rng.next_u64() % 3) as usize];
            match rng.next_u64() % 4 {
                0 => {
                    let mut data = vec![0; len];
                    device.pio_read(offset, &mut data);
                }
                1 => {
                    device.enqueue_input(&rng.next_u32().to_le_bytes()[..len]);
                }
                _ => {
                    device.pio_write(offset, &rng.next_u32().to_le_bytes()[..len]);
                }
            }
            let state = device.save();
            state.validate().unwrap();
        }
    }
}
