//! Seed inputs from `--corpus DIR`s: every regular file (subdirectories included, hidden files
//! skipped), truncated to the target's largest input with a warning.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::names;

/// The input used when no seed is given.
pub const DEFAULT_SEED: &[u8] = b"hello";
/// Most seed files read.
pub const MAX_SEEDS: usize = 1_000_000;
/// Deepest subdirectory searched.
const MAX_DEPTH: usize = 16;

/// Errors reading seeds.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read corpus {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corpus {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("the corpus directories hold more than {MAX_SEEDS} files")]
    TooMany,
}

/// One seed.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Name for `orig:` (sanitised file name).
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Seeds read from directories, with warnings for files that were truncated or skipped.
#[derive(Debug, Default)]
pub struct LoadedSeeds {
    pub seeds: Vec<Seed>,
    pub warnings: Vec<String>,
}

/// Checks that every corpus path is a readable directory.
pub fn check_dirs(dirs: &[PathBuf]) -> Result<(), SeedError> {
    for dir in dirs {
        let meta = fs::metadata(dir).map_err(|source| SeedError::Read {
            path: dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(SeedError::NotADirectory { path: dir.clone() });
        }
        fs::read_dir(dir).map_err(|source| SeedError::Read {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Reads every seed under `dirs`, each at most `max_len` bytes.
pub fn load(dirs: &[PathBuf], max_len: usize) -> Result<LoadedSeeds, SeedError> {
    let mut files = Vec::new();
    for dir in dirs {
        collect_files(dir, 0, &mut files)?;
    }
    files.sort();
    let mut loaded = LoadedSeeds::default();
    for path in files {
        let (bytes, full_len) = read_capped(&path, max_len).map_err(|source| SeedError::Read {
            path: path.clone(),
            source,
        })?;
        if full_len == 0 {
            loaded.warnings.push(format!(
                "warning: seed {} is empty, skipped",
                path.display()
            ));
            continue;
        }
        if full_len > max_len as u64 {
            loaded.warnings.push(format!(
                "warning: seed {} has {full_len} bytes, truncated to the target's {max_len}",
                path.display()
            ));
        }
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        loaded.seeds.push(Seed {
            name: names::sanitise_seed_name(&file_name),
            bytes,
        });
    }
    Ok(loaded)
}

/// Reads at most `max_len` bytes of a file; also returns the file's full length.
pub fn read_capped(path: &Path, max_len: usize) -> io::Result<(Vec<u8>, u64)> {
    let file = fs::File::open(path)?;
    let full_len = file.metadata()?.len();
    let mut bytes = Vec::new();
    file.take(max_len as u64).read_to_end(&mut bytes)?;
    Ok((bytes, full_len))
}

fn collect_files(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) -> Result<(), SeedError> {
    let read_error = |source| SeedError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for item in fs::read_dir(dir).map_err(read_error)? {
        let item = item.map_err(read_error)?;
        if item.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let file_type = item.file_type().map_err(read_error)?;
        let path = item.path();
        if file_type.is_dir() && depth < MAX_DEPTH {
            collect_files(&path, depth + 1, files)?;
        } else if file_type.is_file() || (file_type.is_symlink() && path.is_file()) {
            if files.len() >= MAX_SEEDS {
                return Err(SeedError::TooMany);
            }
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_truncates_and_skips() {
        let dir = std::env::temp_dir().join(format!("fuzz-seeds-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("a"), b"abc").unwrap();
        fs::write(dir.join("sub/big"), vec![7u8; 100]).unwrap();
        fs::write(dir.join("empty"), b"").unwrap();
        fs::write(dir.join(".hidden"), b"x").unwrap();
        let loaded = load(std::slice::from_ref(&dir), 10).unwrap();
        assert_eq!(loaded.seeds.len(), 2);
        assert_eq!(loaded.seeds[0].bytes, b"abc");
        assert_eq!(loaded.seeds[1].bytes.len(), 10);
        assert_eq!(loaded.warnings.len(), 2);
        assert!(loaded.warnings.iter().any(|w| w.contains("truncated")));
        assert!(check_dirs(&[dir.join("a")]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
