//! AFL++'s output directory: `OUT/default/{queue,crashes,hangs}`, `fuzzer_stats`, `plot_data`,
//! `cmdline`, `fuzzer_setup`; and what an existing one tells a resumed campaign.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::names;
use crate::target::CrashInfo;

/// Name of an instance's directory under the output directory when none is given (AFL++'s
/// default; with several instances each has its own, as AFL++'s `-M`/`-S` names).
pub const INSTANCE_NAME: &str = "default";

/// Whether `name` can name an instance directory (AFL++ allows letters, digits, `_` and `-`).
pub fn is_valid_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Most files read from one directory of an existing campaign.
const MAX_DIR_ENTRIES: usize = 1_000_000;

/// Errors of the output directory.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output directory {path} cannot be written")]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds more than {MAX_DIR_ENTRIES} files")]
    TooManyFiles { path: PathBuf },
}

/// The paths of one instance's output.
#[derive(Debug, Clone)]
pub struct OutputLayout {
    /// The output directory the user named.
    pub root: PathBuf,
    /// `root/NAME` (`root/default` unless named).
    pub instance: PathBuf,
    pub queue: PathBuf,
    pub crashes: PathBuf,
    pub hangs: PathBuf,
    pub fuzzer_stats: PathBuf,
    pub plot_data: PathBuf,
    pub cmdline: PathBuf,
    pub fuzzer_setup: PathBuf,
    /// Engine state kept between sessions (crash and hang coverage histories).
    pub state_dir: PathBuf,
}

impl OutputLayout {
    /// The layout of instance `name` under `root` (nothing is created).
    pub fn new(root: &Path, name: &str) -> Self {
        let instance = root.join(name);
        Self {
            root: root.to_path_buf(),
            queue: instance.join("queue"),
            crashes: instance.join("crashes"),
            hangs: instance.join("hangs"),
            fuzzer_stats: instance.join("fuzzer_stats"),
            plot_data: instance.join("plot_data"),
            cmdline: instance.join("cmdline"),
            fuzzer_setup: instance.join("fuzzer_setup"),
            state_dir: instance.join(".snapvmm_state"),
            instance,
        }
    }

    /// Creates the directories and checks that files can be written in them.
    pub fn create(&self) -> Result<(), OutputError> {
        for dir in [&self.queue, &self.crashes, &self.hangs, &self.state_dir] {
            fs::create_dir_all(dir).map_err(|source| OutputError::NotWritable {
                path: self.root.clone(),
                source,
            })?;
        }
        let probe = self.instance.join(".write_probe");
        fs::write(&probe, b"")
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|source| OutputError::NotWritable {
                path: self.root.clone(),
                source,
            })
    }
}

/// One file of an existing queue, crashes or hangs directory.
#[derive(Debug, Clone)]
pub struct ExistingEntry {
    pub id: u32,
    pub path: PathBuf,
    pub file_name: String,
}

/// What an existing output directory holds, for resuming.
#[derive(Debug, Default)]
pub struct ResumeInfo {
    /// Queue entries, by ascending id.
    pub queue: Vec<ExistingEntry>,
    /// Crash files, by ascending id.
    pub crashes: Vec<ExistingEntry>,
    /// Crashes described by the crash files' names.
    pub crash_infos: Vec<CrashInfo>,
    /// Next free ids.
    pub next_crash_id: u32,
    pub next_hang_id: u32,
    pub saved_hangs: u64,
    /// Coverage histories of the saved crashes and hangs (empty when absent or of another size).
    pub crash_history: Vec<u8>,
    pub hang_history: Vec<u8>,
    /// From the previous `fuzzer_stats`.
    pub previous_run_time: Duration,
    pub previous_execs: u64,
}

impl ResumeInfo {
    /// Whether there is anything to resume from.
    pub fn is_resume(&self) -> bool {
        !self.queue.is_empty()
    }
}

/// File names of the crash and hang coverage histories in the state directory.
const CRASH_HISTORY: &str = "crash_history";
const HANG_HISTORY: &str = "hang_history";

/// Keeps the crash and hang coverage histories for the next session.
pub fn write_histories(
    layout: &OutputLayout,
    crash: &[u8],
    hang: &[u8],
) -> Result<(), OutputError> {
    write_file(&layout.state_dir.join(CRASH_HISTORY), crash)?;
    write_file(&layout.state_dir.join(HANG_HISTORY), hang)
}

/// A history written by [`write_histories`], if it is there and has `map_len` bytes.
fn read_history(path: &Path, map_len: usize) -> Vec<u8> {
    let Ok(file) = fs::File::open(path) else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    let read = io::Read::read_to_end(&mut io::Read::take(file, map_len as u64 + 1), &mut bytes);
    if read.is_err() || bytes.len() != map_len {
        return Vec::new();
    }
    bytes
}

/// Reads what `layout` already holds, for a target whose coverage map has `map_len` entries.
pub fn scan_existing(layout: &OutputLayout, map_len: usize) -> Result<ResumeInfo, OutputError> {
    let queue = list_entries(&layout.queue)?;
    let crashes = list_entries(&layout.crashes)?;
    let hangs = list_entries(&layout.hangs)?;
    let crash_infos = crashes
        .iter()
        .filter_map(|entry| names::parse_crash(&entry.file_name))
        .collect();
    let next_id =
        |entries: &[ExistingEntry]| entries.last().map_or(0, |entry| entry.id.saturating_add(1));
    let (previous_run_time, previous_execs) = read_previous_stats(&layout.fuzzer_stats);
    Ok(ResumeInfo {
        crash_history: read_history(&layout.state_dir.join(CRASH_HISTORY), map_len),
        hang_history: read_history(&layout.state_dir.join(HANG_HISTORY), map_len),
        next_crash_id: next_id(&crashes),
        next_hang_id: next_id(&hangs),
        saved_hangs: hangs.len() as u64,
        queue,
        crashes,
        crash_infos,
        previous_run_time,
        previous_execs,
    })
}

/// The AFL++-named files of a directory (`id:NNNNNN,...`), by ascending id.
fn list_entries(dir: &Path) -> Result<Vec<ExistingEntry>, OutputError> {
    let read_error = |source| OutputError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(entries),
        Err(e) => return Err(read_error(e)),
    };
    for item in listing {
        let item = item.map_err(read_error)?;
        if entries.len() >= MAX_DIR_ENTRIES {
            return Err(OutputError::TooManyFiles {
                path: dir.to_path_buf(),
            });
        }
        let Ok(file_name) = item.file_name().into_string() else {
            continue;
        };
        let Some(id) = names::parse_id(&file_name) else {
            continue;
        };
        if !item.file_type().map_err(read_error)?.is_file() {
            continue;
        }
        entries.push(ExistingEntry {
            id,
            path: item.path(),
            file_name,
        });
    }
    entries.sort_by_key(|entry| entry.id);
    Ok(entries)
}

/// `run_time` and `execs_done` of an earlier `fuzzer_stats`; zero when absent or unreadable.
fn read_previous_stats(path: &Path) -> (Duration, u64) {
    const MAX_STATS_LEN: u64 = 64 * 1024;
    let Ok(file) = fs::File::open(path) else {
        return (Duration::ZERO, 0);
    };
    let mut text = String::new();
    if io::Read::read_to_string(&mut io::Read::take(file, MAX_STATS_LEN), &mut text).is_err() {
        return (Duration::ZERO, 0);
    }
    let value = |key: &str| -> u64 {
        text.lines()
            .find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == key).then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0)
    };
    (Duration::from_secs(value("run_time")), value("execs_done"))
}

/// Writes `cmdline` (one argument a line, as AFL++) and `fuzzer_setup`.
pub fn write_setup_files(
    layout: &OutputLayout,
    command_line: &[String],
) -> Result<(), OutputError> {
    let mut cmdline = String::new();
    for arg in command_line {
        cmdline.push_str(arg);
        cmdline.push('\n');
    }
    write_file(&layout.cmdline, cmdline.as_bytes())?;

    let mut setup = String::from("# environment variables:\n");
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| key.starts_with("AFL_") || key.starts_with("SNAPVMM_"))
        .collect();
    vars.sort();
    for (key, value) in vars {
        setup.push_str(&format!("{key}={value}\n"));
    }
    setup.push_str("# command line:\n");
    let quoted: Vec<String> = command_line.iter().map(|arg| shell_quote(arg)).collect();
    setup.push_str(&quoted.join(" "));
    setup.push('\n');
    write_file(&layout.fuzzer_setup, setup.as_bytes())
}

/// Writes `crashes/README.txt` unless present, as AFL++ does.
pub fn write_crashes_readme(
    layout: &OutputLayout,
    command_line: &[String],
) -> Result<(), OutputError> {
    let path = layout.crashes.join("README.txt");
    if path.exists() {
        return Ok(());
    }
    let text = format!(
        "Command line used to find these crashes:\n\n{}\n\n\
         File names: id:N,sig:S,src:PARENT,time:MS,execs:N,op:OP,rep:N,kind:KIND,code:C,pc:RIP\n\
         kind is crash (the guest reported CRASH with code C), exception (CPU exception vector C),\n\
         triplefault or emulation; sig is the POSIX signal closest in meaning (SIGABRT 6 for a\n\
         reported crash, SIGSEGV 11, SIGILL 4, SIGFPE 8, SIGTRAP 5, SIGBUS 7).\n\
         Replay one with: snapvmm repro <the same VM options> FILE\n",
        command_line
            .iter()
            .map(|arg| shell_quote(arg))
            .collect::<Vec<_>>()
            .join(" ")
    );
    write_file(&path, text.as_bytes())
}

/// Writes a whole file, replacing it atomically (a reader never sees half a file).
pub fn write_file(path: &Path, contents: &[u8]) -> Result<(), OutputError> {
    let write_error = |source| OutputError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = fs::File::create(&tmp).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_error)
}

/// Single-quotes an argument for a POSIX shell.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', "'\"'\"'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_orders_by_id_and_reads_previous_stats() {
        let dir = std::env::temp_dir().join(format!("fuzz-output-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let layout = OutputLayout::new(&dir, INSTANCE_NAME);
        layout.create().unwrap();
        fs::write(layout.queue.join("id:000002,time:1,execs:1,orig:b"), b"b").unwrap();
        fs::write(layout.queue.join("id:000000,time:0,execs:0,orig:a"), b"a").unwrap();
        fs::write(layout.queue.join(".hidden"), b"x").unwrap();
        fs::write(
            layout.crashes.join("id:000004,sig:06,src:000000,time:1,execs:1,op:havoc,rep:1,kind:crash,code:3,pc:0x10"),
            b"c",
        )
        .unwrap();
        fs::write(layout.crashes.join("README.txt"), b"r").unwrap();
        fs::write(
            &layout.fuzzer_stats,
            "run_time          : 42\nexecs_done        : 1000\n",
        )
        .unwrap();
        let info = scan_existing(&layout, 16).unwrap();
        assert!(info.crash_history.is_empty());
        assert!(info.is_resume());
        assert_eq!(
            info.queue.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(info.next_crash_id, 5);
        assert_eq!(info.next_hang_id, 0);
        assert_eq!(info.crash_infos.len(), 1);
        assert_eq!(info.previous_run_time, Duration::from_secs(42));
        assert_eq!(info.previous_execs, 1000);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shell_quote_escapes_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\"'\"'b'");
    }
}
