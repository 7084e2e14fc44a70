//! The temporary sibling directories a save writes into (`.<name>.tmp-<pid>-<n>`), and removal
//! that only ever deletes what a save wrote: the two snapshot files, then the emptied directory.
//! Anything else found inside is left where it is.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{io_error, SnapshotDirError, MEMORY_FILE, STATE_FILE};

/// A fresh temporary name beside the snapshot `name` in `parent`, unique in this process.
pub(super) fn new_temp_path(parent: &Path, name: &OsStr) -> PathBuf {
    static SAVES: AtomicU64 = AtomicU64::new(0);
    parent.join(format!(
        "{}{}-{}",
        temp_prefix(name),
        std::process::id(),
        SAVES.fetch_add(1, Ordering::Relaxed)
    ))
}

fn temp_prefix(name: &OsStr) -> String {
    format!(".{}.tmp-", name.to_string_lossy())
}

/// The PID in a temporary directory name of snapshot `name`, if `entry` is one.
fn temp_owner(entry: &OsStr, name: &OsStr) -> Option<u32> {
    let rest = entry.to_str()?.strip_prefix(&temp_prefix(name))?;
    let (pid, counter) = rest.split_once('-')?;
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !decimal(pid) || !decimal(counter) {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with this PID exists (in our PID namespace).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes temporary directories of snapshot `name` in `parent` left by processes that are gone
/// (killed mid-save). Live processes' directories, ours included, are never touched. Returns how
/// many were removed; one that holds anything but snapshot files is kept and skipped.
pub(super) fn remove_stale_temps(parent: &Path, name: &OsStr) -> Result<usize, SnapshotDirError> {
    let entries = fs::read_dir(parent).map_err(io_error("listing", parent))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io_error("listing", parent))?;
        let Some(pid) = temp_owner(&entry.file_name(), name) else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if !is_dir {
            continue;
        }
        match remove_snapshot_dir(&entry.path()) {
            Ok(()) => removed += 1,
            Err(err) => tracing::warn!("kept a stale temporary snapshot directory: {err}"),
        }
    }
    Ok(removed)
}

/// Removes a directory that a save wrote: its snapshot files, then the directory itself, which
/// fails (and keeps everything else) if anything else is inside.
pub(super) fn remove_snapshot_dir(dir: &Path) -> Result<(), SnapshotDirError> {
    for file in [STATE_FILE, MEMORY_FILE] {
        let path = dir.join(file);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {
                fs::remove_file(&path).map_err(io_error("removing", &path))?;
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SnapshotDirError::Io {
                    what: "inspecting",
                    path,
                    source,
                })
            }
        }
    }
    fs::remove_dir(dir).map_err(|source| {
        if source.raw_os_error() == Some(libc::ENOTEMPTY) {
            SnapshotDirError::NotASnapshot {
                path: dir.to_path_buf(),
                why: "it holds files a save did not write; it was kept".into(),
            }
        } else {
            SnapshotDirError::Io {
                what: "removing",
                path: dir.to_path_buf(),
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_naming_is_recognised() {
        let name = OsStr::new("snap");
        assert_eq!(temp_owner(OsStr::new(".snap.tmp-123-0"), name), Some(123));
        assert_eq!(temp_owner(OsStr::new(".snap.tmp-7-42"), name), Some(7));
        for other in [
            "snap",
            ".snap.tmp-",
            ".snap.tmp-123",
            ".snap.tmp-123-",
            ".snap.tmp--1",
            ".snap.tmp-12a-0",
            ".snap.tmp-1-0-0",
            ".snap.tmp-+1-0",
            ".snap.old",
            ".other.tmp-123-0",
            ".snap.tmp-99999999999999-0",
        ] {
            assert_eq!(temp_owner(OsStr::new(other), name), None, "{other}");
        }
    }

    #[test]
    fn liveness() {
        assert!(process_alive(std::process::id()));
        assert!(process_alive(1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
