//! A newc ("070701") cpio writer: the per-run archive that the kernel unpacks over L1's base
//! initramfs (same-named files are replaced).

use std::collections::BTreeSet;

use super::LaneError;

/// Writes a newc ("070701") cpio archive in memory; the kernel unpacks it over the base
/// initramfs (files replace same-named ones).
#[derive(Default)]
pub(super) struct CpioWriter {
    bytes: Vec<u8>,
    directories: BTreeSet<String>,
    next_inode: u32,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), LaneError> {
        let size = u32::try_from(data.len())
            .map_err(|_| LaneError::BadRequest(format!("{name}: too large for a cpio entry")))?;
        let name_size = u32::try_from(name.len() + 1)
            .map_err(|_| LaneError::BadRequest(format!("{name}: name too long")))?;
        self.next_inode += 1;
        let fields = [
            self.next_inode,
            mode,
            0,
            0,
            1,
            0,
            size,
            0,
            0,
            0,
            0,
            name_size,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
    }

    /// Adds a regular file at absolute `path`, creating its parent directories.
    pub(super) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), LaneError> {
        let relative = path
            .strip_prefix('/')
            .filter(|rest| {
                !rest.is_empty()
                    && rest
                        .split('/')
                        .all(|part| !part.is_empty() && part != ".." && part != ".")
            })
            .ok_or_else(|| {
                LaneError::BadRequest(format!("L1 path {path:?} must be absolute and plain"))
            })?;
        let parts: Vec<&str> = relative.split('/').collect();
        for depth in 1..parts.len() {
            let directory = parts[..depth].join("/");
            if self.directories.insert(directory.clone()) {
                self.entry(&directory, 0o040_755, &[])?;
            }
        }
        self.entry(relative, 0o100_000 | (mode & 0o7777), data)
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        // The trailer cannot fail: empty data, short name.
        let _ = self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_writer_makes_a_newc_archive_with_parents() {
        let mut writer = CpioWriter::default();
        writer
            .file("/lane/jobs/000/run", 0o755, b"echo hi")
            .unwrap();
        writer.file("/lane/jobs/000/name", 0o644, b"x").unwrap();
        assert!(writer.file("relative", 0o644, b"").is_err());
        assert!(writer.file("/a/../b", 0o644, b"").is_err());
        let bytes = writer.finish();
        let text = String::from_utf8_lossy(&bytes);
        // lane, lane/jobs, lane/jobs/000 once each, two files, trailer.
        assert_eq!(text.matches("070701").count(), 6);
        assert!(
            text.contains("lane/jobs/000/run\0") && text.ends_with('\0') && bytes.len() % 4 == 0
        );
        // The mode field of the first file entry (after the three directories).
        assert!(text.contains(&format!("{:08x}", 0o100_755)));
    }
}
