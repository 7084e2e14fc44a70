//! The save/restore contract shared by every stateful piece of the VM.
//!
//! Learned from Firecracker's `Persist` and vm-superio's `from_state`: a plain-data state struct per
//! device, `save` to produce it, and one validating constructor that both cold boot (from the default
//! state) and restore (from a snapshot) go through, so the two paths cannot drift apart.

use thiserror::Error;

/// Why a saved state was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PersistError {
    /// The state is internally inconsistent or out of range; the message says which field.
    #[error("invalid {what} state: {why}")]
    Invalid { what: &'static str, why: String },
}

impl PersistError {
    pub fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        PersistError::Invalid {
            what,
            why: why.into(),
        }
    }
}

/// A piece of VM state that can be captured and rebuilt.
pub trait Persist: Sized {
    /// Plain data: no file descriptors, no pointers, serialisable.
    type State: Clone;
    /// Extra things the rebuilt object needs that are not state (an output stream, an event fd).
    type ConstructorArgs;

    /// Capture the current state.
    fn save(&self) -> Self::State;

    /// Build an object from a saved state, validating every field first.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, PersistError>;
}
