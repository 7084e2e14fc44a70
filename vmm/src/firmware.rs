//! Firmware images mapped into guest-physical space outside RAM, read-only: what QEMU's pc and
//! q35 machines show just below 4 GiB (their BIOS), for guests imported from those machines.
//! They are not guest RAM: snapshots neither save nor restore them (the guest cannot change them).

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use thiserror::Error;

use crate::arch::layout::{HIGH_RAM_START, KVM_TSS_ADDR, LAPIC_ADDR};

/// Memslots from here on hold firmware (RAM uses 0.., device BARs 16..).
pub const FIRST_FIRMWARE_MEMSLOT: u32 = 48;
/// At most this many firmware regions.
pub const MAX_FIRMWARE_REGIONS: usize = 4;

#[derive(Debug, Error)]
pub enum FirmwareError {
    #[error("firmware at {gpa:#x} ({len} bytes) is not page aligned inside the 4 GiB top window")]
    Placement { gpa: u64, len: u64 },
    #[error("more than {MAX_FIRMWARE_REGIONS} firmware regions")]
    TooMany,
    #[error("cannot map firmware: {0}")]
    Map(std::io::Error),
    #[error("KVM refused the firmware memslot at {gpa:#x}: {source}")]
    Memslot { gpa: u64, source: kvm_ioctls::Error },
}

/// One firmware image in its own anonymous mapping and read-only memslot.
pub struct FirmwareMapping {
    host: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing aliases it mutably.
unsafe impl Send for FirmwareMapping {}

impl FirmwareMapping {
    /// Maps `bytes` at `gpa` read-only into the VM as memslot `FIRST_FIRMWARE_MEMSLOT + index`.
    /// Only the window between KVM's TSS pages and 4 GiB (where firmware lives) is accepted, and
    /// never over the LAPIC page.
    pub fn map(vm_fd: &VmFd, index: usize, gpa: u64, bytes: &[u8]) -> Result<Self, FirmwareError> {
        let len = bytes.len() as u64;
        let end = gpa.saturating_add(len);
        let window = KVM_TSS_ADDR + 3 * 4096..=HIGH_RAM_START;
        let overlaps_lapic = gpa < LAPIC_ADDR + 4096 && end > LAPIC_ADDR;
        if len == 0
            || !gpa.is_multiple_of(4096)
            || !len.is_multiple_of(4096)
            || !window.contains(&gpa)
            || !window.contains(&end)
            || overlaps_lapic
        {
            return Err(FirmwareError::Placement { gpa, len });
        }
        if index >= MAX_FIRMWARE_REGIONS {
            return Err(FirmwareError::TooMany);
        }
        // SAFETY: a fresh anonymous mapping chosen by the kernel; checked against MAP_FAILED.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(FirmwareError::Map(std::io::Error::last_os_error()));
        }
        let mapping = FirmwareMapping {
            host,
            len: bytes.len(),
        };
        // SAFETY: `host` is a live mapping of `bytes.len()` bytes that nothing else uses yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), host.cast(), bytes.len()) };
        let region = kvm_userspace_memory_region {
            slot: FIRST_FIRMWARE_MEMSLOT + index as u32,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by the returned value, which the Machine
        // keeps for as long as its VM fd exists.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(|source| FirmwareError::Memslot { gpa, source })?;
        Ok(mapping)
    }
}

impl Drop for FirmwareMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping `map` made; KVM drops its references to it (mmu notifier).
        unsafe { libc::munmap(self.host, self.len) };
    }
}
