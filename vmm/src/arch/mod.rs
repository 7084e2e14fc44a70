//! x86-64 specifics: the guest-physical layout, descriptor tables, boot page tables, ACPI tables,
//! and the initial CPU state for each way of entering a guest.

pub mod acpi;
pub mod cpu;
pub mod gdt;
pub mod layout;
pub mod paging;
