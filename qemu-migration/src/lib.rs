//! QEMU 7.2's migration stream format (see `shared/qemu-migration-stream.md`): a streaming reader
//! and writer, typed models of the x86 machine sections, and the mapping between snapvmm's
//! machine state and those sections. No KVM in this crate.

pub mod format;
pub mod hflags;
pub mod machine;
pub mod ram;
pub mod reader;
pub mod sections;
pub mod vmstate;
pub mod wire;
pub mod writer;

pub use machine::{
    export_machine, import_machine, ExportError, ExportParts, ImportError, ImportOptions,
    ImportedMachine, MachineType,
};
pub use ram::{RamAccessError, RamBlock, RamSink, RamSource, VecRam};
pub use reader::{read_stream, ParsedStream, ReadError, ReadLimits, Section};
pub use sections::SectionState;
pub use writer::{StreamWriter, WriteError};
