//! QEMU 7.2 migration streams to and from snapvmm machines (the format itself is the
//! `qemu-migration` crate; this is the VMM side): a `MachineState` plus its RAM becomes a
//! `microvm` stream, and a `microvm`, `pc-i440fx-7.2` or `pc-q35-7.2` stream becomes a
//! `MachineState`, a RAM file laid out like snapvmm's RAM, and the firmware QEMU had mapped
//! outside RAM. Nothing here writes snapvmm's boot structures: an imported guest gets exactly the
//! memory and registers the stream carries.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use kvm_bindings::kvm_cpuid_entry2;
use qemu_migration::machine::ram_map::{
    GuestMemory as StreamMemory, GuestRamSink, GuestRamSource, MemoryRegionState,
};
use qemu_migration::{
    export_machine, export_machine_to_file, import_machine, ExportError, ExportParts, ImportError,
    ImportOptions, MachineType, RamAccessError, ReadLimits,
};
use thiserror::Error;

use crate::arch::layout::ram_ranges;
use crate::background_writer::{self, BackgroundWriter};
use crate::device_manager::{DeviceOptions, DeviceStates};
use crate::known_zero_pages::{KnownZeroPages, RamBacking};
use crate::machine_state::{DeviceLayout, MachineState, MachineStateError};
use crate::memory::{MAX_MEM_BYTES, MIN_MEM_BYTES};

const MSR_MCG_CAP: u32 = 0x179;
const MSR_MCG_CTL: u32 = 0x17b;
/// The stream's page size (records carry whole 4 KiB pages).
const STREAM_PAGE_SIZE: usize = 4096;

/// Firmware outside RAM larger than this is refused (QEMU's BIOS images are 128-256 KiB).
pub const MAX_FIRMWARE_BYTES: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum QemuStreamError {
    #[error("QEMU stream: {0}")]
    Import(#[from] ImportError),
    #[error("QEMU stream: {0}")]
    Export(#[from] ExportError),
    #[error("the stream's guest RAM ({0} bytes) is outside snapvmm's 16 MiB..64 GiB")]
    RamSize(u64),
    #[error(
        "the stream's RAM layout {0:?} is not snapvmm's (low RAM up to 3 GiB, the rest at 4 GiB)"
    )]
    Layout(Vec<(u64, u64)>),
    #[error("the imported machine is not valid for snapvmm: {0}")]
    State(#[from] MachineStateError),
    #[error("cannot create the RAM file for the imported guest: {0}")]
    RamFile(std::io::Error),
    #[error("cannot write the imported guest's RAM: {0}")]
    RamWrite(std::io::Error),
    #[error("cannot map the guest's memory: {0}")]
    Map(std::io::Error),
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    #[error("memory file has {found} bytes, the machine state says {expected}")]
    MemoryLength { found: u64, expected: u64 },
}

/// A piece of firmware QEMU mapped outside guest RAM (pc/q35's BIOS just below 4 GiB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareImage {
    pub guest_phys_addr: u64,
    pub bytes: Vec<u8>,
}

/// A stream loaded into snapvmm's terms.
#[derive(Debug)]
pub struct ImportedStream {
    pub machine: MachineType,
    pub state: MachineState,
    /// Guest RAM laid out as snapvmm's memory files are (low RAM, then the part above 4 GiB).
    pub memory: File,
    pub firmware: Vec<FirmwareImage>,
    /// The source was running (QEMU's destination would start the guest at once).
    pub running: bool,
    /// Sections of devices snapvmm does not have, parsed and dropped (`idstr/instance`).
    pub skipped_sections: Vec<String>,
}

/// Reads a QEMU stream from `input` (a pipe is fine); the vCPU gets `model`.
pub fn import_stream<R: Read>(
    input: R,
    model: &HostVcpuModel,
) -> Result<ImportedStream, QemuStreamError> {
    let mut memory = ImportMemory::default();
    let mut limits = ReadLimits::default();
    limits.ram.max_total_bytes = MAX_MEM_BYTES + MAX_FIRMWARE_BYTES;
    let options = ImportOptions {
        cpuid: model.cpuid.clone(),
        host_monotonic_ns: monotonic_ns(),
        limits,
    };
    let imported = {
        let mut sink = GuestRamSink::new(&mut memory).with_zeroed_memory();
        import_machine(input, &mut sink, &options)
    };
    let imported = match imported {
        Ok(imported) => imported,
        // The sink's own refusal names the real reason (size, layout); prefer it.
        Err(error) => return Err(memory.failure.take().unwrap_or(error.into())),
    };
    memory.sync().map_err(QemuStreamError::RamWrite)?;
    memory.writer.take();
    let Some(file) = memory.file.take() else {
        return Err(QemuStreamError::RamSize(0));
    };
    let mut firmware = std::mem::take(&mut memory.firmware);
    if imported.machine == MachineType::Microvm {
        firmware.extend(microvm_high_bios(
            &imported.ram_blocks,
            &file,
            imported.ram_bytes,
        ));
    }
    let mut vcpus = imported.vcpus.into_iter();
    let mut vcpu = vcpus.next().ok_or(QemuStreamError::RamSize(0))?;
    // MSRs this KVM does not have (QEMU's list is its CPU model's) cannot be restored here.
    vcpu.msrs.retain(|m| model.msr_indices.contains(&m.index));
    // MCG_CTL is writable only with the machine-check banks QEMU sets up (KVM_X86_SETUP_MCE,
    // MCG_CAP); snapvmm's vCPU has none, so the guest's machine-check state stays behind.
    if !vcpu.msrs.iter().any(|m| m.index == MSR_MCG_CAP) {
        vcpu.msrs.retain(|m| m.index != MSR_MCG_CTL);
    }
    let options = DeviceOptions::default();
    let layout = DeviceLayout::of(&options);
    let devices = DeviceStates {
        serial: imported.serial.unwrap_or_default(),
        cmos: imported.cmos.unwrap_or_default(),
        ..power_on_devices(&options)
    };
    let state = MachineState {
        mem_bytes: imported.ram_bytes,
        device_layout: layout,
        vcpu,
        vm: imported.vm,
        devices,
    };
    state.validate()?;
    Ok(ImportedStream {
        machine: imported.machine,
        state,
        memory: file,
        firmware,
        running: imported.running,
        skipped_sections: imported.skipped_sections,
    })
}

/// What a booted snapvmm vCPU is on this host: its CPU model (KVM's supported CPUID with
/// snapvmm's patches, as the vCPU reports it back) and the MSRs snapvmm saves that this KVM can
/// read and write. An imported guest gets that model (the stream has none: QEMU takes it from
/// `-cpu`), and its MSRs are cut to that set.
#[derive(Debug, Clone)]
pub struct HostVcpuModel {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msr_indices: Vec<u32>,
}

impl HostVcpuModel {
    /// Asks a throw-away VM's vCPU.
    pub fn probe() -> Result<Self, crate::MachineError> {
        use crate::vm_setup::VmSetupError;
        let kvm = kvm_ioctls::Kvm::new().map_err(VmSetupError::OpenKvm)?;
        let kvm_err = |what: &'static str| move |source| VmSetupError::Kvm { what, source };
        let vm_fd = kvm.create_vm().map_err(kvm_err("CREATE_VM"))?;
        let vcpu = crate::vm_setup::create_vcpu(&kvm, &vm_fd, crate::vm_setup::CpuModel::Host)?;
        let cpuid = vcpu
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("GET_CPUID2"))?;
        let layout = crate::vstate::VcpuStateLayout::probe(&kvm, &vm_fd, &vcpu)
            .map_err(crate::engine::EngineError::from)?;
        Ok(HostVcpuModel {
            cpuid: cpuid.as_slice().to_vec(),
            msr_indices: layout.msr_indices,
        })
    }
}

/// microvm shows its BIOS (qboot) twice: at 1 MiB - size over RAM (the stream's pages went
/// there) and at 4 GiB - size, where the CPU's reset vector is. The second copy is read back
/// from RAM; a BIOS block larger than the firmware cap or not in RAM gives none.
fn microvm_high_bios(
    blocks: &[qemu_migration::RamBlock],
    ram: &File,
    ram_bytes: u64,
) -> Option<FirmwareImage> {
    const FIRST_MIB: u64 = 1 << 20;
    let size = blocks.iter().find(|b| b.name == "pc.bios")?.used_length;
    if size == 0 || size > FIRST_MIB / 2 || size > MAX_FIRMWARE_BYTES {
        return None;
    }
    let offset = file_offset(ram_bytes, FIRST_MIB - size, size)?;
    let mut bytes = vec![0; size as usize];
    ram.read_exact_at(&mut bytes, offset).ok()?;
    Some(FirmwareImage {
        guest_phys_addr: (1 << 32) - size,
        bytes,
    })
}

/// snapvmm's devices as at power-on, for those a QEMU stream has no state of.
fn power_on_devices(options: &DeviceOptions) -> DeviceStates {
    use devices::Persist;
    DeviceStates {
        serial: Default::default(),
        i8042: devices::i8042::I8042Device::new().save(),
        cmos: Default::default(),
        acpi_pm: devices::acpi_pm::AcpiPmDevice::new().save(),
        pci_bus: devices::pci::PciBus::new().save(),
        snapshot_device: devices::snapshot_device::SnapshotDeviceState::power_on(
            &options.snapshot_device,
        ),
    }
}

/// Host clocks at the moment a machine state was captured: KVM's PIT counts in
/// CLOCK_MONOTONIC, QEMU's RTC in wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct CaptureClocks {
    pub monotonic_ns: i64,
    pub realtime_ns: i64,
}

impl CaptureClocks {
    pub fn now() -> Self {
        CaptureClocks {
            monotonic_ns: monotonic_ns(),
            realtime_ns: clock_ns(libc::CLOCK_REALTIME),
        }
    }

    /// For a state captured at an unknown time (a snapshot on disk): the latest PIT load time
    /// is the best lower bound of the capture's CLOCK_MONOTONIC, and the kvmclock's wall-clock
    /// reading, when KVM gave one, is exact.
    pub fn of_saved(state: &MachineState) -> Self {
        let monotonic_ns = state
            .vm
            .pit
            .channels
            .iter()
            .map(|c| c.count_load_time)
            .max()
            .unwrap_or(0);
        let realtime_ns = if state.vm.clock.flags & kvm_bindings::KVM_CLOCK_REALTIME != 0 {
            state.vm.clock.realtime as i64
        } else {
            clock_ns(libc::CLOCK_REALTIME)
        };
        CaptureClocks {
            monotonic_ns,
            realtime_ns,
        }
    }
}

/// Writes `state` with RAM `ram` (laid out as snapvmm's memory files: `state.mem_bytes` long,
/// a mapping of `file`) as a QEMU 7.2 `microvm` stream. `running`: QEMU starts the guest after
/// loading it.
pub fn export_stream<W: Write>(
    state: &MachineState,
    ram: &[u8],
    file: &File,
    clocks: CaptureClocks,
    running: bool,
    out: StreamOut<W>,
) -> Result<W, QemuStreamError> {
    if ram.len() as u64 != state.mem_bytes {
        return Err(QemuStreamError::MemoryLength {
            found: ram.len() as u64,
            expected: state.mem_bytes,
        });
    }
    let mut offset = 0;
    let mut slices: Vec<(u64, &[u8])> = Vec::new();
    let mut backings = Vec::new();
    for range in ram_ranges(state.mem_bytes) {
        let Some(slice) = ram.get(offset as usize..(offset + range.len) as usize) else {
            break;
        };
        slices.push((range.start, slice));
        backings.push(RamBacking {
            guest_addr: range.start,
            len: range.len,
            host_addr: slice.as_ptr() as u64,
            file,
            file_offset: offset,
            private: false,
        });
        offset += range.len;
    }
    // The file's holes are zero pages; reading them through the mapping would fill them.
    let known_zero = KnownZeroPages::of(&backings).map_err(QemuStreamError::Map)?;
    export_regions(state, &slices, &known_zero, clocks, running, out)
}

/// `export_stream` with RAM given as (guest-physical address, bytes) regions.
pub fn export_regions<W: Write>(
    state: &MachineState,
    ram: &[(u64, &[u8])],
    known_zero: &KnownZeroPages,
    clocks: CaptureClocks,
    running: bool,
    out: StreamOut<W>,
) -> Result<W, QemuStreamError> {
    let regions: Vec<MemoryRegionState> = ram
        .iter()
        .map(|(gpa, bytes)| MemoryRegionState {
            guest_phys_addr: *gpa,
            len: bytes.len() as u64,
        })
        .collect();
    let mut memory = ExportMemory { ram, known_zero };
    let mut source =
        GuestRamSource::new(MachineType::Microvm, &regions, &mut memory).map_err(|_| {
            QemuStreamError::Layout(regions.iter().map(|r| (r.guest_phys_addr, r.len)).collect())
        })?;
    let parts = ExportParts {
        vcpus: std::slice::from_ref(&state.vcpu),
        vm: &state.vm,
        serial: Some(&state.devices.serial),
        cmos: Some(&state.devices.cmos),
        host_monotonic_ns: clocks.monotonic_ns,
        host_realtime_ns: clocks.realtime_ns,
        virtual_clock_ns: None,
        running,
    };
    Ok(match out {
        StreamOut::Writer(out) => export_machine(&parts, &mut source, out)?,
        StreamOut::File(file, out) => {
            export_machine_to_file(&parts, &mut source, file)?;
            out
        }
    })
}

/// Where an exported stream goes.
pub enum StreamOut<'f, W> {
    /// Written in order (a pipe, a buffered writer).
    Writer(W),
    /// A file, from its current position: pages are written at their offsets by several
    /// threads at once. `W` (often the same `&File`) is handed back.
    File(&'f File, W),
}

/// Exports the snapshot directory `dir` (see `export_stream`).
pub fn export_snapshot_dir<W: Write>(
    dir: &std::path::Path,
    running: bool,
    out: StreamOut<W>,
) -> Result<W, QemuStreamError> {
    let saved = crate::disk::read_snapshot(dir)?;
    let map = ReadOnlyMap::new(&saved.memory, saved.state.mem_bytes)?;
    export_stream(
        &saved.state,
        map.bytes(),
        &saved.memory,
        CaptureClocks::of_saved(&saved.state),
        running,
        out,
    )
}

/// A file offset for each guest-physical address of snapvmm's layout.
fn file_offset(mem_bytes: u64, gpa: u64, len: u64) -> Option<u64> {
    let mut offset = 0;
    for range in ram_ranges(mem_bytes) {
        if gpa >= range.start && gpa.checked_add(len)? <= range.end() {
            return Some(offset + (gpa - range.start));
        }
        offset += range.len;
    }
    None
}

/// Reads guest RAM for the stream writer.
struct ExportMemory<'a> {
    ram: &'a [(u64, &'a [u8])],
    known_zero: &'a KnownZeroPages,
}

impl StreamMemory for ExportMemory<'_> {
    fn prepare(
        &mut self,
        _ram: &[MemoryRegionState],
        _firmware: &[MemoryRegionState],
    ) -> Result<(), RamAccessError> {
        Err(RamAccessError("export memory is read-only".into()))
    }
    fn write(&mut self, _gpa: u64, _data: &[u8]) -> Result<(), RamAccessError> {
        Err(RamAccessError("export memory is read-only".into()))
    }
    fn fill(&mut self, _gpa: u64, _len: usize, _byte: u8) -> Result<(), RamAccessError> {
        Err(RamAccessError("export memory is read-only".into()))
    }
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), RamAccessError> {
        let source = self
            .slice(gpa, buf.len())
            .ok_or_else(|| RamAccessError(format!("{gpa:#x} is not guest RAM")))?;
        buf.copy_from_slice(source);
        Ok(())
    }
    fn page(&self, gpa: u64) -> Option<&[u8]> {
        self.slice(gpa, STREAM_PAGE_SIZE)
    }
    fn known_zero(&self, gpa: u64) -> bool {
        self.known_zero.contains(gpa)
    }
}

impl ExportMemory<'_> {
    /// `len` bytes of guest RAM at `gpa`.
    fn slice(&self, gpa: u64, len: usize) -> Option<&[u8]> {
        self.ram.iter().find_map(|(start, bytes)| {
            let offset = usize::try_from(gpa.checked_sub(*start)?).ok()?;
            bytes.get(offset..offset.checked_add(len)?)
        })
    }
}

/// Where an imported stream's pages go: a memfd laid out as snapvmm's RAM (created when the
/// stream's block list says how large), and firmware outside RAM kept aside.
#[derive(Default)]
struct ImportMemory {
    file: Option<File>,
    mem_bytes: u64,
    firmware: Vec<FirmwareImage>,
    failure: Option<QemuStreamError>,
    /// RAM pages received but not yet handed to `writer`: one contiguous run of the RAM file
    /// from `pending_offset` (see `write_ram`).
    pending: Vec<u8>,
    pending_offset: u64,
    /// Writes the runs into the RAM file on a thread of its own, beside the stream's decoding.
    writer: Option<BackgroundWriter>,
}

impl ImportMemory {
    /// Queues `data` for the RAM file at `offset` (see `reserve_ram`).
    fn write_ram(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.reserve_ram(offset, data.len())?.copy_from_slice(data);
        Ok(())
    }

    /// The next `len` bytes of the queued run, for the RAM file at `offset`; the queued run goes
    /// to the writer thread first when `offset` does not continue it. A stream's pages come in
    /// address order, so runs are long: one pwrite per 2 MiB instead of one per page, and a
    /// whole run also spares the memfd zeroing the rest of a large page-cache folio that a single
    /// page only partly fills.
    fn reserve_ram(&mut self, offset: u64, len: usize) -> std::io::Result<&mut [u8]> {
        let continues = self.pending_offset + self.pending.len() as u64 == offset;
        if !continues || self.pending.len() + len > background_writer::RUN_CAP {
            self.flush_pending()?;
            self.pending_offset = offset;
        }
        if self.pending.capacity() == 0 {
            if let Some(writer) = &self.writer {
                self.pending = writer.buffer()?;
            }
        }
        let start = self.pending.len();
        self.pending.resize(start + len, 0);
        Ok(self.pending.get_mut(start..).unwrap_or_default())
    }

    /// Hands the queued run of pages to the writer thread.
    fn flush_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(&mut self.pending);
        match &self.writer {
            Some(writer) => writer.write_at(self.pending_offset, run),
            None => Err(std::io::Error::other("no RAM file to write")),
        }
    }

    /// Everything received is in the RAM file.
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush_pending()?;
        match &self.writer {
            Some(writer) => writer.sync(),
            None => Ok(()),
        }
    }

    fn refuse(&mut self, error: QemuStreamError) -> RamAccessError {
        let access = RamAccessError(error.to_string());
        self.failure = Some(error);
        access
    }

    /// Where `len` bytes at `gpa` go: the RAM file's offset, or a firmware image.
    fn target(&mut self, gpa: u64, len: usize) -> Result<Target<'_>, RamAccessError> {
        let ImportMemory {
            file,
            firmware,
            mem_bytes,
            ..
        } = self;
        if let (Some(offset), Some(file)) = (file_offset(*mem_bytes, gpa, len as u64), file) {
            return Ok(Target::Ram(file, offset));
        }
        firmware
            .iter_mut()
            .find_map(|fw| {
                let start = gpa.checked_sub(fw.guest_phys_addr)? as usize;
                fw.bytes.get_mut(start..start.checked_add(len)?)
            })
            .map(Target::Firmware)
            .ok_or_else(|| RamAccessError(format!("{gpa:#x} is neither RAM nor firmware")))
    }
}

enum Target<'a> {
    Ram(&'a File, u64),
    Firmware(&'a mut [u8]),
}

impl StreamMemory for ImportMemory {
    fn prepare(
        &mut self,
        ram: &[MemoryRegionState],
        firmware: &[MemoryRegionState],
    ) -> Result<(), RamAccessError> {
        let mem_bytes: u64 = ram.iter().map(|r| r.len).sum();
        if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&mem_bytes) || !mem_bytes.is_multiple_of(4096)
        {
            return Err(self.refuse(QemuStreamError::RamSize(mem_bytes)));
        }
        let ours: Vec<(u64, u64)> = ram_ranges(mem_bytes)
            .iter()
            .map(|r| (r.start, r.len))
            .collect();
        let theirs: Vec<(u64, u64)> = ram.iter().map(|r| (r.guest_phys_addr, r.len)).collect();
        if ours != theirs {
            return Err(self.refuse(QemuStreamError::Layout(theirs)));
        }
        let firmware_bytes: u64 = firmware.iter().map(|f| f.len).sum();
        if firmware_bytes > MAX_FIRMWARE_BYTES {
            return Err(self.refuse(QemuStreamError::RamSize(firmware_bytes)));
        }
        let file = match create_ram_file(mem_bytes) {
            Ok(file) => file,
            Err(error) => return Err(self.refuse(QemuStreamError::RamFile(error))),
        };
        let writer = match file.try_clone().and_then(BackgroundWriter::new) {
            Ok(writer) => writer,
            Err(error) => return Err(self.refuse(QemuStreamError::RamFile(error))),
        };
        self.writer = Some(writer);
        self.file = Some(file);
        self.mem_bytes = mem_bytes;
        self.firmware = firmware
            .iter()
            .map(|f| FirmwareImage {
                guest_phys_addr: f.guest_phys_addr,
                bytes: vec![0; f.len as usize],
            })
            .collect();
        Ok(())
    }

    // RAM goes in with pwrite, not through a mapping: a page written into a memfd costs no page
    // fault and no zeroing of the page first.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), RamAccessError> {
        let offset = match self.target(gpa, data.len())? {
            Target::Ram(_, offset) => offset,
            Target::Firmware(bytes) => {
                bytes.copy_from_slice(data);
                return Ok(());
            }
        };
        self.write_ram(offset, data)
            .map_err(|e| RamAccessError(format!("writing guest RAM at {gpa:#x}: {e}")))
    }

    fn page_buffer(&mut self, gpa: u64) -> Result<Option<&mut [u8]>, RamAccessError> {
        let offset = match self.target(gpa, STREAM_PAGE_SIZE)? {
            Target::Ram(_, offset) => offset,
            // Firmware pages are few: they come through `write`.
            Target::Firmware(_) => return Ok(None),
        };
        self.reserve_ram(offset, STREAM_PAGE_SIZE)
            .map(Some)
            .map_err(|e| RamAccessError(format!("writing guest RAM at {gpa:#x}: {e}")))
    }

    fn fill(&mut self, gpa: u64, len: usize, byte: u8) -> Result<(), RamAccessError> {
        let page = [byte; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(page.len());
            self.write(gpa + done as u64, page.get(..n).unwrap_or_default())?;
            done += n;
        }
        Ok(())
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), RamAccessError> {
        self.sync()
            .map_err(|e| RamAccessError(format!("writing guest RAM: {e}")))?;
        match self.target(gpa, buf.len())? {
            Target::Ram(file, offset) => file
                .read_exact_at(buf, offset)
                .map_err(|e| RamAccessError(format!("reading guest RAM at {gpa:#x}: {e}"))),
            Target::Firmware(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
        }
    }
}

fn create_ram_file(bytes: u64) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"snapvmm-imported-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(bytes)?;
    Ok(file)
}

/// A private read-only mapping of a memory file (a snapshot's), for export.
pub struct ReadOnlyMap {
    ptr: *mut u8,
    len: usize,
}

impl ReadOnlyMap {
    pub fn new(file: &File, len: u64) -> Result<Self, QemuStreamError> {
        let found = file.metadata().map_err(QemuStreamError::Map)?.len();
        if found != len {
            return Err(QemuStreamError::MemoryLength {
                found,
                expected: len,
            });
        }
        let ptr = map_file(file, len, libc::PROT_READ).map_err(QemuStreamError::Map)?;
        let map = ReadOnlyMap {
            ptr,
            len: len as usize,
        };
        map.populate_data(file).map_err(QemuStreamError::Map)?;
        Ok(map)
    }

    /// Maps in the file's data ahead of the reads, but not its holes: a read fault on a hole of
    /// a tmpfs file allocates a page (MAP_POPULATE filled a sparse 1 GiB snapshot on /dev/shm).
    fn populate_data(&self, file: &File) -> std::io::Result<()> {
        let mut pos = 0u64;
        while let Some((start, end)) =
            snapshot::file_extents::next_data_extent(file, pos, self.len as u64)?
        {
            // SAFETY: `start..end` lies within the mapping (extents are clamped to its length);
            // MADV_POPULATE_READ only faults pages in. An old kernel's EINVAL only costs speed.
            unsafe {
                libc::madvise(
                    self.ptr.add(start as usize).cast(),
                    (end - start) as usize,
                    libc::MADV_POPULATE_READ,
                )
            };
            if end <= pos {
                break;
            }
            pos = end;
        }
        Ok(())
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: a live read-only mapping of `len` bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for ReadOnlyMap {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping `new` made; no slice of it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn map_file(file: &File, len: u64, prot: libc::c_int) -> std::io::Result<*mut u8> {
    use std::os::fd::AsRawFd;
    let len = usize::try_from(len).map_err(|_| std::io::Error::other("mapping too large"))?;
    let flags = libc::MAP_PRIVATE;
    // SAFETY: a fresh mapping of `len` bytes of an open file, chosen by the kernel; the result is
    // checked against MAP_FAILED.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            flags | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut now) };
    now.tv_sec * 1_000_000_000 + now.tv_nsec
}

fn monotonic_ns() -> i64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_offsets_follow_the_hole() {
        let mem = (3u64 << 30) + (1 << 30);
        assert_eq!(file_offset(mem, 0x1000, 4096), Some(0x1000));
        assert_eq!(file_offset(mem, 1 << 32, 4096), Some(3 << 30));
        assert_eq!(file_offset(mem, 0xC000_0000, 4096), None);
        assert_eq!(file_offset(mem, (1 << 32) + (1 << 30), 1), None);
        assert_eq!(file_offset(64 << 20, u64::MAX, 2), None);
    }

    fn region(guest_phys_addr: u64, len: u64) -> MemoryRegionState {
        MemoryRegionState {
            guest_phys_addr,
            len,
        }
    }

    #[test]
    fn import_memory_refuses_what_snapvmm_cannot_lay_out() {
        // pc with 3.25 GiB keeps it all below 4 GiB; snapvmm splits at 3 GiB.
        let mut memory = ImportMemory::default();
        assert!(memory.prepare(&[region(0, 0xD000_0000)], &[]).is_err());
        assert!(matches!(memory.failure, Some(QemuStreamError::Layout(_))));
        let mut memory = ImportMemory::default();
        assert!(memory.prepare(&[region(0, 8 << 20)], &[]).is_err());
        assert!(matches!(memory.failure, Some(QemuStreamError::RamSize(_))));
        let mut memory = ImportMemory::default();
        let firmware = [region(0xFF00_0000, MAX_FIRMWARE_BYTES + 4096)];
        assert!(memory.prepare(&[region(0, 16 << 20)], &firmware).is_err());
        assert!(memory.file.is_none());
    }

    #[test]
    fn import_memory_puts_pages_in_the_file_and_firmware_aside() {
        let mut memory = ImportMemory::default();
        let bios = region(0xFFFC_0000, 0x4_0000);
        memory.prepare(&[region(0, 16 << 20)], &[bios]).unwrap();
        memory.write(0x5000, &[7; 4096]).unwrap();
        memory.fill(0x6000, 4096, 9).unwrap();
        memory.write(0xFFFF_F000, &[1; 4096]).unwrap();
        assert!(memory.write(0x100_0000, &[0; 4096]).is_err(), "past RAM");
        assert!(
            memory.write(0xC000_0000, &[0; 4096]).is_err(),
            "in the hole"
        );
        let mut page = [0u8; 4096];
        memory.read(0x6000, &mut page).unwrap();
        assert_eq!(page, [9; 4096]);
        let file = memory.file.as_ref().unwrap();
        let mut word = [0u8; 2];
        file.read_exact_at(&mut word, 0x5ffe).unwrap();
        assert_eq!(word, [7, 7]);
        assert_eq!(file.metadata().unwrap().len(), 16 << 20);
        assert_eq!(memory.firmware[0].bytes[0x3_f000..], [1; 4096]);
    }
}
