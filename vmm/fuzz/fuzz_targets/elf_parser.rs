//! `vmm::boot::elf::ElfImage::parse` on arbitrary bytes: the ELF header and program headers, the
//! PVH note walk and the Multiboot header search. Checked: no panic, and whatever it accepts is
//! consistent with the bytes (segments inside the file, file size within memory size, a span
//! that covers every segment).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::boot::elf::{is_elf, ElfImage};

fuzz_target!(|data: &[u8]| {
    let Ok(image) = ElfImage::parse(data) else {
        return;
    };
    assert!(is_elf(data));
    assert!(!image.segments.is_empty());
    for segment in &image.segments {
        let end = segment.file_offset.checked_add(segment.file_size);
        assert!(
            end.is_some_and(|end| end <= data.len() as u64),
            "{segment:?}"
        );
        assert!(segment.file_size <= segment.mem_size, "{segment:?}");
    }
    if let Some((start, end)) = image.phys_span() {
        assert!(start <= end);
        for segment in &image.segments {
            assert!(segment.phys_addr >= start && segment.phys_addr + segment.mem_size <= end);
        }
    }
});
