//! Structural checks of the built images: what a VMM's loader relies on (ELF class, load
//! addresses, entry points, the PVH note and the Multiboot header).

use super::*;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;

struct ProgramHeader {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

struct Elf {
    bytes: Vec<u8>,
    is_64: bool,
    entry: u64,
    headers: Vec<ProgramHeader>,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn read_elf(name: &str) -> Elf {
    let path = guest_path(name).unwrap_or_else(|| panic!("no guest called {name}"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..4], b"\x7fELF", "{name} is not an ELF file");
    let is_64 = bytes[4] == 2;
    let (entry, phoff, phentsize, phnum) = if is_64 {
        (
            u64_at(&bytes, 0x18),
            u64_at(&bytes, 0x20) as usize,
            u16_at(&bytes, 0x36) as usize,
            u16_at(&bytes, 0x38) as usize,
        )
    } else {
        (
            u64::from(u32_at(&bytes, 0x18)),
            u32_at(&bytes, 0x1c) as usize,
            u16_at(&bytes, 0x2a) as usize,
            u16_at(&bytes, 0x2c) as usize,
        )
    };
    let headers = (0..phnum)
        .map(|i| {
            let at = phoff + i * phentsize;
            if is_64 {
                ProgramHeader {
                    kind: u32_at(&bytes, at),
                    offset: u64_at(&bytes, at + 8),
                    paddr: u64_at(&bytes, at + 24),
                    filesz: u64_at(&bytes, at + 32),
                    memsz: u64_at(&bytes, at + 40),
                }
            } else {
                ProgramHeader {
                    kind: u32_at(&bytes, at),
                    offset: u64::from(u32_at(&bytes, at + 4)),
                    paddr: u64::from(u32_at(&bytes, at + 12)),
                    filesz: u64::from(u32_at(&bytes, at + 16)),
                    memsz: u64::from(u32_at(&bytes, at + 20)),
                }
            }
        })
        .collect();
    Elf {
        bytes,
        is_64,
        entry,
        headers,
    }
}

/// The entry address in the PVH note, if the image has one.
fn pvh_entry(elf: &Elf) -> Option<u64> {
    for header in elf.headers.iter().filter(|h| h.kind == PT_NOTE) {
        let mut at = header.offset as usize;
        let end = at + header.filesz as usize;
        while at + 12 <= end {
            let name_size = u32_at(&elf.bytes, at) as usize;
            let desc_size = u32_at(&elf.bytes, at + 4) as usize;
            let kind = u32_at(&elf.bytes, at + 8);
            let desc = at + 12 + name_size.next_multiple_of(4);
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && &elf.bytes[at + 12..at + 16] == b"Xen\0" {
                return Some(u64::from(u32_at(&elf.bytes, desc)));
            }
            at = desc + desc_size.next_multiple_of(4);
        }
    }
    None
}

fn loads(elf: &Elf) -> impl Iterator<Item = &ProgramHeader> {
    elf.headers.iter().filter(|h| h.kind == PT_LOAD)
}

fn assert_loaded_between(name: &str, elf: &Elf, low: u64, high: u64) {
    for load in loads(elf) {
        assert!(
            load.paddr >= low && load.paddr + load.memsz <= high,
            "{name}: segment at {:#x}+{:#x} outside {low:#x}..{high:#x}",
            load.paddr,
            load.memsz
        );
    }
}

fn runtime_guest_names() -> Vec<&'static str> {
    BUILT_GUESTS
        .iter()
        .filter(|guest| guest.entry == GuestEntry::Elf64)
        .map(|guest| guest.name)
        .collect()
}

#[test]
fn every_runtime_guest_has_a_pvh_twin_and_the_test_guests_exist() {
    let names = runtime_guest_names();
    for expected in [
        "hello",
        "pci-list",
        "fault",
        "memmap",
        "snapshot-basic",
        "snapshot-stress",
        "snapshot-bench",
        "snapshot-commands",
        "cpu-state",
        "fuzz-demo",
        "fuzz-paths",
        "coverage-check",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for name in names {
        let twin = format!("{name}-pvh");
        let guest = BUILT_GUESTS.iter().find(|g| g.name == twin);
        assert_eq!(guest.map(|g| g.entry), Some(GuestEntry::Pvh), "{twin}");
    }
}

#[test]
fn elf64_guests_enter_in_long_mode_at_the_kernel_without_a_pvh_note() {
    for name in runtime_guest_names() {
        let elf = read_elf(name);
        assert!(elf.is_64, "{name}: not ELF64");
        assert_eq!(pvh_entry(&elf), None, "{name}: has a PVH note");
        assert!(
            (0x10_0000..0x20_0000).contains(&elf.entry),
            "{name}: entry {:#x}",
            elf.entry
        );
        assert_loaded_between(name, &elf, 0x10_0000, 0x4000_0000);
        assert!(
            loads(&elf).any(|load| load.paddr == 0x20_0000),
            "{name}: no user image at 2 MiB"
        );
    }
}

#[test]
fn pvh_guests_carry_an_entry_note_inside_the_kernel_image() {
    for name in runtime_guest_names() {
        let twin = format!("{name}-pvh");
        let elf = read_elf(&twin);
        let entry = pvh_entry(&elf).unwrap_or_else(|| panic!("{twin}: no PVH note"));
        let in_kernel_text = loads(&elf).any(|load| {
            load.paddr < 0x20_0000 && (load.paddr..load.paddr + load.filesz).contains(&entry)
        });
        assert!(
            in_kernel_text,
            "{twin}: PVH entry {entry:#x} not in a loaded kernel segment"
        );
    }
}

#[test]
fn pvh_hello_is_elf32_with_multiboot_header_and_pvh_note() {
    let elf = read_elf("pvh-hello");
    assert!(!elf.is_64);
    assert_loaded_between("pvh-hello", &elf, 0x10_0000, 0x20_0000);
    let entry = pvh_entry(&elf).expect("pvh-hello has no PVH note");
    assert!((0x10_0000..0x20_0000).contains(&entry));
    // Multiboot v1: magic, flags, checksum, 4-byte aligned within the first 8 KiB.
    let header = (0..8192 - 12)
        .step_by(4)
        .find(|&at| at + 12 <= elf.bytes.len() && u32_at(&elf.bytes, at) == MULTIBOOT_MAGIC)
        .expect("no Multiboot header in the first 8 KiB");
    let flags = u32_at(&elf.bytes, header + 4);
    let checksum = u32_at(&elf.bytes, header + 8);
    assert_eq!(
        MULTIBOOT_MAGIC.wrapping_add(flags).wrapping_add(checksum),
        0
    );
}

#[test]
fn hello_elf_constant_matches_the_built_file() {
    let path = guest_path("hello").expect("hello");
    assert_eq!(std::fs::read(path).expect("read hello.elf"), HELLO_ELF);
    assert_eq!(guest_path("no-such-guest"), None);
}

#[test]
fn exit_codes_round_trip_through_vectors() {
    assert_eq!(exit_code::user_exception(14), 46);
    assert_eq!(exit_code::exception_vector(46), Some(14));
    assert_eq!(exit_code::exception_vector(exit_code::KERNEL_FAULT), None);
    assert_eq!(exit_code::exception_vector(64), None);
}

#[test]
fn linux_programs_are_static_64_bit_executables() {
    assert!(
        LINUX_PROGRAMS.contains(&"snapshot-demo"),
        "{LINUX_PROGRAMS:?}"
    );
    assert_eq!(
        linux_program_path("snapshot-demo"),
        Some(PathBuf::from(SNAPSHOT_DEMO_PATH))
    );
    assert_eq!(linux_program_path("no-such-program"), None);
    for name in LINUX_PROGRAMS {
        let path = linux_program_path(name).expect("listed");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&bytes[..4], b"\x7fELF", "{name}");
        assert_eq!(bytes[4], 2, "{name}: not ELF64");
        assert_eq!(u16_at(&bytes, 0x12), 0x3e, "{name}: not x86-64");
        let phoff = u64_at(&bytes, 0x20) as usize;
        let phentsize = u16_at(&bytes, 0x36) as usize;
        let phnum = u16_at(&bytes, 0x38) as usize;
        const PT_INTERP: u32 = 3;
        const PT_DYNAMIC: u32 = 2;
        for i in 0..phnum {
            let kind = u32_at(&bytes, phoff + i * phentsize);
            assert!(
                kind != PT_INTERP && kind != PT_DYNAMIC,
                "{name}: dynamically linked"
            );
        }
    }
}

/// A stand-in for BAR0 of the snapshot device: a 4 KiB file with the given registers. No VM
/// rolls anything back here, so this checks the program's checks and messages, not snapshots.
struct FakeRegisters {
    path: PathBuf,
}

impl FakeRegisters {
    fn new(registers: &[(usize, u32)]) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "guest-tools-fake-resource0-{}-{n}",
            std::process::id()
        ));
        let mut bytes = vec![0u8; 4096];
        for &(offset, value) in registers {
            bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        }
        std::fs::write(&path, bytes).expect("write the fake register file");
        FakeRegisters { path }
    }

    fn register(&self, offset: usize) -> u32 {
        let bytes = std::fs::read(&self.path).expect("read the fake register file");
        u32_at(&bytes, offset)
    }
}

impl Drop for FakeRegisters {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const MAGIC: (usize, u32) = (0x00, 0x534e_4150);
const ABI_1: (usize, u32) = (0x18, 1);
const STATUS_SNAPSHOT_EXISTS: (usize, u32) = (0x04, 1);

fn run_snapshot_demo(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let output = std::process::Command::new(SNAPSHOT_DEMO_PATH)
        .args(args)
        .output()
        .expect("run snapshot-demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code().unwrap_or(-1), stdout)
}

fn run_demo_on(fake: &FakeRegisters) -> (i32, String) {
    run_snapshot_demo(&[fake.path.as_os_str()])
}

#[test]
fn snapshot_demo_reports_a_missing_or_foreign_device() {
    let (code, out) = run_snapshot_demo(&["/nonexistent/resource0".as_ref()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("snapshot-demo: FAIL:"), "{out}");

    let (code, out) = run_snapshot_demo(&["--help".as_ref()]);
    assert_eq!(code, 1, "{out}");

    let (code, out) = run_demo_on(&FakeRegisters::new(&[]));
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("FAIL: MAGIC"), "{out}");

    let (code, out) = run_demo_on(&FakeRegisters::new(&[MAGIC, (0x18, 2)]));
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("ABI version 2"), "{out}");
}

#[test]
fn snapshot_demo_writes_save_then_restore_as_32_bit_commands() {
    // STATUS says no snapshot after the SAVE: the program stops before changing anything.
    let fake = FakeRegisters::new(&[MAGIC, ABI_1]);
    let (code, out) = run_demo_on(&fake);
    assert_eq!(code, 5, "{out}");
    assert_eq!(fake.register(0), 0x101, "SAVE not written to COMMAND");

    // A "device" whose RESTORE does nothing: the first return restores, and the RESTORE returns.
    let fake = FakeRegisters::new(&[MAGIC, ABI_1, STATUS_SNAPSHOT_EXISTS]);
    let (code, out) = run_demo_on(&fake);
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("first return from SAVE"), "{out}");
    assert!(
        out.contains("FAIL: RESTORE did not roll the VM back"),
        "{out}"
    );
    assert_eq!(fake.register(0), 0x102, "RESTORE not written to COMMAND");
}

#[test]
fn snapshot_demo_judges_the_second_return_by_restores_and_variables() {
    // RESTORES already 1 right after the SAVE: the program takes the "after the restore" path,
    // where the untouched variables are what a real rollback would show.
    let fake = FakeRegisters::new(&[MAGIC, ABI_1, STATUS_SNAPSHOT_EXISTS, (0x08, 1)]);
    let (code, out) = run_demo_on(&fake);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("snapshot-demo: PASS"), "{out}");

    let fake = FakeRegisters::new(&[MAGIC, ABI_1, STATUS_SNAPSHOT_EXISTS, (0x08, 2)]);
    let (code, out) = run_demo_on(&fake);
    assert_eq!(code, 8, "{out}");

    // RESTORES_HI counts too.
    let fake = FakeRegisters::new(&[MAGIC, ABI_1, STATUS_SNAPSHOT_EXISTS, (0x0c, 1)]);
    let (code, out) = run_demo_on(&fake);
    assert_eq!(code, 8, "{out}");
}
