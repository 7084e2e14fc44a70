//! Checks of the fuzz targets and the guests written as if outside the project: coverage
//! instrumentation only in the targets' own code, the foreign guests' entry, and the demo
//! parser's planted bug (run natively through `simg-stdin`).

use super::*;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

const GUARD_SECTION: &str = "__sancov_guards";
const GUARD_CALLBACK: &[u8] = b"__sanitizer_cov_trace_pc_guard";
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The demo's crashing input, as documented in `fuzz-targets/simg/simg_parse.h`.
const SIMG_CRASH: &[u8] = b"SI\x03\x04\x10\xb5\x41\x00";

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn le_u16(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// (name, size) of every section of an ELF64 file.
fn sections(bytes: &[u8]) -> Vec<(String, u64)> {
    assert_eq!(bytes[4], 2, "not ELF64");
    let shoff = le_u64(bytes, 0x28) as usize;
    let shentsize = le_u16(bytes, 0x3a);
    let shnum = le_u16(bytes, 0x3c);
    let shstrndx = le_u16(bytes, 0x3e);
    let names_at = le_u64(bytes, shoff + shstrndx * shentsize + 0x18) as usize;
    (0..shnum)
        .map(|i| {
            let header = shoff + i * shentsize;
            let name_at = names_at + le_u32(bytes, header) as usize;
            let name_end = bytes[name_at..]
                .iter()
                .position(|&b| b == 0)
                .map_or(bytes.len(), |n| name_at + n);
            let name = String::from_utf8_lossy(&bytes[name_at..name_end]).into_owned();
            (name, le_u64(bytes, header + 0x20))
        })
        .collect()
}

fn guard_bytes(name: &str) -> u64 {
    let path = guest_path(name).unwrap_or_else(|| panic!("no guest {name}"));
    sections(&read(&path))
        .into_iter()
        .find(|(section, _)| section == GUARD_SECTION)
        .map_or(0, |(_, size)| size)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn fuzz_targets_are_runtime_guests_with_coverage_guards() {
    // One 32-bit guard per edge: the demo parser has dozens, fuzz-paths one per outcome or so.
    for (target, minimum_edges) in [("fuzz-demo", 40), ("fuzz-paths", 8)] {
        for name in [target.to_string(), format!("{target}-pvh")] {
            let guest = BUILT_GUESTS.iter().find(|g| g.name == name);
            assert!(guest.is_some(), "{name} not built");
            let guards = guard_bytes(&name);
            assert!(
                guards >= 4 * minimum_edges,
                "{name}: {guards} bytes of guards"
            );
            assert_eq!(guards % 4, 0, "{name}");
        }
    }
    // coverage-check opts out of instrumentation everywhere but in one single-block function.
    assert_eq!(guard_bytes("coverage-check"), 4);
    // Programs built with gcc have no guards at all.
    for name in ["hello", "snapshot-stress", "foreign-fuzz"] {
        assert_eq!(guard_bytes(name), 0, "{name} has coverage guards");
    }
}

#[test]
fn only_the_targets_own_code_calls_the_coverage_callback() {
    let objects = guest_dir().join("obj");
    let mut runtime_objects = 0;
    for entry in std::fs::read_dir(&objects).expect("read obj dir") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let bytes = read(&path);
        if name.starts_with("fuzz-") && name.ends_with(".o") {
            assert!(contains(&bytes, GUARD_CALLBACK), "{name} not instrumented");
        } else if (name.starts_with("user-") || name.starts_with("kernel-"))
            && name != "user-coverage.c.o"
        {
            runtime_objects += 1;
            assert!(
                !contains(&bytes, GUARD_CALLBACK),
                "runtime object {name} refers to the coverage callback"
            );
        }
    }
    assert!(
        runtime_objects >= 10,
        "only {runtime_objects} runtime objects"
    );
}

/// The 32-bit entry address in the image's PVH note.
fn pvh_note_entry(bytes: &[u8]) -> Option<u64> {
    let phoff = le_u64(bytes, 0x20) as usize;
    let phentsize = le_u16(bytes, 0x36);
    let phnum = le_u16(bytes, 0x38);
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        if le_u32(bytes, header) != 4 {
            continue;
        }
        let mut at = le_u64(bytes, header + 8) as usize;
        let end = at + le_u64(bytes, header + 32) as usize;
        while at + 12 <= end {
            let name_size = le_u32(bytes, at) as usize;
            let desc_size = le_u32(bytes, at + 4) as usize;
            let desc = at + 12 + name_size.next_multiple_of(4);
            if le_u32(bytes, at + 8) == XEN_ELFNOTE_PHYS32_ENTRY
                && &bytes[at + 12..at + 16] == b"Xen\0"
            {
                return Some(u64::from(le_u32(bytes, desc)));
            }
            at = desc + desc_size.next_multiple_of(4);
        }
    }
    None
}

#[test]
fn foreign_guests_boot_through_their_own_pvh_entry_without_the_runtime() {
    for name in [
        "foreign-io",
        "foreign-io-tss",
        "foreign-fuzz",
        "foreign-fuzz-tss",
    ] {
        let guest = BUILT_GUESTS
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("{name} not built"));
        assert_eq!(guest.entry, GuestEntry::Pvh, "{name}");
        let bytes = read(&guest_dir().join(guest.file_name));
        let entry = pvh_note_entry(&bytes).unwrap_or_else(|| panic!("{name}: no PVH note"));
        assert!(
            (0x10_0000..0x20_0000).contains(&entry),
            "{name}: {entry:#x}"
        );
        // Nothing of the runtime: no kernel entry, no user start, no exception stubs.
        for symbol in [&b"kernel_entry64"[..], b"rt_start", b"exception_stubs"] {
            assert!(!contains(&bytes, symbol), "{name} links the runtime");
        }
    }
    // The control variant differs by its TSS only.
    let plain = sections(&read(&guest_path("foreign-io").expect("foreign-io")));
    let tss = sections(&read(
        &guest_path("foreign-io-tss").expect("foreign-io-tss"),
    ));
    let bss = |list: &[(String, u64)]| list.iter().find(|(n, _)| n == ".bss").map(|(_, s)| *s);
    assert!(bss(&tss) > bss(&plain), "the -tss variant has no TSS");
}

/// Runs the native demo parser on `input`: Ok(exit code) or Err(signal).
fn simg(input: &[u8]) -> Result<i32, i32> {
    let path = native_harness_path("simg-stdin").expect("simg-stdin built");
    let mut child = Command::new(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run simg-stdin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write the input");
    let status = child.wait().expect("wait for simg-stdin");
    match status.code() {
        Some(code) => Ok(code),
        None => Err(status.signal().unwrap_or(-1)),
    }
}

const SIGSEGV: i32 = 11;

#[test]
fn demo_parser_accepts_and_rejects_images() {
    // A header first, then the same run chunk: accepted.
    assert_eq!(
        simg(b"SI\x01\x03\x08\x08\x00\x03\x04\x10\xb5\x41\x00\x04\x00"),
        Ok(0)
    );
    assert_eq!(simg(b"SI"), Ok(0));
    assert_eq!(simg(b"SI\x02\x03\x01\x02\x03"), Ok(0));
    assert_eq!(simg(b""), Ok(1));
    assert_eq!(simg(b"PNG\x89...."), Ok(1));
    assert_eq!(simg(b"SI\x09\x00"), Ok(1));
    // A run longer than the pixel buffer after a header is refused, not written.
    assert_eq!(
        simg(b"SI\x01\x03\x08\x08\xff\x03\x04\xff\x5a\x41\x00"),
        Ok(1)
    );
}

#[test]
fn demo_bug_needs_every_comparison_on_its_path() {
    assert_eq!(simg(SIMG_CRASH), Err(SIGSEGV));
    // Every proper prefix is harmless.
    for length in 0..SIMG_CRASH.len() {
        assert!(
            simg(&SIMG_CRASH[..length]).is_ok(),
            "prefix of {length} crashed"
        );
    }
    // Changing any byte but the pixel value and the padding (the last two) leaves the path:
    // each one is compared.
    for at in 0..SIMG_CRASH.len() - 2 {
        let mut input = SIMG_CRASH.to_vec();
        input[at] ^= 0xff;
        assert!(simg(&input).is_ok(), "byte {at} changed still crashes");
    }
    let mut input = SIMG_CRASH.to_vec();
    input[SIMG_CRASH.len() - 2] = 0;
    input[SIMG_CRASH.len() - 1] = 0xff;
    assert_eq!(simg(&input), Err(SIGSEGV));
}
