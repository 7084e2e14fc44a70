//! The snapshot directory loader on arbitrary `state.bin` / `memory.raw` contents: the in-memory
//! parser, then the real path through files (open, length checks, memory checksum, payload
//! decoding into the crate's vCPU and VM state types and their validation, private mapping).
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use snapshot::snapshot_dir::{parse_state_file, MEMORY_FILE, STATE_FILE};
use snapshot::{LoadedSnapshot, VcpuState, VmState};
use snapshot_fuzz::{repair_checksums, split_input, FUZZ_MEMORY_LIMIT, REPAIR_CHECKSUMS};

/// One snapshot directory per fuzzing process, rewritten for every input (in /dev/shm when there
/// is one: tmpfs keeps the file system out of the measurement).
fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("snapshot-fuzz-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("creating the scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let input = split_input(data);
    let memory = input.memory;
    let mut state = input.state.to_vec();
    if input.flags & REPAIR_CHECKSUMS != 0 {
        repair_checksums(&mut state, memory);
    }
    let state = state.as_slice();

    let parsed = parse_state_file(state, std::path::Path::new("fuzz"), FUZZ_MEMORY_LIMIT);
    if let Ok(parsed) = &parsed {
        assert!(parsed.memory_len() <= FUZZ_MEMORY_LIMIT);
        assert!(parsed.payload().len() + 64 == state.len());
    }

    let dir = scratch_dir();
    fs::write(dir.join(STATE_FILE), state).expect("writing state.bin");
    fs::write(dir.join(MEMORY_FILE), memory).expect("writing memory.raw");
    let loaded = LoadedSnapshot::open_with_memory_limit(dir, FUZZ_MEMORY_LIMIT);
    // The file path and the in-memory parser must agree on the state file.
    if loaded.is_ok() {
        assert!(
            parsed.is_ok(),
            "the loader accepted a state file the parser rejects"
        );
    }
    let Ok(loaded) = loaded else {
        return;
    };
    assert_eq!(loaded.memory_len(), memory.len() as u64);
    let verified = loaded.verify_memory();
    let crc_matches = parsed.is_ok_and(|_| verified.is_ok());
    if let Ok(vcpu) = loaded.decode_state::<VcpuState>() {
        let _ = vcpu.validate();
    }
    if let Ok(vm) = loaded.decode_state::<VmState>() {
        let _ = vm.validate();
    }
    if crc_matches && !memory.is_empty() {
        let mapping = loaded
            .map_memory_private()
            .expect("mapping a checked memory file");
        assert_eq!(mapping.len(), memory.len());
        // SAFETY: the mapping is `mapping.len()` readable bytes owned by `mapping`.
        let mapped = unsafe { std::slice::from_raw_parts(mapping.as_ptr(), mapping.len()) };
        assert_eq!(mapped, memory);
    }
});
