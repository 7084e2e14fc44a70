//! The RAM part of a stream written without copying pages: record headers and other small
//! bytes collect in one buffer, pages stay where the source has them (guest RAM), and each batch
//! goes out as one vectored write. The kernel's copy into the file or pipe is then the only copy
//! of a page; through a buffered writer a page was copied twice more.

use std::io::{IoSlice, Write};

use crate::positional_output::{write_all_vectored_at, PositionalOutput};
use crate::wire::WireError;

/// Pages per vectored write (the kernel takes up to 1024 slices per call: a header and a page
/// each).
pub const PAGES_PER_BATCH: usize = 500;

/// Bytes and borrowed pages in stream order, written by [`PageBatch::write_to`].
pub struct PageBatch<'p> {
    /// Everything that is not page data, in order.
    small: Vec<u8>,
    /// Each page and how many bytes of `small` precede it (since the previous page).
    pages: Vec<(usize, &'p [u8])>,
    /// Bytes of `small` already placed before a page.
    placed: usize,
}

impl Default for PageBatch<'_> {
    fn default() -> Self {
        Self {
            small: Vec::with_capacity(PAGES_PER_BATCH * 16),
            pages: Vec::with_capacity(PAGES_PER_BATCH),
            placed: 0,
        }
    }
}

impl<'p> PageBatch<'p> {
    /// Where small bytes (headers, markers) go, in stream order.
    pub fn small(&mut self) -> &mut Vec<u8> {
        &mut self.small
    }

    /// A page's bytes, after what `small` holds so far.
    pub fn push_page(&mut self, page: &'p [u8]) {
        let before = self.small.len() - self.placed;
        self.placed = self.small.len();
        self.pages.push((before, page));
    }

    /// Whether the batch is due to be written.
    pub fn is_full(&self) -> bool {
        self.pages.len() >= PAGES_PER_BATCH
    }

    /// Bytes the batch holds.
    pub fn len(&self) -> u64 {
        (self.small.len() + self.pages.iter().map(|(_, page)| page.len()).sum::<usize>()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.small.is_empty() && self.pages.is_empty()
    }

    /// Writes everything in order and empties the batch.
    pub fn write_to<W: Write>(&mut self, out: &mut W) -> Result<(), WireError> {
        let mut slices = self.slices();
        write_all_vectored(out, &mut slices)?;
        drop(slices);
        self.small.clear();
        self.pages.clear();
        self.placed = 0;
        Ok(())
    }

    /// Writes everything in order at `offset` of `out`.
    pub fn write_at(&self, out: &dyn PositionalOutput, offset: u64) -> Result<(), WireError> {
        let mut slices = self.slices();
        write_all_vectored_at(out, &mut slices, offset).map_err(WireError::Write)
    }

    /// The batch as slices in stream order.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(self.pages.len() * 2 + 1);
        let mut at = 0;
        for &(before, page) in &self.pages {
            if before > 0 {
                slices.push(IoSlice::new(
                    self.small.get(at..at + before).unwrap_or_default(),
                ));
                at += before;
            }
            slices.push(IoSlice::new(page));
        }
        if at < self.small.len() {
            slices.push(IoSlice::new(self.small.get(at..).unwrap_or_default()));
        }
        slices
    }
}

/// `Write::write_all_vectored`, which is not stable yet.
fn write_all_vectored<W: Write>(
    out: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> Result<(), WireError> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => {
                return Err(WireError::Write(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "the output takes no more bytes",
                )))
            }
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Write(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most 3 bytes per call, to exercise partial vectored writes.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_and_pages_come_out_in_order_through_partial_writes() {
        let pages = [vec![1u8; 10], vec![2u8; 7]];
        let mut batch = PageBatch::default();
        batch.small().extend_from_slice(b"ab");
        batch.push_page(&pages[0]);
        batch.push_page(&pages[1]);
        batch.small().extend_from_slice(b"cde");
        let mut out = Trickle(Vec::new());
        batch.write_to(&mut out).unwrap();
        let mut expected = b"ab".to_vec();
        expected.extend_from_slice(&pages[0]);
        expected.extend_from_slice(&pages[1]);
        expected.extend_from_slice(b"cde");
        assert_eq!(out.0, expected);
        // Empty again, and reusable.
        batch.small().push(9);
        batch.write_to(&mut out).unwrap();
        assert_eq!(out.0.last(), Some(&9));
        assert_eq!(out.0.len(), expected.len() + 1);
    }
}
