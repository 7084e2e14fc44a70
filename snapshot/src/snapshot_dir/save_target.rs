//! What `--save-snapshot DIR` may replace: nothing, an empty directory, or a snapvmm snapshot
//! (exactly `state.bin` with our magic and `memory.raw`, both regular files). Anything else
//! (a file, a symbolic link, a directory holding other files) is refused, so a mistyped path can
//! never make a save delete someone's data.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use super::{io_error, temp_dirs, SnapshotDirError, MAGIC, MEMORY_FILE, STATE_FILE};
use crate::host_file;

/// Checks, before anything runs, that a save to `dir` can succeed and would replace nothing but a
/// snapshot: `dir` is absent, empty or a snapshot, and its parent is a directory we can create a
/// temporary directory in.
pub fn check_save_target(dir: &Path) -> Result<(), SnapshotDirError> {
    let (parent, name) = split_target(dir)?;
    check_replaceable(dir)?;
    let probe = temp_dirs::new_temp_path(parent, name);
    fs::create_dir(&probe).map_err(io_error("creating a directory in", parent))?;
    fs::remove_dir(&probe).map_err(io_error("removing", &probe))
}

/// The parent directory (`.` for a bare name) and the file name of a save target.
pub(super) fn split_target(dir: &Path) -> Result<(&Path, &OsStr), SnapshotDirError> {
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) if parent.as_os_str().is_empty() => Ok((Path::new("."), name)),
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(SnapshotDirError::BadPath(dir.to_path_buf())),
    }
}

/// Ok when `dir` does not exist, is an empty directory, or is recognisably a snapshot.
pub(super) fn check_replaceable(dir: &Path) -> Result<(), SnapshotDirError> {
    let refuse = |why: &str| SnapshotDirError::NotASnapshot {
        path: dir.to_path_buf(),
        why: why.to_string(),
    };
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SnapshotDirError::Io {
                what: "inspecting",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    if meta.is_symlink() {
        return Err(refuse("it is a symbolic link"));
    }
    if !meta.is_dir() {
        return Err(SnapshotDirError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut has_state = false;
    let mut has_memory = false;
    for entry in fs::read_dir(dir).map_err(io_error("listing", dir))? {
        let entry = entry.map_err(io_error("listing", dir))?;
        let name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
        if name == STATE_FILE && is_file {
            has_state = true;
        } else if name == MEMORY_FILE && is_file {
            has_memory = true;
        } else {
            return Err(refuse(&format!(
                "it holds {:?}, which a snapshot does not",
                name
            )));
        }
    }
    match (has_state, has_memory) {
        (false, false) => Ok(()),
        (true, true) if has_magic(&dir.join(STATE_FILE)) => Ok(()),
        (true, true) => Err(refuse(
            "its state.bin does not start with the snapvmm magic",
        )),
        _ => Err(refuse("it holds only one of state.bin and memory.raw")),
    }
}

fn has_magic(state_path: &Path) -> bool {
    let Ok(file) = host_file::open_regular(state_path, "snapshot state") else {
        return false;
    };
    let mut magic = [0u8; MAGIC.len()];
    file.take(MAGIC.len() as u64).read_exact(&mut magic).is_ok() && magic == MAGIC
}
