//! The programs a lane carries into L1: the static snapvmm build, and any ELF program with its
//! shared libraries.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::cpio::CpioWriter;
use super::{io_error, workspace_dir, LaneError, SNAPVMM_BIN_ENV};

static STATIC_SNAPVMM: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The static snapvmm binary for L1 (L1 has no glibc): `$SNAPVMM_LANE_BIN` if set, otherwise
/// built once per test process with
/// `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu
/// --bin snapvmm --target-dir target/lane` (its own target dir: no fight with the main build).
pub fn static_snapvmm() -> Result<PathBuf, LaneError> {
    if let Some(path) = std::env::var_os(SNAPVMM_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let built =
        STATIC_SNAPVMM.get_or_init(|| build_static_snapvmm().map_err(|error| error.to_string()));
    built.clone().map_err(|output| LaneError::SnapvmmBuild {
        command: "cargo build (static snapvmm)".to_owned(),
        output,
    })
}

fn build_static_snapvmm() -> Result<PathBuf, LaneError> {
    let workspace = workspace_dir();
    let target_dir = workspace.join("target/lane");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let args = [
        "build",
        "--release",
        "--target",
        "x86_64-unknown-linux-gnu",
        "--bin",
        "snapvmm",
        "--target-dir",
    ];
    let command = format!(
        "RUSTFLAGS='-C target-feature=+crt-static' {cargo} {} {}",
        args.join(" "),
        target_dir.display()
    );
    let output = Command::new(&cargo)
        .args(args)
        .arg(&target_dir)
        .current_dir(&workspace)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .output()
        .map_err(io_error(format!("running {command}")))?;
    if !output.status.success() {
        return Err(LaneError::SnapvmmBuild {
            command,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release/snapvmm"))
}

/// Adds the ELF program `host` at `path` in L1, plus its interpreter and shared libraries (at
/// their host paths) when it is dynamically linked.
pub(super) fn add_program(
    overlay: &mut CpioWriter,
    path: &str,
    host: &Path,
) -> Result<(), LaneError> {
    let bytes = fs::read(host).map_err(io_error(format!("reading {}", host.display())))?;
    let dynamic = elf_has_interpreter(&bytes);
    overlay.file(path, 0o755, &bytes)?;
    if dynamic {
        for library in shared_libraries(host)? {
            let contents =
                fs::read(&library).map_err(io_error(format!("reading {}", library.display())))?;
            overlay.file(&library.to_string_lossy(), 0o755, &contents)?;
        }
    }
    Ok(())
}

/// True for an ELF64 file with a PT_INTERP program header (a dynamically linked executable).
fn elf_has_interpreter(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |offset: usize, len: usize| -> Option<u64> {
        let field = bytes.get(offset..offset.checked_add(len)?)?;
        Some(
            field
                .iter()
                .rev()
                .fold(0u64, |value, byte| (value << 8) | u64::from(*byte)),
        )
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    else {
        return false;
    };
    (0..phnum).any(|index| {
        usize::try_from(phoff + index * phentsize)
            .ok()
            .and_then(|offset| read(offset, 4))
            .is_some_and(|kind| kind == u64::from(PT_INTERP))
    })
}

/// The shared libraries (and the loader) of `program`, from `ldd`.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, LaneError> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(io_error(format!("running ldd {}", program.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_interpreter_detection() {
        let own = fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are linked like the host's programs: dynamically, with an interpreter.
        assert!(elf_has_interpreter(&own));
        assert!(!elf_has_interpreter(b"\x7fELF\x02 too short"));
        assert!(!elf_has_interpreter(b"#!/bin/sh\n"));
    }
}
