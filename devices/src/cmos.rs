//! An MC146818 real-time clock with its 128 bytes of CMOS memory, enough for Linux's `rtc_cmos`
//! and for firmware-style guests that read the memory size from CMOS.
//!
//! Mapping: one range, base [`CMOS_PORT_BASE`] (0x70), [`CMOS_PORT_LEN`] (2) ports. Offset 0 is the
//! index port (write-only: bits 0..=6 select a register, bit 7 set disables NMIs on a PC; the bit
//! is kept but KVM's NMIs are not gated by it; reads return all ones), offset 1 the data port.
//! Wider accesses are split into byte accesses at consecutive ports, as the ISA bus does.
//!
//! The clock: the time registers (seconds, minutes, hours, day of week, day of month, month,
//! year, and the century at [`REG_CENTURY`], which the FADT names) are computed at each read from
//! a wall clock (the host's, UTC) plus a guest-set offset, in BCD or binary and 12- or 24-hour
//! format as register B says. A guest sets the time the usual way: SET in register B, write the
//! fields, clear SET; a single field written without SET takes effect at once. The day of week
//! is always derived from the date (the calendar arithmetic is in `cmos/calendar.rs`). UIP
//! (register A bit 7) always reads 0 and register D reads 0x80 (valid RAM and time), so readers
//! never wait for an update cycle.
//!
//! No interrupt is wired: periodic, alarm and update-ended interrupts are never raised, and
//! register C always reads 0. Linux's boot does not need them.
//!
//! Snapshots: the saved state holds the guest's offset from the wall clock, not a time. A restored
//! guest therefore reads the current wall-clock time (plus its offset), not the time of the
//! snapshot: restores do not roll back wall-clock time, just as they do not roll back the host's.

mod calendar;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use snapshot::{Persist, PersistError};

use self::calendar::{from_bcd, to_bcd, DateTime, SECONDS_PER_DAY};
use crate::{DeviceAction, PioDevice, RestoreInPlace};

/// Index port; the data port follows.
pub const CMOS_PORT_BASE: u16 = 0x70;
pub const CMOS_PORT_LEN: u16 = 2;
/// Bytes of CMOS memory, clock registers included.
pub const CMOS_RAM_SIZE: usize = 128;
/// The century register (the FADT's CENTURY field points here, as on QEMU's PCs).
pub const REG_CENTURY: u8 = 0x32;

const INDEX_OFFSET: u16 = 0;
const DATA_OFFSET: u16 = 1;
const INDEX_MASK: u8 = 0x7f;
const INDEX_NMI_DISABLE: u8 = 0x80;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// The registers that show the time.
const TIME_REGISTERS: [u8; 8] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_DAY_OF_WEEK,
    REG_DAY_OF_MONTH,
    REG_MONTH,
    REG_YEAR,
    REG_CENTURY,
];

/// Register A: update in progress (read-only, always 0 here).
const A_UIP: u8 = 0x80;
/// Register A after power-up: 32.768 kHz time base, 1024 Hz periodic rate.
const DEFAULT_A: u8 = 0x26;
const B_SET: u8 = 0x80;
const B_UPDATE_INTERRUPT: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24_HOUR: u8 = 0x02;
/// Register B after power-up: BCD, 24-hour mode, no interrupts.
const DEFAULT_B: u8 = B_24_HOUR;
/// Register D: the RAM and time are valid (the battery is good).
const D_VALID: u8 = 0x80;
const HOUR_PM: u8 = 0x80;

/// Memory-size fields, as PC firmware (and QEMU) fill them in.
const REG_EQUIPMENT: usize = 0x14;
const EQUIPMENT_FPU: u8 = 0x02;
const REG_BASE_MEMORY_KIB: usize = 0x15;
const REG_EXTENDED_MEMORY_KIB: usize = 0x17;
const REG_EXTENDED_MEMORY_KIB_COPY: usize = 0x30;
const REG_MEMORY_ABOVE_16M: usize = 0x34;
const REG_MEMORY_ABOVE_4G: usize = 0x5b;
const BASE_MEMORY_KIB: u16 = 640;

/// The guest may set any time of years 0..=9999 (what the registers can hold); a saved offset
/// beyond that is corrupt.
const MAX_CLOCK_OFFSET_SECONDS: i64 = 10_000 * 366 * SECONDS_PER_DAY;

/// Where the RTC reads the time: seconds since the Unix epoch, UTC.
pub type WallClock = Box<dyn Fn() -> i64 + Send>;

/// The host's clock (UTC); a host clock set before 1970 reads as 1970.
pub fn host_wall_clock() -> WallClock {
    Box::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX / 2)
            })
    })
}

/// The RTC's guest-visible state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    /// Register selected through the index port (0..=127).
    pub index: u8,
    /// Bit 7 of the last index write.
    pub nmi_disabled: bool,
    /// CMOS memory, [`CMOS_RAM_SIZE`] bytes. The time registers hold the fields latched while
    /// register B's SET bit is on; otherwise the time is computed and these bytes are unused.
    /// Registers C and D are computed too.
    pub ram: Vec<u8>,
    /// What the guest's clock reads minus the wall clock, in seconds.
    pub clock_offset_seconds: i64,
}

impl Default for CmosState {
    fn default() -> Self {
        let mut ram = vec![0; CMOS_RAM_SIZE];
        ram[usize::from(REG_A)] = DEFAULT_A;
        ram[usize::from(REG_B)] = DEFAULT_B;
        ram[usize::from(REG_D)] = D_VALID;
        CmosState {
            index: 0,
            nmi_disabled: false,
            ram,
            clock_offset_seconds: 0,
        }
    }
}

impl CmosState {
    /// The power-up state of a PC with `low_ram_bytes` of RAM from address 0 and `high_ram_bytes`
    /// from 4 GiB (see [`CmosState::record_ram_size`]).
    pub fn with_ram_size(low_ram_bytes: u64, high_ram_bytes: u64) -> Self {
        let mut state = CmosState::default();
        state.record_ram_size(low_ram_bytes, high_ram_bytes);
        state
    }

    /// Fills in the memory-size bytes as PC firmware does: base memory (0x15), memory above
    /// 1 MiB in KiB (0x17 and 0x30, at most 0xffff), above 16 MiB in 64 KiB units (0x34), above
    /// 4 GiB in 64 KiB units (0x5b, 3 bytes), and the FPU bit of the equipment byte (0x14).
    pub fn record_ram_size(&mut self, low_ram_bytes: u64, high_ram_bytes: u64) {
        let ram = &mut self.ram;
        if ram.len() != CMOS_RAM_SIZE {
            return;
        }
        let mut put16 = |at: usize, value: u64| {
            let value = u16::try_from(value).unwrap_or(u16::MAX);
            ram[at..at + 2].copy_from_slice(&value.to_le_bytes());
        };
        put16(REG_BASE_MEMORY_KIB, u64::from(BASE_MEMORY_KIB));
        let extended_kib = low_ram_bytes.saturating_sub(1 << 20) >> 10;
        put16(REG_EXTENDED_MEMORY_KIB, extended_kib);
        put16(REG_EXTENDED_MEMORY_KIB_COPY, extended_kib);
        put16(
            REG_MEMORY_ABOVE_16M,
            low_ram_bytes.saturating_sub(16 << 20) >> 16,
        );
        let above_4g = (high_ram_bytes >> 16).min(0xff_ffff);
        ram[REG_MEMORY_ABOVE_4G..REG_MEMORY_ABOVE_4G + 3]
            .copy_from_slice(&above_4g.to_le_bytes()[..3]);
        ram[REG_EQUIPMENT] |= EQUIPMENT_FPU;
    }

    pub fn validate(&self) -> Result<(), PersistError> {
        let invalid = |why: String| Err(PersistError::invalid("CMOS RTC", why));
        if self.ram.len() != CMOS_RAM_SIZE {
            return invalid(format!(
                "{} bytes of CMOS memory, expected {CMOS_RAM_SIZE}",
                self.ram.len()
            ));
        }
        if self.index & !INDEX_MASK != 0 {
            return invalid(format!("register index {:#x} (max 0x7f)", self.index));
        }
        if self.clock_offset_seconds.unsigned_abs() > MAX_CLOCK_OFFSET_SECONDS.unsigned_abs() {
            return invalid(format!(
                "clock offset {} s is beyond what the registers can show",
                self.clock_offset_seconds
            ));
        }
        if self.ram[usize::from(REG_A)] & A_UIP != 0 {
            return invalid("register A has the read-only UIP bit set".into());
        }
        Ok(())
    }

    fn register_b(&self) -> u8 {
        self.ram[usize::from(REG_B)]
    }
}

/// How register B says the time registers are encoded.
#[derive(Clone, Copy)]
struct Format {
    binary: bool,
    hours_24: bool,
}

impl Format {
    fn of(register_b: u8) -> Self {
        Format {
            binary: register_b & B_BINARY != 0,
            hours_24: register_b & B_24_HOUR != 0,
        }
    }

    fn encode(self, value: u8) -> u8 {
        if self.binary {
            value
        } else {
            to_bcd(value)
        }
    }

    fn decode(self, raw: u8) -> Option<u8> {
        if self.binary {
            Some(raw)
        } else {
            from_bcd(raw)
        }
    }

    fn encode_hour(self, hour: u8) -> u8 {
        if self.hours_24 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let hour_12 = match hour % 12 {
            0 => 12,
            other => other,
        };
        self.encode(hour_12) | pm
    }

    fn decode_hour(self, raw: u8) -> Option<u8> {
        if self.hours_24 {
            return self.decode(raw);
        }
        let hour_12 = self.decode(raw & !HOUR_PM)?;
        if !(1..=12).contains(&hour_12) {
            return None;
        }
        Some(hour_12 % 12 + if raw & HOUR_PM != 0 { 12 } else { 0 })
    }

    /// The time registers' contents for `time`.
    fn registers(self, time: DateTime) -> [(u8, u8); 8] {
        // Years beyond what the registers hold wrap around; the offset's bound keeps them sane.
        let year = time.year.rem_euclid(10_000);
        [
            (REG_SECONDS, self.encode(time.second)),
            (REG_MINUTES, self.encode(time.minute)),
            (REG_HOURS, self.encode_hour(time.hour)),
            (REG_DAY_OF_WEEK, self.encode(time.day_of_week())),
            (REG_DAY_OF_MONTH, self.encode(time.day)),
            (REG_MONTH, self.encode(time.month)),
            (REG_YEAR, self.encode((year % 100) as u8)),
            (REG_CENTURY, self.encode((year / 100) as u8)),
        ]
    }

    /// The time the registers in `ram` show, if they hold a valid one.
    fn parse(self, ram: &[u8]) -> Option<DateTime> {
        let field = |register: u8| ram.get(usize::from(register)).copied();
        let decode = |register: u8| field(register).and_then(|raw| self.decode(raw));
        let year = decode(REG_YEAR).filter(|&y| y < 100)?;
        let century = decode(REG_CENTURY).filter(|&c| c < 100)?;
        let time = DateTime {
            year: i64::from(century) * 100 + i64::from(year),
            month: decode(REG_MONTH)?,
            day: decode(REG_DAY_OF_MONTH)?,
            hour: field(REG_HOURS).and_then(|raw| self.decode_hour(raw))?,
            minute: decode(REG_MINUTES)?,
            second: decode(REG_SECONDS)?,
        };
        time.is_valid().then_some(time)
    }
}

pub struct CmosDevice {
    state: CmosState,
    clock: WallClock,
}

impl fmt::Debug for CmosDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CmosDevice")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl CmosDevice {
    /// A powered-up RTC on the host's clock whose memory describes the guest's RAM (see
    /// [`CmosState::with_ram_size`]).
    pub fn new(low_ram_bytes: u64, high_ram_bytes: u64) -> Self {
        CmosDevice {
            state: CmosState::with_ram_size(low_ram_bytes, high_ram_bytes),
            clock: host_wall_clock(),
        }
    }

    fn now(&self) -> DateTime {
        DateTime::from_unix((self.clock)().saturating_add(self.state.clock_offset_seconds))
    }

    fn format(&self) -> Format {
        Format::of(self.state.register_b())
    }

    fn set_active(&self) -> bool {
        self.state.register_b() & B_SET != 0
    }

    fn read_register(&self, register: u8) -> u8 {
        if TIME_REGISTERS.contains(&register) && !self.set_active() {
            let registers = self.format().registers(self.now());
            return registers
                .iter()
                .find(|(r, _)| *r == register)
                .map_or(0, |&(_, value)| value);
        }
        match register {
            REG_A => self.state.ram[usize::from(REG_A)] & !A_UIP,
            REG_C => 0,
            REG_D => D_VALID,
            other => self.state.ram[usize::from(other & INDEX_MASK)],
        }
    }

    /// Copies the current time into the time registers' bytes, in `format`.
    fn latch_time(&mut self, format: Format) {
        for (register, value) in format.registers(self.now()) {
            self.state.ram[usize::from(register)] = value;
        }
    }

    /// Makes the clock show the time in the time registers' bytes (written in `format`).
    fn commit_time(&mut self, format: Format) {
        match format.parse(&self.state.ram) {
            Some(time) => {
                let offset = time.to_unix().saturating_sub((self.clock)());
                if offset.unsigned_abs() <= MAX_CLOCK_OFFSET_SECONDS.unsigned_abs() {
                    self.state.clock_offset_seconds = offset;
                }
            }
            None => tracing::debug!("CMOS RTC: guest set an invalid time; the clock keeps running"),
        }
    }

    fn write_register(&mut self, register: u8, value: u8) {
        let slot = usize::from(register & INDEX_MASK);
        match register {
            REG_A => self.state.ram[slot] = value & !A_UIP,
            REG_B => {
                let old = self.state.register_b();
                let mut new = value;
                if new & B_SET != 0 {
                    // Setting the clock stops update-ended interrupts, as on the chip.
                    new &= !B_UPDATE_INTERRUPT;
                    if old & B_SET == 0 {
                        self.latch_time(Format::of(new));
                    }
                } else if old & B_SET != 0 {
                    self.commit_time(Format::of(old));
                }
                self.state.ram[slot] = new;
            }
            REG_C | REG_D => {}
            _ if TIME_REGISTERS.contains(&register) => {
                if self.set_active() {
                    self.state.ram[slot] = value;
                } else {
                    let format = self.format();
                    self.latch_time(format);
                    self.state.ram[slot] = value;
                    self.commit_time(format);
                }
            }
            _ => self.state.ram[slot] = value,
        }
    }
}

impl PioDevice for CmosDevice {
    fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
        for (port, byte) in (u32::from(offset)..).zip(data.iter_mut()) {
            *byte = if port == u32::from(DATA_OFFSET) {
                self.read_register(self.state.index)
            } else {
                // The index port is write-only; nothing else is decoded.
                0xff
            };
        }
    }

    fn pio_write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        for (port, &value) in (u32::from(offset)..).zip(data) {
            if port == u32::from(INDEX_OFFSET) {
                self.state.index = value & INDEX_MASK;
                self.state.nmi_disabled = value & INDEX_NMI_DISABLE != 0;
            } else if port == u32::from(DATA_OFFSET) {
                self.write_register(self.state.index, value);
            }
        }
        DeviceAction::None
    }
}

impl Persist for CmosDevice {
    type State = CmosState;
    type ConstructorArgs = WallClock;

    fn save(&self) -> CmosState {
        self.state.clone()
    }

    fn restore(clock: WallClock, state: &CmosState) -> Result<Self, PersistError> {
        state.validate()?;
        Ok(CmosDevice {
            state: state.clone(),
            clock,
        })
    }
}

impl RestoreInPlace for CmosDevice {
    fn restore_in_place(&mut self, state: &CmosState) -> Result<(), PersistError> {
        state.validate()?;
        self.state.clone_from(state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::test_rng::TestRng;

    /// 2026-11-22 19:00:29 UTC, a Sunday.
    const NOW: i64 = 1_795_374_029;

    /// A device on a clock the test moves.
    fn device_at(now: i64) -> (CmosDevice, Arc<AtomicI64>) {
        let time = Arc::new(AtomicI64::new(now));
        let clock = time.clone();
        let device = CmosDevice::restore(
            Box::new(move || clock.load(Ordering::SeqCst)),
            &CmosState::default(),
        )
        .unwrap();
        (device, time)
    }

    fn read(device: &mut CmosDevice, register: u8) -> u8 {
        device.pio_write(INDEX_OFFSET, &[register]);
        let mut data = [0];
        device.pio_read(DATA_OFFSET, &mut data);
        data[0]
    }

    fn write(device: &mut CmosDevice, register: u8, value: u8) {
        // One 16-bit access: index then data, as `outw` to 0x70 does.
        device.pio_write(INDEX_OFFSET, &[register, value]);
    }

    fn time_registers(device: &mut CmosDevice) -> Vec<u8> {
        TIME_REGISTERS.iter().map(|&r| read(device, r)).collect()
    }

    #[test]
    fn power_up_reads_the_wall_clock_in_bcd_24_hour() {
        let (mut device, _) = device_at(NOW);
        assert_eq!(
            time_registers(&mut device),
            vec![0x29, 0x00, 0x19, 0x01, 0x22, 0x11, 0x26, 0x20]
        );
        assert_eq!(read(&mut device, REG_A), DEFAULT_A);
        assert_eq!(read(&mut device, REG_B), B_24_HOUR);
        assert_eq!(read(&mut device, REG_C), 0);
        assert_eq!(read(&mut device, REG_D), 0x80);
    }

    #[test]
    fn binary_and_12_hour_formats() {
        let (mut device, _) = device_at(NOW);
        write(&mut device, REG_B, B_BINARY);
        assert_eq!(read(&mut device, REG_HOURS), 7 | HOUR_PM);
        assert_eq!(read(&mut device, REG_YEAR), 26);
        assert_eq!(read(&mut device, REG_CENTURY), 20);
        assert_eq!(read(&mut device, REG_DAY_OF_MONTH), 22);
        write(&mut device, REG_B, 0);
        assert_eq!(read(&mut device, REG_HOURS), 0x07 | HOUR_PM);
        let format = Format::of(0);
        for hour in 0..24 {
            assert_eq!(format.decode_hour(format.encode_hour(hour)), Some(hour));
        }
        assert_eq!(format.encode_hour(0), 0x12, "midnight is 12 AM");
        assert_eq!(format.encode_hour(12), 0x12 | HOUR_PM, "noon is 12 PM");
    }

    #[test]
    fn the_clock_follows_the_wall_clock() {
        let (mut device, time) = device_at(NOW);
        time.store(NOW + 31, Ordering::SeqCst);
        assert_eq!(read(&mut device, REG_SECONDS), 0x00);
        assert_eq!(read(&mut device, REG_MINUTES), 0x01);
    }

    /// mc146818_set_time(): SET, write every field, clear SET.
    #[test]
    fn guest_sets_the_time_with_the_set_bit() {
        let (mut device, time) = device_at(NOW);
        let control = read(&mut device, REG_B);
        write(&mut device, REG_B, control | B_SET);
        // The latched time does not move while SET is on.
        time.store(NOW + 5, Ordering::SeqCst);
        assert_eq!(read(&mut device, REG_SECONDS), 0x29);
        // 1999-12-31 23:59:58; the date passes through 2026-02-31 on the way, which must not
        // matter while SET is on.
        for (register, value) in [
            (REG_SECONDS, 0x58),
            (REG_MINUTES, 0x59),
            (REG_HOURS, 0x23),
            (REG_DAY_OF_MONTH, 0x31),
            (REG_MONTH, 0x02),
            (REG_MONTH, 0x12),
            (REG_YEAR, 0x99),
            (REG_CENTURY, 0x19),
        ] {
            write(&mut device, register, value);
        }
        write(&mut device, REG_B, control);
        assert_eq!(
            time_registers(&mut device),
            vec![0x58, 0x59, 0x23, 0x06, 0x31, 0x12, 0x99, 0x19]
        );
        time.store(NOW + 7, Ordering::SeqCst);
        assert_eq!(
            time_registers(&mut device),
            vec![0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20],
            "two seconds later it is 2000-01-01, a Saturday"
        );
        assert_eq!(device.save().clock_offset_seconds, 946_684_798 - (NOW + 5));
    }

    #[test]
    fn a_field_written_without_set_takes_effect_at_once() {
        let (mut device, _) = device_at(NOW);
        write(&mut device, REG_YEAR, 0x30);
        assert_eq!(read(&mut device, REG_YEAR), 0x30);
        assert_eq!(read(&mut device, REG_MONTH), 0x11);
        assert_eq!(
            read(&mut device, REG_DAY_OF_WEEK),
            0x06,
            "2030-11-22 is a Friday"
        );
    }

    #[test]
    fn invalid_times_are_not_taken() {
        let (mut device, _) = device_at(NOW);
        for (register, value) in [
            (REG_MONTH, 0x13),
            (REG_MONTH, 0x00),
            (REG_SECONDS, 0x60),
            (REG_HOURS, 0x24),
            (REG_MINUTES, 0x5a),
            (REG_DAY_OF_MONTH, 0x31),
        ] {
            write(&mut device, register, value);
            assert_eq!(
                device.save().clock_offset_seconds,
                0,
                "{register:#x}={value:#x}"
            );
        }
    }

    #[test]
    fn plain_memory_status_registers_and_the_index_port() {
        let (mut device, _) = device_at(NOW);
        write(&mut device, 0x40, 0xab);
        assert_eq!(read(&mut device, 0x40), 0xab);
        write(&mut device, REG_A, 0xff);
        assert_eq!(read(&mut device, REG_A), 0x7f, "UIP is never set");
        write(&mut device, REG_C, 0xff);
        write(&mut device, REG_D, 0x00);
        assert_eq!(read(&mut device, REG_C), 0);
        assert_eq!(read(&mut device, REG_D), D_VALID);
        // Bit 7 of the index is the NMI mask, not part of the register number.
        device.pio_write(INDEX_OFFSET, &[0x80 | 0x40]);
        assert!(device.save().nmi_disabled);
        let mut data = [0u8; 2];
        device.pio_read(INDEX_OFFSET, &mut data);
        assert_eq!(
            data,
            [0xff, 0xab],
            "index port reads all ones, data the register"
        );
    }

    #[test]
    fn memory_size_fields_describe_the_ram() {
        let state = CmosState::with_ram_size(3 << 30, 2 << 30);
        let ram = &state.ram;
        let word = |at: usize| u16::from_le_bytes([ram[at], ram[at + 1]]);
        assert_eq!(word(0x15), 640);
        assert_eq!(word(0x17), 0xffff, "capped at 64 MiB");
        assert_eq!(word(0x30), 0xffff);
        assert_eq!(word(0x34), 0xbf00, "3 GiB - 16 MiB in 64 KiB units");
        assert_eq!(
            u32::from_le_bytes([ram[0x5b], ram[0x5c], ram[0x5d], 0]),
            (2u32 << 30) >> 16
        );
        let small = CmosState::with_ram_size(32 << 20, 0);
        let word = |at: usize| u16::from_le_bytes([small.ram[at], small.ram[at + 1]]);
        assert_eq!(word(0x17), 31 * 1024);
        assert_eq!(word(0x34), 256, "16 MiB above 16 MiB, in 64 KiB units");
        assert_eq!(&small.ram[0x5b..0x5e], &[0, 0, 0]);
        small.validate().unwrap();
    }

    #[test]
    fn state_round_trips_without_rolling_back_the_clock() {
        let (mut device, time) = device_at(NOW);
        write(&mut device, REG_YEAR, 0x30);
        write(&mut device, 0x50, 0x12);
        device.pio_write(INDEX_OFFSET, &[REG_MINUTES]);
        let saved = device.save();
        saved.validate().unwrap();
        let encoded = postcard::to_stdvec(&saved).unwrap();
        assert_eq!(postcard::from_bytes::<CmosState>(&encoded).unwrap(), saved);

        write(&mut device, REG_YEAR, 0x40);
        write(&mut device, 0x50, 0x00);
        time.store(NOW + 3600, Ordering::SeqCst);
        device.restore_in_place(&saved).unwrap();
        assert_eq!(device.save(), saved);
        assert_eq!(read(&mut device, 0x50), 0x12);
        assert_eq!(read(&mut device, REG_YEAR), 0x30);
        assert_eq!(
            read(&mut device, REG_HOURS),
            0x20,
            "an hour later on the wall clock is an hour later in the guest"
        );
        let clock = time.clone();
        let mut rebuilt =
            CmosDevice::restore(Box::new(move || clock.load(Ordering::SeqCst)), &saved).unwrap();
        assert_eq!(rebuilt.save(), saved);
        let mut data = [0];
        rebuilt.pio_read(DATA_OFFSET, &mut data);
        assert_eq!(data, [0x00], "the selected register (minutes) survives");
    }

    #[test]
    fn invalid_states_are_rejected() {
        let (mut device, _) = device_at(NOW);
        let mut short = CmosState::default();
        short.ram.truncate(64);
        let mut uip = CmosState::default();
        uip.ram[usize::from(REG_A)] |= A_UIP;
        let bad = [
            short,
            uip,
            CmosState {
                index: 0x80,
                ..Default::default()
            },
            CmosState {
                clock_offset_seconds: i64::MIN,
                ..Default::default()
            },
        ];
        for state in bad {
            assert!(CmosDevice::restore(host_wall_clock(), &state).is_err());
            assert!(device.restore_in_place(&state).is_err());
            assert_eq!(device.save(), CmosState::default());
        }
    }

    #[test]
    fn host_clock_reads_a_plausible_time() {
        assert!(host_wall_clock()() > 1_700_000_000);
    }

    #[test]
    fn random_traffic_never_panics_and_keeps_the_state_valid() {
        let (mut device, time) = device_at(NOW);
        let mut rng = TestRng::new(0x70);
        for _ in 0..50_000 {
            let offset = (rng.next_u64() % 3) as u16;
            let len = [1usize, 2, 4][(rng.next_u64() % 3) as usize];
            if rng.one_in(64) {
                time.store(rng.next_u32() as i64 * 4, Ordering::SeqCst);
            }
            if rng.one_in(2) {
                let mut data = vec![0; len];
                device.pio_read(offset, &mut data);
            } else {
                assert_eq!(
                    device.pio_write(offset, &rng.next_u32().to_le_bytes()[..len]),
                    DeviceAction::None
                );
            }
            device.save().validate().unwrap();
        }
    }
}
