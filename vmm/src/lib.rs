//! snapvmm's VMM as a library: a KVM virtual machine built for snapshot fuzzing that code drives.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use vmm::{KernelSource, Machine, MachineConfig, SerialOutput, VmEvent};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = MachineConfig::new(KernelSource::File("guest.elf".into()));
//! config.mem_bytes = 64 << 20;
//! config.serial = SerialOutput::Discard;
//! let mut machine = Machine::boot(&config)?;
//! // Run to the guest's first SAVE (its snapshot point).
//! while machine.run(Some(Instant::now() + Duration::from_secs(10)))? != VmEvent::SaveDone {}
//! for input in [&b"first"[..], b"second"] {
//!     machine.set_input(input);
//!     machine.coverage_mut().fill(0);
//!     match machine.run(Some(Instant::now() + Duration::from_millis(100)))? {
//!         VmEvent::Done { code } => println!("done {code}, {} edges", edges(machine.coverage())),
//!         event if event.is_crash() => println!("crash: {event}"),
//!         VmEvent::DeadlinePassed => println!("hang"),
//!         other => println!("{other}"),
//!     }
//!     machine.restore()?;
//! }
//! # Ok(())
//! # }
//! # fn edges(map: &[u8]) -> usize { map.iter().filter(|&&b| b != 0).count() }
//! ```
//!
//! - [`Machine`] (`machine.rs`): boot or resume, `run` until a [`VmEvent`], `save`, `restore`,
//!   input and coverage, the [`MachineState`].
//! - [`VmControl`] (`control.rs`): stop or kick a machine from another thread; per machine.
//! - `engine/`: SAVE and RESTORE (RAM slots, shadow-MMU policy, verification, statistics).
//! - `vstate.rs`: KVM vCPU and VM state; `vm_setup.rs`: KVM objects; `vcpu.rs`: exit decoding.
//! - `disk.rs`: snapshots on disk; `machine_state.rs`: the state as one validated value.

pub mod arch;
pub mod background_writer;
pub mod boot;
pub mod config;
pub mod control;
pub mod deadline;
pub mod device_manager;
pub mod dirty_tracking;
pub mod disk;
pub mod engine;
pub mod event;
pub mod firmware;
pub mod hot_pages;
pub mod known_zero_pages;
pub mod machine;
pub mod machine_state;
pub mod memory;
pub mod page_tables;
pub mod qemu_stream;
pub mod seccomp;
pub mod signals;
pub mod vcpu;
pub mod vm_setup;
pub mod vstate;

pub use config::{KernelSource, MachineConfig, MemSize, ResumeOptions, SerialOutput};
pub use control::VmControl;
pub use device_manager::{DeviceOptions, SerialInput};
pub use engine::{EngineOptions, EngineStats, RestoreStrategy, VcpuRestore};
pub use event::VmEvent;
pub use machine::{Machine, MachineError};
pub use machine_state::{DeviceLayout, MachineState};
