//! QEMU 7.2's migration stream format (see `shared/qemu-migration-stream.md`): a streaming reader
//! and writer, typed models of the x86 machine sections, and the mapping between snapvmm's
//! machine state and those sections. No KVM in this crate.
//!
//! For a VMM:
//! - export: `export_machine(&ExportParts { vcpus, vm, serial, cmos, .. }, &mut
//!   GuestRamSource::new(MachineType::Microvm, &regions, &mut guest_memory)?, out)` writes a
//!   `microvm` stream (`regions`: the guest's RAM, low part from 0 and the rest at 4 GiB);
//! - import: `import_machine(input, &mut GuestRamSink::new(&mut guest_memory).with_zeroed_memory(),
//!   &ImportOptions { cpuid, host_monotonic_ns, .. })` reads `microvm`, `pc-i440fx-7.2` or
//!   `pc-q35-7.2` and returns the vCPUs, `VmState`, UART and CMOS states, RAM regions and size,
//!   firmware regions and run state; `guest_memory` implements `machine::ram_map::GuestMemory`
//!   (its `prepare` is called with the stream's RAM and firmware regions before any page).

pub mod format;
pub mod hflags;
pub mod machine;
pub mod page_batch;
pub mod positional_output;
pub mod ram;
pub mod reader;
pub mod sections;
pub mod vmstate;
pub mod wire;
pub mod writer;

pub use machine::{
    export_machine, export_machine_to_file, import_machine, ExportError, ExportParts, ImportError,
    ImportOptions, ImportedMachine, MachineType,
};
pub use ram::{RamAccessError, RamBlock, RamSink, RamSource, VecRam};
pub use reader::{read_stream, ParsedStream, ReadError, ReadLimits, Section};
pub use sections::SectionState;
pub use writer::{StreamWriter, WriteError};
