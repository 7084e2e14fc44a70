//! Building a VM from a `VmConfig` and running it: KVM objects, memory slots, the in-kernel
//! irqchip and PIT, the boot vCPU and the devices.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::arch::cpu::{
    entry_fpu, entry_msrs, entry_regs, entry_sregs, patch_cpuid, wire_lapic_lint,
};
use crate::arch::layout::KVM_TSS_ADDR;
use crate::boot::{load_kernel, BootError, BootSetup, InitrdSource};
use crate::config::{KernelSource, SerialOutput, VmConfig};
use crate::device_manager::{DeviceManager, DeviceManagerError};
use crate::dirty_tracking::{DirtyTrackingError, DirtyTrackingMode};
use crate::memory::{GuestRam, MemoryError};
use crate::persist::{PersistError, SavedVm};
use crate::signals;
use crate::snapshot_engine::{SnapshotEngine, SnapshotEngineError, VmParts};
use crate::vcpu::{run_vcpu, StopReason, TIMED_OUT};
use crate::vcpu::{IoBus, VcpuHooks};
use devices::snapshot_device::SnapshotCommand;
use devices::DeviceAction;

/// Kernel images larger than this are refused before reading them whole.
const MAX_KERNEL_BYTES: u64 = 512 << 20;

#[derive(Debug, Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is {size} bytes, larger than {limit} bytes")]
    FileTooLarge {
        what: &'static str,
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot boot the kernel: {0}")]
    Boot(#[from] BootError),
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    #[error("cannot open serial output {path}: {source}")]
    SerialOutput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("dirty page tracking: {0}")]
    DirtyTracking(#[from] DirtyTrackingError),
    #[error("snapshot engine: {0}")]
    Engine(#[from] SnapshotEngineError),
    #[error(transparent)]
    Persist(#[from] PersistError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A VM ready to run.
pub struct Vm {
    // Field order is drop order: the engine (which references RAM and the vCPU's dirty ring)
    // goes before the vCPU and RAM it points into.
    pub engine: SnapshotEngine,
    pub vcpu: VcpuFd,
    pub devices: DeviceManager,
    pub vm_fd: Arc<VmFd>,
    pub kvm: Kvm,
    pub ram: GuestRam,
    pub boot: BootSetup,
    timeout: Option<Duration>,
    save_dir: Option<PathBuf>,
    mem_bytes: u64,
    device_options: crate::device_manager::DeviceOptions,
}

fn open_sized(what: &'static str, path: &Path, limit: u64) -> Result<(File, u64), VmError> {
    let read_err = |source| VmError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > limit {
        return Err(VmError::FileTooLarge {
            what,
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    Ok((file, size))
}

impl Vm {
    /// Creates the VM, loads the kernel and prepares the boot vCPU. Nothing runs yet.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        // Read the user's files before touching KVM, so bad input fails fast and cleanly.
        let kernel_image: std::borrow::Cow<[u8]> = match &config.kernel {
            KernelSource::File(path) => {
                let (mut file, size) =
                    open_sized("kernel", path, MAX_KERNEL_BYTES.min(config.mem_bytes))?;
                let mut bytes = Vec::with_capacity(size as usize);
                file.read_to_end(&mut bytes)
                    .map_err(|source| VmError::ReadFile {
                        what: "kernel",
                        path: path.clone(),
                        source,
                    })?;
                bytes.into()
            }
            KernelSource::Builtin { image, .. } => (*image).into(),
        };
        let mut initrd = match &config.initrd {
            Some(path) => Some(open_sized("initrd", path, config.mem_bytes)?),
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

        let (kvm, vm_fd) = create_kvm_vm(&ram)?;
        let vm_fd = Arc::new(vm_fd);
        let (devices, vcpu, engine) = assemble(
            &kvm,
            &vm_fd,
            &ram,
            config,
            &config.devices,
            serial_out,
            &boot,
        )?;
        tracing::info!(
            tracker = engine.tracker_name(),
            shadow_mmu = engine.shadow_mmu(),
            "VM ready"
        );
        Ok(Vm {
            engine,
            vcpu,
            devices,
            vm_fd,
            kvm,
            ram,
            boot,
            timeout: config.timeout,
            save_dir: config.save_snapshot.clone(),
            mem_bytes: config.mem_bytes,
            device_options: config.devices,
        })
    }

    /// Resumes a snapshot written by `--save-snapshot`. Guest RAM maps the memory file privately,
    /// so pages are read from disk only when the guest touches them, and the file never changes.
    pub fn from_snapshot(config: &VmConfig, dir: &Path) -> Result<Self, VmError> {
        let loaded = snapshot::LoadedSnapshot::open(dir).map_err(PersistError::from)?;
        loaded.verify_memory().map_err(PersistError::from)?;
        let saved: SavedVm = loaded.decode_state().map_err(PersistError::from)?;
        saved.validate(loaded.memory_len())?;
        let device_options = saved.device_options()?;
        let serial_out = open_serial(&config.serial)?;
        let ram = GuestRam::new(saved.mem_bytes)?;
        let memory_file = loaded
            .memory_file()
            .try_clone()
            .map_err(|source| VmError::ReadFile {
                what: "snapshot memory",
                path: dir.to_path_buf(),
                source,
            })?;
        crate::snapshot_engine::map_private_over_ram(&ram, &memory_file)?;
        let (kvm, vm_fd) = create_kvm_vm(&ram)?;
        let vm_fd = Arc::new(vm_fd);
        let placeholder = BootSetup {
            protocol: crate::boot::BootProtocol::Elf64,
            entry: crate::arch::cpu::EntryPoint::Long64 { rip: 0, rsi: 0 },
            kernel_end: 0,
            initrd: None,
        };
        // CPUID and the boot MSRs first; the saved state goes on top in `adopt_loaded`.
        let (mut devices, mut vcpu, mut engine) = assemble(
            &kvm,
            &vm_fd,
            &ram,
            config,
            &device_options,
            serial_out,
            &placeholder,
        )?;
        let memory = snapshot::SnapshotMemory::from_file(memory_file, saved.mem_bytes as usize)
            .map_err(SnapshotEngineError::from)?;
        engine.adopt_loaded(&vm_fd, &mut vcpu, &ram, &mut devices, saved, memory)?;
        Ok(Vm {
            engine,
            vcpu,
            devices,
            vm_fd,
            kvm,
            ram,
            boot: placeholder,
            timeout: config.timeout,
            save_dir: config.save_snapshot.clone(),
            mem_bytes: loaded.memory_len(),
            device_options,
        })
    }

    /// Fills every page of RAM above the kernel with a non-zero pattern, so that memory is
    /// populated as in a long-running guest (benchmarks of the SAVE stall use it).
    pub fn populate_free_ram(&mut self) {
        let start = self.boot.kernel_end.next_multiple_of(4096) + (16 << 20);
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

    /// Runs the guest on the calling thread until it stops.
    pub fn run(&mut self) -> Result<StopReason, VmError> {
        signals::install().map_err(VmError::Signals)?;
        let _input = self.devices.start_stdin_forwarding();
        let (done, kicker) = match self.timeout {
            Some(timeout) => {
                let (done, wait) = mpsc::channel::<()>();
                let vcpu_thread = signals::current_thread();
                let handle = std::thread::spawn(move || {
                    signals::block_async_signals();
                    if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                        TIMED_OUT.store(true, Ordering::SeqCst);
                        signals::kick(vcpu_thread);
                    }
                });
                (Some(done), Some(handle))
            }
            None => (None, None),
        };
        let memory = &self.ram.memory;
        let read_guest =
            |addr: u64, buf: &mut [u8]| memory.read_slice(buf, GuestAddress(addr)).is_ok();
        let mut hooks = RunningVm {
            save_dir: self.save_dir.as_deref(),
            mem_bytes: self.mem_bytes,
            device_options: self.device_options,
            vm_fd: &self.vm_fd,
            ram: &self.ram,
            devices: &mut self.devices,
            engine: &mut self.engine,
        };
        let reason = run_vcpu(&mut self.vcpu, &mut hooks, &read_guest);
        drop(done);
        if let Some(handle) = kicker {
            let _ = handle.join();
        }
        Ok(reason)
    }
}

fn open_serial(serial: &SerialOutput) -> Result<Box<dyn std::io::Write + Send>, VmError> {
    Ok(match serial {
        SerialOutput::Stdio => Box::new(std::io::stdout()),
        SerialOutput::File(path) => {
            Box::new(File::create(path).map_err(|source| VmError::SerialOutput {
                path: path.clone(),
                source,
            })?)
        }
    })
}

/// Creates the devices, the vCPU and the snapshot engine of a VM whose RAM is in place.
fn assemble(
    kvm: &Kvm,
    vm_fd: &Arc<VmFd>,
    ram: &GuestRam,
    config: &VmConfig,
    device_options: &crate::device_manager::DeviceOptions,
    serial_out: Box<dyn std::io::Write + Send>,
    boot: &BootSetup,
) -> Result<(DeviceManager, VcpuFd, SnapshotEngine), VmError> {
    let devices = DeviceManager::new(vm_fd.clone(), serial_out, device_options)?;
    devices.report_ram_size(ram.size());
    // The dirty ring must be enabled before any vCPU exists.
    let tracking = DirtyTrackingMode::enable(vm_fd)?;
    let mut vcpu = create_boot_vcpu(kvm, vm_fd, boot)?;
    let engine = SnapshotEngine::new(config.engine.clone(), tracking, kvm, vm_fd, &mut vcpu, ram)?;
    Ok((devices, vcpu, engine))
}

/// Opens KVM and creates the VM with its in-kernel irqchip, PIT and RAM slots.
fn create_kvm_vm(ram: &GuestRam) -> Result<(Kvm, VmFd), VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let vm_fd = kvm.create_vm().map_err(kvm_err("CREATE_VM"))?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm_err("SET_TSS_ADDR"))?;
    vm_fd.create_irq_chip().map_err(kvm_err("CREATE_IRQCHIP"))?;
    vm_fd
        .create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("CREATE_PIT2"))?;
    for (slot, (guest_addr, len, host_addr)) in ram.slots().into_iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: len,
            userspace_addr: host_addr,
        };
        // SAFETY: the region is a live mapping owned by `ram`, which the Vm keeps alive for as
        // long as the VM fd exists.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(kvm_err("SET_USER_MEMORY_REGION"))?;
    }
    Ok((kvm, vm_fd))
}

/// Creates vCPU 0 and sets the entry state.
///
/// KVM's ordering rules for vCPU set-up: CPUID before anything that depends on the CPU model
/// (MSRs, sregs: KVM validates CR4/EFER bits against CPUID); SREGS before REGS is not required,
/// but LAPIC must come after the irqchip exists (it does: the VM created it first).
fn create_boot_vcpu(kvm: &Kvm, vm_fd: &VmFd, boot: &BootSetup) -> Result<VcpuFd, VmError> {
    let vcpu = vm_fd.create_vcpu(0).map_err(kvm_err("CREATE_VCPU"))?;
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("GET_SUPPORTED_CPUID"))?;
    patch_cpuid(&mut cpuid, 0);
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("SET_CPUID2"))?;
    let msrs = Msrs::from_entries(&entry_msrs()).map_err(|_| VmError::Kvm {
        what: "SET_MSRS (building the list)",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    vcpu.set_msrs(&msrs).map_err(kvm_err("SET_MSRS"))?;
    vcpu.set_fpu(&entry_fpu()).map_err(kvm_err("SET_FPU"))?;
    let base = vcpu.get_sregs().map_err(kvm_err("GET_SREGS"))?;
    vcpu.set_sregs(&entry_sregs(boot.entry, &base))
        .map_err(kvm_err("SET_SREGS"))?;
    vcpu.set_regs(&entry_regs(boot.entry))
        .map_err(kvm_err("SET_REGS"))?;
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("GET_LAPIC"))?;
    wire_lapic_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(kvm_err("SET_LAPIC"))?;
    Ok(vcpu)
}

/// The VM as the vCPU loop sees it while running: devices for I/O, the engine for snapshots.
struct RunningVm<'a> {
    save_dir: Option<&'a Path>,
    mem_bytes: u64,
    device_options: crate::device_manager::DeviceOptions,
    vm_fd: &'a VmFd,
    ram: &'a GuestRam,
    devices: &'a mut DeviceManager,
    engine: &'a mut SnapshotEngine,
}

impl IoBus for RunningVm<'_> {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        self.devices.pio_read(port, data);
    }
    fn pio_write(&mut self, port: u16, data: &[u8]) -> DeviceAction {
        self.devices.pio_write(port, data)
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.engine.poll_capture(self.devices);
        self.devices.mmio_read(addr, data);
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> DeviceAction {
        self.devices.mmio_write(addr, data)
    }
}

impl VcpuHooks for RunningVm<'_> {
    fn snapshot_command(
        &mut self,
        vcpu: &mut VcpuFd,
        command: SnapshotCommand,
    ) -> Result<(), StopReason> {
        let mut parts = VmParts {
            vm_fd: self.vm_fd,
            vcpu,
            ram: self.ram,
            devices: self.devices,
        };
        tracing::debug!(?command, "snapshot device command");
        let result = match command {
            SnapshotCommand::Save => {
                self.engine
                    .save(&mut parts)
                    .and_then(|()| match self.save_dir {
                        Some(dir) => {
                            self.engine
                                .write_to_disk(dir, self.mem_bytes, &self.device_options)
                        }
                        None => Ok(()),
                    })
            }
            SnapshotCommand::Restore => self.engine.restore(&mut parts),
            // Without a fuzz harness there is nobody to record a crash or hand out the next
            // input: a crash stops the VM, a finished run rolls back for the next one.
            SnapshotCommand::Crash { code } => {
                return Err(StopReason::Snapshot(format!(
                    "guest reported a crash (code {code:#x}) through the snapshot device"
                )))
            }
            SnapshotCommand::Exception { vector } => {
                let pc = self
                    .devices
                    .snapshot_device()
                    .lock()
                    .map_or(0, |device| device.command_pc());
                return Err(StopReason::Snapshot(format!(
                    "guest reported CPU exception {vector} at {pc:#x} through the snapshot device"
                )));
            }
            SnapshotCommand::Done { .. } => self.engine.restore(&mut parts),
        };
        result.map_err(|e| StopReason::Snapshot(e.to_string()))?;
        if self.engine.restore_limit_reached() {
            return Err(StopReason::RestoreLimit(self.engine.stats.restores));
        }
        Ok(())
    }

    fn dirty_ring_full(&mut self) -> Result<(), StopReason> {
        self.engine
            .harvest()
            .map_err(|e| StopReason::Snapshot(e.to_string()))
    }
}
