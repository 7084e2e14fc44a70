//! Replaying one saved input (`snapvmm repro`): read it as the fuzzer would have passed it, run
//! it once, describe the verdict.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::seeds;
use crate::target::{FuzzTarget, RunOutcome};

/// Errors replaying an input.
#[derive(Debug, thiserror::Error)]
pub enum ReproError<E: std::error::Error + 'static> {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the target failed")]
    Target(#[source] E),
}

/// The result of one replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub outcome: RunOutcome,
    /// Bytes of the file that were passed (the target's largest input at most).
    pub input_len: usize,
    /// The file was longer than the target's largest input and was cut.
    pub truncated: bool,
    /// The timeout the run had.
    pub timeout: Duration,
}

/// Runs the input in `path` once on `target`.
pub fn replay<T: FuzzTarget>(
    target: &mut T,
    path: &Path,
    timeout: Duration,
) -> Result<Replay, ReproError<T::Error>> {
    let max_len = target.max_input_len();
    let (bytes, full_len) =
        seeds::read_capped(path, max_len).map_err(|source| ReproError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let outcome = target.run(&bytes, timeout).map_err(ReproError::Target)?;
    // Leave the map clean for a next run, as the engine does.
    target.coverage_map().fill(0);
    Ok(Replay {
        outcome,
        input_len: bytes.len(),
        truncated: full_len > max_len as u64,
        timeout,
    })
}

impl fmt::Display for Replay {
    /// One line: `normal end (code 0)`, `crash: CPU exception #PF (vector 14) at pc 0x401234`,
    /// `hang: no end within 1000 ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.outcome {
            RunOutcome::Normal { code } => write!(f, "normal end (code {code})"),
            RunOutcome::Crash(crash) => write!(f, "crash: {} at pc {:#x}", crash.kind, crash.pc),
            RunOutcome::Hang => write!(f, "hang: no end within {} ms", self.timeout.as_millis()),
        }
    }
}
