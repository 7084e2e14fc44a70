//! `Machine`: one VM that code drives. Boot a guest or resume a machine state, `run` it until
//! something happens, and act on the returned `VmEvent`: restore it, feed it the next input, read
//! its coverage, save it, stop it from another thread.
//!
//! Guest SAVE and RESTORE commands are carried out inside `run`, which then returns `SaveDone` or
//! `RestoreDone`: their meaning is fixed by the device ABI, and doing them at once spares a
//! return trip on the hot path of a guest that restores itself. DONE, CRASH and EXCEPTION are
//! handed to the caller unacted on: what they mean (restore with the next input, record a crash,
//! stop) is the caller's policy.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use devices::snapshot_device::{SnapshotCommand, SnapshotDevice};
use devices::DeviceAction;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use thiserror::Error;

use crate::boot::{load_kernel, BootError, InitrdSource};
use crate::config::{KernelSource, MachineConfig, ResumeOptions, SerialOutput};
use crate::control::{ControlRequest, VmControl};
use crate::deadline::{DeadlineError, DeadlineTimer};
use crate::device_manager::{DeviceManager, DeviceManagerError, DeviceOptions, SerialInput};
use crate::dirty_tracking::{DirtyTrackingError, DirtyTrackingMode};
use crate::disk::{self, DiskError};
use crate::engine::{EngineError, EngineOptions, EngineStats, SnapshotEngine, VmParts};
use crate::event::VmEvent;
use crate::known_zero_pages::KnownZeroPages;
use crate::machine_state::{DeviceLayout, MachineState, MachineStateError};
use crate::memory::{GuestMemory, GuestRam, MemoryError};
use crate::signals::{self, KvmRunBinding};
use crate::vcpu::{describe_internal_error, handle_exit, io_access_size, ExitDecision, IoBus};
use crate::vm_setup::{create_vcpu, create_vm, set_boot_entry, CpuModel, VmSetupError};
use crate::vstate::{capture_vcpu, capture_vm_wide};

/// Kernel images larger than this are refused before reading them whole.
const MAX_KERNEL_BYTES: u64 = 512 << 20;

#[derive(Debug, Error)]
pub enum MachineError {
    #[error(transparent)]
    Setup(#[from] VmSetupError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("cannot read {0}")]
    HostFile(#[from] snapshot::HostFileError),
    #[error("cannot boot the kernel: {0}")]
    Boot(#[from] BootError),
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    #[error("cannot open serial output {path}: {source}")]
    SerialOutput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signals(std::io::Error),
    #[error("dirty page tracking: {0}")]
    DirtyTracking(#[from] DirtyTrackingError),
    /// A SAVE or RESTORE could not be carried out, or `--verify-restores` found a difference.
    #[error("snapshot failure: {0}")]
    Snapshot(#[from] EngineError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("the machine state is invalid: {0}")]
    State(#[from] MachineStateError),
    #[error(transparent)]
    Deadline(#[from] DeadlineError),
    #[error("KVM_RUN failed: {0}")]
    KvmRun(kvm_ioctls::Error),
    #[error("unhandled KVM exit: {0}")]
    UnhandledExit(String),
    #[error("there is no snapshot to restore")]
    NoSnapshot,
    #[error(transparent)]
    QemuStream(#[from] crate::qemu_stream::QemuStreamError),
    #[error(transparent)]
    Firmware(#[from] crate::firmware::FirmwareError),
}

/// A VM ready to run. Fields are private: everything goes through the methods.
pub struct Machine {
    // Field order is drop order: the engine (which references RAM and the vCPU's dirty ring)
    // goes before the vCPU and RAM it points into.
    engine: SnapshotEngine,
    vcpu: VcpuFd,
    devices: DeviceManager,
    vm_fd: Arc<VmFd>,
    /// Read-only firmware outside RAM (a machine imported from QEMU's pc/q35).
    firmware: Vec<crate::firmware::FirmwareMapping>,
    _kvm: Kvm,
    ram: GuestRam,
    control: VmControl,
    deadline: DeadlineTimer,
    device_layout: DeviceLayout,
    /// Where the loaded kernel ends (0 for a resumed machine).
    kernel_end: u64,
}

/// The parts of a machine that `Machine::build` puts together.
struct Assembly {
    kvm: Kvm,
    vm_fd: Arc<VmFd>,
    vcpu: VcpuFd,
    devices: DeviceManager,
    engine: SnapshotEngine,
}

impl Machine {
    /// Boots the kernel `config` names: RAM, kernel and initrd loaded, the vCPU at its entry
    /// point. Nothing runs until `run`.
    pub fn boot(config: &MachineConfig) -> Result<Machine, MachineError> {
        // Read the user's files before touching KVM, so bad input fails fast and cleanly.
        let kernel_image = read_kernel(&config.kernel, config.mem_bytes)?;
        let mut initrd = match &config.initrd {
            Some(path) => Some(snapshot::open_regular_capped(
                path,
                "initrd",
                config.mem_bytes,
            )?),
            None => None,
        };
        let serial_out = open_serial(&config.serial)?;
        let ram = GuestRam::new(config.mem_bytes)?;
        let boot = load_kernel(
            &ram.memory,
            config.mem_bytes,
            &kernel_image,
            initrd.as_mut().map(|(file, size)| InitrdSource {
                reader: file,
                size: *size,
            }),
            &config.cmdline,
        )?;
        let parts = Self::build(
            &ram,
            &config.engine,
            &config.devices,
            serial_out,
            CpuModel::Host,
        )?;
        set_boot_entry(&parts.vcpu, &boot)?;
        parts.devices.report_ram_size(ram.size());
        Ok(Self::from_parts(
            parts,
            ram,
            &config.devices,
            boot.kernel_end,
        ))
    }

    /// Resumes `state` with RAM mapped privately from `memory` (a file laid out like RAM):
    /// pages are read when the guest touches them, and the file never changes. The state becomes
    /// the machine's snapshot, so the guest (or the caller) can restore to it at once. The
    /// vCPU gets the state's CPUID; a CPU model this host's KVM cannot provide is an error.
    pub fn resume(
        state: MachineState,
        memory: File,
        options: &ResumeOptions,
    ) -> Result<Machine, MachineError> {
        state.validate()?;
        let device_options = state.device_layout.options()?;
        let serial_out = open_serial(&options.serial)?;
        let ram = GuestRam::new(state.mem_bytes)?;
        let mut parts = Self::build(
            &ram,
            &options.engine,
            &device_options,
            serial_out,
            CpuModel::Saved(&state.vcpu.cpuid),
        )?;
        parts.engine.map_snapshot_file(&memory)?;
        let memory = snapshot::SnapshotMemory::from_file(memory, state.mem_bytes as usize)
            .map_err(EngineError::from)?;
        let mut vm = VmParts {
            vm_fd: &parts.vm_fd,
            vcpu: &mut parts.vcpu,
            ram: &ram,
            devices: &mut parts.devices,
        };
        parts
            .engine
            .adopt(&mut vm, state.vcpu, state.vm, state.devices, memory)?;
        report_to_device(&parts.devices, Report::Saved);
        Ok(Self::from_parts(parts, ram, &device_options, 0))
    }

    /// Resumes the snapshot `--save-snapshot` wrote to `dir` (see `resume`).
    pub fn from_snapshot_dir(dir: &Path, options: &ResumeOptions) -> Result<Machine, MachineError> {
        let saved = disk::read_snapshot(dir)?;
        Self::resume(saved.state, saved.memory, options)
    }

    /// Resumes a machine loaded from a QEMU migration stream (`qemu_stream::import_stream`): its
    /// state and RAM as `resume` takes them, plus the firmware QEMU mapped outside RAM.
    pub fn from_qemu_stream(
        imported: crate::qemu_stream::ImportedStream,
        options: &ResumeOptions,
    ) -> Result<Machine, MachineError> {
        let mut machine = Self::resume(imported.state, imported.memory, options)?;
        for (index, image) in imported.firmware.iter().enumerate() {
            machine.firmware.push(crate::firmware::FirmwareMapping::map(
                &machine.vm_fd,
                index,
                image.guest_phys_addr,
                &image.bytes,
            )?);
        }
        Ok(machine)
    }

    /// Writes the machine as it is now as a QEMU 7.2 `microvm` stream (see `qemu_stream`);
    /// `running`: QEMU starts the guest once loaded.
    pub fn export_qemu_stream<W: std::io::Write>(
        &mut self,
        running: bool,
        out: W,
    ) -> Result<W, MachineError> {
        self.export_qemu_stream_to(running, crate::qemu_stream::StreamOut::Writer(out))
    }

    /// `export_qemu_stream` into a file, from its current position, with its pages written by
    /// writer threads (see `qemu_stream::StreamOut::File`).
    pub fn export_qemu_stream_to_file(
        &mut self,
        running: bool,
        file: &File,
    ) -> Result<(), MachineError> {
        self.export_qemu_stream_to(running, crate::qemu_stream::StreamOut::File(file, file))
            .map(drop)
    }

    fn export_qemu_stream_to<W: std::io::Write>(
        &mut self,
        running: bool,
        out: crate::qemu_stream::StreamOut<W>,
    ) -> Result<W, MachineError> {
        let state = self.current_state()?;
        let clocks = crate::qemu_stream::CaptureClocks::now();
        let regions: Vec<(u64, &[u8])> = self
            .ram
            .slots()
            .into_iter()
            .map(|(guest_addr, len, host_addr)| {
                // SAFETY: each slot is a live mapping of `len` bytes of guest RAM owned by
                // `self.ram`; the vCPU does not run while `&mut self` is held.
                let bytes =
                    unsafe { std::slice::from_raw_parts(host_addr as *const u8, len as usize) };
                (guest_addr, bytes)
            })
            .collect();
        // Holes of the file behind RAM are sent as zero pages unread: reading them would
        // allocate them.
        let known_zero = KnownZeroPages::of(&self.engine.ram_backings(&self.ram))
            .map_err(|e| MachineError::QemuStream(crate::qemu_stream::QemuStreamError::Map(e)))?;
        Ok(crate::qemu_stream::export_regions(
            &state,
            &regions,
            &known_zero,
            clocks,
            running,
            out,
        )?)
    }

    /// The one assembly path of booted and resumed machines: KVM VM, devices, vCPU with its CPU
    /// model, snapshot engine.
    fn build(
        ram: &GuestRam,
        engine_options: &EngineOptions,
        device_options: &DeviceOptions,
        serial_out: Box<dyn std::io::Write + Send>,
        model: CpuModel,
    ) -> Result<Assembly, MachineError> {
        signals::install_kick_handler().map_err(MachineError::Signals)?;
        let (kvm, vm_fd) = create_vm(ram)?;
        let vm_fd = Arc::new(vm_fd);
        let devices = DeviceManager::new(vm_fd.clone(), serial_out, device_options)?;
        // The dirty ring must be enabled before any vCPU exists.
        let tracking = DirtyTrackingMode::enable(&vm_fd)?;
        let mut vcpu = create_vcpu(&kvm, &vm_fd, model)?;
        let engine = SnapshotEngine::new(
            engine_options.clone(),
            tracking,
            &kvm,
            &vm_fd,
            &mut vcpu,
            ram,
        )?;
        tracing::info!(
            tracker = engine.tracker_name(),
            shadow_mmu = engine.shadow_mmu(),
            "VM ready"
        );
        Ok(Assembly {
            kvm,
            vm_fd,
            vcpu,
            devices,
            engine,
        })
    }

    fn from_parts(
        parts: Assembly,
        ram: GuestRam,
        device_options: &DeviceOptions,
        kernel_end: u64,
    ) -> Machine {
        Machine {
            engine: parts.engine,
            vcpu: parts.vcpu,
            devices: parts.devices,
            vm_fd: parts.vm_fd,
            firmware: Vec::new(),
            _kvm: parts.kvm,
            ram,
            control: VmControl::new(),
            deadline: DeadlineTimer::new(),
            device_layout: DeviceLayout::of(device_options),
            kernel_end,
        }
    }

    /// Runs the guest on the calling thread until something the caller must act on happens, or
    /// `deadline` passes. VMM failures are errors; everything the guest did is an event.
    pub fn run(&mut self, deadline: Option<Instant>) -> Result<VmEvent, MachineError> {
        if let Some(deadline) = deadline {
            if Instant::now() >= deadline {
                return Ok(VmEvent::DeadlinePassed);
            }
            self.deadline.arm(deadline)?;
        }
        let control = self.control.clone();
        let _runner = control.enter_run();
        let kvm_run = self.vcpu.get_kvm_run() as *mut kvm_bindings::kvm_run;
        let _binding = KvmRunBinding::bind(kvm_run);
        loop {
            match control.take_request() {
                Some(ControlRequest::Stop) => return Ok(VmEvent::Stopped),
                Some(ControlRequest::Kick) => return Ok(VmEvent::Kicked),
                None => {}
            }
            let decision = match self.vcpu.run() {
                Ok(exit) => {
                    // SAFETY: `kvm_run` is this vCPU's live kvm_run; the size is read only for
                    // port exits, whose union member it is.
                    let io_size = match exit {
                        kvm_ioctls::VcpuExit::IoIn(..) | kvm_ioctls::VcpuExit::IoOut(..) => unsafe {
                            io_access_size(kvm_run)
                        },
                        _ => 1,
                    };
                    let mut bus = RunningBus {
                        devices: &mut self.devices,
                        engine: &self.engine,
                    };
                    handle_exit(exit, io_size, &mut bus)
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.vcpu.set_kvm_immediate_exit(0);
                    if let Some(deadline) = deadline {
                        if Instant::now() >= deadline {
                            return Ok(VmEvent::DeadlinePassed);
                        }
                        // The timer fired for an earlier run's deadline (see `deadline`).
                        self.deadline.arm(deadline)?;
                    }
                    continue;
                }
                Err(e) => return Err(MachineError::KvmRun(e)),
            };
            match decision {
                ExitDecision::Continue => {}
                ExitDecision::Snapshot(command) => return self.carry_out(command),
                ExitDecision::DirtyRingFull => self.engine.harvest()?,
                ExitDecision::Stop(VmEvent::TripleFault { .. }) => {
                    self.engine.force_full_restore();
                    let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    return Ok(VmEvent::TripleFault { rip });
                }
                ExitDecision::Stop(event) => return Ok(event),
                ExitDecision::InternalError { .. } => {
                    self.engine.force_full_restore();
                    return Ok(describe_internal_error(&mut self.vcpu, &self.ram.memory));
                }
                ExitDecision::Unhandled(what) => return Err(MachineError::UnhandledExit(what)),
            }
        }
    }

    /// Carries out a snapshot-device command; returns the event for the caller.
    fn carry_out(&mut self, command: SnapshotCommand) -> Result<VmEvent, MachineError> {
        tracing::trace!(?command, "snapshot device command");
        let event = match command {
            SnapshotCommand::Save => {
                self.save()?;
                VmEvent::SaveDone
            }
            SnapshotCommand::Restore => {
                self.restore()?;
                VmEvent::RestoreDone
            }
            SnapshotCommand::Done { code } => VmEvent::Done { code },
            SnapshotCommand::Crash { code } => VmEvent::Crash {
                code,
                pc: self.command_pc(),
            },
            SnapshotCommand::Exception { vector } => VmEvent::Exception {
                vector,
                pc: self.command_pc(),
            },
        };
        Ok(event)
    }

    /// The address a CRASH or EXCEPTION is attributed to: FAULT_PC, else the writing RIP.
    fn command_pc(&mut self) -> u64 {
        match lock(self.devices.snapshot_device()).command_pc() {
            0 => self.vcpu.sync_regs().regs.rip,
            pc => pc,
        }
    }

    /// Takes a snapshot of the whole machine now. Replaces the previous one.
    pub fn save(&mut self) -> Result<(), MachineError> {
        let mut vm = VmParts {
            vm_fd: &self.vm_fd,
            vcpu: &mut self.vcpu,
            ram: &self.ram,
            devices: &mut self.devices,
        };
        let result = self.engine.save(&mut vm);
        report_to_device(
            &self.devices,
            match &result {
                Ok(()) => Report::Saved,
                Err(_) => Report::Failed,
            },
        );
        Ok(result?)
    }

    /// Rolls the whole machine back to its snapshot.
    pub fn restore(&mut self) -> Result<(), MachineError> {
        if !self.engine.has_snapshot() {
            return Err(MachineError::NoSnapshot);
        }
        let mut vm = VmParts {
            vm_fd: &self.vm_fd,
            vcpu: &mut self.vcpu,
            ram: &self.ram,
            devices: &mut self.devices,
        };
        let result = self.engine.restore(&mut vm);
        report_to_device(
            &self.devices,
            match &result {
                Ok(()) => Report::Restored,
                Err(_) => Report::Failed,
            },
        );
        Ok(result?)
    }

    pub fn has_snapshot(&self) -> bool {
        self.engine.has_snapshot()
    }

    /// A handle other threads use to stop or kick this machine.
    pub fn control(&self) -> VmControl {
        self.control.clone()
    }

    /// A handle other threads use to type into COM1.
    pub fn serial_input(&self) -> SerialInput {
        self.devices.serial_input()
    }

    /// Puts `input` into BAR2 (truncated to its size, stale bytes of a longer previous input
    /// zeroed) and sets INPUT_LEN. Returns the bytes taken.
    pub fn set_input(&mut self, input: &[u8]) -> usize {
        lock(self.devices.snapshot_device()).set_input(input)
    }

    /// BAR2's size: the largest input.
    pub fn input_capacity(&self) -> usize {
        lock(self.devices.snapshot_device()).input_memory().len()
    }

    /// INPUT_LEN as the guest reads it.
    pub fn input_len(&self) -> u32 {
        lock(self.devices.snapshot_device()).input_len()
    }

    /// The BAR4 coverage map as the guest left it.
    pub fn coverage(&self) -> &[u8] {
        let memory = lock(self.devices.snapshot_device())
            .coverage_memory()
            .clone();
        // SAFETY: BAR4 is a mapping the device owns for the machine's whole life (the Arc keeps
        // it). The guest writes it only while the vCPU runs, which takes `&mut self`, so it does
        // not change while this shared borrow lives.
        unsafe { std::slice::from_raw_parts(memory.as_ptr(), memory.len()) }
    }

    /// The BAR4 coverage map, for the caller to clear (wholly, or only what it found set).
    pub fn coverage_mut(&mut self) -> &mut [u8] {
        let memory = lock(self.devices.snapshot_device())
            .coverage_memory()
            .clone();
        // SAFETY: as in `coverage`; `&mut self` makes this the only view while it lives.
        unsafe { std::slice::from_raw_parts_mut(memory.as_ptr(), memory.len()) }
    }

    /// BAR1's comparison log (`devices::snapshot_device::CMPLOG_*`): the harness turns logging
    /// on for a run and reads the operands the target compared.
    pub fn comparison_log_mut(&mut self) -> &mut [u8] {
        let memory = lock(self.devices.snapshot_device()).cmplog_memory().clone();
        // SAFETY: as in `coverage_mut`: the device keeps the mapping alive as long as the VM, and
        // `&mut self` makes this the only host view while it lives (the vCPU is not running).
        unsafe { std::slice::from_raw_parts_mut(memory.as_ptr(), memory.len()) }
    }

    /// The snapshot device, for host-side registers beyond input and coverage.
    pub fn snapshot_device(&self) -> MutexGuard<'_, SnapshotDevice> {
        lock(self.devices.snapshot_device())
    }

    /// Guest RAM, for reading (or writing: then call `note_ram_written`).
    pub fn guest_memory(&self) -> &GuestMemory {
        &self.ram.memory
    }

    /// Bytes of guest RAM the host has allocated (the RAM memfd's blocks): pages the guest, the
    /// VMM or a reader of RAM touched; RAM never touched costs nothing.
    pub fn ram_allocated_bytes(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.ram.file.metadata()?.blocks() * 512)
    }

    /// Records that the caller wrote guest RAM through `guest_memory`, so the next restore puts
    /// those pages back too.
    pub fn note_ram_written(&mut self) {
        self.engine.note_vmm_ram_write();
    }

    /// The machine's state now (the vCPU's pending exit completed first).
    pub fn current_state(&mut self) -> Result<MachineState, MachineError> {
        SnapshotEngine::complete_pending_exit(&mut self.vcpu)?;
        let vcpu =
            capture_vcpu(&self.vcpu, 0, self.engine.vcpu_layout()).map_err(EngineError::from)?;
        let vm = capture_vm_wide(&self.vm_fd).map_err(EngineError::from)?;
        Ok(MachineState {
            mem_bytes: self.ram.size(),
            device_layout: self.device_layout,
            vcpu,
            vm,
            devices: self.devices.save_states(),
        })
    }

    /// The snapshot's state (waiting for its RAM capture); `None` without a snapshot.
    pub fn snapshot_state(&mut self) -> Result<Option<MachineState>, MachineError> {
        let mem_bytes = self.ram.size();
        let layout = self.device_layout;
        Ok(self.engine.snapshot()?.map(|parts| MachineState {
            mem_bytes,
            device_layout: layout,
            vcpu: parts.vcpu.clone(),
            vm: parts.vm.clone(),
            devices: parts.devices.clone(),
        }))
    }

    /// The snapshot as `resume` takes it: its state and a handle to its memory file (a memfd
    /// laid out like RAM; the capture finished first). `None` without a snapshot. Many machines
    /// resumed from one such file share its clean pages: each maps it privately.
    pub fn snapshot_image(&mut self) -> Result<Option<(MachineState, File)>, MachineError> {
        let mem_bytes = self.ram.size();
        let layout = self.device_layout;
        let Some(parts) = self.engine.snapshot()? else {
            return Ok(None);
        };
        let memory = parts
            .memory
            .file()
            .try_clone()
            .map_err(DiskError::MemoryFile)?;
        Ok(Some((
            MachineState {
                mem_bytes,
                device_layout: layout,
                vcpu: parts.vcpu.clone(),
                vm: parts.vm.clone(),
                devices: parts.devices.clone(),
            },
            memory,
        )))
    }

    /// Writes the snapshot to `dir` (atomically). Nothing is written without a snapshot.
    pub fn write_snapshot(&mut self, dir: &Path) -> Result<(), MachineError> {
        let mem_bytes = self.ram.size();
        let layout = self.device_layout;
        let Some(parts) = self.engine.snapshot()? else {
            return Ok(());
        };
        let state = MachineState {
            mem_bytes,
            device_layout: layout,
            vcpu: parts.vcpu.clone(),
            vm: parts.vm.clone(),
            devices: parts.devices.clone(),
        };
        disk::write_snapshot(dir, &state, parts.memory)?;
        Ok(())
    }

    pub fn stats(&self) -> &EngineStats {
        self.engine.stats()
    }

    /// Fills every page of RAM from 16 MiB above the kernel with a non-zero pattern, so that
    /// memory is populated as in a long-running guest (benchmarks of the SAVE stall use it).
    pub fn populate_free_ram(&mut self) {
        let start = self.kernel_end.next_multiple_of(4096) + (16 << 20);
        for (guest_addr, len, host_addr) in self.ram.slots() {
            let from = start.max(guest_addr).min(guest_addr + len);
            let offset = (from - guest_addr) as usize;
            // SAFETY: writing inside this region's live host mapping, before the guest runs.
            unsafe {
                std::ptr::write_bytes(
                    (host_addr as *mut u8).add(offset),
                    0xa5,
                    len as usize - offset,
                );
            }
        }
    }
}

/// What happened to the snapshot, for the snapshot device's host registers. Every write to
/// STATUS and RESTORES goes through `report_to_device`, the bits' one owner.
enum Report {
    Saved,
    Restored,
    Failed,
    /// Sets only the capture-running bit.
    Capture {
        running: bool,
    },
}

fn report_to_device(devices: &DeviceManager, report: Report) {
    let mut device = lock(devices.snapshot_device());
    match report {
        Report::Saved => {
            device.record_save();
            device.set_capture_running(true);
            device.set_last_command_failed(false);
        }
        Report::Restored => {
            device.record_restore();
            device.set_capture_running(false);
            device.set_last_command_failed(false);
        }
        Report::Failed => device.set_last_command_failed(true),
        Report::Capture { running } => device.set_capture_running(running),
    }
}

/// The devices as the vCPU loop reaches them while the machine runs.
struct RunningBus<'a> {
    devices: &'a mut DeviceManager,
    engine: &'a SnapshotEngine,
}

impl IoBus for RunningBus<'_> {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        self.devices.pio_read(port, data);
    }
    fn pio_write(&mut self, port: u16, data: &[u8]) -> DeviceAction {
        self.devices.pio_write(port, data)
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        // STATUS bit 1 reports the background capture: refresh it before the guest reads.
        if !self.engine.capture_running() {
            report_to_device(self.devices, Report::Capture { running: false });
        }
        self.devices.mmio_read(addr, data);
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> DeviceAction {
        self.devices.mmio_write(addr, data)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_kernel(
    kernel: &KernelSource,
    mem_bytes: u64,
) -> Result<std::borrow::Cow<'static, [u8]>, MachineError> {
    match kernel {
        // Regular files only (a FIFO or /dev/zero would block or never end), capped as read.
        KernelSource::File(path) => {
            Ok(snapshot::read_capped(path, "kernel", MAX_KERNEL_BYTES.min(mem_bytes))?.into())
        }
        KernelSource::Builtin { image, .. } => Ok((*image).into()),
    }
}

fn open_serial(serial: &SerialOutput) -> Result<Box<dyn std::io::Write + Send>, MachineError> {
    Ok(match serial {
        SerialOutput::Stdio => Box::new(std::io::stdout()),
        SerialOutput::Discard => Box::new(std::io::sink()),
        SerialOutput::File(path) => {
            Box::new(
                File::create(path).map_err(|source| MachineError::SerialOutput {
                    path: path.clone(),
                    source,
                })?,
            )
        }
    })
}
