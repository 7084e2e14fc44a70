//! Builds the bare-metal guest runtime and its test guests from source with the system's
//! `gcc`, `ld`, `objcopy` and `ar`, and the fuzz targets with `clang` (see `runtime/README.md`).
//!
//! Outputs in `OUT_DIR`: `<guest>.elf` (64-bit ELF entry, no PVH note), `<guest>-pvh.elf` (the
//! same program with a PVH note and 32-bit entry) for every `guests/<guest>.c` and every fuzz
//! target `fuzz-targets/<guest>.c` (compiled by clang with coverage instrumentation, linked with
//! the same gcc-built runtime), the guests that do not use the runtime (`foreign/<name>.c` on
//! their own entry code, `foreign/common/`), `pvh-hello.elf`, the static Linux programs
//! `linux-programs/<name>.c` -> `<name>` (glibc, `gcc -static`), the libFuzzer harnesses for Linux
//! `linux-agent/harnesses/<name>.c` -> `<name>` (clang, statically linked with the guest agent),
//! and `guests.rs`, the lists that `src/lib.rs` includes.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "libfuzzer/kit.rs"]
mod libfuzzer_kit;

const KERNEL_SOURCES: &[&str] = &[
    "entry.S",
    "main.c",
    "boot_info.c",
    "pci.c",
    "paging.c",
    "cpu.c",
    "fault.c",
    "console.c",
];
const USER_SOURCES: &[&str] = &[
    "crt0.S",
    "start.c",
    "console.c",
    "pci.c",
    "string.c",
    "heap.c",
    "snapshot.c",
    "fuzz.c",
    "coverage.c",
    "cmplog.c",
];
/// Kernel symbols the rest of the link may see; every other kernel symbol is made local so that
/// the kernel's helpers (memcpy, ...) never clash with the user program's.
const KERNEL_EXPORTS: &[&str] = &["kernel_entry64", "kernel_entry_common"];

const COMMON_CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-m64",
    "-march=x86-64",
    "-mtune=generic",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-fno-common",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-tree-loop-distribute-patterns",
];
/// CPL0 code runs in KVM's instruction emulator on kvm_pvm: general-purpose registers only
/// (no SSE/x87), and no red zone because exceptions at CPL0 stay on the same stack.
const KERNEL_CFLAGS: &[&str] = &["-mgeneral-regs-only", "-mno-red-zone"];

/// Fuzz targets: clang (gcc 12 has no `trace-pc-guard`), the same code model and freestanding
/// flags as the runtime it links with, and edge coverage whose callbacks are in the runtime
/// (`runtime/user/coverage.c`). Only the target's own object is instrumented.
const FUZZ_TARGET_CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-m64",
    "-march=x86-64",
    "-mtune=generic",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-fno-common",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-addrsig",
    "-fsanitize-coverage=trace-pc-guard,trace-cmp",
];
/// Native harnesses (host programs): hosted, optimised, warnings on.
const NATIVE_HARNESS_CFLAGS: &[&str] = &["-O2", "-g", "-Wall", "-Wextra", "-std=gnu11"];
/// The clang that builds fuzz targets (Debian package `clang`); `CLANG` overrides it.
const DEFAULT_CLANG: &str = "clang";

/// Sources of the guests that do not use the runtime (`foreign/common/`), compiled with gcc.
const FOREIGN_COMMON_SOURCES: &[&str] = &["entry.S", "foreign.c"];

#[derive(Debug)]
struct BuildError(String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type BuildResult<T> = Result<T, BuildError>;

/// Static Linux user programs: hosted, optimised, warnings on.
const LINUX_PROGRAM_CFLAGS: &[&str] = &["-static", "-O2", "-g", "-Wall", "-Wextra", "-std=gnu11"];

/// Where the sources are and where the outputs go.
struct Paths {
    runtime: PathBuf,
    include: PathBuf,
    /// Headers shared by the runtime and Linux programs (`snapshot_device.h`).
    shared_include: PathBuf,
    guests: PathBuf,
    fuzz_targets: PathBuf,
    foreign: PathBuf,
    linux_programs: PathBuf,
    /// The guest agent for Linux and its harnesses (`linux-agent/`).
    linux_agent: PathBuf,
    pvh_hello: PathBuf,
    out: PathBuf,
    objects: PathBuf,
}

#[derive(Clone, Copy)]
enum Entry {
    Elf64,
    Pvh,
    MultibootOrPvh32,
}

impl Entry {
    fn rust_name(self) -> &'static str {
        match self {
            Entry::Elf64 => "GuestEntry::Elf64",
            Entry::Pvh => "GuestEntry::Pvh",
            Entry::MultibootOrPvh32 => "GuestEntry::MultibootOrPvh32",
        }
    }
}

struct BuiltGuest {
    name: String,
    entry: Entry,
}

fn main() {
    if let Err(error) = build() {
        eprintln!("guest-tools build failed: {error}");
        std::process::exit(1);
    }
}

fn build() -> BuildResult<()> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env_var("OUT_DIR")?);
    let paths = Paths {
        runtime: manifest_dir.join("runtime"),
        include: manifest_dir.join("runtime/include"),
        shared_include: manifest_dir.join("include"),
        guests: manifest_dir.join("guests"),
        fuzz_targets: manifest_dir.join("fuzz-targets"),
        foreign: manifest_dir.join("foreign"),
        linux_programs: manifest_dir.join("linux-programs"),
        linux_agent: manifest_dir.join("linux-agent"),
        pvh_hello: manifest_dir.join("pvh-hello"),
        objects: out.join("obj"),
        out,
    };
    for watched in [
        "build.rs",
        "runtime",
        "include",
        "guests",
        "fuzz-targets",
        "libfuzzer",
        "foreign",
        "linux-programs",
        "linux-agent",
        "pvh-hello",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(watched).display()
        );
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    fs::create_dir_all(&paths.objects).map_err(|e| io_error("create", &paths.objects, e))?;

    let kernel = build_kernel(&paths)?;
    let pvh_entry = compile(
        &paths,
        &paths.runtime.join("kernel/pvh_entry.S"),
        &paths.objects.join("rt-pvh.o"),
        KERNEL_CFLAGS,
    )?;
    let user_library = build_user_library(&paths)?;
    let libgcc = libgcc_path()?;

    let runtime = RuntimeLink {
        kernel,
        pvh_entry,
        user_library,
        libgcc,
    };
    let mut built = Vec::new();
    for guest in c_programs(&paths.guests)? {
        let object = compile(
            &paths,
            &paths.guests.join(format!("{guest}.c")),
            &paths.objects.join(format!("guest-{guest}.o")),
            &[],
        )?;
        link_runtime_guest(&paths, &runtime, &guest, &object, &mut built)?;
    }
    let clang = std::env::var("CLANG").unwrap_or_else(|_| DEFAULT_CLANG.to_string());
    for target in c_programs(&paths.fuzz_targets)? {
        let object = compile_fuzz_target(
            &paths,
            &clang,
            &paths.fuzz_targets.join(format!("{target}.c")),
            &paths.objects.join(format!("fuzz-{target}.o")),
        )?;
        link_runtime_guest(&paths, &runtime, &target, &object, &mut built)?;
    }
    libfuzzer_kit::build(&paths, &clang, &runtime)?;
    build_foreign_guests(&paths, &runtime.libgcc, &mut built)?;
    let native_harnesses = build_native_harnesses(&paths)?;

    // 32-bit kernels of their own (pvh-hello/<name>.S, one image each, same linker script).
    for name in ["pvh-hello", "counter32"] {
        let object = compile(
            &paths,
            &paths.pvh_hello.join(format!("{name}.S")),
            &paths.objects.join(format!("{name}.o")),
            &["-m32"],
        )?;
        link(
            "elf_i386",
            &paths.pvh_hello.join("pvh-hello.ld"),
            &[object],
            &paths.out.join(format!("{name}.elf")),
        )?;
        built.push(BuiltGuest {
            name: name.to_string(),
            entry: Entry::MultibootOrPvh32,
        });
    }

    let mut linux_programs = Vec::new();
    for program in c_programs(&paths.linux_programs)? {
        let output = paths.out.join(&program);
        run(Command::new("gcc")
            .args(LINUX_PROGRAM_CFLAGS)
            .arg("-I")
            .arg(&paths.shared_include)
            .arg("-o")
            .arg(&output)
            .arg(paths.linux_programs.join(format!("{program}.c"))))?;
        linux_programs.push(program);
    }
    build_linux_agent_harnesses(&paths, &clang, &mut linux_programs)?;

    write_guest_list(
        &paths.out.join("guests.rs"),
        &built,
        &linux_programs,
        &native_harnesses,
    )
}

/// The libFuzzer harnesses for Linux (`linux-agent/harnesses/<name>.c` -> `<name>`): each linked
/// statically with the guest agent by `linux-agent/build-harness.sh` (clang, trace-pc-guard and
/// trace-cmp on the harness only), listed with the Linux programs.
fn build_linux_agent_harnesses(
    paths: &Paths,
    clang: &str,
    linux_programs: &mut Vec<String>,
) -> BuildResult<()> {
    let script = paths.linux_agent.join("build-harness.sh");
    let harnesses = paths.linux_agent.join("harnesses");
    for harness in c_programs(&harnesses)? {
        run(Command::new("bash")
            .arg(&script)
            .arg("-o")
            .arg(paths.out.join(&harness))
            .arg(harnesses.join(format!("{harness}.c")))
            .env("CLANG", clang))
        .map_err(|error| {
            BuildError(format!(
                "{error}\n(Linux harnesses need clang 14 and a static glibc: scripts/ensure-deps.sh installs them)"
            ))
        })?;
        linux_programs.push(harness);
    }
    Ok(())
}

/// The runtime objects every runtime guest links with.
struct RuntimeLink {
    kernel: PathBuf,
    pvh_entry: PathBuf,
    user_library: PathBuf,
    libgcc: PathBuf,
}

/// Links one program object with the runtime twice: `<name>.elf` (64-bit entry) and
/// `<name>-pvh.elf` (PVH entry).
fn link_runtime_guest(
    paths: &Paths,
    runtime: &RuntimeLink,
    name: &str,
    object: &Path,
    built: &mut Vec<BuiltGuest>,
) -> BuildResult<()> {
    for (entry, suffix) in [(Entry::Elf64, ""), (Entry::Pvh, "-pvh")] {
        let name = format!("{name}{suffix}");
        let script = linker_script(paths, entry)?;
        let mut inputs = vec![runtime.kernel.clone()];
        if matches!(entry, Entry::Pvh) {
            inputs.push(runtime.pvh_entry.clone());
        }
        inputs.extend([
            object.to_path_buf(),
            runtime.user_library.clone(),
            runtime.libgcc.clone(),
        ]);
        link(
            "elf_x86_64",
            &script,
            &inputs,
            &paths.out.join(format!("{name}.elf")),
        )?;
        built.push(BuiltGuest { name, entry });
    }
    Ok(())
}

/// A fuzz target's own code, compiled by clang with edge coverage (`FUZZ_TARGET_CFLAGS`).
fn compile_fuzz_target(
    paths: &Paths,
    clang: &str,
    source: &Path,
    object: &Path,
) -> BuildResult<PathBuf> {
    let mut command = Command::new(clang);
    command
        .args(FUZZ_TARGET_CFLAGS)
        .arg("-I")
        .arg(&paths.include)
        .arg("-I")
        .arg(&paths.shared_include)
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object);
    run(&mut command).map_err(|error| {
        BuildError(format!(
            "{error}\n(fuzz targets need clang 14 or later: scripts/ensure-deps.sh installs it)"
        ))
    })?;
    Ok(object.to_path_buf())
}

/// The guests written as if outside this project (`foreign/`): their own PVH entry, GDT and
/// page tables (`foreign/common/`), no runtime, PVH entry only. Each `foreign/<name>.c` gives
/// `<name>.elf` (TR never loaded, as issue 8 describes) and the control variant
/// `<name>-tss.elf`, identical except that its entry loads a TSS whose I/O bitmap allows every
/// port.
fn build_foreign_guests(
    paths: &Paths,
    libgcc: &Path,
    built: &mut Vec<BuiltGuest>,
) -> BuildResult<()> {
    let common = paths.foreign.join("common");
    let mut variants = Vec::new();
    for (suffix, defines) in [("", &[][..]), ("-tss", &["-DFOREIGN_LOAD_TSS"][..])] {
        let mut objects = Vec::new();
        for source in FOREIGN_COMMON_SOURCES {
            objects.push(compile_foreign(
                paths,
                &common.join(source),
                &paths
                    .objects
                    .join(format!("foreign-common{suffix}-{source}.o")),
                defines,
            )?);
        }
        variants.push((suffix, objects));
    }
    for guest in c_programs(&paths.foreign)? {
        let object = compile_foreign(
            paths,
            &paths.foreign.join(format!("{guest}.c")),
            &paths.objects.join(format!("foreign-{guest}.o")),
            &[],
        )?;
        for (suffix, common_objects) in &variants {
            let name = format!("{guest}{suffix}");
            let mut inputs = common_objects.clone();
            inputs.extend([object.clone(), libgcc.to_path_buf()]);
            link(
                "elf_x86_64",
                &common.join("foreign.ld"),
                &inputs,
                &paths.out.join(format!("{name}.elf")),
            )?;
            built.push(BuiltGuest {
                name,
                entry: Entry::Pvh,
            });
        }
    }
    Ok(())
}

/// Native builds of the fuzz targets' code for the host (`fuzz-targets/native/<name>.c` ->
/// `<name>`, hosted gcc): host tests run them, and AFL++ fuzzes the same code for comparison.
fn build_native_harnesses(paths: &Paths) -> BuildResult<Vec<String>> {
    let dir = paths.fuzz_targets.join("native");
    let mut harnesses = Vec::new();
    for harness in c_programs(&dir)? {
        run(Command::new("gcc")
            .args(NATIVE_HARNESS_CFLAGS)
            .arg("-o")
            .arg(paths.out.join(&harness))
            .arg(dir.join(format!("{harness}.c"))))?;
        harnesses.push(harness);
    }
    Ok(harnesses)
}

fn compile_foreign(
    paths: &Paths,
    source: &Path,
    object: &Path,
    defines: &[&str],
) -> BuildResult<PathBuf> {
    let mut command = Command::new("gcc");
    command
        .args(COMMON_CFLAGS)
        .args(defines)
        .arg("-I")
        .arg(paths.foreign.join("common"))
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object);
    run(&mut command)?;
    Ok(object.to_path_buf())
}

fn env_var(name: &str) -> BuildResult<String> {
    std::env::var(name).map_err(|_| BuildError(format!("{name} is not set (run through cargo)")))
}

fn io_error(action: &str, path: &Path, error: std::io::Error) -> BuildError {
    BuildError(format!("cannot {action} {}: {error}", path.display()))
}

/// Runs a tool; its diagnostics become cargo warnings (or the error, if it fails).
fn run(command: &mut Command) -> BuildResult<String> {
    let description = format!("{command:?}");
    let output = command.output().map_err(|e| {
        BuildError(format!(
            "cannot run {description}: {e} (is binutils/gcc installed?)"
        ))
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(BuildError(format!("{description} failed:\n{stderr}")));
    }
    for line in stderr.lines().filter(|line| !line.trim().is_empty()) {
        println!("cargo:warning={line}");
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn compile(
    paths: &Paths,
    source: &Path,
    object: &Path,
    extra_flags: &[&str],
) -> BuildResult<PathBuf> {
    let mut command = Command::new("gcc");
    command
        .args(COMMON_CFLAGS)
        .args(extra_flags)
        .arg("-I")
        .arg(&paths.include)
        .arg("-I")
        .arg(&paths.shared_include)
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object);
    run(&mut command)?;
    Ok(object.to_path_buf())
}

/// All kernel objects as one relocatable `rt-kernel.o` whose symbols are local except the entry
/// points; the linker script places it below 2 MiB by its file name.
fn build_kernel(paths: &Paths) -> BuildResult<PathBuf> {
    let mut objects = Vec::new();
    for source in KERNEL_SOURCES {
        let object = paths.objects.join(format!("kernel-{source}.o"));
        objects.push(compile(
            paths,
            &paths.runtime.join("kernel").join(source),
            &object,
            KERNEL_CFLAGS,
        )?);
    }
    let kernel = paths.objects.join("rt-kernel.o");
    run(Command::new("ld")
        .args(["-m", "elf_x86_64", "-r", "-o"])
        .arg(&kernel)
        .args(&objects))?;
    let mut localize = Command::new("objcopy");
    for symbol in KERNEL_EXPORTS {
        localize.arg(format!("--keep-global-symbol={symbol}"));
    }
    run(localize.arg(&kernel))?;
    Ok(kernel)
}

fn build_user_library(paths: &Paths) -> BuildResult<PathBuf> {
    let mut objects = Vec::new();
    for source in USER_SOURCES {
        let object = paths.objects.join(format!("user-{source}.o"));
        objects.push(compile(
            paths,
            &paths.runtime.join("user").join(source),
            &object,
            &[],
        )?);
    }
    let library = paths.objects.join("librt.a");
    if library.exists() {
        fs::remove_file(&library).map_err(|e| io_error("remove", &library, e))?;
    }
    run(Command::new("ar").arg("rcs").arg(&library).args(&objects))?;
    Ok(library)
}

fn libgcc_path() -> BuildResult<PathBuf> {
    let path = run(Command::new("gcc").args(["-m64", "-print-libgcc-file-name"]))?;
    Ok(PathBuf::from(path.trim()))
}

/// The programs in `dir`: every `<name>.c`, sorted by name.
fn c_programs(dir: &Path) -> BuildResult<Vec<String>> {
    let entries = fs::read_dir(dir).map_err(|e| io_error("read", dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io_error("read", dir, e))?.path();
        if path.extension().is_some_and(|ext| ext == "c") {
            if let Some(stem) = path.file_stem().and_then(|stem| stem.to_str()) {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn linker_script(paths: &Paths, entry: Entry) -> BuildResult<PathBuf> {
    let template_path = paths.runtime.join("link/guest.ld.in");
    let template =
        fs::read_to_string(&template_path).map_err(|e| io_error("read", &template_path, e))?;
    let (phdr, note, file_name) = match entry {
        Entry::Pvh => (
            "    pvh_note PT_NOTE FLAGS(4);",
            "    .note.pvh : { KEEP(*(.note.pvh)) } :kernel_text :pvh_note",
            "guest-pvh.ld",
        ),
        _ => ("", "", "guest.ld"),
    };
    let script = template
        .replace("@PVH_PHDR@", phdr)
        .replace("@PVH_NOTE@", note)
        .replace("@USER_STACK_SIZE@", &user_stack_size(paths)?);
    let path = paths.objects.join(file_name);
    fs::write(&path, script).map_err(|e| io_error("write", &path, e))?;
    Ok(path)
}

/// `RT_USER_STACK_SIZE` from `rt_abi.h`, so that the header stays the one place that says it.
fn user_stack_size(paths: &Paths) -> BuildResult<String> {
    let header_path = paths.include.join("rt_abi.h");
    let header = fs::read_to_string(&header_path).map_err(|e| io_error("read", &header_path, e))?;
    header
        .lines()
        .find_map(|line| line.strip_prefix("#define RT_USER_STACK_SIZE "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .ok_or_else(|| {
            BuildError(format!(
                "no RT_USER_STACK_SIZE in {}",
                header_path.display()
            ))
        })
}

fn link(emulation: &str, script: &Path, inputs: &[PathBuf], output: &Path) -> BuildResult<()> {
    run(Command::new("ld")
        .args(["-m", emulation, "-nostdlib", "-static", "--build-id=none"])
        .args(["-z", "noexecstack", "-z", "max-page-size=4096", "-T"])
        .arg(script)
        .arg("-o")
        .arg(output)
        .args(inputs))?;
    Ok(())
}

fn write_guest_list(
    path: &Path,
    guests: &[BuiltGuest],
    linux_programs: &[String],
    native_harnesses: &[String],
) -> BuildResult<()> {
    let mut source = String::from("/// Every guest `build.rs` built into `OUT_DIR`.\n");
    source.push_str("pub const BUILT_GUESTS: &[BuiltGuest] = &[\n");
    for guest in guests {
        source.push_str(&format!(
            "    BuiltGuest {{ name: {:?}, file_name: {:?}, entry: {}, \
             image: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{}.elf\")) }},\n",
            guest.name,
            format!("{}.elf", guest.name),
            guest.entry.rust_name(),
            guest.name
        ));
    }
    source.push_str("];\n");
    source.push_str(
        "/// Every static Linux program `build.rs` built into `OUT_DIR` (file name = name).\n",
    );
    source.push_str("pub const LINUX_PROGRAMS: &[&str] = &[\n");
    for program in linux_programs {
        source.push_str(&format!("    {program:?},\n"));
    }
    source.push_str("];\n");
    source.push_str(
        "/// Every native (host) fuzz harness `build.rs` built into `OUT_DIR` (file name = name).\n",
    );
    source.push_str("pub const NATIVE_HARNESSES: &[&str] = &[\n");
    for harness in native_harnesses {
        source.push_str(&format!("    {harness:?},\n"));
    }
    source.push_str("];\n");
    fs::write(path, source).map_err(|e| io_error("write", path, e))
}
