//! Synthetic streams through our writer and reader: RAM with CONTINUE across chunk boundaries, fill
//! bytes, byte-identical write -> read -> write, and the RAM record errors.

use qemu_migration::format::ram_flags;
use qemu_migration::ram::{RamBlock, VecRam};
use qemu_migration::reader::{read_stream, ReadError, ReadLimits};
use qemu_migration::writer::{write_parsed, StreamWriter};

fn sample_ram() -> VecRam {
    let mut main = vec![0u8; 40 * 4096];
    for (i, byte) in main.iter_mut().enumerate().skip(4096).step_by(7) {
        *byte = (i % 251) as u8;
    }
    let mut bios = vec![0u8; 4 * 4096];
    bios[3 * 4096..].fill(0x90);
    VecRam {
        blocks: vec![("microvm.ram".into(), main), ("pc.bios".into(), bios)],
    }
}

fn write_sample(pages_per_chunk: usize) -> Vec<u8> {
    let mut ram = sample_ram();
    let blocks = ram.blocks_list();
    let mut writer = StreamWriter::new(Vec::new(), "microvm").unwrap();
    writer.set_pages_per_chunk(pages_per_chunk);
    writer.write_ram(7, &blocks, &mut ram).unwrap();
    writer.finish().unwrap()
}

trait BlocksList {
    fn blocks_list(&self) -> Vec<RamBlock>;
}

impl BlocksList for VecRam {
    fn blocks_list(&self) -> Vec<RamBlock> {
        qemu_migration::ram::RamSource::blocks(self)
    }
}

#[test]
fn ram_round_trips_with_continue_across_chunks() {
    let bytes = write_sample(3);
    let mut ram = VecRam::default();
    let parsed = read_stream(&bytes[..], &mut ram, &ReadLimits::default()).unwrap();
    assert_eq!(ram, sample_ram());
    assert_eq!(parsed.ram_section_id, Some(7));
    assert_eq!(parsed.ram_stats.pages + parsed.ram_stats.fill_pages, 44);
    // The second PART chunk starts with a CONTINUE record for the block named in the first.
    let parts: Vec<usize> = bytes
        .windows(5)
        .enumerate()
        .filter(|(_, w)| *w == [0x02, 0, 0, 0, 7])
        .map(|(i, _)| i + 5)
        .collect();
    assert!(parts.len() > 10);
    let header = u64::from_be_bytes(bytes[parts[1]..parts[1] + 8].try_into().unwrap());
    assert_ne!(header & ram_flags::CONTINUE, 0);
    // write -> read -> write is byte-identical.
    let again = {
        let mut writer = StreamWriter::new(Vec::new(), &parsed.machine).unwrap();
        writer.set_pages_per_chunk(3);
        writer.write_ram(7, &parsed.ram_blocks, &mut ram).unwrap();
        writer.finish().unwrap()
    };
    assert_eq!(again, bytes);
    assert!(!write_parsed(Vec::new(), &parsed, &mut ram)
        .unwrap()
        .is_empty());
}

#[test]
fn fill_bytes_other_than_zero_are_honoured() {
    let mut bytes = write_sample(1000);
    // Find a ZERO record with CONTINUE and give it fill byte 0xAB.
    let mut at = 0;
    let mut patched_offset = None;
    while at + 9 < bytes.len() {
        let header = u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        if header & 0xfff == ram_flags::ZERO | ram_flags::CONTINUE
            && header >> 12 > 0
            && header >> 12 < 40
        {
            bytes[at + 8] = 0xab;
            patched_offset = Some(header & !0xfff);
            break;
        }
        at += 1;
    }
    let offset = patched_offset.expect("a zero page record") as usize;
    let mut ram = VecRam::default();
    read_stream(&bytes[..], &mut ram, &ReadLimits::default()).unwrap();
    // pc.bios pages 1 and 2 are the zero pages sent with CONTINUE.
    let bios = ram.block("pc.bios").unwrap();
    assert!(bios[offset..offset + 4096].iter().all(|&b| b == 0xab));
    assert!(bios[..offset].iter().all(|&b| b == 0));
}

fn header_stream(records: &[u8]) -> Vec<u8> {
    let mut s = b"QEVM\0\0\0\x03\x07\0\0\0\x07microvm".to_vec();
    s.extend_from_slice(&[
        0x01, 0, 0, 0, 1, 3, b'r', b'a', b'm', 0, 0, 0, 0, 0, 0, 0, 4,
    ]);
    s.extend_from_slice(records);
    s
}

#[test]
fn ram_record_errors() {
    let limits = ReadLimits::default();
    let mut sink = VecRam::default();
    // CONTINUE before any block is named (after a valid block list).
    let mut list = (0x2000u64 | ram_flags::MEM_SIZE).to_be_bytes().to_vec();
    list.extend_from_slice(&[1, b'a']);
    list.extend_from_slice(&0x2000u64.to_be_bytes());
    let mut records = list.clone();
    records.extend_from_slice(&(ram_flags::ZERO | ram_flags::CONTINUE).to_be_bytes());
    records.push(0);
    let err = read_stream(&header_stream(&records)[..], &mut sink, &limits).unwrap_err();
    assert!(err.to_string().contains("CONTINUE"), "{err}");
    // Offset past the block.
    let mut records = list.clone();
    records.extend_from_slice(&(0x2000u64 | ram_flags::ZERO).to_be_bytes());
    records.extend_from_slice(&[1, b'a', 0]);
    let err = read_stream(&header_stream(&records)[..], &mut sink, &limits).unwrap_err();
    assert!(err.to_string().contains("outside block"), "{err}");
    // Unknown block name.
    let mut records = list.clone();
    records.extend_from_slice(&ram_flags::ZERO.to_be_bytes());
    records.extend_from_slice(&[1, b'b', 0]);
    let err = read_stream(&header_stream(&records)[..], &mut sink, &limits).unwrap_err();
    assert!(err.to_string().contains("unknown block"), "{err}");
    // Two type flags at once.
    let mut records = list.clone();
    records.extend_from_slice(&(ram_flags::ZERO | ram_flags::PAGE).to_be_bytes());
    let err = read_stream(&header_stream(&records)[..], &mut sink, &limits).unwrap_err();
    assert!(matches!(err, ReadError::Ram(_)), "{err}");
    // Block lengths that do not add up to the declared total.
    let mut records = (0x3000u64 | ram_flags::MEM_SIZE).to_be_bytes().to_vec();
    records.extend_from_slice(&[1, b'a']);
    records.extend_from_slice(&0x4000u64.to_be_bytes());
    let err = read_stream(&header_stream(&records)[..], &mut sink, &limits).unwrap_err();
    assert!(err.to_string().contains("block list"), "{err}");
}

#[test]
fn header_errors() {
    let mut sink = VecRam::default();
    let limits = ReadLimits::default();
    let err = read_stream(&b"QEVX\0\0\0\x03"[..], &mut sink, &limits).unwrap_err();
    assert!(matches!(err, ReadError::BadMagic(_)));
    let err = read_stream(&b"QEVM\0\0\0\x02"[..], &mut sink, &limits).unwrap_err();
    assert!(matches!(err, ReadError::BadVersion(2)));
    let err = read_stream(&b"QEVM\0\0\0\x03\x04"[..], &mut sink, &limits).unwrap_err();
    assert!(matches!(err, ReadError::MissingConfiguration(4)));
    let err = read_stream(
        &b"QEVM\0\0\0\x03\x07\xff\xff\xff\xff"[..],
        &mut sink,
        &limits,
    )
    .unwrap_err();
    assert!(matches!(err, ReadError::BadConfiguration(_)));
    // A stream that stops without EOF.
    let ok = b"QEVM\0\0\0\x03\x07\0\0\0\x07microvm";
    let err = read_stream(&ok[..], &mut sink, &limits).unwrap_err();
    assert!(matches!(err, ReadError::NoEof));
    let mut with_eof = ok.to_vec();
    with_eof.push(0);
    let parsed = read_stream(&with_eof[..], &mut sink, &limits).unwrap();
    assert_eq!(parsed.machine, "microvm");
    assert!(parsed.vmdesc.is_none());
}

#[test]
fn zeroed_memory_sink_skips_only_untouched_zero_pages() {
    use qemu_migration::machine::ram_map::{GuestRamSink, VecGuestMemory};
    let mut records = (0x2000u64 | ram_flags::MEM_SIZE).to_be_bytes().to_vec();
    records.push(11);
    records.extend_from_slice(b"microvm.ram");
    records.extend_from_slice(&0x2000u64.to_be_bytes());
    // Page 0: data, then zero again (QEMU resends pages that changed); page 1: zero only.
    records.extend_from_slice(&ram_flags::PAGE.to_be_bytes());
    records.push(11);
    records.extend_from_slice(b"microvm.ram");
    records.extend_from_slice(&[0x55; 4096]);
    records.extend_from_slice(&(ram_flags::ZERO | ram_flags::CONTINUE).to_be_bytes());
    records.push(0);
    records.extend_from_slice(&(0x1000 | ram_flags::ZERO | ram_flags::CONTINUE).to_be_bytes());
    records.push(0);
    records.extend_from_slice(&ram_flags::EOS.to_be_bytes());
    records.extend_from_slice(&[0x7e, 0, 0, 0, 1, 0]);
    let stream = header_stream(&records);
    let mut memory = VecGuestMemory::default();
    let mut sink = GuestRamSink::new(&mut memory).with_zeroed_memory();
    read_stream(&stream[..], &mut sink, &ReadLimits::default()).unwrap();
    assert!(
        memory.regions[0].1.iter().all(|&b| b == 0),
        "page 0 was zeroed again"
    );
}

const POISON: [u8; 4096] = [0xa5; 4096];

/// The sample RAM, lent page by page or copied, with its all-zero pages of the main block declared
/// known zero; reading one of those is a failure (the point is that the writer never touches them).
struct HoleAwareRam {
    ram: VecRam,
    lends: bool,
    reads_of_known_zero: std::cell::Cell<usize>,
}

impl HoleAwareRam {
    fn is_hole(&self, block: &str, offset: u64) -> bool {
        block == "microvm.ram" && {
            let data = &self.ram.blocks[0].1[offset as usize..offset as usize + 4096];
            data.iter().all(|&b| b == 0)
        }
    }
}

impl qemu_migration::ram::RamSource for HoleAwareRam {
    fn blocks(&self) -> Vec<RamBlock> {
        self.ram.blocks_list()
    }
    fn read_page(
        &mut self,
        block: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), qemu_migration::RamAccessError> {
        if self.is_hole(block, offset) {
            self.reads_of_known_zero
                .set(self.reads_of_known_zero.get() + 1);
        }
        self.ram.read_page(block, offset, buf)
    }
    fn page(&self, block: &str, offset: u64) -> Option<&[u8]> {
        if !self.lends {
            return None;
        }
        // Lent pages are only read by the writer: a known-zero page lends bytes that are not
        // zero, which would show in the stream had the writer looked at them.
        if self.is_hole(block, offset) {
            return Some(&POISON);
        }
        let (_, data) = self.ram.blocks.iter().find(|(name, _)| name == block)?;
        data.get(offset as usize..offset as usize + 4096)
    }
    fn known_zero(&self, block: &str, offset: u64) -> bool {
        self.is_hole(block, offset)
    }
}

#[test]
fn pages_known_zero_are_sent_as_zero_records_without_being_read() {
    let plain = write_sample(3);
    for lends in [false, true] {
        let mut source = HoleAwareRam {
            ram: sample_ram(),
            lends,
            reads_of_known_zero: std::cell::Cell::new(0),
        };
        let blocks = source.ram.blocks_list();
        let mut writer = StreamWriter::new(Vec::new(), "microvm").unwrap();
        writer.set_pages_per_chunk(3);
        writer.write_ram(7, &blocks, &mut source).unwrap();
        let bytes = writer.finish().unwrap();
        assert_eq!(bytes, plain, "lends: {lends}");
        assert_eq!(source.reads_of_known_zero.get(), 0, "lends: {lends}");
    }
}

/// Pages written at their offsets by several threads (`write_ram_at`, an export into a file)
/// make the same bytes as the stream written in order, sections after the RAM included.
#[test]
fn pages_written_into_a_file_by_threads_match_the_stream_written_in_order() {
    let mut main = vec![0u8; 3000 * 4096];
    for (i, page) in main.chunks_exact_mut(4096).enumerate() {
        if i % 5 != 0 {
            page[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            page[4000] = i as u8;
        }
    }
    let ram = VecRam {
        blocks: vec![("microvm.ram".into(), main)],
    };
    let write = |file: Option<&std::fs::File>| -> Vec<u8> {
        let mut source = HoleAwareRam {
            ram: ram.clone(),
            lends: true,
            reads_of_known_zero: std::cell::Cell::new(0),
        };
        let blocks = source.ram.blocks_list();
        let section = qemu_migration::Section {
            section_id: 2,
            idstr: "timer".into(),
            instance_id: 0,
            state: qemu_migration::SectionState::Timer(qemu_migration::sections::TimerSection {
                cpu_ticks_offset: 5,
                cpu_clock_offset: 7,
            }),
        };
        match file {
            None => {
                let mut writer = StreamWriter::new(Vec::new(), "microvm").unwrap();
                writer.set_pages_per_chunk(700);
                writer.write_ram(1, &blocks, &mut source).unwrap();
                writer.write_section(&section).unwrap();
                writer.finish().unwrap()
            }
            Some(file) => {
                let mut writer = StreamWriter::new(file, "microvm").unwrap();
                writer.set_pages_per_chunk(700);
                writer.write_ram_at(1, &blocks, &mut source, file).unwrap();
                writer.write_section(&section).unwrap();
                writer.finish().unwrap();
                std::fs::read(format!("/proc/self/fd/{}", {
                    use std::os::fd::AsRawFd;
                    file.as_raw_fd()
                }))
                .unwrap()
            }
        }
    };
    let in_order = write(None);
    let file = tempfile::tempfile().unwrap();
    let at_offsets = write(Some(&file));
    assert!(in_order.len() > 2400 * 4096);
    assert!(in_order == at_offsets, "the streams differ");
}
