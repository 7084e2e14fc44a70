//! The restore oracle shared by the `device_restore` target and its seed maker.

use std::fmt::Debug;

use devices::acpi_pm::AcpiPmDevice;
use devices::cmos::{host_wall_clock, CmosDevice};
use devices::debug_exit::DebugExitDevice;
use devices::i8042::I8042Device;
use devices::pci::{HostBridge, PciBus, PciConfigSpace};
use devices::serial::{SerialArgs, SerialDevice};
use devices::{Persist, RestoreInPlace, SnapshotDevice, SnapshotDeviceArgs};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::snapshot_config;

/// The devices, in the order of the input's first byte (modulo their number).
pub const DEVICE_NAMES: [&str; 9] = [
    "serial",
    "i8042",
    "cmos",
    "acpi_pm",
    "debug_exit",
    "pci_bus",
    "host_bridge",
    "pci_config_space",
    "snapshot_device",
];

fn serial_args() -> SerialArgs {
    SerialArgs {
        interrupt: EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd"),
        output: Box::new(std::io::sink()),
    }
}

fn snapshot_args() -> SnapshotDeviceArgs {
    SnapshotDeviceArgs::allocate(&snapshot_config()).expect("snapshot device buffers")
}

fn config_space() -> PciConfigSpace {
    PciConfigSpace::new(snapshot_config().pci_header()).expect("the snapshot device's header")
}

/// Runs the oracle for one device type. `args` builds the constructor arguments, `fresh` a live
/// device at power-on.
fn check<D>(bytes: &[u8], args: impl Fn() -> D::ConstructorArgs, fresh: impl Fn() -> D)
where
    D: Persist + RestoreInPlace,
    D::State: DeserializeOwned + PartialEq + Debug,
{
    let Ok(state) = postcard::from_bytes::<D::State>(bytes) else {
        return;
    };
    let restored = D::restore(args(), &state);
    let mut live = fresh();
    let before = live.save();
    let in_place = live.restore_in_place(&state);
    assert_eq!(
        restored.is_ok(),
        in_place.is_ok(),
        "restore and restore_in_place disagree on {state:?}: {:?} / {in_place:?}",
        restored.as_ref().err()
    );
    let Ok(restored) = restored else {
        assert_eq!(
            live.save(),
            before,
            "a rejected state changed the live device"
        );
        return;
    };
    let saved = restored.save();
    assert_eq!(
        live.save(),
        saved,
        "restore and restore_in_place built different devices"
    );
    let again = D::restore(args(), &saved).expect("a device's own save is rejected");
    assert_eq!(again.save(), saved, "restore is not idempotent");
}

/// Input: one byte choosing the device, then its state in postcard.
pub fn check_restore(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match usize::from(which) % DEVICE_NAMES.len() {
        0 => check::<SerialDevice>(bytes, serial_args, || {
            SerialDevice::restore(serial_args(), &Default::default()).expect("a UART")
        }),
        1 => check::<I8042Device>(bytes, || (), I8042Device::new),
        2 => check::<CmosDevice>(bytes, host_wall_clock, || CmosDevice::new(256 << 20, 0)),
        3 => check::<AcpiPmDevice>(bytes, || (), AcpiPmDevice::new),
        4 => check::<DebugExitDevice>(bytes, || (), DebugExitDevice::new),
        5 => check::<PciBus>(bytes, || (), PciBus::new),
        6 => check::<HostBridge>(bytes, || (), HostBridge::new),
        7 => check::<PciConfigSpace>(bytes, || snapshot_config().pci_header(), config_space),
        _ => check::<SnapshotDevice>(bytes, snapshot_args, || {
            SnapshotDevice::new(&snapshot_config()).expect("a snapshot device")
        }),
    }
}

/// A seed: the power-on state of device `which`, as `check_restore` reads it.
pub fn power_on_seed(which: usize) -> Vec<u8> {
    fn encode<S: Serialize>(which: usize, state: &S) -> Vec<u8> {
        let mut seed = vec![which as u8];
        seed.extend(postcard::to_allocvec(state).expect("encoding a state"));
        seed
    }
    match which {
        0 => encode(
            which,
            &SerialDevice::restore(serial_args(), &Default::default())
                .expect("a UART")
                .save(),
        ),
        1 => encode(which, &I8042Device::new().save()),
        2 => encode(which, &CmosDevice::new(256 << 20, 0).save()),
        3 => encode(which, &AcpiPmDevice::new().save()),
        4 => encode(which, &DebugExitDevice::new().save()),
        5 => encode(which, &PciBus::new().save()),
        6 => encode(which, &HostBridge::new().save()),
        7 => encode(which, &config_space().save()),
        _ => encode(
            which,
            &SnapshotDevice::new(&snapshot_config())
                .expect("a snapshot device")
                .save(),
        ),
    }
}
