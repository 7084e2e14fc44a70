//! Just enough ELF parsing to decide how to boot an image and to load 32-bit ones: program
//! headers, the PVH entry note and a Multiboot v1 header. Everything read is bounds-checked: the
//! file is untrusted.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("the ELF header is truncated")]
    TruncatedHeader,
    #[error("unsupported ELF: {0}")]
    Unsupported(&'static str),
    #[error("program header {index} lies outside the file")]
    ProgramHeaderOutOfFile { index: usize },
    #[error("segment {index} has file data outside the file")]
    SegmentOutOfFile { index: usize },
    #[error("segment {index} is larger in the file than in memory")]
    SegmentFileLargerThanMemory { index: usize },
    #[error("the image has no loadable segment")]
    NothingToLoad,
}

/// ELF class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfClass {
    Elf32,
    Elf64,
}

/// A PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub file_offset: u64,
    pub file_size: u64,
    pub phys_addr: u64,
    pub mem_size: u64,
}

/// What the VMM needs to know about an ELF image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage {
    pub class: ElfClass,
    pub entry: u64,
    pub segments: Vec<Segment>,
    /// XEN_ELFNOTE_PHYS32_ENTRY, if present.
    pub pvh_entry: Option<u64>,
    /// A valid Multiboot v1 header in the first 8 KiB.
    pub multiboot: bool,
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
const MULTIBOOT_SEARCH_BYTES: usize = 8192;

fn field(bytes: &[u8], offset: u64, size: usize) -> Option<u64> {
    let start = usize::try_from(offset).ok()?;
    let slice = bytes.get(start..start.checked_add(size)?)?;
    let mut value = [0u8; 8];
    value[..size].copy_from_slice(slice);
    Some(u64::from_le_bytes(value))
}

/// True if `bytes` starts with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

impl ElfImage {
    pub fn parse(bytes: &[u8]) -> Result<Self, ElfError> {
        if bytes.len() < 52 || !is_elf(bytes) {
            return Err(ElfError::TruncatedHeader);
        }
        let class = match bytes[4] {
            1 => ElfClass::Elf32,
            2 => ElfClass::Elf64,
            _ => return Err(ElfError::Unsupported("unknown ELF class")),
        };
        if bytes[5] != 1 {
            return Err(ElfError::Unsupported("big-endian ELF"));
        }
        let (machine, expected_machine) = (
            field(bytes, 18, 2),
            if class == ElfClass::Elf32 { 3 } else { 62 },
        );
        if machine != Some(expected_machine) {
            return Err(ElfError::Unsupported("not an x86 ELF"));
        }
        let header = |offset32: u64, offset64: u64, size32: usize, size64: usize| {
            match class {
                ElfClass::Elf32 => field(bytes, offset32, size32),
                ElfClass::Elf64 => field(bytes, offset64, size64),
            }
            .ok_or(ElfError::TruncatedHeader)
        };
        let entry = header(24, 24, 4, 8)?;
        let phoff = header(28, 32, 4, 8)?;
        let phentsize = header(42, 54, 2, 2)?;
        let phnum = header(44, 56, 2, 2)?;
        let expected_phentsize = if class == ElfClass::Elf32 { 32 } else { 56 };
        if phentsize != expected_phentsize {
            return Err(ElfError::Unsupported("unexpected program header size"));
        }
        let mut image = ElfImage {
            class,
            entry,
            segments: Vec::new(),
            pvh_entry: None,
            multiboot: has_multiboot_header(bytes),
        };
        for index in 0..phnum as usize {
            let ph = phoff
                .checked_add(index as u64 * phentsize)
                .ok_or(ElfError::ProgramHeaderOutOfFile { index })?;
            let get = |off32: u64, off64: u64| {
                match class {
                    ElfClass::Elf32 => field(bytes, ph + off32, 4),
                    ElfClass::Elf64 => field(bytes, ph + off64, 8),
                }
                .ok_or(ElfError::ProgramHeaderOutOfFile { index })
            };
            let p_type =
                field(bytes, ph, 4).ok_or(ElfError::ProgramHeaderOutOfFile { index })? as u32;
            let file_offset = get(4, 8)?;
            let phys_addr = get(12, 24)?;
            let file_size = get(16, 32)?;
            let mem_size = get(20, 40)?;
            let file_end = file_offset.checked_add(file_size);
            if file_end.is_none_or(|end| end > bytes.len() as u64) {
                return Err(ElfError::SegmentOutOfFile { index });
            }
            match p_type {
                PT_LOAD => {
                    if file_size > mem_size {
                        return Err(ElfError::SegmentFileLargerThanMemory { index });
                    }
                    if mem_size > 0 {
                        image.segments.push(Segment {
                            file_offset,
                            file_size,
                            phys_addr,
                            mem_size,
                        });
                    }
                }
                PT_NOTE => {
                    let notes = &bytes[file_offset as usize..(file_offset + file_size) as usize];
                    if let Some(pvh) = find_pvh_note(notes) {
                        image.pvh_entry = Some(pvh);
                    }
                }
                _ => {}
            }
        }
        if image.segments.is_empty() {
            return Err(ElfError::NothingToLoad);
        }
        Ok(image)
    }

    /// Lowest and highest (exclusive) physical address the segments occupy.
    pub fn phys_span(&self) -> Option<(u64, u64)> {
        let start = self.segments.iter().map(|s| s.phys_addr).min()?;
        let end = self
            .segments
            .iter()
            .map(|s| s.phys_addr.checked_add(s.mem_size))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()?;
        Some((start, end))
    }
}

/// Walks ELF notes (4-byte aligned name and descriptor) looking for the "Xen" PHYS32_ENTRY note.
fn find_pvh_note(notes: &[u8]) -> Option<u64> {
    let mut offset = 0usize;
    while offset + 12 <= notes.len() {
        let name_size = field(notes, offset as u64, 4)? as usize;
        let desc_size = field(notes, offset as u64 + 4, 4)? as usize;
        let note_type = field(notes, offset as u64 + 8, 4)? as u32;
        let name_start = offset + 12;
        let desc_start = name_start.checked_add(name_size.checked_next_multiple_of(4)?)?;
        let next = desc_start.checked_add(desc_size.checked_next_multiple_of(4)?)?;
        if next > notes.len() {
            return None;
        }
        if note_type == XEN_ELFNOTE_PHYS32_ENTRY
            && notes.get(name_start..name_start + name_size)? == b"Xen\0"
            && (desc_size == 4 || desc_size == 8)
        {
            return field(notes, desc_start as u64, desc_size);
        }
        offset = next;
    }
    None
}

/// A Multiboot v1 header: magic, flags, checksum summing to zero, 4-byte aligned in the first
/// 8 KiB of the file.
fn has_multiboot_header(bytes: &[u8]) -> bool {
    let limit = bytes.len().min(MULTIBOOT_SEARCH_BYTES);
    (0..limit.saturating_sub(11)).step_by(4).any(|offset| {
        let word = |i: usize| field(bytes, (offset + i * 4) as u64, 4).unwrap_or(0) as u32;
        word(0) == MULTIBOOT_MAGIC && word(0).wrapping_add(word(1)).wrapping_add(word(2)) == 0
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal ELF32 with one PT_LOAD of `code` at `paddr`, optionally a PVH note and a
    /// Multiboot header (placed at the start of the loaded code).
    pub fn tiny_elf32(code: &[u8], paddr: u32, pvh: Option<u32>, multiboot: bool) -> Vec<u8> {
        let mut payload = Vec::new();
        if multiboot {
            let flags = 0u32;
            for w in [
                MULTIBOOT_MAGIC,
                flags,
                0u32.wrapping_sub(MULTIBOOT_MAGIC.wrapping_add(flags)),
            ] {
                payload.extend_from_slice(&w.to_le_bytes());
            }
        }
        payload.extend_from_slice(code);
        let mut note = Vec::new();
        if let Some(entry) = pvh {
            for w in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
                note.extend_from_slice(&w.to_le_bytes());
            }
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&entry.to_le_bytes());
        }
        let phnum = if pvh.is_some() { 2 } else { 1 };
        let phoff = 52u32;
        let data_off = phoff + 32 * phnum;
        let note_off = data_off + payload.len() as u32;
        let mut elf = vec![0u8; 52];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1;
        elf[5] = 1;
        elf[6] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes());
        elf[18..20].copy_from_slice(&3u16.to_le_bytes());
        elf[24..28].copy_from_slice(&paddr.to_le_bytes());
        elf[28..32].copy_from_slice(&phoff.to_le_bytes());
        elf[40..42].copy_from_slice(&52u16.to_le_bytes());
        elf[42..44].copy_from_slice(&32u16.to_le_bytes());
        elf[44..46].copy_from_slice(&(phnum as u16).to_le_bytes());
        let phdr = |p_type: u32, off: u32, addr: u32, size: u32| {
            let mut h = Vec::new();
            for w in [p_type, off, addr, addr, size, size, 5, 4] {
                h.extend_from_slice(&w.to_le_bytes());
            }
            h
        };
        elf.extend(phdr(PT_LOAD, data_off, paddr, payload.len() as u32));
        if pvh.is_some() {
            elf.extend(phdr(PT_NOTE, note_off, 0, note.len() as u32));
        }
        elf.extend(&payload);
        elf.extend(&note);
        elf
    }

    #[test]
    fn parses_a_pvh_multiboot_elf32() {
        let elf = tiny_elf32(&[0xf4], 0x10_0000, Some(0x10_000c), true);
        let image = ElfImage::parse(&elf).unwrap();
        assert_eq!(image.class, ElfClass::Elf32);
        assert_eq!(image.pvh_entry, Some(0x10_000c));
        assert!(image.multiboot);
        assert_eq!(image.phys_span(), Some((0x10_0000, 0x10_000d)));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let elf = tiny_elf32(&[0x90; 64], 0x10_0000, Some(0x10_0000), true);
        for len in 0..elf.len() {
            let _ = ElfImage::parse(&elf[..len]);
        }
        assert!(ElfImage::parse(&elf[..60]).is_err());
    }

    #[test]
    fn corrupt_headers_are_rejected() {
        let mut elf = tiny_elf32(&[0xf4], 0x10_0000, None, false);
        // Segment offset far outside the file.
        elf[52 + 4..52 + 8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert_eq!(
            ElfImage::parse(&elf),
            Err(ElfError::SegmentOutOfFile { index: 0 })
        );
        let mut elf = tiny_elf32(&[0xf4], 0x10_0000, None, false);
        elf[18] = 0x28; // ARM
        assert!(matches!(
            ElfImage::parse(&elf),
            Err(ElfError::Unsupported(_))
        ));
        // Random bytes after the magic never panic.
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut junk = tiny_elf32(&[0xf4; 16], 0x10_0000, Some(1), true);
            for _ in 0..4 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = 4 + (seed as usize >> 8) % (junk.len() - 4);
                junk[at] = (seed >> 3) as u8;
            }
            let _ = ElfImage::parse(&junk);
        }
    }
}
