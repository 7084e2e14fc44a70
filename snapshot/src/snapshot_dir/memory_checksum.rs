//! CRC-32 of memory images that skips holes: a run of zeros is folded into the checksum in
//! O(log n) with CRC combination, so a sparse file (a hostile 1 TiB `memory.raw`, or mostly-zero
//! guest RAM) costs only its data extents.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub(super) use crate::file_extents::next_data_extent;

/// Bytes read per `pread` when checksumming a data extent.
const READ_CHUNK: usize = 1 << 20;

/// Feeds `len` zero bytes to `checksum` without touching them one by one.
pub(super) fn hash_zeros(checksum: &mut crc32fast::Hasher, mut len: u64) {
    // `power` is the CRC state of 2^k zero bytes; combining doubles it.
    let mut power = crc32fast::Hasher::new();
    power.update(&[0]);
    while len > 0 {
        if len & 1 == 1 {
            checksum.combine(&power);
        }
        len >>= 1;
        if len > 0 {
            let same = power.clone();
            power.combine(&same);
        }
    }
}

/// CRC-32 of the first `len` bytes of `file`, reading only its data extents.
pub(super) fn checksum_file(file: &File, len: u64) -> io::Result<u32> {
    let mut checksum = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut pos = 0u64;
    while let Some((start, end)) = next_data_extent(file, pos, len)? {
        hash_zeros(&mut checksum, start - pos);
        let mut offset = start;
        while offset < end {
            let chunk = (end - offset).min(READ_CHUNK as u64) as usize;
            let bytes = buffer
                .get_mut(..chunk)
                .ok_or_else(|| io::Error::other("chunk"))?;
            file.read_exact_at(bytes, offset)?;
            checksum.update(bytes);
            offset += chunk as u64;
        }
        pos = end;
    }
    hash_zeros(&mut checksum, len - pos);
    Ok(checksum.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_zeros_match_hashed_zeros() {
        for len in [0u64, 1, 2, 3, 7, 4096, 65_537, 1 << 20, (1 << 20) + 12_345] {
            let mut folded = crc32fast::Hasher::new();
            folded.update(b"prefix");
            hash_zeros(&mut folded, len);
            let mut plain = crc32fast::Hasher::new();
            plain.update(b"prefix");
            plain.update(&vec![0u8; len as usize]);
            assert_eq!(folded.finalize(), plain.finalize(), "{len} zeros");
        }
    }

    #[test]
    fn sparse_file_checksum_matches_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let len = 64 * 4096u64;
        file.set_len(len).unwrap();
        file.write_all_at(&[0x5a; 4096], 8 * 4096).unwrap();
        file.write_all_at(b"tail", len - 4).unwrap();
        let contents = std::fs::read(&path).unwrap();
        assert_eq!(
            checksum_file(&file, len).unwrap(),
            crc32fast::hash(&contents)
        );
    }
}
