//! `snapvmm build-target`: turns a libFuzzer harness (C sources defining
//! `LLVMFuzzerTestOneInput`, maybe `LLVMFuzzerInitialize`) into a bare-metal fuzz target on the
//! guest runtime, with clang's trace-pc-guard edges in BAR4 (docs/libfuzzer-targets.md).
//!
//! Everything but clang itself is embedded in this binary (`guest_tools::libfuzzer_kit`: the
//! runtime's kernel object, user library and linker script, the shim, the libc subset and its
//! headers); it is unpacked into a private temporary directory for the build and removed after.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use guest_tools::libfuzzer_kit;
use thiserror::Error;

use crate::STATUS_SETUP_ERROR;

/// The clang that builds harnesses (Debian's `clang`, 14); `CLANG` overrides it, as in build.rs.
const DEFAULT_CLANG: &str = "clang";
/// Sources larger than this are refused (a harness is a few files of C, not a data file).
const MAX_SOURCE_BYTES: u64 = 64 << 20;

#[derive(Args)]
pub struct BuildTargetArgs {
    /// The harness's C sources: one of them defines LLVMFuzzerTestOneInput.
    #[arg(value_name = "SOURCE", required = true)]
    sources: Vec<PathBuf>,
    /// The fuzz target to write (an ELF for `snapvmm fuzz --kernel`).
    #[arg(short = 'o', long = "output", value_name = "TARGET")]
    output: PathBuf,
    /// Add a directory to the include path (repeatable).
    #[arg(short = 'I', value_name = "DIR")]
    include: Vec<PathBuf>,
    /// Define a macro, NAME or NAME=VALUE (repeatable).
    #[arg(short = 'D', value_name = "NAME[=VALUE]")]
    define: Vec<String>,
    /// Pass one more flag to clang when compiling the sources (repeatable), e.g. --cflag=-O1.
    #[arg(long = "cflag", value_name = "FLAG", allow_hyphen_values = true)]
    cflags: Vec<String>,
    /// Print the clang commands and clang's full diagnostics.
    #[arg(short = 'v', long)]
    verbose: bool,
}

#[derive(Debug, Error)]
pub enum BuildTargetError {
    #[error("clang not found: `snapvmm build-target` needs Debian's clang 14 (apt-get install clang) or CLANG=/path/to/clang")]
    ClangMissing,
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    ReadSource {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_SOURCE_BYTES} bytes: not a harness source")]
    SourceTooLarge { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot compile {source_file}: {first_error}")]
    Compile {
        source_file: PathBuf,
        first_error: String,
    },
    #[error("no LLVMFuzzerTestOneInput in {sources}: a libFuzzer harness defines `int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)`")]
    NoTestOneInput { sources: String },
    #[error("the harness defines main(): the target's main is snapvmm's libFuzzer shim (leave main out, as for libFuzzer's -fsanitize=fuzzer)")]
    DefinesMain,
    #[error("the harness uses `{symbol}`, which the freestanding libc subset does not have (docs/libfuzzer-targets.md lists what it has)")]
    Undefined { symbol: String },
    #[error("cannot link the target: {first_error}")]
    Link { first_error: String },
}

/// Runs the command; its failure is one line on stderr and status 64.
pub fn main(args: BuildTargetArgs) -> ExitCode {
    match build_target(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("snapvmm: build-target: {error}");
            ExitCode::from(STATUS_SETUP_ERROR)
        }
    }
}

fn build_target(args: &BuildTargetArgs) -> Result<(), BuildTargetError> {
    let clang = std::env::var("CLANG").unwrap_or_else(|_| DEFAULT_CLANG.to_string());
    check_clang(&clang)?;
    for source in &args.sources {
        check_source(source)?;
    }
    let work = WorkDir::create()?;
    work.unpack_kit()?;

    let mut objects = Vec::new();
    for (index, source) in args.sources.iter().enumerate() {
        let object = work.path.join(format!("harness-{index}.o"));
        compile(&clang, args, &work, source, &object)?;
        objects.push(object);
    }
    let linked = work.path.join("target.elf");
    link(&clang, args, &work, &objects, &linked)?;
    fs::copy(&linked, &args.output).map_err(|source| BuildTargetError::Io {
        action: "write",
        path: args.output.clone(),
        source,
    })?;
    eprintln!(
        "snapvmm: built {}; fuzz it with: snapvmm fuzz --kernel {} --out DIR",
        args.output.display(),
        args.output.display()
    );
    Ok(())
}

fn check_clang(clang: &str) -> Result<(), BuildTargetError> {
    match Command::new(clang).arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(_) => Err(BuildTargetError::ClangMissing),
        Err(error) if error.kind() == ErrorKind::NotFound => Err(BuildTargetError::ClangMissing),
        Err(source) => Err(BuildTargetError::Spawn {
            program: clang.to_string(),
            source,
        }),
    }
}

fn check_source(path: &Path) -> Result<(), BuildTargetError> {
    let metadata = fs::metadata(path).map_err(|source| BuildTargetError::ReadSource {
        path: path.to_path_buf(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(BuildTargetError::ReadSource {
            path: path.to_path_buf(),
            source: std::io::Error::new(ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    if metadata.len() > MAX_SOURCE_BYTES {
        return Err(BuildTargetError::SourceTooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// A private temporary directory holding the unpacked kit and the objects; removed on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> Result<Self, BuildTargetError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "snapvmm-build-target-{}-{nanos}",
            std::process::id()
        ));
        // create_dir, not create_dir_all: fails rather than reuse a directory someone else made.
        fs::create_dir(&path).map_err(|source| BuildTargetError::Io {
            action: "create",
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }

    fn unpack_kit(&self) -> Result<(), BuildTargetError> {
        for (name, contents) in libfuzzer_kit::FILES {
            let path = self.path.join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|source| BuildTargetError::Io {
                    action: "create",
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            fs::write(&path, contents).map_err(|source| BuildTargetError::Io {
                action: "write",
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn kit_file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn compile(
    clang: &str,
    args: &BuildTargetArgs,
    work: &WorkDir,
    source: &Path,
    object: &Path,
) -> Result<(), BuildTargetError> {
    let mut command = Command::new(clang);
    command
        .args(libfuzzer_kit::HARNESS_CFLAGS)
        .arg("-I")
        .arg(work.kit_file("include"));
    for dir in &args.include {
        command.arg("-I").arg(dir);
    }
    for define in &args.define {
        command.arg(format!("-D{define}"));
    }
    command
        .args(&args.cflags)
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object);
    let output = run(&mut command, args.verbose)?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(BuildTargetError::Compile {
        source_file: source.to_path_buf(),
        first_error: first_error(&stderr, args.verbose),
    })
}

fn link(
    clang: &str,
    args: &BuildTargetArgs,
    work: &WorkDir,
    objects: &[PathBuf],
    output_path: &Path,
) -> Result<(), BuildTargetError> {
    let mut command = Command::new(clang);
    command
        .args(["-nostdlib", "-static", "-no-pie", "-fuse-ld=bfd"])
        .args(["-Wl,-m,elf_x86_64", "-Wl,--build-id=none"])
        .args(["-Wl,-z,noexecstack", "-Wl,-z,max-page-size=4096"])
        .arg("-T")
        .arg(work.kit_file("guest.ld"))
        .arg("-o")
        .arg(output_path)
        .arg(work.kit_file("rt-kernel.o"))
        .arg(work.kit_file("libfuzzer-main.o"))
        .args(objects)
        .arg("-Wl,--start-group")
        .arg(work.kit_file("librt.a"))
        .arg(work.kit_file("libsnapvmm-libfuzzer.a"))
        .arg("-Wl,--end-group");
    // Compiler helpers (128-bit division, ...) that the runtime and harnesses may call.
    if let Some(libgcc) = libgcc_path(clang) {
        command.arg(libgcc);
    }
    let output = run(&mut command, args.verbose)?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(link_error(&stderr, &args.sources, args.verbose))
}

/// What the linker's complaint means for a harness author.
fn link_error(stderr: &str, sources: &[PathBuf], verbose: bool) -> BuildTargetError {
    if let Some(symbol) = undefined_symbols(stderr).next() {
        if symbol == "LLVMFuzzerTestOneInput" {
            let sources = sources
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return BuildTargetError::NoTestOneInput { sources };
        }
        return BuildTargetError::Undefined { symbol };
    }
    if stderr.contains("multiple definition of `main'") {
        return BuildTargetError::DefinesMain;
    }
    BuildTargetError::Link {
        first_error: first_error(stderr, verbose),
    }
}

/// The symbols of ld's "undefined reference to `NAME'" lines, LLVMFuzzerTestOneInput first.
fn undefined_symbols(stderr: &str) -> impl Iterator<Item = String> + '_ {
    let mut symbols: Vec<String> = stderr
        .lines()
        .filter_map(|line| line.split("undefined reference to `").nth(1))
        .filter_map(|rest| rest.split('\'').next())
        .map(str::to_string)
        .collect();
    symbols.sort_by_key(|symbol| symbol != "LLVMFuzzerTestOneInput");
    symbols.dedup();
    symbols.into_iter()
}

/// gcc's libgcc.a as clang finds it (`--rtlib=libgcc`), if it exists.
fn libgcc_path(clang: &str) -> Option<PathBuf> {
    let output = Command::new(clang)
        .args(["--rtlib=libgcc", "-print-libgcc-file-name"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && path.is_file()).then_some(path)
}

fn run(command: &mut Command, verbose: bool) -> Result<Output, BuildTargetError> {
    if verbose {
        eprintln!("snapvmm: {command:?}");
    }
    let program = command.get_program().to_os_string();
    let output = command.output().map_err(|source| {
        if source.kind() == ErrorKind::NotFound {
            BuildTargetError::ClangMissing
        } else {
            BuildTargetError::Spawn {
                program: display_os(&program),
                source,
            }
        }
    })?;
    if verbose {
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(output)
}

fn display_os(value: &OsStr) -> String {
    value.to_string_lossy().into_owned()
}

/// clang's or ld's first error line (the whole output went to stderr already with --verbose).
fn first_error(stderr: &str, verbose: bool) -> String {
    let line = stderr
        .lines()
        .find(|line| line.contains("error:") || line.contains("error "))
        .or_else(|| stderr.lines().find(|line| !line.trim().is_empty()))
        .unwrap_or("no diagnostics")
        .trim();
    let errors = stderr
        .lines()
        .filter(|line| line.contains("error:"))
        .count();
    if verbose || errors <= 1 {
        line.to_string()
    } else {
        format!("{line} (and {} more; --verbose shows all)", errors - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_test_one_input_is_named() {
        let stderr = "ld: libfuzzer-main.o: in function `main':\n\
                      main.c:31: undefined reference to `LLVMFuzzerTestOneInput'\n\
                      ld: x.o: undefined reference to `fopen64'\n";
        let error = link_error(stderr, &[PathBuf::from("h.c")], false);
        assert!(matches!(error, BuildTargetError::NoTestOneInput { .. }));
        assert!(error.to_string().contains("h.c"));
    }

    #[test]
    fn other_undefined_symbol_is_named() {
        let stderr = "h.c:3: undefined reference to `fopen64'\n";
        let error = link_error(stderr, &[PathBuf::from("h.c")], false);
        assert!(matches!(&error, BuildTargetError::Undefined { symbol } if symbol == "fopen64"));
        assert!(error.to_string().contains("uses `fopen64`"), "{error}");
    }

    #[test]
    fn first_error_counts_the_rest() {
        let stderr = "h.c:1:1: warning: w\nh.c:2:1: error: one\nh.c:3:1: error: two\n1 warning and 2 errors generated.\n";
        assert_eq!(
            first_error(stderr, false),
            "h.c:2:1: error: one (and 1 more; --verbose shows all)"
        );
    }
}
