//! The snapshot device (PCI 1234:f987, default 00:04.0): the guest's interface to snapshots and
//! fuzzing. The contract is `shared/design/device-abi.md` (version 1); `docs/snapshot-device.md`
//! documents it as implemented here, extensions included.
//!
//! BARs:
//! - BAR0: registers, 32-bit non-prefetchable memory, 1 MiB. Accesses trap to the VMM and reach
//!   [`SnapshotDevice`] through [`PciBus::mmio_read`](crate::pci::PciBus::mmio_read) /
//!   [`mmio_write`](crate::pci::PciBus::mmio_write).
//! - BAR2: the input, 64-bit prefetchable memory, 1 MiB by default.
//! - BAR4: the coverage map, 64-bit prefetchable memory, 64 KiB by default.
//!
//! BAR2 and BAR4 are [`BarMemory`] (memfds) that the VMM maps as memslots wherever the guest's BARs
//! are decoded (the `BarsRelocated` actions say where); an access that still traps, before the
//! memslot exists, is served from the same memory.
//!
//! BAR0 register map (little-endian, 32-bit registers; R = read, W = write):
//!
//! | offset | name          | access | meaning |
//! |--------|---------------|--------|---------|
//! | 0x00   | MAGIC         | R      | [`MAGIC`] = 0x534e4150 ("SNAP" read as a big-endian word) |
//! | 0x00   | COMMAND       | W      | [`CMD_SAVE`] 0x101, [`CMD_RESTORE`] 0x102, [`CMD_CRASH`] 0x103, [`CMD_DONE`] 0x104, [`CMD_EXCEPTION`] 0x106 |
//! | 0x04   | STATUS        | R      | bit 0 snapshot exists, bit 1 RAM capture running, bit 2 last command failed |
//! | 0x08   | RESTORES_LO   | R      | restores since the current snapshot was taken, low half |
//! | 0x0c   | RESTORES_HI   | R      | high half |
//! | 0x10   | INPUT_LEN     | R      | bytes of input in BAR2 |
//! | 0x14   | ARG           | R/W    | argument of the next command (a crash code) |
//! | 0x18   | ABI_VERSION   | R      | [`ABI_VERSION`] = 1 |
//! | 0x1c   | INPUT_SIZE    | R      | size of BAR2 in bytes (extension) |
//! | 0x20   | COVERAGE_SIZE | R      | size of BAR4 in bytes (extension) |
//! | 0x24   | FAULT_PC_LO   | R/W    | guest address the next CRASH/EXCEPTION is attributed to, low half (extension) |
//! | 0x28   | FAULT_PC_HI   | R/W    | high half (extension) |
//!
//! Register mirror (extension): BAR0 offset [`REGISTER_MIRROR_OFFSET`] (0x1000) is a page of
//! memory holding, at their register offsets, copies of the registers only the host changes:
//! MAGIC, INPUT_LEN, ABI_VERSION, INPUT_SIZE and COVERAGE_SIZE (every other word reads 0). The VMM
//! maps it read-only when KVM can, so a fuzz target reads INPUT_LEN once per run without a VM exit;
//! otherwise the reads trap and are answered with the same values. A guest finds it by reading
//! MAGIC at 0x1000 (an older device reads 0 there). Writes to it are ignored.
//!
//! Other widths and offsets: a read returns, byte by byte, the bytes of the registers it covers (0
//! for undefined offsets). A write is split into the 32-bit registers it touches: ARG takes any of
//! its bytes; COMMAND acts only when all four of its bytes are written; every other register (and
//! a partial COMMAND write) ignores the write and counts it in
//! [`SnapshotDeviceStatistics::ignored_writes`].
//!
//! A COMMAND write clears STATUS bit 2, then: SAVE, CRASH, DONE and EXCEPTION always become a
//! [`DeviceAction::Snapshot`]; RESTORE does too if a snapshot exists, else it sets STATUS bit 2
//! and nothing happens; an unknown value sets STATUS bit 2 and is counted. The VMM sets bit 2 when
//! it fails to carry a command out.
//!
//! What a restore rolls back ([`SnapshotDeviceState`]): the PCI config space and ARG. What it does
//! not (host state): STATUS, RESTORES, INPUT_LEN, FAULT_PC, BAR2 and BAR4 contents, statistics.

mod bar_memory;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use snapshot::{Persist, PersistError};
use thiserror::Error;

pub use bar_memory::{BarMemory, BarMemoryError};

use crate::pci::{
    BarDefinition, BarKind, PciBar, PciConfigSpace, PciConfigState, PciDevice, PciError, PciHeader,
    BAR_COUNT, MIN_BAR_SIZE,
};
use crate::{DeviceAction, RestoreInPlace};

pub const SNAPSHOT_DEVICE_VENDOR_ID: u16 = 0x1234;
pub const SNAPSHOT_DEVICE_DEVICE_ID: u16 = 0xf987;
/// Class 0xff (unassigned), subclass 0, prog-if 0.
pub const SNAPSHOT_DEVICE_CLASS: u8 = 0xff;
pub const SNAPSHOT_DEVICE_REVISION: u8 = 1;
/// Subsystem 1234:0001 names snapvmm's implementation of the device (QEMU's RFC device has 0:0).
pub const SNAPSHOT_DEVICE_SUBSYSTEM_VENDOR_ID: u16 = 0x1234;
pub const SNAPSHOT_DEVICE_SUBSYSTEM_ID: u16 = 0x0001;
/// The slot the ABI names; the VMM may plug the device elsewhere.
pub const SNAPSHOT_DEVICE_DEFAULT_SLOT: u8 = 4;

/// BAR numbers.
pub const REGISTERS_BAR: usize = 0;
pub const INPUT_BAR: usize = 2;
pub const COVERAGE_BAR: usize = 4;
pub const REGISTERS_BAR_SIZE: u64 = 1 << 20;
pub const DEFAULT_INPUT_SIZE: usize = 1 << 20;
pub const DEFAULT_COVERAGE_SIZE: usize = 64 << 10;
/// Smallest BAR2/BAR4: one page, so that it can be a memslot.
pub const MIN_BUFFER_SIZE: usize = MIN_BAR_SIZE as usize;
/// Largest BAR2/BAR4: both at this size plus BAR0 still fit the 32-bit MMIO hole (just under
/// 1 GiB) that the VMM assigns BARs in. It also keeps INPUT_LEN a 32-bit register.
pub const MAX_BUFFER_SIZE: usize = 256 << 20;

/// Register offsets in BAR0.
pub const REG_MAGIC: u64 = 0x00;
pub const REG_COMMAND: u64 = 0x00;
pub const REG_STATUS: u64 = 0x04;
pub const REG_RESTORES_LO: u64 = 0x08;
pub const REG_RESTORES_HI: u64 = 0x0c;
pub const REG_INPUT_LEN: u64 = 0x10;
pub const REG_ARG: u64 = 0x14;
pub const REG_ABI_VERSION: u64 = 0x18;
pub const REG_INPUT_SIZE: u64 = 0x1c;
pub const REG_COVERAGE_SIZE: u64 = 0x20;
pub const REG_FAULT_PC_LO: u64 = 0x24;
pub const REG_FAULT_PC_HI: u64 = 0x28;
/// Where in BAR0 the register mirror page starts, and its size.
pub const REGISTER_MIRROR_OFFSET: u64 = 0x1000;
pub const REGISTER_MIRROR_SIZE: usize = 0x1000;
/// The registers the mirror page copies.
const MIRRORED_REGISTERS: [u64; 5] = [
    REG_MAGIC,
    REG_INPUT_LEN,
    REG_ABI_VERSION,
    REG_INPUT_SIZE,
    REG_COVERAGE_SIZE,
];

/// What MAGIC reads: "SNAP" as a big-endian word (the bytes in memory are "PANS").
pub const MAGIC: u32 = 0x534e_4150;
pub const ABI_VERSION: u32 = 1;

pub const STATUS_SNAPSHOT_EXISTS: u32 = 1 << 0;
pub const STATUS_CAPTURE_RUNNING: u32 = 1 << 1;
pub const STATUS_COMMAND_FAILED: u32 = 1 << 2;

/// Take the snapshot here (ABI).
pub const CMD_SAVE: u32 = 0x101;
/// Roll the VM back to the snapshot (ABI).
pub const CMD_RESTORE: u32 = 0x102;
/// The guest found a bug, ARG = code: record the input as a crash, then restore (ABI).
pub const CMD_CRASH: u32 = 0x103;
/// Extension: the run ended normally, ARG = a result code: the harness takes the coverage, puts
/// the next input in BAR2 and restores. Without a harness it means RESTORE.
pub const CMD_DONE: u32 = 0x104;
/// Extension: the guest's runtime caught a CPU exception of the target, ARG = the vector (0-31),
/// FAULT_PC = the faulting instruction: the harness records a crash, then restores. 0x105 stays
/// undefined (see docs/snapshot-device.md).
pub const CMD_EXCEPTION: u32 = 0x106;

/// A command the guest wrote, for the VMM to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotCommand {
    Save,
    Restore,
    Crash {
        code: u32,
    },
    Done {
        code: u32,
    },
    /// The runtime caught CPU exception `vector`; [`SnapshotDevice::command_pc`] says where.
    Exception {
        vector: u32,
    },
}

#[derive(Debug, Error)]
pub enum SnapshotDeviceError {
    #[error("{what} size {size:#x} is not a power of two in {MIN_BUFFER_SIZE:#x}..={MAX_BUFFER_SIZE:#x}")]
    BadBufferSize { what: &'static str, size: usize },
    #[error(transparent)]
    Memory(#[from] BarMemoryError),
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error(transparent)]
    State(#[from] PersistError),
}

/// Sizes of the host-memory BARs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotDeviceConfig {
    /// BAR2, bytes: a power of two in [`MIN_BUFFER_SIZE`]..=[`MAX_BUFFER_SIZE`].
    pub input_size: usize,
    /// BAR4, bytes: same rule.
    pub coverage_size: usize,
}

impl Default for SnapshotDeviceConfig {
    fn default() -> Self {
        SnapshotDeviceConfig {
            input_size: DEFAULT_INPUT_SIZE,
            coverage_size: DEFAULT_COVERAGE_SIZE,
        }
    }
}

impl SnapshotDeviceConfig {
    pub fn validate(&self) -> Result<(), SnapshotDeviceError> {
        check_buffer_size("input (BAR2)", self.input_size)?;
        check_buffer_size("coverage (BAR4)", self.coverage_size)
    }

    /// The device's identity and BAR layout for these sizes.
    pub fn pci_header(&self) -> PciHeader {
        let memory64 = |size: usize| BarDefinition {
            kind: BarKind::Memory64 { prefetchable: true },
            size: size as u64,
        };
        let mut bars = [None; BAR_COUNT];
        bars[REGISTERS_BAR] = Some(BarDefinition {
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
            size: REGISTERS_BAR_SIZE,
        });
        bars[INPUT_BAR] = Some(memory64(self.input_size));
        bars[COVERAGE_BAR] = Some(memory64(self.coverage_size));
        PciHeader {
            vendor_id: SNAPSHOT_DEVICE_VENDOR_ID,
            device_id: SNAPSHOT_DEVICE_DEVICE_ID,
            revision: SNAPSHOT_DEVICE_REVISION,
            prog_if: 0,
            subclass: 0,
            class: SNAPSHOT_DEVICE_CLASS,
            subsystem_vendor_id: SNAPSHOT_DEVICE_SUBSYSTEM_VENDOR_ID,
            subsystem_id: SNAPSHOT_DEVICE_SUBSYSTEM_ID,
            interrupt_pin: 0,
            bars,
        }
    }
}

fn check_buffer_size(what: &'static str, size: usize) -> Result<(), SnapshotDeviceError> {
    if size.is_power_of_two() && (MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(SnapshotDeviceError::BadBufferSize { what, size })
    }
}

/// The host memory the device is built around (not state: a restore keeps using the same
/// buffers, so memslots stay valid).
#[derive(Clone, Debug)]
pub struct SnapshotDeviceArgs {
    pub input: Arc<BarMemory>,
    pub coverage: Arc<BarMemory>,
    pub register_mirror: Arc<BarMemory>,
}

impl SnapshotDeviceArgs {
    /// Fresh, zeroed buffers of the configured sizes.
    pub fn allocate(config: &SnapshotDeviceConfig) -> Result<Self, SnapshotDeviceError> {
        config.validate()?;
        Ok(SnapshotDeviceArgs {
            input: Arc::new(BarMemory::new(c"snapvmm-input", config.input_size)?),
            coverage: Arc::new(BarMemory::new(c"snapvmm-coverage", config.coverage_size)?),
            register_mirror: Arc::new(BarMemory::new(
                c"snapvmm-register-mirror",
                REGISTER_MIRROR_SIZE,
            )?),
        })
    }

    fn config(&self) -> SnapshotDeviceConfig {
        SnapshotDeviceConfig {
            input_size: self.input.len(),
            coverage_size: self.coverage.len(),
        }
    }
}

/// What a snapshot holds of the device: what the guest programmed. The BAR sizes are recorded so
/// that a snapshot cannot be restored into a device whose BARs differ from what the guest saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDeviceState {
    pub input_size: u64,
    pub coverage_size: u64,
    pub pci: PciConfigState,
    pub arg: u32,
}

impl Default for SnapshotDeviceState {
    /// Power-on state of a device with the default configuration.
    fn default() -> Self {
        Self::power_on(&SnapshotDeviceConfig::default())
    }
}

impl SnapshotDeviceState {
    /// Power-on state of a device with `config`: what cold boot restores from.
    pub fn power_on(config: &SnapshotDeviceConfig) -> Self {
        SnapshotDeviceState {
            input_size: config.input_size as u64,
            coverage_size: config.coverage_size as u64,
            pci: PciConfigState::default(),
            arg: 0,
        }
    }

    /// Checks the state against the device it is restored into.
    pub fn validate(&self, config: &SnapshotDeviceConfig) -> Result<(), PersistError> {
        let sizes = (config.input_size as u64, config.coverage_size as u64);
        if (self.input_size, self.coverage_size) != sizes {
            return Err(PersistError::invalid(
                "snapshot device",
                format!(
                    "saved with BAR2/BAR4 sizes {:#x}/{:#x}, the device has {:#x}/{:#x}",
                    self.input_size, self.coverage_size, sizes.0, sizes.1
                ),
            ));
        }
        self.pci.validate(&config.pci_header())
    }
}

/// Counters of unusual guest behaviour, for the VMM's logs and the harness's sanity checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotDeviceStatistics {
    /// Commands handed to the VMM as actions.
    pub commands: u64,
    /// COMMAND writes of a value that names no command.
    pub unknown_commands: u64,
    /// RESTOREs written while no snapshot existed.
    pub restores_without_snapshot: u64,
    /// Writes to registers that take none (read-only, undefined, or COMMAND written partially),
    /// one per 32-bit register touched.
    pub ignored_writes: u64,
    /// BAR2/BAR4 accesses that trapped instead of going to a memslot: non-zero means the VMM has
    /// not mapped the buffers where the guest has them (correct, but slow).
    pub trapped_buffer_accesses: u64,
}

/// The snapshot device. Share it between the PCI bus and the VMM/harness as
/// `Arc<Mutex<SnapshotDevice>>`, which is a [`PciDevice`] too.
pub struct SnapshotDevice {
    config_space: PciConfigSpace,
    input: Arc<BarMemory>,
    coverage: Arc<BarMemory>,
    /// BAR0's register mirror page (host state).
    register_mirror: Arc<BarMemory>,
    /// Guest state (rolled back by a restore).
    arg: u32,
    /// Host state (never rolled back).
    snapshot_exists: bool,
    capture_running: bool,
    last_command_failed: bool,
    restores: u64,
    input_len: u32,
    /// FAULT_PC: consumed (and cleared) by the next command.
    fault_pc: u64,
    /// FAULT_PC as the last command found it.
    command_pc: u64,
    /// Bytes of BAR2 the last `set_input` wrote: the next one zeroes what it does not overwrite.
    input_written: usize,
    statistics: SnapshotDeviceStatistics,
}

impl SnapshotDevice {
    /// A device in its power-on state with fresh buffers (the same path as a restore).
    pub fn new(config: &SnapshotDeviceConfig) -> Result<Self, SnapshotDeviceError> {
        let args = SnapshotDeviceArgs::allocate(config)?;
        Ok(SnapshotDevice::restore(
            args,
            &SnapshotDeviceState::power_on(config),
        )?)
    }

    pub fn config(&self) -> SnapshotDeviceConfig {
        SnapshotDeviceConfig {
            input_size: self.input.len(),
            coverage_size: self.coverage.len(),
        }
    }

    /// BAR2's memory: map it at BAR2's address (`host_addr()`, `len()`).
    pub fn input_memory(&self) -> &Arc<BarMemory> {
        &self.input
    }

    /// BAR4's memory.
    pub fn coverage_memory(&self) -> &Arc<BarMemory> {
        &self.coverage
    }

    /// BAR0's register mirror page: the VMM maps it read-only at BAR0 + [`REGISTER_MIRROR_OFFSET`].
    pub fn register_mirror_memory(&self) -> &Arc<BarMemory> {
        &self.register_mirror
    }

    /// The host memory behind BAR `bar`, if it is one of the memslot-backed BARs (2 and 4): what
    /// the VMM maps when a `BarRelocation` for this device names that BAR.
    pub fn bar_memory(&self, bar: usize) -> Option<&Arc<BarMemory>> {
        match bar {
            INPUT_BAR => Some(&self.input),
            COVERAGE_BAR => Some(&self.coverage),
            _ => None,
        }
    }

    pub fn set_snapshot_exists(&mut self, exists: bool) {
        self.snapshot_exists = exists;
    }

    pub fn set_capture_running(&mut self, running: bool) {
        self.capture_running = running;
    }

    /// The VMM could not carry out the last command (or it succeeded after all).
    pub fn set_last_command_failed(&mut self, failed: bool) {
        self.last_command_failed = failed;
    }

    /// A snapshot was taken: it exists, and no restore has been done from it yet.
    pub fn record_save(&mut self) {
        self.snapshot_exists = true;
        self.reset_restores();
    }

    /// A restore was done: RESTORES counts it.
    pub fn record_restore(&mut self) {
        self.restores = self.restores.saturating_add(1);
    }

    pub fn reset_restores(&mut self) {
        self.restores = 0;
    }

    pub fn restores(&self) -> u64 {
        self.restores
    }

    /// The STATUS register as the guest reads it.
    pub fn status(&self) -> u32 {
        let bit = |set: bool, bit: u32| if set { bit } else { 0 };
        bit(self.snapshot_exists, STATUS_SNAPSHOT_EXISTS)
            | bit(self.capture_running, STATUS_CAPTURE_RUNNING)
            | bit(self.last_command_failed, STATUS_COMMAND_FAILED)
    }

    /// The guest address the last command (a CRASH or EXCEPTION) was attributed to through
    /// FAULT_PC; 0 when the guest wrote none.
    pub fn command_pc(&self) -> u64 {
        self.command_pc
    }

    /// ARG as the guest last wrote it.
    pub fn arg(&self) -> u32 {
        self.arg
    }

    /// Copies the next input into BAR2 (truncated to its size), zeroes whatever the previous
    /// input left beyond it, and sets INPUT_LEN. Returns the bytes taken.
    pub fn set_input(&mut self, input: &[u8]) -> usize {
        let taken = input.len().min(self.input.len());
        let stale = self.input_written.saturating_sub(taken);
        // Both ranges fit by construction: `taken` and `input_written` are at most the size.
        let written = self.input.write(0, &input[..taken]);
        let zeroed = self.input.fill(taken as u64, stale, 0);
        debug_assert!(written.is_ok() && zeroed.is_ok());
        self.input_written = taken;
        // At most MAX_BUFFER_SIZE.
        self.input_len = u32::try_from(taken).unwrap_or(u32::MAX);
        self.update_mirror(REG_INPUT_LEN);
        taken
    }

    /// Copies register `offset` into the mirror page.
    fn update_mirror(&self, offset: u64) {
        let value = self.read_register(offset);
        // Every mirrored offset lies inside the page.
        let written = self.register_mirror.write(offset, &value.to_le_bytes());
        debug_assert!(written.is_ok());
    }

    /// INPUT_LEN as the guest reads it.
    pub fn input_len(&self) -> u32 {
        self.input_len
    }

    /// A copy of the coverage map.
    pub fn coverage(&self) -> Vec<u8> {
        self.coverage.to_vec()
    }

    /// Copies the start of the coverage map into `out`; returns the bytes copied.
    pub fn copy_coverage(&self, out: &mut [u8]) -> usize {
        let len = out.len().min(self.coverage.len());
        match self.coverage.read(0, &mut out[..len]) {
            Ok(()) => len,
            Err(_) => 0,
        }
    }

    pub fn clear_coverage(&self) {
        self.coverage.clear();
    }

    pub fn statistics(&self) -> SnapshotDeviceStatistics {
        self.statistics
    }

    /// Register at (4-aligned) `offset` of BAR0 as the guest reads it.
    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC,
            REG_STATUS => self.status(),
            REG_RESTORES_LO => self.restores as u32,
            REG_RESTORES_HI => (self.restores >> 32) as u32,
            REG_INPUT_LEN => self.input_len,
            REG_ARG => self.arg,
            REG_ABI_VERSION => ABI_VERSION,
            // Both at most MAX_BUFFER_SIZE.
            REG_INPUT_SIZE => self.input.len() as u32,
            REG_COVERAGE_SIZE => self.coverage.len() as u32,
            REG_FAULT_PC_LO => self.fault_pc as u32,
            REG_FAULT_PC_HI => (self.fault_pc >> 32) as u32,
            // The mirror page, when its accesses trap: what the page holds.
            mirror
                if (REGISTER_MIRROR_OFFSET
                    ..REGISTER_MIRROR_OFFSET + REGISTER_MIRROR_SIZE as u64)
                    .contains(&mirror) =>
            {
                let register = mirror - REGISTER_MIRROR_OFFSET;
                if MIRRORED_REGISTERS.contains(&register) {
                    self.read_register(register)
                } else {
                    0
                }
            }
            _ => 0,
        }
    }

    fn read_registers(&self, offset: u64, data: &mut [u8]) {
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = match offset.checked_add(index as u64) {
                Some(address) => {
                    let register = self.read_register(address & !3);
                    register.to_le_bytes()[(address & 3) as usize]
                }
                None => 0,
            };
        }
    }

    /// Splits a write into the 32-bit registers it touches.
    fn write_registers(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let mut action = DeviceAction::None;
        // (register offset, byte mask, value) of the register being assembled.
        let mut pending: Option<(u64, u8, u32)> = None;
        for (index, &byte) in data.iter().enumerate() {
            let Some(address) = offset.checked_add(index as u64) else {
                break;
            };
            let (register, lane) = (address & !3, (address & 3) as u32);
            match &mut pending {
                Some((current, mask, value)) if *current == register => {
                    *mask |= 1 << lane;
                    *value |= u32::from(byte) << (8 * lane);
                }
                _ => {
                    if let Some((register, mask, value)) = pending {
                        action = either(self.write_register(register, mask, value), action);
                    }
                    pending = Some((register, 1 << lane, u32::from(byte) << (8 * lane)));
                }
            }
        }
        if let Some((register, mask, value)) = pending {
            action = either(self.write_register(register, mask, value), action);
        }
        action
    }

    /// Writes the bytes of `value` selected by `byte_mask` to the register at `offset`.
    fn write_register(&mut self, offset: u64, byte_mask: u8, value: u32) -> DeviceAction {
        match offset {
            REG_COMMAND if byte_mask == 0b1111 => self.execute(value),
            REG_ARG => {
                self.arg = merge_lanes(self.arg, byte_mask, value);
                DeviceAction::None
            }
            REG_FAULT_PC_LO | REG_FAULT_PC_HI => {
                let shift = if offset == REG_FAULT_PC_HI { 32 } else { 0 };
                let half = merge_lanes((self.fault_pc >> shift) as u32, byte_mask, value);
                self.fault_pc = self.fault_pc & !(0xffff_ffff << shift) | u64::from(half) << shift;
                DeviceAction::None
            }
            _ => {
                self.statistics.ignored_writes = self.statistics.ignored_writes.saturating_add(1);
                DeviceAction::None
            }
        }
    }

    fn execute(&mut self, command: u32) -> DeviceAction {
        self.last_command_failed = false;
        let command = match command {
            CMD_SAVE => SnapshotCommand::Save,
            CMD_RESTORE if self.snapshot_exists => SnapshotCommand::Restore,
            CMD_RESTORE => {
                self.last_command_failed = true;
                let count = &mut self.statistics.restores_without_snapshot;
                *count = count.saturating_add(1);
                return DeviceAction::None;
            }
            CMD_CRASH => SnapshotCommand::Crash { code: self.arg },
            CMD_DONE => SnapshotCommand::Done { code: self.arg },
            CMD_EXCEPTION => SnapshotCommand::Exception { vector: self.arg },
            _ => {
                self.last_command_failed = true;
                let count = &mut self.statistics.unknown_commands;
                *count = count.saturating_add(1);
                return DeviceAction::None;
            }
        };
        self.command_pc = std::mem::take(&mut self.fault_pc);
        self.statistics.commands = self.statistics.commands.saturating_add(1);
        DeviceAction::Snapshot(command)
    }

    fn count_trapped_buffer_access(&mut self) {
        let count = &mut self.statistics.trapped_buffer_accesses;
        *count = count.saturating_add(1);
    }
}

/// `old` with the bytes of `value` that `byte_mask` selects written over it.
fn merge_lanes(old: u32, byte_mask: u8, value: u32) -> u32 {
    let lanes = (0..4)
        .filter(|lane| byte_mask & (1 << lane) != 0)
        .fold(0u32, |lanes, lane| lanes | 0xff << (8 * lane));
    old & !lanes | value & lanes
}

/// `action` unless it is `None`, then `earlier`: what one access reports when it touched several
/// registers (only COMMAND produces actions, so at most one is not `None`).
fn either(action: DeviceAction, earlier: DeviceAction) -> DeviceAction {
    match action {
        DeviceAction::None => earlier,
        action => action,
    }
}

impl PciDevice for SnapshotDevice {
    fn config_read(&self, register: usize) -> u32 {
        self.config_space.read(register)
    }

    fn config_write(&mut self, register: usize, byte_mask: u8, value: u32) {
        self.config_space.write(register, byte_mask, value)
    }

    fn bars(&self) -> [Option<PciBar>; BAR_COUNT] {
        self.config_space.bars()
    }

    fn mmio_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == REGISTERS_BAR {
            return self.read_registers(offset, data);
        }
        let served = match self.bar_memory(bar) {
            Some(memory) => memory.read(offset, data).is_ok(),
            None => false,
        };
        if served {
            self.count_trapped_buffer_access();
        } else {
            data.fill(0xff);
        }
    }

    fn mmio_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> DeviceAction {
        if bar == REGISTERS_BAR {
            return self.write_registers(offset, data);
        }
        let served = match self.bar_memory(bar) {
            Some(memory) => memory.write(offset, data).is_ok(),
            None => false,
        };
        if served {
            self.count_trapped_buffer_access();
        }
        DeviceAction::None
    }
}

impl Persist for SnapshotDevice {
    type State = SnapshotDeviceState;
    type ConstructorArgs = SnapshotDeviceArgs;

    fn save(&self) -> SnapshotDeviceState {
        let mut state = SnapshotDeviceState::power_on(&self.config());
        state.pci = self.config_space.save();
        state.arg = self.arg;
        state
    }

    /// Builds the device around `args`' buffers; host state (STATUS, RESTORES, INPUT_LEN) starts
    /// cleared, the buffers keep their contents.
    fn restore(
        args: SnapshotDeviceArgs,
        state: &SnapshotDeviceState,
    ) -> Result<Self, PersistError> {
        let config = args.config();
        config
            .validate()
            .map_err(|error| PersistError::invalid("snapshot device", error.to_string()))?;
        state.validate(&config)?;
        let config_space = PciConfigSpace::restore(config.pci_header(), &state.pci)?;
        if args.register_mirror.len() != REGISTER_MIRROR_SIZE {
            return Err(PersistError::invalid(
                "snapshot device",
                format!(
                    "register mirror of {:#x} bytes, not {REGISTER_MIRROR_SIZE:#x}",
                    args.register_mirror.len()
                ),
            ));
        }
        let device = SnapshotDevice {
            config_space,
            input: args.input,
            coverage: args.coverage,
            register_mirror: args.register_mirror,
            arg: state.arg,
            snapshot_exists: false,
            capture_running: false,
            last_command_failed: false,
            restores: 0,
            input_len: 0,
            fault_pc: 0,
            command_pc: 0,
            input_written: 0,
            statistics: SnapshotDeviceStatistics::default(),
        };
        fill_register_mirror(&device);
        Ok(device)
    }
}

/// Fills the mirror page: the mirrored registers, zero elsewhere.
fn fill_register_mirror(device: &SnapshotDevice) {
    device.register_mirror.clear();
    for register in MIRRORED_REGISTERS {
        device.update_mirror(register);
    }
}

impl RestoreInPlace for SnapshotDevice {
    /// Rolls back the config space and ARG only. BARs may move: the VMM calls
    /// [`PciBus::sync_bars`](crate::pci::PciBus::sync_bars) afterwards to learn where.
    fn restore_in_place(&mut self, state: &SnapshotDeviceState) -> Result<(), PersistError> {
        state.validate(&self.config())?;
        self.config_space.restore_in_place(&state.pci)?;
        self.arg = state.arg;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
