//! Tests for what a hostile or careless user can put on disk (issue 12): replacing what is not a
//! snapshot, FIFOs, crafted sizes, stale temporaries, odd memory files, trailing payload bytes.

use std::os::unix::fs::symlink;
use std::process::{Child, Command};
use std::time::Duration;

use super::*;
use crate::ram_layout::PAGE_SIZE;
use crate::test_support::{make_fifo, within};

const DEADLINE: Duration = Duration::from_secs(10);

fn one_page() -> Vec<u8> {
    vec![0x42; PAGE_SIZE]
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Item 1: the reproduction. A directory with other files is refused, untouched.
#[test]
fn save_refuses_a_directory_that_is_not_a_snapshot() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("d");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("notes.txt"), b"x\n").unwrap();

    let err = save_snapshot_bytes(&dir, b"state", one_page().as_slice()).unwrap_err();
    assert!(
        matches!(err, SnapshotDirError::NotASnapshot { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("refusing to replace it"), "{err}");
    assert_eq!(fs::read(dir.join("notes.txt")).unwrap(), b"x\n");
    assert!(dir.join("sub").is_dir());
    assert_eq!(
        names_in(parent.path()),
        ["d"],
        "nothing else left beside it"
    );

    assert!(matches!(
        check_save_target(&dir),
        Err(SnapshotDirError::NotASnapshot { .. })
    ));
}

/// Item 1: files named like ours but not ours (no magic, only one of them, a directory named
/// memory.raw) are refused too.
#[test]
fn save_refuses_lookalikes_of_a_snapshot() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");

    fs::create_dir(&dir).unwrap();
    fs::write(dir.join(STATE_FILE), b"my own state file").unwrap();
    fs::write(dir.join(MEMORY_FILE), b"data").unwrap();
    let err = save_snapshot_bytes(&dir, b"s", one_page().as_slice()).unwrap_err();
    assert!(
        matches!(err, SnapshotDirError::NotASnapshot { .. }),
        "{err:?}"
    );
    assert_eq!(
        fs::read(dir.join(STATE_FILE)).unwrap(),
        b"my own state file"
    );

    fs::remove_file(dir.join(MEMORY_FILE)).unwrap();
    assert!(matches!(
        check_save_target(&dir),
        Err(SnapshotDirError::NotASnapshot { .. })
    ));
    fs::create_dir(dir.join(MEMORY_FILE)).unwrap();
    assert!(matches!(
        check_save_target(&dir),
        Err(SnapshotDirError::NotASnapshot { .. })
    ));
    assert!(dir.join(STATE_FILE).is_file());
}

/// Item 1: a symbolic link (to a directory someone cares about) is never swapped away.
#[test]
fn save_refuses_a_symbolic_link() {
    let parent = tempfile::tempdir().unwrap();
    let home = parent.path().join("home");
    fs::create_dir(&home).unwrap();
    let link = parent.path().join("link");
    symlink(&home, &link).unwrap();
    let err = save_snapshot_bytes(&link, b"s", one_page().as_slice()).unwrap_err();
    assert!(
        matches!(err, SnapshotDirError::NotASnapshot { .. }),
        "{err:?}"
    );
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(names_in(&home).is_empty());
}

/// Item 1: what the VMM checks at start. Nonexistent, empty, and earlier snapshots are fine;
/// a file, a missing or unwritable parent are not.
#[test]
fn check_save_target_accepts_only_what_a_save_can_replace() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    check_save_target(&dir).unwrap();
    fs::create_dir(&dir).unwrap();
    check_save_target(&dir).unwrap();
    save_snapshot_bytes(&dir, b"first", one_page().as_slice()).unwrap();
    check_save_target(&dir).unwrap();
    save_snapshot_bytes(&dir, b"second", one_page().as_slice()).unwrap();
    assert_eq!(LoadedSnapshot::open(&dir).unwrap().state_bytes(), b"second");
    assert_eq!(names_in(parent.path()), ["snap"], "the probe left nothing");

    let file = parent.path().join("file");
    fs::write(&file, b"data").unwrap();
    assert!(matches!(
        check_save_target(&file),
        Err(SnapshotDirError::NotADirectory { .. })
    ));
    assert!(matches!(
        check_save_target(&parent.path().join("missing/snap")),
        Err(SnapshotDirError::Io { .. })
    ));
    assert!(matches!(
        check_save_target(&file.join("snap")),
        Err(SnapshotDirError::Io { .. })
    ));
    // procfs refuses new directories even to root.
    assert!(matches!(
        check_save_target(Path::new("/proc/snapvmm-save-target")),
        Err(SnapshotDirError::Io { .. })
    ));
    assert!(matches!(
        check_save_target(Path::new("/")),
        Err(SnapshotDirError::BadPath(_))
    ));
}

/// Item 5: a FIFO as state.bin or memory.raw is an error, at once.
#[test]
fn fifo_snapshot_files_are_refused_without_blocking() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    save_snapshot_bytes(&dir, b"state", one_page().as_slice()).unwrap();

    for file in [STATE_FILE, MEMORY_FILE] {
        let saved = fs::read(dir.join(file)).unwrap();
        fs::remove_file(dir.join(file)).unwrap();
        make_fifo(&dir.join(file));
        let opened = within(DEADLINE, {
            let dir = dir.clone();
            move || LoadedSnapshot::open(&dir).map(|_| ())
        });
        let err = opened.unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotDirError::HostFile(HostFileError::NotRegular { kind: "a FIFO", .. })
            ),
            "{file}: {err:?}"
        );
        fs::remove_file(dir.join(file)).unwrap();
        fs::write(dir.join(file), saved).unwrap();
    }
    LoadedSnapshot::open(&dir).unwrap().verify_memory().unwrap();
}

/// Writes a header with `memory_len` (header checksum recomputed, as an attacker would).
fn write_crafted_header(dir: &Path, memory_len: u64) {
    let header = Header {
        kind: PayloadKind::Opaque,
        state_len: 0,
        memory_len,
        state_crc: crc32fast::hash(&[]),
        memory_crc: 0x1234_5678,
    };
    fs::write(dir.join(STATE_FILE), header.encode()).unwrap();
}

fn sparse_memory_file(dir: &Path, len: u64) {
    let file = File::create(dir.join(MEMORY_FILE)).unwrap();
    file.set_len(len).unwrap();
}

/// Item 6: a header declaring 2^40 bytes and a sparse 1 TiB memory.raw. With the caller's RAM cap
/// it is refused before anything is read; without it, checksumming costs only the data extents.
#[test]
fn terabyte_memory_header_is_refused_and_sparse_files_checksum_fast() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    fs::create_dir(&dir).unwrap();
    let terabyte = 1u64 << 40;
    write_crafted_header(&dir, terabyte);
    sparse_memory_file(&dir, terabyte);

    let err = LoadedSnapshot::open_with_memory_limit(&dir, 64 << 30).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotDirError::TooLarge {
                what: "memory",
                limit: 0x10_0000_0000,
                ..
            }
        ),
        "{err:?}"
    );

    let verified = within(DEADLINE, {
        let dir = dir.clone();
        move || LoadedSnapshot::open(&dir).and_then(|loaded| loaded.verify_memory())
    });
    assert!(
        matches!(
            verified,
            Err(SnapshotDirError::Checksum { what: "memory", .. })
        ),
        "{verified:?}"
    );
}

/// Item 6: the memory cap is checked before the memory file is even opened.
#[test]
fn memory_limit_is_checked_before_the_memory_file() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    save_snapshot_bytes(&dir, b"state", vec![0u8; 4 * PAGE_SIZE].as_slice()).unwrap();
    fs::remove_file(dir.join(MEMORY_FILE)).unwrap();
    make_fifo(&dir.join(MEMORY_FILE));
    let err = LoadedSnapshot::open_with_memory_limit(&dir, 2 * PAGE_SIZE as u64).unwrap_err();
    assert!(
        matches!(err, SnapshotDirError::TooLarge { what: "memory", .. }),
        "{err:?}"
    );
}

/// Smaller items: a memory file longer than declared, or a directory, is reported as what it is.
#[test]
fn long_or_directory_memory_file_is_not_called_truncated() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    save_snapshot_bytes(&dir, b"state", one_page().as_slice()).unwrap();
    let memory_path = dir.join(MEMORY_FILE);

    OpenOptions::new()
        .write(true)
        .open(&memory_path)
        .unwrap()
        .set_len(2 * PAGE_SIZE as u64)
        .unwrap();
    let err = LoadedSnapshot::open(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotDirError::MemoryTooLong {
                declared: 4096,
                actual: 8192,
                ..
            }
        ),
        "{err:?}"
    );

    fs::remove_file(&memory_path).unwrap();
    fs::create_dir(&memory_path).unwrap();
    let err = LoadedSnapshot::open(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotDirError::HostFile(HostFileError::NotRegular {
                kind: "a directory",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("is a directory"), "{err}");
}

/// Smaller items: a postcard payload with bytes after the value is rejected.
#[test]
fn trailing_bytes_after_the_encoded_state_are_rejected() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    let mut payload = postcard::to_allocvec(&(7u32, String::from("state"))).unwrap();
    payload.extend_from_slice(b"junk");
    save_snapshot_payload(&dir, PayloadKind::Postcard, &payload, one_page().as_slice()).unwrap();
    let loaded = LoadedSnapshot::open(&dir).unwrap();
    let err = loaded.decode_state::<(u32, String)>().unwrap_err();
    assert!(
        matches!(err, SnapshotDirError::TrailingPayload { extra: 4 }),
        "{err:?}"
    );

    save_snapshot(&dir, &(7u32, String::from("state")), one_page().as_slice()).unwrap();
    let loaded = LoadedSnapshot::open(&dir).unwrap();
    assert_eq!(
        loaded.decode_state::<(u32, String)>().unwrap(),
        (7, "state".to_string())
    );
}

/// A child process that stays alive until dropped.
struct LiveChild(Child);

impl Drop for LiveChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn fake_temp(parent: &Path, name: &str, with_files: bool) -> PathBuf {
    let temp = parent.join(name);
    fs::create_dir(&temp).unwrap();
    if with_files {
        fs::write(temp.join(STATE_FILE), MAGIC).unwrap();
        File::create(temp.join(MEMORY_FILE))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
    }
    temp
}

/// Item 8: temporaries of dead processes are removed at the next save; those of live processes,
/// other names, and anything holding foreign files are not.
#[test]
fn stale_temporaries_of_dead_processes_are_removed_at_the_next_save() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    save_snapshot_bytes(&dir, b"first", one_page().as_slice()).unwrap();

    let dead = dead_pid();
    let live = LiveChild(Command::new("sleep").arg("60").spawn().unwrap());
    let own = std::process::id();
    let stale_full = fake_temp(parent.path(), &format!(".snap.tmp-{dead}-0"), true);
    let stale_empty = fake_temp(parent.path(), &format!(".snap.tmp-{dead}-1"), false);
    let live_temp = fake_temp(parent.path(), &format!(".snap.tmp-{}-0", live.0.id()), true);
    let own_temp = fake_temp(parent.path(), &format!(".snap.tmp-{own}-999999"), true);
    let other_name = fake_temp(parent.path(), &format!(".other.tmp-{dead}-0"), true);
    let not_ours = fake_temp(parent.path(), &format!(".snap.tmp-{dead}-x"), true);
    let with_foreign = fake_temp(parent.path(), &format!(".snap.tmp-{dead}-2"), true);
    fs::write(with_foreign.join("notes.txt"), b"keep me").unwrap();

    save_snapshot_bytes(&dir, b"second", one_page().as_slice()).unwrap();

    assert!(!stale_full.exists(), "stale temporary with files kept");
    assert!(!stale_empty.exists(), "empty stale temporary kept");
    for kept in [&live_temp, &own_temp, &other_name, &not_ours] {
        assert!(
            kept.join(MEMORY_FILE).exists(),
            "{} was touched",
            kept.display()
        );
    }
    assert_eq!(
        fs::read(with_foreign.join("notes.txt")).unwrap(),
        b"keep me"
    );
    assert_eq!(LoadedSnapshot::open(&dir).unwrap().state_bytes(), b"second");
}
