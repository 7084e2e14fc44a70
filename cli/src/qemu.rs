//! QEMU migration streams on the command line: `snapvmm snapshot export|import` (offline, a
//! snapshot directory <-> a stream) and `snapvmm run --incoming exec:CMD|file:PATH`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use vmm::qemu_stream::{self, ImportedStream};
use vmm::{Machine, MemSize, ResumeOptions};

/// Bytes buffered between the stream and a pipe or file.
const STREAM_BUFFER: usize = 1 << 20;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Write the snapshot in DIR as a QEMU 7.2 `microvm` migration stream to OUT ("-": stdout).
    Export(ExportArgs),
    /// Read a QEMU 7.2 stream (microvm, pc-i440fx-7.2, pc-q35-7.2) from IN ("-": stdin) into a
    /// snapshot directory DIR that `snapvmm run --from-snapshot DIR` resumes.
    Import(ImportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Snapshot directory (written by `--save-snapshot` or `snapshot import`).
    pub dir: PathBuf,
    /// Output file, or "-" for stdout.
    pub out: PathBuf,
    /// QEMU keeps the guest paused after loading the stream (until `cont`).
    #[arg(long)]
    pub paused: bool,
}

#[derive(Args)]
pub struct ImportArgs {
    /// Stream file, or "-" for stdin.
    pub input: PathBuf,
    /// Snapshot directory to write (absent, empty or an earlier snapshot).
    pub dir: PathBuf,
}

pub fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Export(args) => export(&args),
        SnapshotCommand::Import(args) => import(&args),
    }
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    if args.out.as_os_str() == "-" {
        let out = BufWriter::with_capacity(STREAM_BUFFER, std::io::stdout().lock());
        let mut out = qemu_stream::export_snapshot_dir(
            &args.dir,
            !args.paused,
            qemu_stream::StreamOut::Writer(out),
        )?;
        out.flush().context("cannot write the stream to stdout")?;
        return Ok(());
    }
    // Written next to OUT and renamed, so a failed export leaves no partial stream behind.
    let partial = partial_path(&args.out);
    let file =
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let result = qemu_stream::export_snapshot_dir(
        &args.dir,
        !args.paused,
        qemu_stream::StreamOut::File(&file, &file),
    )
    .map_err(anyhow::Error::from)
    .and_then(|file| {
        file.sync_all()
            .with_context(|| format!("cannot write {}", partial.display()))
    })
    .and_then(|()| {
        std::fs::rename(&partial, &args.out)
            .with_context(|| format!("cannot rename to {}", args.out.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

fn import(args: &ImportArgs) -> anyhow::Result<()> {
    vmm::disk::check_snapshot_target(&args.dir)?;
    let imported = if args.input.as_os_str() == "-" {
        load(std::io::stdin().lock())?
    } else {
        let file = File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        load(file)?
    };
    if !imported.firmware.is_empty() {
        eprintln!(
            "snapvmm: note: the BIOS QEMU mapped below 4 GiB is not kept in a snapshot \
             directory (its copy in low RAM is)"
        );
    }
    let memory =
        snapshot::SnapshotMemory::from_file(imported.memory, imported.state.mem_bytes as usize)
            .context("cannot read the imported RAM")?;
    vmm::disk::write_snapshot(&args.dir, &imported.state, &memory)?;
    Ok(())
}

/// Loads a stream with this host's CPU model for the vCPU.
fn load<R: Read>(input: R) -> anyhow::Result<ImportedStream> {
    let model = qemu_stream::HostVcpuModel::probe()?;
    let imported =
        qemu_stream::import_stream(BufReader::with_capacity(STREAM_BUFFER, input), &model)?;
    if !imported.skipped_sections.is_empty() {
        tracing::info!(sections = ?imported.skipped_sections, "devices snapvmm does not have");
    }
    Ok(imported)
}

/// Where a stream comes from or goes to: QEMU's `exec:CMD` (`/bin/sh -c CMD`) or `file:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamUri {
    Exec(String),
    File(PathBuf),
}

impl FromStr for StreamUri {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(command) = s.strip_prefix("exec:") {
            if command.trim().is_empty() {
                return Err("exec: needs a command".into());
            }
            Ok(StreamUri::Exec(command.to_string()))
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path".into());
            }
            Ok(StreamUri::File(PathBuf::from(path)))
        } else {
            Err(format!("{s:?} is not exec:CMD or file:PATH"))
        }
    }
}

/// `/bin/sh -c command` with the given end of its standard streams piped.
pub fn shell(command: &str, stdin: Stdio, stdout: Stdio) -> anyhow::Result<Child> {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(stdin)
        .stdout(stdout)
        .spawn()
        .with_context(|| format!("cannot run /bin/sh -c {command:?}"))
}

/// `run --incoming`: loads the stream and resumes it. `mem`, if given, must be the stream's RAM.
pub fn incoming(
    uri: &StreamUri,
    mem: Option<MemSize>,
    options: &ResumeOptions,
) -> anyhow::Result<(Machine, bool)> {
    let imported = match uri {
        StreamUri::File(path) => {
            load(File::open(path).with_context(|| format!("cannot open {}", path.display()))?)?
        }
        StreamUri::Exec(command) => {
            let mut child = shell(command, Stdio::null(), Stdio::piped())?;
            let result = match child.stdout.take() {
                Some(stdout) => load(stdout),
                None => Err(anyhow::anyhow!("no pipe from {command:?}")),
            };
            if result.is_err() {
                let _ = child.kill();
            }
            // The pipe is closed by now: a command with more to write ends (SIGPIPE).
            let status = child
                .wait()
                .context("cannot wait for the incoming command")?;
            let imported = result?;
            if !status.success() {
                eprintln!("snapvmm: note: incoming command {command:?} ended with {status}");
            }
            imported
        }
    };
    if let Some(mem) = mem {
        if mem.0 != imported.state.mem_bytes {
            bail!(
                "--mem {} does not match the stream's RAM ({} bytes)",
                mem.0,
                imported.state.mem_bytes
            );
        }
    }
    let running = imported.running;
    Ok((Machine::from_qemu_stream(imported, options)?, running))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_like_qemus() {
        assert_eq!(
            "exec:cat > f".parse::<StreamUri>(),
            Ok(StreamUri::Exec("cat > f".into()))
        );
        assert_eq!(
            "file:/tmp/x".parse::<StreamUri>(),
            Ok(StreamUri::File("/tmp/x".into()))
        );
        assert!("tcp:1.2.3.4:5".parse::<StreamUri>().is_err());
        assert!("exec: ".parse::<StreamUri>().is_err());
        assert!("file:".parse::<StreamUri>().is_err());
    }
}
