//! QEMU 7.2's migration stream format (see `shared/qemu-migration-stream.md`): reading and writing
//! it, with no KVM in this crate.
