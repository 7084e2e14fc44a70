//! Guest programs built from source by `build.rs`.
