//! Tiny 32-bit PVH kernels made of a few bytes of machine code, for checking how snapvmm reports
//! each way a guest can stop (spin past `--timeout`, triple fault, i8042 reset, debug-exit code).

/// Where the code is loaded and entered (1 MiB, PVH's usual kernel address).
const LOAD_ADDRESS: u32 = 0x10_0000;
const ELF32_HEADER_SIZE: u32 = 52;
const PROGRAM_HEADER_SIZE: u32 = 32;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// p_flags R+X.
const FLAGS_READ_EXECUTE: u32 = 5;

/// An ELF32 executable whose only code is `code`, loaded at 1 MiB and entered there through its
/// PVH note (32-bit protected mode, paging off, no IDT).
pub fn tiny_pvh_kernel(code: &[u8]) -> Vec<u8> {
    let mut note = Vec::new();
    for word in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
        note.extend_from_slice(&word.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&LOAD_ADDRESS.to_le_bytes());
    // The test programs are a few bytes: their sizes always fit.
    let code_size = u32::try_from(code.len()).unwrap_or(u32::MAX);
    let note_size = u32::try_from(note.len()).unwrap_or(u32::MAX);
    let code_offset = ELF32_HEADER_SIZE + 2 * PROGRAM_HEADER_SIZE;

    let mut elf = vec![0u8; ELF32_HEADER_SIZE as usize];
    elf[..7].copy_from_slice(b"\x7fELF\x01\x01\x01"); // ELF32, little endian, version 1
    elf[16] = 2; // ET_EXEC
    elf[18] = 3; // EM_386
    elf[20] = 1; // EV_CURRENT
    elf[24..28].copy_from_slice(&LOAD_ADDRESS.to_le_bytes());
    elf[28..32].copy_from_slice(&ELF32_HEADER_SIZE.to_le_bytes()); // e_phoff
    elf[40..42].copy_from_slice(&(ELF32_HEADER_SIZE as u16).to_le_bytes());
    elf[42..44].copy_from_slice(&(PROGRAM_HEADER_SIZE as u16).to_le_bytes());
    elf[44..46].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let program_header = |kind: u32, offset: u32, address: u32, size: u32| {
        [
            kind,
            offset,
            address,
            address,
            size,
            size,
            FLAGS_READ_EXECUTE,
            4,
        ]
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .collect::<Vec<u8>>()
    };
    elf.extend(program_header(
        PT_LOAD,
        code_offset,
        LOAD_ADDRESS,
        code_size,
    ));
    elf.extend(program_header(
        PT_NOTE,
        code_offset + code_size,
        0,
        note_size,
    ));
    elf.extend_from_slice(code);
    elf.extend_from_slice(&note);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn tiny_kernel_has_the_code_at_its_load_address_and_a_pvh_note() {
        let code = [0xeb, 0xfe];
        let elf = tiny_pvh_kernel(&code);
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(word(&elf, 24), LOAD_ADDRESS, "e_entry");
        let load = ELF32_HEADER_SIZE as usize;
        assert_eq!(word(&elf, load), PT_LOAD);
        let offset = word(&elf, load + 4) as usize;
        assert_eq!(&elf[offset..offset + code.len()], &code);
        assert_eq!(word(&elf, load + 12), LOAD_ADDRESS, "p_paddr");
        let note = load + PROGRAM_HEADER_SIZE as usize;
        assert_eq!(word(&elf, note), PT_NOTE);
        let note_offset = word(&elf, note + 4) as usize;
        assert_eq!(word(&elf, note_offset + 8), XEN_ELFNOTE_PHYS32_ENTRY);
        assert_eq!(&elf[note_offset + 12..note_offset + 16], b"Xen\0");
        assert_eq!(word(&elf, note_offset + 16), LOAD_ADDRESS);
        assert_eq!(elf.len(), note_offset + 20);
    }
}
