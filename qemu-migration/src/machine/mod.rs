//! snapvmm's machine state to and from whole QEMU machines: `microvm` (export and import),
//! `pc-i440fx-7.2` and `pc-q35-7.2` (import).

pub mod catalog;
pub mod cpu_map;
pub mod device_map;
mod export;
mod import;
pub mod irqchip_map;
pub mod ram_map;

pub use catalog::MachineType;
pub use export::{export_machine, export_machine_to_file, ExportError, ExportParts};
pub use import::{import_machine, ImportError, ImportOptions, ImportedMachine};
