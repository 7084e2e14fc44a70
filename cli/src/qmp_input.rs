//! A QMP client's input, cut off at a size: the JSON parser buffers a whole message, so a client
//! that never ends one (a string of gigabytes) would otherwise take all of snapvmm's memory.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// Longest QMP message taken (QEMU's own parser stops at 64 MiB per token; real commands are
/// well under a kilobyte).
pub const MAX_MESSAGE_BYTES: u64 = 1 << 20;

/// Bytes of the message being parsed; the reader of messages sets it to 0 after each one.
#[derive(Clone, Default)]
pub struct MessageBytes(Rc<Cell<u64>>);

impl MessageBytes {
    pub fn message_done(&self) {
        self.0.set(0);
    }
}

/// `inner`, failing with InvalidData once a message grows past [`MAX_MESSAGE_BYTES`].
pub struct CappedMessages<R> {
    inner: R,
    taken: MessageBytes,
}

impl<R: Read> CappedMessages<R> {
    pub fn new(inner: R, taken: MessageBytes) -> Self {
        CappedMessages { inner, taken }
    }
}

impl<R: Read> Read for CappedMessages<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let taken = self.taken.0.get();
        if taken >= MAX_MESSAGE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("QMP message longer than {MAX_MESSAGE_BYTES} bytes"),
            ));
        }
        let room = (MAX_MESSAGE_BYTES - taken).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.taken.0.set(taken + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(input: Vec<u8>) -> Vec<Result<Value, String>> {
        let taken = MessageBytes::default();
        let reader = CappedMessages::new(io::Cursor::new(input), taken.clone());
        let mut out = Vec::new();
        for message in serde_json::Deserializer::from_reader(reader).into_iter::<Value>() {
            let failed = message.is_err();
            out.push(message.map_err(|e| e.to_string()));
            taken.message_done();
            if failed {
                break;
            }
        }
        out
    }

    #[test]
    fn many_small_messages_pass_and_one_huge_message_is_cut_off() {
        // Far more than the cap in total, but each message small.
        let small = br#"{"execute": "query-status"}"#.repeat(100_000);
        let messages = parse(small);
        assert_eq!(messages.len(), 100_000);
        assert!(messages.iter().all(Result::is_ok));

        let mut huge = br#"{"execute": ""#.to_vec();
        huge.extend(std::iter::repeat_n(b'a', 4 << 20));
        huge.extend(br#""}"#);
        let messages = parse(huge);
        assert_eq!(messages.len(), 1);
        let error = messages[0].as_ref().unwrap_err();
        assert!(error.contains("longer than"), "{error}");
    }
}
