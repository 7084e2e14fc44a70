use std::os::unix::fs::MetadataExt;

use serde::Deserialize;

use super::*;
use crate::ram_layout::PAGE_SIZE;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TestState {
    name: String,
    registers: Vec<u64>,
    flag: bool,
}

fn sample_state() -> TestState {
    TestState {
        name: "vcpu0".into(),
        registers: (0..40).map(|i| i * 0x1111).collect(),
        flag: true,
    }
}

fn sample_memory(pages: usize) -> Vec<u8> {
    (0..pages * PAGE_SIZE)
        .map(|i| (i / PAGE_SIZE) as u8 ^ (i as u8).rotate_left(3))
        .collect()
}

/// Writes half of the image, then fails like a full disk.
struct FailingImage(Vec<u8>);

impl MemoryImage for FailingImage {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn write_to(&self, out: &File, _checksum: &mut crc32fast::Hasher) -> io::Result<()> {
        out.write_all_at(&self.0[..self.0.len() / 2], 0)?;
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }
}

fn leftovers(parent: &Path) -> Vec<String> {
    fs::read_dir(parent)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect()
}

#[test]
fn round_trip_state_and_memory() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    let memory = sample_memory(8);
    save_snapshot(&dir, &sample_state(), memory.as_slice()).unwrap();
    let loaded = LoadedSnapshot::open(&dir).unwrap();
    assert_eq!(loaded.payload_kind(), PayloadKind::Postcard);
    assert_eq!(loaded.decode_state::<TestState>().unwrap(), sample_state());
    assert_eq!(loaded.memory_len(), memory.len() as u64);
    loaded.verify_memory().unwrap();
    let mapping = loaded.map_memory_private().unwrap();
    // SAFETY: the mapping is memory.len() bytes and owned by this test.
    let mapped = unsafe { std::slice::from_raw_parts(mapping.as_ptr(), mapping.len()) };
    assert_eq!(mapped, memory.as_slice());
    // SAFETY: writes stay in the private mapping.
    unsafe { *mapping.as_ptr() = !memory[0] };
    loaded.verify_memory().unwrap();
    assert!(leftovers(parent.path()).is_empty());
}

#[test]
fn opaque_payload_round_trip() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    save_snapshot_bytes(&dir, b"opaque state", sample_memory(1).as_slice()).unwrap();
    let loaded = LoadedSnapshot::open(&dir).unwrap();
    assert_eq!(loaded.state_bytes(), b"opaque state");
    assert!(matches!(
        loaded.decode_state::<TestState>(),
        Err(SnapshotDirError::WrongPayloadKind { .. })
    ));
}

#[test]
fn snapshot_memory_is_written_sparse_with_the_same_checksum() {
    let parent = tempfile::tempdir().unwrap();
    let pages = 512;
    let memory = SnapshotMemory::create(pages * PAGE_SIZE).unwrap();
    let mut flat = vec![0u8; pages * PAGE_SIZE];
    for page in [3usize, 4, 200, 511] {
        let content = vec![page as u8 | 1; PAGE_SIZE];
        memory
            .file()
            .write_all_at(&content, (page * PAGE_SIZE) as u64)
            .unwrap();
        flat[page * PAGE_SIZE..(page + 1) * PAGE_SIZE].copy_from_slice(&content);
    }
    let sparse_dir = parent.path().join("sparse");
    let flat_dir = parent.path().join("flat");
    save_snapshot(&sparse_dir, &sample_state(), &memory).unwrap();
    save_snapshot(&flat_dir, &sample_state(), flat.as_slice()).unwrap();
    let sparse = LoadedSnapshot::open(&sparse_dir).unwrap();
    sparse.verify_memory().unwrap();
    assert_eq!(
        sparse.header.memory_crc,
        LoadedSnapshot::open(&flat_dir).unwrap().header.memory_crc
    );
    let allocated = sparse.memory_file().metadata().unwrap().blocks() * 512;
    assert!(
        allocated < (pages * PAGE_SIZE / 4) as u64,
        "memory file is not sparse: {allocated} bytes allocated"
    );
    let reread =
        SnapshotMemory::from_file(sparse.memory_file().try_clone().unwrap(), pages * PAGE_SIZE)
            .unwrap();
    assert_eq!(reread.as_slice(), flat.as_slice());
}

#[test]
fn every_truncation_is_an_error() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    save_snapshot(&dir, &sample_state(), sample_memory(2).as_slice()).unwrap();
    let state_path = dir.join(STATE_FILE);
    let full = fs::read(&state_path).unwrap();
    for len in 0..full.len() {
        fs::write(&state_path, &full[..len]).unwrap();
        match LoadedSnapshot::open(&dir) {
            Err(SnapshotDirError::Truncated { .. }) => {}
            other => panic!("state truncated to {len} bytes gave {other:?}"),
        }
    }
    fs::write(&state_path, [full.as_slice(), b"x"].concat()).unwrap();
    assert!(matches!(
        LoadedSnapshot::open(&dir),
        Err(SnapshotDirError::TrailingBytes { .. })
    ));
    fs::write(&state_path, &full).unwrap();
    LoadedSnapshot::open(&dir).unwrap();

    let memory_path = dir.join(MEMORY_FILE);
    let memory_len = fs::metadata(&memory_path).unwrap().len();
    for len in [0, 1, memory_len - PAGE_SIZE as u64, memory_len - 1] {
        OpenOptions::new()
            .write(true)
            .open(&memory_path)
            .unwrap()
            .set_len(len)
            .unwrap();
        assert!(
            matches!(
                LoadedSnapshot::open(&dir),
                Err(SnapshotDirError::Truncated { .. })
            ),
            "memory truncated to {len}"
        );
    }
    fs::remove_file(&memory_path).unwrap();
    assert!(matches!(
        LoadedSnapshot::open(&dir),
        Err(SnapshotDirError::HostFile(HostFileError::Io { .. }))
    ));
}

#[test]
fn every_flipped_byte_is_detected() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    let memory = sample_memory(2);
    save_snapshot(&dir, &sample_state(), memory.as_slice()).unwrap();
    let state_path = dir.join(STATE_FILE);
    let full = fs::read(&state_path).unwrap();
    for index in 0..full.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut corrupt = full.clone();
            corrupt[index] ^= flip;
            fs::write(&state_path, &corrupt).unwrap();
            assert!(
                LoadedSnapshot::open(&dir).is_err(),
                "flip {flip:#x} at byte {index} went unnoticed"
            );
        }
    }
    fs::write(&state_path, &full).unwrap();

    let memory_path = dir.join(MEMORY_FILE);
    let mut corrupt = memory.clone();
    corrupt[PAGE_SIZE + 17] ^= 0x10;
    fs::write(&memory_path, &corrupt).unwrap();
    let loaded = LoadedSnapshot::open(&dir).unwrap();
    assert!(matches!(
        loaded.verify_memory(),
        Err(SnapshotDirError::Checksum { what: "memory", .. })
    ));
}

#[test]
fn hostile_headers_are_rejected_before_allocating() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    save_snapshot_bytes(&dir, b"x", sample_memory(1).as_slice()).unwrap();
    let state_path = dir.join(STATE_FILE);
    let base = Header {
        kind: PayloadKind::Opaque,
        state_len: 1,
        memory_len: PAGE_SIZE as u64,
        state_crc: 0,
        memory_crc: 0,
    };

    let huge = Header {
        state_len: u64::MAX,
        ..base
    };
    fs::write(&state_path, huge.encode()).unwrap();
    assert!(matches!(
        LoadedSnapshot::open(&dir),
        Err(SnapshotDirError::TooLarge { what: "state", .. })
    ));

    let huge_memory = Header {
        memory_len: MAX_MEMORY_LEN + PAGE_SIZE as u64,
        ..base
    };
    fs::write(&state_path, huge_memory.encode()).unwrap();
    assert!(matches!(
        LoadedSnapshot::open(&dir),
        Err(SnapshotDirError::TooLarge { what: "memory", .. })
    ));

    let misaligned = Header {
        memory_len: 100,
        ..base
    };
    fs::write(&state_path, misaligned.encode()).unwrap();
    assert!(matches!(
        LoadedSnapshot::open(&dir),
        Err(SnapshotDirError::MisalignedMemory(100))
    ));

    let mut newer = base.encode();
    newer[8..12].copy_from_slice(&2u32.to_le_bytes());
    fs::write(&state_path, newer).unwrap();
    assert!(matches!(
        LoadedSnapshot::open(&dir),
        Err(SnapshotDirError::UnsupportedVersion { found: 2, .. })
    ));

    let mut kind = base;
    kind.kind = PayloadKind::Postcard;
    let mut unknown_kind = kind.encode();
    unknown_kind[16] = 7;
    let crc = crc32fast::hash(&unknown_kind[..60]);
    unknown_kind[60..64].copy_from_slice(&crc.to_le_bytes());
    fs::write(&state_path, unknown_kind).unwrap();
    assert!(matches!(
        LoadedSnapshot::open(&dir),
        Err(SnapshotDirError::BadHeader { .. })
    ));

    // A payload that passes the checksum but is not the expected type decodes to an error.
    save_snapshot(&dir, &42u8, sample_memory(1).as_slice()).unwrap();
    assert!(matches!(
        LoadedSnapshot::open(&dir)
            .unwrap()
            .decode_state::<TestState>(),
        Err(SnapshotDirError::Decode(_))
    ));
}

#[test]
fn failed_save_leaves_the_previous_snapshot_intact() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    let memory = sample_memory(4);
    save_snapshot(&dir, &sample_state(), memory.as_slice()).unwrap();

    let other_state = TestState {
        name: "other".into(),
        registers: vec![],
        flag: false,
    };
    let err =
        save_snapshot(&dir, &other_state, &FailingImage(vec![0xee; 8 * PAGE_SIZE])).unwrap_err();
    assert!(matches!(err, SnapshotDirError::Io { .. }), "{err:?}");
    let loaded = LoadedSnapshot::open(&dir).unwrap();
    assert_eq!(loaded.decode_state::<TestState>().unwrap(), sample_state());
    loaded.verify_memory().unwrap();
    assert_eq!(fs::read(dir.join(MEMORY_FILE)).unwrap(), memory);
    assert!(
        leftovers(parent.path()).is_empty(),
        "temporary files left: {:?}",
        leftovers(parent.path())
    );

    // A successful save replaces it completely.
    let new_memory = sample_memory(3);
    save_snapshot(&dir, &other_state, new_memory.as_slice()).unwrap();
    let loaded = LoadedSnapshot::open(&dir).unwrap();
    assert_eq!(loaded.decode_state::<TestState>().unwrap(), other_state);
    assert_eq!(fs::read(dir.join(MEMORY_FILE)).unwrap(), new_memory);
    assert!(leftovers(parent.path()).is_empty());
}

#[test]
fn bad_targets_are_rejected() {
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("plain-file");
    fs::write(&file, b"not a snapshot").unwrap();
    assert!(matches!(
        save_snapshot_bytes(&file, b"x", sample_memory(1).as_slice()),
        Err(SnapshotDirError::NotADirectory { .. })
    ));
    assert!(matches!(
        save_snapshot_bytes(Path::new("/"), b"x", sample_memory(1).as_slice()),
        Err(SnapshotDirError::BadPath(_))
    ));
    let misaligned = vec![0u8; 100];
    assert!(matches!(
        save_snapshot_bytes(&parent.path().join("s"), b"x", misaligned.as_slice()),
        Err(SnapshotDirError::MisalignedMemory(100))
    ));
    assert!(matches!(
        LoadedSnapshot::open(&parent.path().join("missing")),
        Err(SnapshotDirError::HostFile(HostFileError::Io { .. }))
    ));
}
