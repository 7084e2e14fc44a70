//! The ACPI tables a guest finds in the legacy BIOS area: enough for an OS to enumerate the
//! interrupt controllers and the PCI host bridge, and to power the machine off.
//!
//! - RSDP (ACPI 2.0+, at the start of the area, so a scan of `0xE0000..0xFFFFF` finds it), pointing
//!   at an XSDT and an RSDT that both list the FADT and the MADT.
//! - FADT (ACPI 6.3, a classic one: not hardware-reduced, because older kernels' poweroff path
//!   needs PM1 registers): PM1a event block at [`PM1_EVENT_BLOCK_PORT`], PM1a control block at
//!   [`PM1_CONTROL_BLOCK_PORT`] (the `devices::acpi_pm` device), SCI on IRQ [`SCI_IRQ`], SMI_CMD 0
//!   (ACPI mode is always on), no PM timer, no GPE blocks, the i8042 present, no VGA, the century
//!   in CMOS register [`REG_CENTURY`]. It points at the FACS and the DSDT.
//! - DSDT: `\_S5` (SLP_TYP [`SLEEP_TYPE_S5`]) and `\_SB.PCI0`, a PNP0A03 root bridge for bus 0 whose
//!   `_CRS` gives buses 0-255, the config ports 0xCF8-0xCFF, all other I/O ports and the 32-bit PCI
//!   memory window. Its AML is encoded by hand (no iasl at build time).
//! - MADT: one local APIC per vCPU, the IOAPIC (id 0, GSI base 0), an interrupt source override
//!   for the SCI (level, active high) and LINT1 as NMI. ISA IRQ 0 maps to GSI 0, not 2 as on real
//!   PCs: KVM's default GSI routing (which snapvmm keeps) delivers the in-kernel PIT on IOAPIC
//!   pin 0.
//!
//! `acpi/tables.rs` lays the tables out byte by byte; `acpi/aml.rs` encodes the AML (and the
//! `_CRS` resource descriptors) that the DSDT carries.
//!
//! [`PM1_EVENT_BLOCK_PORT`]: devices::acpi_pm::PM1_EVENT_BLOCK_PORT
//! [`PM1_CONTROL_BLOCK_PORT`]: devices::acpi_pm::PM1_CONTROL_BLOCK_PORT
//! [`SCI_IRQ`]: devices::acpi_pm::SCI_IRQ
//! [`SLEEP_TYPE_S5`]: devices::acpi_pm::SLEEP_TYPE_S5
//! [`REG_CENTURY`]: devices::cmos::REG_CENTURY

mod aml;
mod tables;

pub use tables::{build_tables, AcpiTables};
