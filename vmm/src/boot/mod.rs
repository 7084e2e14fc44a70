//! Loading a kernel into guest memory and preparing what its boot protocol expects.
//!
//! Formats, chosen by content rather than file name:
//! - Linux bzImage: linux-loader loads it; the 64-bit boot protocol with a zero page.
//! - 64-bit ELF with a PVH note (e.g. Linux's vmlinux): PVH, 32-bit entry with `hvm_start_info`.
//! - 64-bit ELF without one: long mode with identity paging, zero page in RSI.
//! - 32-bit ELF with a PVH note: PVH; with only a Multiboot header: Multiboot v1.
//!
//! Every protocol also gets the ACPI tables in the BIOS area (see `arch::acpi`); the zero page and
//! PVH's start_info carry the RSDP's address as well.

pub mod elf;
pub mod linux;
pub mod multiboot;
pub mod pvh;

use std::io::Cursor;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::KernelLoader;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::acpi::build_tables;
use crate::arch::cpu::EntryPoint;
use crate::arch::gdt::{boot_tss, BOOT_GDT};
use crate::arch::layout::{
    low_ram_end, ACPI_TABLES_START, BOOT_AREA_END, BOOT_TSS_ADDR, CMDLINE_ADDR, CMDLINE_MAX_BYTES,
    GDT_ADDR, HIGH_MEMORY_START, IDT_ADDR, INITRD_ADDR_MAX, MULTIBOOT_INFO_ADDR, PVH_INFO_ADDR,
    ZERO_PAGE_ADDR,
};
use crate::arch::paging::write_identity_tables;
use elf::{ElfClass, ElfError, ElfImage};
use linux::{build_boot_params, InitrdPlacement};

#[derive(Debug, Error)]
pub enum BootError {
    #[error("the kernel image is empty")]
    EmptyKernel,
    #[error("the kernel image is neither an ELF nor a Linux bzImage")]
    UnknownFormat,
    #[error("bad ELF kernel: {0}")]
    Elf(#[from] ElfError),
    #[error("a 32-bit ELF kernel needs a PVH note or a Multiboot header")]
    NoBootProtocol,
    #[error("the kernel occupies {start:#x}..{end:#x}: it must lie in guest RAM between {BOOT_AREA_END:#x} and {ram_end:#x}")]
    KernelOutsideRam { start: u64, end: u64, ram_end: u64 },
    #[error("cannot load the kernel: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    #[error("the bzImage does not support the 64-bit boot protocol")]
    BzImageNot64Bit,
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("the kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the initrd ({size} bytes) does not fit in guest RAM (room for {room} bytes above the kernel)")]
    InitrdTooLarge { size: u64, room: u64 },
    #[error("cannot read the initrd: {0}")]
    ReadInitrd(std::io::Error),
    #[error("cannot write boot structures into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot write boot parameters: {0}")]
    Configurator(#[from] linux_loader::configurator::Error),
}

/// snapvmm runs one vCPU, the boot vCPU; the ACPI tables list that many.
const VCPUS: u8 = 1;

/// Which protocol a kernel was booted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    LinuxBzImage,
    Elf64,
    Pvh,
    Multiboot,
}

/// The result of loading: where and how to enter the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSetup {
    pub protocol: BootProtocol,
    pub entry: EntryPoint,
    pub kernel_end: u64,
    pub initrd: Option<InitrdPlacement>,
}

/// An initrd to place in guest memory: a reader and its exact size.
pub struct InitrdSource<'a> {
    pub reader: &'a mut dyn std::io::Read,
    pub size: u64,
}

/// Loads `kernel` (the whole image) and an optional initrd, writes the command line and the
/// protocol's boot structures, and returns the entry point.
pub fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    mem_bytes: u64,
    kernel: &[u8],
    initrd: Option<InitrdSource>,
    cmdline: &str,
) -> Result<BootSetup, BootError> {
    if kernel.is_empty() {
        return Err(BootError::EmptyKernel);
    }
    let ram_end = low_ram_end(mem_bytes);
    let (protocol, entry_addr, kernel_end, bz_header) = if elf::is_elf(kernel) {
        let image = ElfImage::parse(kernel)?;
        let (start, end) = image.phys_span().ok_or(ElfError::NothingToLoad)?;
        if start < BOOT_AREA_END || end > ram_end {
            return Err(BootError::KernelOutsideRam {
                start,
                end,
                ram_end,
            });
        }
        match image.class {
            ElfClass::Elf64 => {
                // linux-loader loads 64-bit ELFs (it reads the PVH note itself as well).
                Elf::load(mem, None, &mut Cursor::new(kernel), None)?;
            }
            ElfClass::Elf32 => load_segments(mem, kernel, &image)?,
        }
        match (image.pvh_entry, image.class, image.multiboot) {
            (Some(pvh), _, _) => (BootProtocol::Pvh, pvh, end, None),
            (None, ElfClass::Elf64, _) => (BootProtocol::Elf64, image.entry, end, None),
            (None, ElfClass::Elf32, true) => (BootProtocol::Multiboot, image.entry, end, None),
            (None, ElfClass::Elf32, false) => return Err(BootError::NoBootProtocol),
        }
    } else if kernel.get(0x202..0x206) == Some(b"HdrS") {
        let loaded = BzImage::load(
            mem,
            None,
            &mut Cursor::new(kernel),
            Some(GuestAddress(HIGH_MEMORY_START)),
        )?;
        let header = loaded.setup_header.ok_or(BootError::UnknownFormat)?;
        if header.xloadflags & 1 == 0 {
            return Err(BootError::BzImageNot64Bit);
        }
        // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel, which must lie
        // in RAM (code32_start comes from the image) and contain it.
        let (start, end) = (loaded.kernel_load.0, loaded.kernel_end);
        let entry = start.saturating_add(0x200);
        if start < BOOT_AREA_END || end > ram_end || entry >= end {
            return Err(BootError::KernelOutsideRam {
                start,
                end,
                ram_end,
            });
        }
        (
            BootProtocol::LinuxBzImage,
            entry,
            loaded.kernel_end,
            Some(header),
        )
    } else {
        return Err(BootError::UnknownFormat);
    };

    let cmdline_len = write_cmdline(mem, cmdline)?;
    let initrd_max = bz_header
        .filter(|h| h.version >= 0x203)
        .map(|h| h.initrd_addr_max as u64)
        .unwrap_or(INITRD_ADDR_MAX);
    let initrd = match initrd {
        Some(source) => Some(place_initrd(
            mem,
            source,
            kernel_end,
            ram_end.min(initrd_max + 1),
        )?),
        None => None,
    };

    // GDT and a null IDT: the guest installs its own before enabling interrupts.
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    mem.write_slice(&boot_tss(), GuestAddress(BOOT_TSS_ADDR))?;
    // Bare-metal guests ignore the tables; an OS finds them by scanning the BIOS area for the
    // RSDP or through the pointer its boot protocol carries.
    let acpi = build_tables(ACPI_TABLES_START, VCPUS);
    mem.write_slice(&acpi.bytes, GuestAddress(acpi.base))?;

    let entry = match protocol {
        BootProtocol::LinuxBzImage | BootProtocol::Elf64 => {
            write_identity_tables(mem)?;
            let params =
                build_boot_params(bz_header, cmdline_len, initrd, mem_bytes, acpi.rsdp_addr);
            LinuxBootConfigurator::write_bootparams::<M>(
                &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
                mem,
            )?;
            EntryPoint::Long64 {
                rip: entry_addr,
                rsi: ZERO_PAGE_ADDR,
            }
        }
        BootProtocol::Pvh => {
            let block = pvh::build_start_info(
                PVH_INFO_ADDR,
                CMDLINE_ADDR,
                initrd,
                mem_bytes,
                acpi.rsdp_addr,
            );
            mem.write_slice(&block, GuestAddress(PVH_INFO_ADDR))?;
            EntryPoint::Protected32 {
                eip: entry_addr,
                eax: 0,
                ebx: PVH_INFO_ADDR,
            }
        }
        BootProtocol::Multiboot => {
            let block = multiboot::build_info(MULTIBOOT_INFO_ADDR, CMDLINE_ADDR, initrd, mem_bytes);
            mem.write_slice(&block, GuestAddress(MULTIBOOT_INFO_ADDR))?;
            EntryPoint::Protected32 {
                eip: entry_addr,
                eax: multiboot::BOOTLOADER_MAGIC as u64,
                ebx: MULTIBOOT_INFO_ADDR,
            }
        }
    };
    Ok(BootSetup {
        protocol,
        entry,
        kernel_end,
        initrd,
    })
}

/// Copies each PT_LOAD segment of a (validated) ELF32 to its physical address; the rest of each
/// segment is already zero because guest RAM starts zeroed.
fn load_segments<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &[u8],
    image: &ElfImage,
) -> Result<(), BootError> {
    for segment in &image.segments {
        let start = segment.file_offset as usize;
        let data = kernel
            .get(start..start + segment.file_size as usize)
            .ok_or(ElfError::NothingToLoad)?;
        mem.write_slice(data, GuestAddress(segment.phys_addr))?;
    }
    Ok(())
}

/// Writes the NUL-terminated command line at [`CMDLINE_ADDR`]; returns its length without NUL.
fn write_cmdline<M: GuestMemoryBackend>(mem: &M, text: &str) -> Result<usize, BootError> {
    if text.len() >= CMDLINE_MAX_BYTES {
        return Err(BootError::CmdlineTooLong {
            len: text.len(),
            max: CMDLINE_MAX_BYTES - 1,
        });
    }
    let cmdline = Cmdline::try_from(text, CMDLINE_MAX_BYTES).map_err(BootError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)?;
    Ok(text.len())
}

/// Puts the initrd as high as allowed below `limit`, page aligned, above the kernel.
fn place_initrd<M: GuestMemoryBackend>(
    mem: &M,
    source: InitrdSource,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdPlacement, BootError> {
    let floor = kernel_end.next_multiple_of(4096);
    let room = limit.saturating_sub(floor);
    if source.size > room {
        return Err(BootError::InitrdTooLarge {
            size: source.size,
            room,
        });
    }
    let addr = (limit - source.size) & !0xfff;
    let mut remaining = source.size;
    let mut at = addr;
    let mut chunk = vec![0u8; 1 << 20];
    while remaining > 0 {
        let len = remaining.min(chunk.len() as u64) as usize;
        source
            .reader
            .read_exact(&mut chunk[..len])
            .map_err(BootError::ReadInitrd)?;
        mem.write_slice(&chunk[..len], GuestAddress(at))?;
        at += len as u64;
        remaining -= len as u64;
    }
    Ok(InitrdPlacement {
        addr,
        size: source.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::PML4_ADDR;

    type Mem = vm_memory::GuestMemoryMmap<()>;
    const MEM: u64 = 32 << 20;

    fn mem() -> Mem {
        Mem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    #[test]
    fn pvh_elf32_is_entered_in_protected_mode_with_start_info() {
        let mem = mem();
        let kernel = elf::tests::tiny_elf32(&[0xf4], 0x10_0000, Some(0x10_000c), true);
        let setup = load_kernel(&mem, MEM, &kernel, None, "console=ttyS0").unwrap();
        assert_eq!(setup.protocol, BootProtocol::Pvh);
        assert_eq!(
            setup.entry,
            EntryPoint::Protected32 {
                eip: 0x10_000c,
                eax: 0,
                ebx: PVH_INFO_ADDR
            }
        );
        let magic: u32 = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(magic, pvh::START_INFO_MAGIC);
        // rsdp_paddr points at the RSDP, which also sits where a BIOS-area scan finds it.
        let rsdp: u64 = mem.read_obj(GuestAddress(PVH_INFO_ADDR + 32)).unwrap();
        assert_eq!(rsdp, ACPI_TABLES_START);
        let mut signature = [0u8; 8];
        mem.read_slice(&mut signature, GuestAddress(rsdp)).unwrap();
        assert_eq!(&signature, b"RSD PTR ");
        let mut cmdline = [0u8; 14];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0\0");
        // The multiboot header (12 bytes) then the hlt were loaded at 1 MiB.
        let byte: u8 = mem.read_obj(GuestAddress(0x10_000c)).unwrap();
        assert_eq!(byte, 0xf4);
    }

    #[test]
    fn multiboot_only_elf32_gets_the_multiboot_magic() {
        let mem = mem();
        let kernel = elf::tests::tiny_elf32(&[0xf4], 0x10_0000, None, true);
        let setup = load_kernel(&mem, MEM, &kernel, None, "").unwrap();
        assert_eq!(setup.protocol, BootProtocol::Multiboot);
        // Multiboot has no RSDP pointer: the tables are found by the BIOS-area scan.
        let mut signature = [0u8; 8];
        mem.read_slice(&mut signature, GuestAddress(ACPI_TABLES_START))
            .unwrap();
        assert_eq!(&signature, b"RSD PTR ");
        assert!(matches!(
            setup.entry,
            EntryPoint::Protected32 {
                eax: 0x2bad_b002,
                ..
            }
        ));
    }

    #[test]
    fn elf32_without_protocol_is_refused() {
        let kernel = elf::tests::tiny_elf32(&[0xf4], 0x10_0000, None, false);
        assert!(matches!(
            load_kernel(&mem(), MEM, &kernel, None, ""),
            Err(BootError::NoBootProtocol)
        ));
    }

    #[test]
    fn kernels_outside_ram_or_in_low_memory_are_refused() {
        let high = elf::tests::tiny_elf32(&[0xf4], 0x4000_0000, Some(0x4000_0000), false);
        assert!(matches!(
            load_kernel(&mem(), MEM, &high, None, ""),
            Err(BootError::KernelOutsideRam { .. })
        ));
        let low = elf::tests::tiny_elf32(&[0xf4], 0x7000, Some(0x7000), false);
        assert!(matches!(
            load_kernel(&mem(), MEM, &low, None, ""),
            Err(BootError::KernelOutsideRam { .. })
        ));
    }

    /// Found by the `kernel_loader` fuzz target: a bzImage with an empty protected-mode kernel
    /// whose code32_start lies above RAM was accepted, with an entry point outside RAM.
    #[test]
    fn bzimages_whose_kernel_is_not_in_ram_are_refused() {
        let input =
            include_bytes!("../../fuzz/regressions/kernel_loader/bzimage-empty-kernel-above-ram");
        // The fuzz input's first byte is the initrd size; the kernel follows.
        let kernel = &input[1..];
        let mem64 = Mem::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        assert!(matches!(
            load_kernel(&mem64, 64 << 20, kernel, None, "console=ttyS0"),
            Err(BootError::KernelOutsideRam { .. })
        ));
    }

    #[test]
    fn garbage_and_truncated_bzimages_fail_cleanly() {
        assert!(matches!(
            load_kernel(&mem(), MEM, b"hello world", None, ""),
            Err(BootError::UnknownFormat)
        ));
        assert!(matches!(
            load_kernel(&mem(), MEM, b"", None, ""),
            Err(BootError::EmptyKernel)
        ));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(load_kernel(&mem(), MEM, &bz, None, "").is_err());
    }

    #[test]
    fn initrd_goes_high_and_too_large_is_refused() {
        let mem = mem();
        let kernel = elf::tests::tiny_elf32(&[0xf4], 0x10_0000, Some(0x10_0000), false);
        let data = vec![0x5au8; 10_000];
        let setup = load_kernel(
            &mem,
            MEM,
            &kernel,
            Some(InitrdSource {
                reader: &mut &data[..],
                size: data.len() as u64,
            }),
            "",
        )
        .unwrap();
        let initrd = setup.initrd.unwrap();
        assert_eq!(initrd.addr % 4096, 0);
        assert!(initrd.addr + initrd.size <= MEM && initrd.addr + initrd.size > MEM - 8192);
        let byte: u8 = mem.read_obj(GuestAddress(initrd.addr + 9_999)).unwrap();
        assert_eq!(byte, 0x5a);

        let big = vec![0u8; 40 << 20];
        let err = load_kernel(
            &mem,
            MEM,
            &kernel,
            Some(InitrdSource {
                reader: &mut &big[..],
                size: big.len() as u64,
            }),
            "",
        )
        .unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
    }

    #[test]
    fn long_cmdline_is_refused() {
        let kernel = elf::tests::tiny_elf32(&[0xf4], 0x10_0000, Some(0x10_0000), false);
        let long = "a".repeat(CMDLINE_MAX_BYTES);
        assert!(matches!(
            load_kernel(&mem(), MEM, &kernel, None, &long),
            Err(BootError::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn identity_tables_are_written_for_long_mode_guests_only() {
        let mem = mem();
        let kernel = elf::tests::tiny_elf32(&[0xf4], 0x10_0000, Some(0x10_0000), false);
        load_kernel(&mem, MEM, &kernel, None, "").unwrap();
        let pml4e: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4e, 0);
    }
}
