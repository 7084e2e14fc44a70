//! Shared helpers for the integration tests.

pub mod lane;
pub mod runner;
