//! Emulated devices. Device logic is pure: a guest access goes in, a `DeviceAction` comes out, and
//! the VMM decides what that means for the VM. None of this touches KVM, so all of it is unit tested.

pub mod bus;

pub use bus::{DeviceAction, PioBus, PioDevice};
