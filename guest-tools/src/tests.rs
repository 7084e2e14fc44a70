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
    for expected in ["hello", "pci-list", "fault"] {
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
