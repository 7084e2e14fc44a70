//! Emulated devices. Device logic is pure: a guest access goes in, a `DeviceAction` comes out, and
//! the VMM decides what that means for the VM. None of this touches KVM, so all of it is unit tested.
//!
//! Every device keeps its guest-visible state in a plain-data struct and implements
//! [`snapshot::Persist`]; cold boot is `restore(args, &State::default())`, so boot and restore share
//! one validating path. [`RestoreInPlace`] is the second entry point to that same validation, for the
//! restore hot path, where rebuilding a device (and its file descriptors) would be wasted work.
//!
//! Port map (bases are the VMM's, offsets are the device's):
//! - [`serial::SerialDevice`]: COM1, [`serial::COM1_PORT_BASE`] + [`serial::SERIAL_PORT_LEN`] ports.
//! - [`i8042::I8042Device`]: one range [`i8042::I8042_PORT_BASE`] + [`i8042::I8042_PORT_LEN`]
//!   (0x60..=0x64: data at offset 0, status/command at offset 4).
//! - [`debug_exit::DebugExitDevice`]: [`debug_exit::DEBUG_EXIT_PORT_BASE`] + 4 ports.
//! - [`pci::PciBus`]: configuration mechanism #1 at [`pci::PCI_CONFIG_PORT_BASE`] + 8 ports.
//! - [`cmos::CmosDevice`]: MC146818 RTC and CMOS memory, [`cmos::CMOS_PORT_BASE`] + 2 ports.
//! - [`acpi_pm::AcpiPmDevice`]: ACPI PM1a event and control registers,
//!   [`acpi_pm::ACPI_PM_PORT_BASE`] + [`acpi_pm::ACPI_PM_PORT_LEN`] ports; S5 comes back as
//!   [`DeviceAction::PowerOff`].
//!
//! On the PCI bus: [`snapshot_device::SnapshotDevice`] (1234:f987, slot
//! [`snapshot_device::SNAPSHOT_DEVICE_DEFAULT_SLOT`] by default), whose commands come back as
//! [`DeviceAction::Snapshot`].

pub mod acpi_pm;
pub mod bus;
pub mod cmos;
pub mod debug_exit;
pub mod i8042;
pub mod pci;
pub mod serial;
pub mod snapshot_device;
#[cfg(test)]
mod test_rng;

pub use bus::{DeviceAction, PioBus, PioDevice};
pub use snapshot::{Persist, PersistError};
pub use snapshot_device::{
    BarMemory, BarMemoryError, SnapshotCommand, SnapshotDevice, SnapshotDeviceArgs,
    SnapshotDeviceConfig, SnapshotDeviceError, SnapshotDeviceState, SnapshotDeviceStatistics,
};

/// Rolls a live object back to a saved state without rebuilding it. Implementations validate
/// `state` with the same routine as [`Persist::restore`] and leave `self` untouched when it is
/// rejected.
pub trait RestoreInPlace: Persist {
    fn restore_in_place(&mut self, state: &Self::State) -> Result<(), PersistError>;
}
