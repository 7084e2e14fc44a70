//! The libFuzzer kit (included by `build.rs` as a module): the shim, the freestanding libc
//! subset and its headers, next to copies of the runtime's kernel object, user library and
//! linker script, collected in `OUT_DIR/libfuzzer-kit/` and listed in `libfuzzer_kit.rs`, which
//! `src/lib.rs` includes so that `snapvmm build-target` carries everything it needs to link a
//! libFuzzer harness (docs/libfuzzer-targets.md).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io_error, linker_script, run, BuildError, BuildResult, Entry, Paths, RuntimeLink};

/// The libc subset and the heap (compiled into `libsnapvmm-libfuzzer.a`).
const LIBC_SOURCES: &[&str] = &["crash.c", "malloc.c", "stdio.c", "stdlib.c", "string.c"];
/// The shim that calls the harness; an object of its own so that it is always linked.
const SHIM_SOURCE: &str = "main.c";

/// Where the libc headers are, relative to `include/` (`<sys/types.h>`).
const HEADER_DIRS: &[&str] = &["", "sys"];

/// Flags for the kit's own C code: clang like the fuzz targets, not instrumented (the libc is
/// not the code under test), freestanding so that the libc's loops are never turned back into
/// calls of the functions they implement.
const KIT_CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-m64",
    "-march=x86-64",
    "-mtune=generic",
    "-ffreestanding",
    "-nostdlibinc",
    "-fno-pic",
    "-fno-pie",
    "-fno-common",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-addrsig",
];

/// What a harness is compiled with (besides `-I <kit>/include` and the user's flags): hosted C
/// like a libFuzzer build, so clang optimises memcmp/strlen as usual, but only the kit's
/// headers (and clang's own stddef.h/stdint.h/...) are visible; the runtime's code model;
/// trace-pc-guard edges into BAR4.
const HARNESS_CFLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-m64",
    "-march=x86-64",
    "-mtune=generic",
    "-nostdlibinc",
    "-fno-pic",
    "-fno-pie",
    "-fno-common",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-addrsig",
    "-fno-exceptions",
    "-fsanitize-coverage=trace-pc-guard",
    "-DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION",
];

/// Builds the kit into `OUT_DIR/libfuzzer-kit/` and writes `OUT_DIR/libfuzzer_kit.rs`.
pub(super) fn build(paths: &Paths, clang: &str, runtime: &RuntimeLink) -> BuildResult<()> {
    let source_dir = paths.runtime.with_file_name("libfuzzer");
    let kit = paths.out.join("libfuzzer-kit");
    let kit_include = kit.join("include");
    fs::create_dir_all(&kit_include).map_err(|e| io_error("create", &kit_include, e))?;

    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut libc_objects = Vec::new();
    for source in LIBC_SOURCES {
        libc_objects.push(compile(
            paths,
            clang,
            &source_dir,
            source,
            &paths.objects.join(format!("libfuzzer-{source}.o")),
        )?);
    }
    let shim = compile(
        paths,
        clang,
        &source_dir,
        SHIM_SOURCE,
        &kit.join("libfuzzer-main.o"),
    )?;
    files.push(("libfuzzer-main.o".into(), shim));
    let libc = kit.join("libsnapvmm-libfuzzer.a");
    if libc.exists() {
        fs::remove_file(&libc).map_err(|e| io_error("remove", &libc, e))?;
    }
    run(Command::new("ar").arg("rcs").arg(&libc).args(&libc_objects))?;
    files.push(("libsnapvmm-libfuzzer.a".into(), libc));

    // The linker script selects the kernel by its file name: keep `rt-kernel.o`.
    for (name, from) in [
        ("rt-kernel.o", runtime.kernel.clone()),
        ("librt.a", runtime.user_library.clone()),
        ("guest.ld", linker_script(paths, Entry::Elf64)?),
    ] {
        let to = kit.join(name);
        fs::copy(&from, &to).map_err(|e| io_error("copy", &from, e))?;
        files.push((name.into(), to));
    }

    for subdir in HEADER_DIRS {
        let from_dir = source_dir.join("include").join(subdir);
        let to_dir = kit_include.join(subdir);
        fs::create_dir_all(&to_dir).map_err(|e| io_error("create", &to_dir, e))?;
        let mut headers: Vec<PathBuf> = fs::read_dir(&from_dir)
            .map_err(|e| io_error("read", &from_dir, e))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "h"))
            .collect();
        headers.sort();
        for header in headers {
            let name = header
                .file_name()
                .and_then(|name| name.to_str())
                .ok_or_else(|| BuildError(format!("bad header name {}", header.display())))?
                .to_string();
            let to = to_dir.join(&name);
            fs::copy(&header, &to).map_err(|e| io_error("copy", &header, e))?;
            let kit_path = if subdir.is_empty() {
                format!("include/{name}")
            } else {
                format!("include/{subdir}/{name}")
            };
            files.push((kit_path, to));
        }
    }
    write_listing(&paths.out.join("libfuzzer_kit.rs"), &files)
}

fn compile(
    paths: &Paths,
    clang: &str,
    source_dir: &Path,
    source: &str,
    object: &Path,
) -> BuildResult<PathBuf> {
    run(Command::new(clang)
        .args(KIT_CFLAGS)
        .arg("-I")
        .arg(source_dir.join("include"))
        .arg("-I")
        .arg(&paths.include)
        .arg("-I")
        .arg(&paths.shared_include)
        .arg("-c")
        .arg(source_dir.join("src").join(source))
        .arg("-o")
        .arg(object))
    .map_err(|error| {
        BuildError(format!(
            "{error}\n(the libFuzzer kit needs clang 14 or later: scripts/ensure-deps.sh installs it)"
        ))
    })?;
    Ok(object.to_path_buf())
}

fn write_listing(path: &Path, files: &[(String, PathBuf)]) -> BuildResult<()> {
    let mut source = String::from(
        "/// The kit's files: (path inside the kit directory, contents).\n\
         pub const FILES: &[(&str, &[u8])] = &[\n",
    );
    for (name, file) in files {
        source.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            file.display().to_string()
        ));
    }
    source.push_str(
        "];\n/// clang flags for a harness's own sources (besides `-I <kit>/include`).\n",
    );
    source.push_str("pub const HARNESS_CFLAGS: &[&str] = &[\n");
    for flag in HARNESS_CFLAGS {
        source.push_str(&format!("    {flag:?},\n"));
    }
    source.push_str("];\n");
    fs::write(path, source).map_err(|e| io_error("write", path, e))
}
