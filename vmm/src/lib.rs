//! snapvmm's VMM: KVM VM and vCPU set-up, guest memory, kernel loading and the vCPU run loop.

pub mod arch;
pub mod bench;
pub mod boot;
pub mod config;
pub mod device_manager;
pub mod dirty_tracking;
pub mod memory;
pub mod page_tables;
pub mod persist;
pub mod signals;
pub mod snapshot_engine;
pub mod vcpu;
pub mod vm;
pub mod vstate;
