//! Primitive encoding of the stream (§1 of the reference): big-endian integers, counted strings,
//! read from any `Read` (a pipe included) with a small look-ahead for subsection peeking.

use std::io::{self, Read, Write};

use thiserror::Error;

/// Longest look-ahead the reader ever needs: a subsection marker, its name length and name.
const MAX_LOOKAHEAD: usize = 2 + 255;

#[derive(Debug, Error)]
pub enum WireError {
    #[error("stream ends early at byte {offset} (needed {needed} more bytes)")]
    Truncated { offset: u64, needed: usize },
    #[error("read error at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("write error: {0}")]
    Write(#[from] io::Error),
}

/// A reader over the stream that knows its offset and can peek a few bytes ahead.
pub struct WireReader<R> {
    input: R,
    /// Bytes peeked but not consumed yet, in stream order.
    lookahead: Vec<u8>,
    offset: u64,
}

impl<R: Read> WireReader<R> {
    pub fn new(input: R) -> Self {
        WireReader {
            input,
            lookahead: Vec::with_capacity(MAX_LOOKAHEAD),
            offset: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads into `buf` from the input (not the look-ahead), retrying on interrupts.
    fn fill_from_input(&mut self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut filled = 0;
        while filled < buf.len() {
            let dst = buf.get_mut(filled..).unwrap_or_default();
            match self.input.read(dst) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(WireError::Io {
                        offset: self.offset + filled as u64,
                        source,
                    })
                }
            }
        }
        Ok(filled)
    }

    /// Fills `buf` completely or fails with `Truncated`.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), WireError> {
        let from_lookahead = self.lookahead.len().min(buf.len());
        let (head, tail) = buf.split_at_mut(from_lookahead);
        head.copy_from_slice(self.lookahead.get(..from_lookahead).unwrap_or_default());
        self.lookahead.drain(..from_lookahead);
        let got = self.fill_from_input(tail)?;
        self.offset += (from_lookahead + got) as u64;
        if got < tail.len() {
            return Err(WireError::Truncated {
                offset: self.offset,
                needed: tail.len() - got,
            });
        }
        Ok(())
    }

    /// Up to `len` (at most [`MAX_LOOKAHEAD`]) next bytes without consuming them; fewer at the end
    /// of the stream.
    pub fn peek(&mut self, len: usize) -> Result<&[u8], WireError> {
        let len = len.min(MAX_LOOKAHEAD);
        if self.lookahead.len() < len {
            let have = self.lookahead.len();
            let mut more = [0u8; MAX_LOOKAHEAD];
            let want = more.get_mut(..len - have).unwrap_or_default();
            let got = self.fill_from_input(want)?;
            self.lookahead
                .extend_from_slice(more.get(..got).unwrap_or_default());
        }
        let avail = self.lookahead.len().min(len);
        Ok(self.lookahead.get(..avail).unwrap_or_default())
    }

    /// Skips `len` bytes through a fixed buffer (no allocation proportional to `len`).
    pub fn skip(&mut self, mut len: u64) -> Result<(), WireError> {
        let mut scratch = [0u8; 4096];
        while len > 0 {
            let step = len.min(scratch.len() as u64) as usize;
            self.read_exact(scratch.get_mut(..step).unwrap_or_default())?;
            len -= step as u64;
        }
        Ok(())
    }

    /// Reads `len` bytes into a new vector; callers cap `len` before calling.
    pub fn read_vec(&mut self, len: usize) -> Result<Vec<u8>, WireError> {
        let mut buf = vec![0u8; len];
        self.read_exact(&mut buf)?;
        Ok(buf)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    pub fn be16(&mut self) -> Result<u16, WireError> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    pub fn be32(&mut self) -> Result<u32, WireError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    pub fn be64(&mut self) -> Result<u64, WireError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    /// A counted string (u8 length); bytes as they are (QEMU idstrs are ASCII).
    pub fn counted_bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let len = self.u8()?;
        self.read_vec(usize::from(len))
    }

    /// Whether the input has no more bytes.
    pub fn at_end(&mut self) -> Result<bool, WireError> {
        Ok(self.peek(1)?.is_empty())
    }
}

/// Big-endian helpers for a writer.
pub trait WireWrite: Write {
    fn put_u8(&mut self, v: u8) -> Result<(), WireError> {
        Ok(self.write_all(&[v])?)
    }
    fn put_be16(&mut self, v: u16) -> Result<(), WireError> {
        Ok(self.write_all(&v.to_be_bytes())?)
    }
    fn put_be32(&mut self, v: u32) -> Result<(), WireError> {
        Ok(self.write_all(&v.to_be_bytes())?)
    }
    fn put_be64(&mut self, v: u64) -> Result<(), WireError> {
        Ok(self.write_all(&v.to_be_bytes())?)
    }
    /// A counted string; the caller guarantees at most 255 bytes.
    fn put_counted(&mut self, s: &str) -> Result<(), WireError> {
        let len = u8::try_from(s.len()).unwrap_or(u8::MAX);
        self.put_u8(len)?;
        Ok(self.write_all(s.as_bytes().get(..usize::from(len)).unwrap_or_default())?)
    }
}

impl<W: Write + ?Sized> WireWrite for W {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_then_read_sees_the_same_bytes() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut r = WireReader::new(&data[..]);
        assert_eq!(r.peek(3).unwrap(), &[1, 2, 3]);
        assert_eq!(r.be16().unwrap(), 0x0102);
        assert_eq!(r.peek(2).unwrap(), &[3, 4]);
        assert_eq!(r.be32().unwrap(), 0x0304_0506);
        assert_eq!(r.offset(), 6);
        assert_eq!(r.peek(10).unwrap(), &[7, 8, 9]);
        assert!(matches!(
            r.be32(),
            Err(WireError::Truncated { needed: 1, .. })
        ));
    }

    #[test]
    fn counted_strings_round_trip() {
        let mut out = Vec::new();
        out.put_counted("pc.ram").unwrap();
        let mut r = WireReader::new(&out[..]);
        assert_eq!(r.counted_bytes().unwrap(), b"pc.ram");
        assert!(r.at_end().unwrap());
    }
}
