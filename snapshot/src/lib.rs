//! The snapshot engine: the `Persist` contract every device and vCPU state follows, the RAM capture
//! and restore machinery, and the on-disk snapshot format. Nothing here opens `/dev/kvm`: the
//! KVM-facing halves live in the `vmm` crate, so everything in this crate is unit-testable without it.

pub mod persist;

pub use persist::{Persist, PersistError};
