//! The snapshot engine: the `Persist` contract every device and vCPU state follows, the RAM capture
//! and restore machinery, and the on-disk snapshot format. Nothing here opens `/dev/kvm`: the
//! KVM-facing halves live in the `vmm` crate, so everything in this crate is unit-testable without it.
//!
//! - `ram_layout`: guest RAM mappings and the page numbering shared by everything below;
//! - `snapshot_memory`: the memfd that holds the snapshot's copy of RAM;
//! - `ram_capture`: background userfaultfd write-protect capture of RAM at SAVE;
//! - `dirty_pages`: pages written since the snapshot, from KVM and from the VMM;
//! - `restore`: copy back only the dirty pages;
//! - `snapshot_dir`: snapshots on disk;
//! - `host_file`: opening user-named host files (kernel, initrd, snapshot files) safely;
//! - `vm_state`: the vCPU and VM state the VMM captures.

pub mod dirty_pages;
pub mod file_extents;
pub mod host_file;
pub mod persist;
pub mod ram_capture;
pub mod ram_layout;
pub mod restore;
pub mod snapshot_dir;
pub mod snapshot_memory;
pub mod vm_state;

#[cfg(test)]
mod test_support;

pub use dirty_pages::{DirtyGfn, DirtyPages, DirtyPagesError, SlotMap};
pub use host_file::{open_regular, open_regular_capped, read_capped, HostFileError};
pub use persist::{Persist, PersistError};
pub use ram_capture::{
    CaptureOptions, CaptureProgress, CaptureReport, CaptureScope, RamCapture, RamCaptureError,
};
pub use ram_layout::{HostRamRegion, RamLayout, RamLayoutError, PAGE_SIZE};
pub use restore::{restore_dirty_pages, RestoreError, RestoreStats};
pub use snapshot_dir::{
    check_save_target, save_snapshot, save_snapshot_bytes, LoadedSnapshot, MemoryImage,
    PayloadKind, SnapshotDirError,
};
pub use snapshot_memory::{FileMapping, SnapshotMemory, SnapshotMemoryError};
pub use vm_state::{IrqchipState, MsrEntry, VcpuState, VmState, VmStateError};
