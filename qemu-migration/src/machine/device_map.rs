//! snapvmm's UART and CMOS states (crate `devices`) to and from QEMU's `serial` and
//! `mc146818rtc` sections.

use devices::cmos::{CmosState, CMOS_RAM_SIZE};
use devices::serial::SerialDeviceState;

use crate::sections::rtc::CMOS_LEN;
use crate::sections::{RtcSection, SerialSection};

const LSR_DATA_READY: u8 = 0x01;
const IIR_FIFO_ENABLED: u8 = 0xc0;
/// FCR: FIFO enabled, receive trigger at 8 bytes (what Linux programs).
const FCR_FIFO_ON: u8 = 0x81;
const NS_PER_SEC: i64 = 1_000_000_000;

pub fn serial_from_device(state: &SerialDeviceState) -> SerialSection {
    let mut section = SerialSection {
        divider: u16::from_le_bytes([state.baud_divisor_low, state.baud_divisor_high]),
        rbr: state.in_buffer.first().copied().unwrap_or(0),
        ier: state.interrupt_enable,
        iir: state.interrupt_identification,
        lcr: state.line_control,
        mcr: state.modem_control,
        lsr: state.line_status,
        msr: state.modem_status,
        scr: state.scratch,
        fcr: if state.interrupt_identification & IIR_FIFO_ENABLED != 0 {
            FCR_FIFO_ON
        } else {
            0
        },
        subsections: Vec::new(),
    };
    if section.fcr != 0 {
        section.set_recv_fifo(&state.in_buffer);
    }
    section
}

pub fn serial_to_device(section: &SerialSection) -> SerialDeviceState {
    let mut in_buffer = section.recv_fifo();
    if in_buffer.is_empty() && section.lsr & LSR_DATA_READY != 0 {
        // FIFO off: the byte waits in RBR.
        in_buffer.push(section.rbr);
    }
    let [low, high] = section.divider.to_le_bytes();
    SerialDeviceState {
        baud_divisor_low: low,
        baud_divisor_high: high,
        interrupt_enable: section.ier,
        interrupt_identification: iir_to_device(section.iir),
        line_control: section.lcr,
        line_status: section.lsr,
        modem_control: section.mcr,
        modem_status: section.msr,
        scratch: section.scr,
        in_buffer,
    }
}

/// QEMU's IIR carries the FIFO-enabled bits (0xC0) and the interrupt kinds of a full 16550;
/// snapvmm's UART (vm-superio) keeps only "none", "THR empty" and "data ready" and adds the FIFO
/// bits when the guest reads IIR.
fn iir_to_device(iir: u8) -> u8 {
    match iir & 0x0f {
        0x02 => 0x02,
        // Received data, line status, character timeout: data is waiting.
        0x04 | 0x06 | 0x0c => 0x04,
        _ => 0x01,
    }
}

/// The RTC section for a CMOS state at host wall-clock time `now_realtime_ns` (QEMU's default
/// `-rtc clock=host`): the guest's time is the wall clock plus `clock_offset_seconds`.
pub fn rtc_from_cmos(cmos: &CmosState, now_realtime_ns: i64) -> RtcSection {
    let mut cmos_data = [0u8; CMOS_LEN];
    for (dst, src) in cmos_data.iter_mut().zip(&cmos.ram) {
        *dst = *src;
    }
    let guest_ns =
        now_realtime_ns.saturating_add(cmos.clock_offset_seconds.saturating_mul(NS_PER_SEC));
    RtcSection {
        cmos_data,
        cmos_index: cmos.index | if cmos.nmi_disabled { 0x80 } else { 0 },
        periodic_timer: -1,
        next_periodic_time: 0,
        irq_coalesced: 0,
        period: 0,
        base_rtc: guest_ns.div_euclid(NS_PER_SEC) as u64,
        last_update: now_realtime_ns as u64,
        offset: guest_ns.rem_euclid(NS_PER_SEC),
        update_timer: -1,
        next_alarm_time: 0,
        subsections: Vec::new(),
    }
}

/// The CMOS state of an RTC section (time as an offset from the host wall clock).
pub fn rtc_to_cmos(rtc: &RtcSection) -> CmosState {
    let mut ram = vec![0u8; CMOS_RAM_SIZE];
    for (dst, src) in ram.iter_mut().zip(rtc.cmos_data) {
        *dst = src;
    }
    // guest_ns at last_update = base_rtc * 1e9 + offset.
    let guest_ns = (rtc.base_rtc as i64)
        .saturating_mul(NS_PER_SEC)
        .saturating_add(rtc.offset);
    let offset_ns = guest_ns.saturating_sub(rtc.last_update as i64);
    CmosState {
        index: rtc.cmos_index & 0x7f,
        nmi_disabled: rtc.cmos_index & 0x80 != 0,
        ram,
        clock_offset_seconds: (offset_ns as f64 / NS_PER_SEC as f64).round() as i64,
    }
}
