//! VMState bodies (reference §5): a writer that emits fields and subsections and records the
//! matching VMDESCRIPTION entry at the same time (so the description always matches the bytes),
//! and the subsection peeking rule QEMU's loader uses.

use std::io::Read;

use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::format::SUBSECTION;
use crate::wire::{WireError, WireReader};

#[derive(Debug, Error)]
pub enum VmStateError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("section {section:?}: unknown subsection {name:?}")]
    UnknownSubsection { section: String, name: String },
    #[error("section {section:?}: subsection {name:?} has version {version}, expected {expected}")]
    SubsectionVersion {
        section: String,
        name: String,
        version: u32,
        expected: u32,
    },
    #[error("section {section:?}: subsection {name:?} appears twice")]
    DuplicateSubsection { section: String, name: String },
    #[error("section {section:?}: {why}")]
    Invalid { section: String, why: String },
}

/// One entry of a vmdesc field list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDesc {
    pub name: &'static str,
    /// The VMStateInfo name (`uint64`, `buffer`, `timer`, ...).
    pub kind: &'static str,
    /// Bytes of one element.
    pub size: usize,
    pub array_len: Option<usize>,
}

/// The vmdesc of one VMState (a section body or a subsection).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmsdDesc {
    pub vmsd_name: String,
    pub version: u32,
    pub fields: Vec<FieldDesc>,
    pub subsections: Vec<VmsdDesc>,
}

impl VmsdDesc {
    /// The JSON object analyze-migration.py reads (`fields`, `subsections`).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut obj = Map::new();
        obj.insert("vmsd_name".into(), json!(self.vmsd_name));
        obj.insert("version".into(), json!(self.version));
        let fields: Vec<Value> = self
            .fields
            .iter()
            .map(|field| {
                let mut f = Map::new();
                f.insert("name".into(), json!(field.name));
                if let Some(len) = field.array_len {
                    f.insert("array_len".into(), json!(len));
                }
                f.insert("type".into(), json!(field.kind));
                f.insert("size".into(), json!(field.size));
                Value::Object(f)
            })
            .collect();
        obj.insert("fields".into(), Value::Array(fields));
        if !self.subsections.is_empty() {
            let subs = self
                .subsections
                .iter()
                .map(|sub| Value::Object(sub.to_json()))
                .collect();
            obj.insert("subsections".into(), Value::Array(subs));
        }
        obj
    }

    /// Bytes of the fields (without subsections).
    pub fn fields_len(&self) -> usize {
        self.fields
            .iter()
            .map(|f| f.size * f.array_len.unwrap_or(1))
            .sum()
    }
}

/// Writes a VMState body and its description.
pub struct BodyWriter {
    bytes: Vec<u8>,
    desc: VmsdDesc,
}

impl BodyWriter {
    pub fn new(vmsd_name: &str, version: u32) -> Self {
        BodyWriter {
            bytes: Vec::new(),
            desc: VmsdDesc {
                vmsd_name: vmsd_name.to_string(),
                version,
                ..Default::default()
            },
        }
    }

    fn field(&mut self, name: &'static str, kind: &'static str, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        self.desc.fields.push(FieldDesc {
            name,
            kind,
            size: bytes.len(),
            array_len: None,
        });
    }

    pub fn u8(&mut self, name: &'static str, v: u8) {
        self.field(name, "uint8", &[v]);
    }
    pub fn bool(&mut self, name: &'static str, v: bool) {
        self.field(name, "bool", &[u8::from(v)]);
    }
    pub fn u16(&mut self, name: &'static str, v: u16) {
        self.field(name, "uint16", &v.to_be_bytes());
    }
    pub fn u32(&mut self, name: &'static str, v: u32) {
        self.field(name, "uint32", &v.to_be_bytes());
    }
    pub fn i32(&mut self, name: &'static str, v: i32) {
        self.field(name, "int32", &v.to_be_bytes());
    }
    pub fn u64(&mut self, name: &'static str, v: u64) {
        self.field(name, "uint64", &v.to_be_bytes());
    }
    pub fn i64(&mut self, name: &'static str, v: i64) {
        self.field(name, "int64", &v.to_be_bytes());
    }
    /// A QEMU timer: expiry in ns, or -1 when not armed.
    pub fn timer(&mut self, name: &'static str, v: i64) {
        self.field(name, "timer", &v.to_be_bytes());
    }
    pub fn buffer(&mut self, name: &'static str, v: &[u8]) {
        self.field(name, "buffer", v);
    }
    /// `VMSTATE_UNUSED(n)`: zero bytes.
    pub fn unused(&mut self, len: usize) {
        let zeros = vec![0u8; len];
        self.field("unused", "unused_buffer", &zeros);
    }

    fn array(&mut self, name: &'static str, kind: &'static str, size: usize, values: Vec<u8>) {
        let len = values.len() / size.max(1);
        self.bytes.extend_from_slice(&values);
        self.desc.fields.push(FieldDesc {
            name,
            kind,
            size,
            array_len: Some(len),
        });
    }
    pub fn u32_array(&mut self, name: &'static str, v: &[u32]) {
        self.array(
            name,
            "uint32",
            4,
            v.iter().flat_map(|x| x.to_be_bytes()).collect(),
        );
    }
    pub fn u64_array(&mut self, name: &'static str, v: &[u64]) {
        self.array(
            name,
            "uint64",
            8,
            v.iter().flat_map(|x| x.to_be_bytes()).collect(),
        );
    }

    /// Bytes described as `kind` elements of `size` bytes (an array when `array_len` is given).
    pub fn described(
        &mut self,
        name: &'static str,
        kind: &'static str,
        size: usize,
        array_len: Option<usize>,
        bytes: &[u8],
    ) {
        self.bytes.extend_from_slice(bytes);
        self.desc.fields.push(FieldDesc {
            name,
            kind,
            size,
            array_len,
        });
    }

    /// A subsection: marker, name, version, then the body `fill` writes (with its own subsections).
    pub fn subsection(&mut self, name: &str, version: u32, fill: impl FnOnce(&mut BodyWriter)) {
        let mut sub = BodyWriter::new(name, version);
        fill(&mut sub);
        self.raw_subsection(sub);
    }

    /// Appends a finished subsection writer.
    pub fn raw_subsection(&mut self, sub: BodyWriter) {
        let name = sub.desc.vmsd_name.as_bytes();
        self.bytes.push(SUBSECTION);
        self.bytes.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        self.bytes
            .extend_from_slice(name.get(..255.min(name.len())).unwrap_or_default());
        self.bytes
            .extend_from_slice(&sub.desc.version.to_be_bytes());
        self.bytes.extend_from_slice(&sub.bytes);
        self.desc.subsections.push(sub.desc);
    }

    pub fn finish(self) -> (Vec<u8>, VmsdDesc) {
        (self.bytes, self.desc)
    }
}

/// A subsection header as found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsectionHeader {
    pub name: String,
    pub version: u32,
}

/// QEMU's rule (vmstate_subsection_load): at the end of a VMState's fields, consume a subsection
/// while the next byte is the marker and the peeked name starts with the parent's vmsd name.
/// Returns `None` when the bytes that follow are not a subsection of `parent`.
pub fn next_subsection<R: Read>(
    wire: &mut WireReader<R>,
    parent: &str,
) -> Result<Option<SubsectionHeader>, WireError> {
    let head = wire.peek(2)?;
    let (marker, len) = match head {
        [marker, len] => (*marker, usize::from(*len)),
        _ => return Ok(None),
    };
    if marker != SUBSECTION || len < parent.len() + 1 {
        return Ok(None);
    }
    let peeked = wire.peek(2 + len)?;
    let name = match peeked.get(2..) {
        Some(name) if name.len() == len => name,
        _ => return Ok(None),
    };
    if !name.starts_with(parent.as_bytes()) {
        return Ok(None);
    }
    let name = String::from_utf8_lossy(name).into_owned();
    wire.skip(2 + len as u64)?;
    let version = wire.be32()?;
    Ok(Some(SubsectionHeader { name, version }))
}

/// A fixed-size subsection body that a typed section keeps as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSubsection {
    pub name: String,
    pub version: u32,
    pub body: Vec<u8>,
}

/// Slice cursor for decoding a body already read into memory (callers check lengths first, so
/// every read here is in range; a short slice yields zeros rather than a panic).
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.data.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        out
    }
    pub fn slice(&mut self, len: usize) -> Vec<u8> {
        let out = self
            .data
            .get(self.pos..self.pos + len)
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| vec![0; len]);
        self.pos += len;
        out
    }
    pub fn skip(&mut self, len: usize) {
        self.pos += len;
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    pub fn bool(&mut self) -> bool {
        self.u8() != 0
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.bytes())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.bytes())
    }
    pub fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.bytes())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.bytes())
    }
    pub fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.bytes())
    }
    pub fn u32_array<const N: usize>(&mut self) -> [u32; N] {
        std::array::from_fn(|_| self.u32())
    }
    pub fn u64_array<const N: usize>(&mut self) -> [u64; N] {
        std::array::from_fn(|_| self.u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsection_bytes_and_desc_agree() {
        let mut w = BodyWriter::new("kvmclock", 1);
        w.u64("clock", 0x1122);
        w.subsection("kvmclock/clock_is_reliable", 1, |s| {
            s.bool("clock_is_reliable", true)
        });
        let (bytes, desc) = w.finish();
        assert_eq!(bytes.len(), 8 + 1 + 1 + 26 + 4 + 1);
        assert_eq!(desc.fields_len(), 8);
        assert_eq!(desc.subsections[0].fields_len(), 1);
        let mut r = WireReader::new(&bytes[8..]);
        assert_eq!(next_subsection(&mut r, "apic").unwrap(), None);
        let header = next_subsection(&mut r, "kvmclock").unwrap().unwrap();
        assert_eq!(header.name, "kvmclock/clock_is_reliable");
        assert_eq!(header.version, 1);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(next_subsection(&mut r, "kvmclock").unwrap(), None);
    }
}
