//! The host-side fuzz driver. It arrives with the snapshot device's fuzzing ABI (input buffer in
//! BAR2, coverage map in BAR4); until then this crate only fixes its place in the dependency order
//! (`snapshot` <- `devices` <- `vmm` <- `fuzz-harness`).
