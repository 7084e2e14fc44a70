//! Shared helpers for the integration tests.

pub mod lane;
pub mod lane_support;
pub mod runner;
