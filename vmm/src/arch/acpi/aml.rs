//! The AML encoder for the DSDT, by hand (no iasl at build time): just the objects the tables use
//! (names, integers, packages, buffers, scopes, devices, EISA ids) and the resource descriptors
//! a `_CRS` buffer holds.

// AML opcodes (ACPI 6.3, chapter 20).
const AML_ZERO_OP: u8 = 0x00;
const AML_ONE_OP: u8 = 0x01;
const AML_NAME_OP: u8 = 0x08;
const AML_BYTE_PREFIX: u8 = 0x0a;
const AML_WORD_PREFIX: u8 = 0x0b;
const AML_DWORD_PREFIX: u8 = 0x0c;
const AML_QWORD_PREFIX: u8 = 0x0e;
const AML_SCOPE_OP: u8 = 0x10;
const AML_BUFFER_OP: u8 = 0x11;
const AML_PACKAGE_OP: u8 = 0x12;
const AML_EXT_OP_PREFIX: u8 = 0x5b;
const AML_DEVICE_OP: u8 = 0x82;
pub(super) const AML_ROOT_CHAR: u8 = b'\\';

// Resource descriptors (ACPI 6.3, section 6.4).
pub(super) const RES_IO_PORT: u8 = 0x47;
pub(super) const RES_END_TAG: u8 = 0x79;
pub(super) const RES_DWORD_ADDRESS: u8 = 0x87;
pub(super) const RES_WORD_ADDRESS: u8 = 0x88;
pub(super) const RES_TYPE_MEMORY: u8 = 0;
pub(super) const RES_TYPE_IO: u8 = 1;
pub(super) const RES_TYPE_BUS: u8 = 2;
/// General flags: minimum and maximum fixed, positive decode, producer.
pub(super) const RES_FIXED_WINDOW: u8 = 0x0c;
/// I/O type flags: ISA and non-ISA ranges.
pub(super) const RES_IO_ENTIRE_RANGE: u8 = 0x03;
/// Memory type flags: read/write, non-cacheable.
pub(super) const RES_MEMORY_READ_WRITE: u8 = 0x01;
pub(super) const RES_IO_DECODE_16: u8 = 0x01;

/// A Word Address Space Descriptor for the fixed window `min..=max`.
pub(super) fn word_address(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
    let mut d = vec![RES_WORD_ADDRESS, 13, 0, kind, RES_FIXED_WINDOW, type_flags];
    for value in [0, min, max, 0, (max - min).wrapping_add(1)] {
        d.extend_from_slice(&value.to_le_bytes());
    }
    d
}

/// A DWord Address Space Descriptor for the fixed window `min..=max`.
pub(super) fn dword_address(kind: u8, type_flags: u8, min: u32, max: u32) -> Vec<u8> {
    let mut d = vec![RES_DWORD_ADDRESS, 23, 0, kind, RES_FIXED_WINDOW, type_flags];
    for value in [0, min, max, 0, (max - min).wrapping_add(1)] {
        d.extend_from_slice(&value.to_le_bytes());
    }
    d
}

/// A compressed EISA id such as `PNP0A03`, as the 32-bit integer AML stores.
pub(super) fn eisa_id(id: [u8; 7]) -> u32 {
    let letter = |c: u8| u16::from(c.saturating_sub(b'@') & 0x1f);
    let hex = |c: u8| char::from(c).to_digit(16).unwrap_or(0) as u8;
    let vendor = letter(id[0]) << 10 | letter(id[1]) << 5 | letter(id[2]);
    let [v0, v1] = vendor.to_be_bytes();
    let p0 = hex(id[3]) << 4 | hex(id[4]);
    let p1 = hex(id[5]) << 4 | hex(id[6]);
    u32::from_le_bytes([v0, v1, p0, p1])
}

/// AML PkgLength for `content_len` bytes that follow it (the encoding counts its own bytes).
fn aml_pkg_length(content_len: usize) -> Vec<u8> {
    if content_len + 1 < 0x40 {
        return vec![(content_len + 1) as u8];
    }
    for extra in 1..=3usize {
        let total = content_len + 1 + extra;
        if total < 1 << (4 + 8 * extra) {
            let mut encoded = vec![((extra as u8) << 6) | (total & 0xf) as u8];
            encoded.extend((0..extra).map(|i| (total >> (4 + 8 * i)) as u8));
            return encoded;
        }
    }
    // Tables here are a few hundred bytes; 2^28 is unreachable.
    vec![0]
}

fn aml_name_seg(name: &str) -> [u8; 4] {
    let mut seg = [b'_'; 4];
    for (slot, byte) in seg.iter_mut().zip(name.bytes()) {
        *slot = byte;
    }
    seg
}

pub(super) fn aml_name(name: &str, value: &[u8]) -> Vec<u8> {
    let mut aml = vec![AML_NAME_OP];
    aml.extend_from_slice(&aml_name_seg(name));
    aml.extend_from_slice(value);
    aml
}

pub(super) fn aml_integer(value: u64) -> Vec<u8> {
    match value {
        0 => vec![AML_ZERO_OP],
        1 => vec![AML_ONE_OP],
        v if v <= 0xff => vec![AML_BYTE_PREFIX, v as u8],
        v if v <= 0xffff => [&[AML_WORD_PREFIX][..], &(v as u16).to_le_bytes()].concat(),
        v if v <= 0xffff_ffff => [&[AML_DWORD_PREFIX][..], &(v as u32).to_le_bytes()].concat(),
        v => [&[AML_QWORD_PREFIX][..], &v.to_le_bytes()].concat(),
    }
}

pub(super) fn aml_package(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut content = vec![elements.len() as u8];
    for element in elements {
        content.extend_from_slice(element);
    }
    [vec![AML_PACKAGE_OP], aml_pkg_length(content.len()), content].concat()
}

pub(super) fn aml_buffer(bytes: &[u8]) -> Vec<u8> {
    let mut content = aml_integer(bytes.len() as u64);
    content.extend_from_slice(bytes);
    [vec![AML_BUFFER_OP], aml_pkg_length(content.len()), content].concat()
}

pub(super) fn aml_scope(path: &[u8], body: &[u8]) -> Vec<u8> {
    let content = [path, body].concat();
    [vec![AML_SCOPE_OP], aml_pkg_length(content.len()), content].concat()
}

pub(super) fn aml_device(name: &str, body: &[u8]) -> Vec<u8> {
    let content = [&aml_name_seg(name)[..], body].concat();
    [
        vec![AML_EXT_OP_PREFIX, AML_DEVICE_OP],
        aml_pkg_length(content.len()),
        content,
    ]
    .concat()
}

/// Reads AML back, for the tests of the encoder and of the DSDT.
#[cfg(test)]
pub(crate) mod decoder {
    use super::*;

    /// A decoded AML object, enough of the grammar for what this encoder emits.
    #[derive(Debug, PartialEq)]
    pub(crate) enum Aml {
        Name(String, Box<Aml>),
        Scope(String, Vec<Aml>),
        Device(String, Vec<Aml>),
        Integer(u64),
        Package(Vec<Aml>),
        Buffer(Vec<u8>),
    }

    /// Decodes a PkgLength at `at`; returns (package length, bytes of the encoding).
    pub(crate) fn pkg_length(aml: &[u8], at: usize) -> (usize, usize) {
        let lead = aml[at];
        let extra = (lead >> 6) as usize;
        if extra == 0 {
            return ((lead & 0x3f) as usize, 1);
        }
        assert_eq!(
            lead & 0x30,
            0,
            "bits 4-5 of a multi-byte PkgLength are zero"
        );
        let mut len = (lead & 0xf) as usize;
        for i in 0..extra {
            len |= (aml[at + 1 + i] as usize) << (4 + 8 * i);
        }
        (len, 1 + extra)
    }

    fn name_string(aml: &[u8], at: usize) -> (String, usize) {
        let root = aml[at] == AML_ROOT_CHAR;
        let start = at + usize::from(root);
        let seg = std::str::from_utf8(&aml[start..start + 4]).unwrap();
        assert!(seg
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
        let prefix = if root { "\\" } else { "" };
        (format!("{prefix}{seg}"), usize::from(root) + 4)
    }

    /// Decodes one object at `at`; returns it and its length.
    fn decode(aml: &[u8], at: usize) -> (Aml, usize) {
        let op = aml[at];
        let int = |n: usize| {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&aml[at + 1..at + 1 + n]);
            (Aml::Integer(u64::from_le_bytes(v)), 1 + n)
        };
        match op {
            AML_ZERO_OP => (Aml::Integer(0), 1),
            AML_ONE_OP => (Aml::Integer(1), 1),
            AML_BYTE_PREFIX => int(1),
            AML_WORD_PREFIX => int(2),
            AML_DWORD_PREFIX => int(4),
            AML_QWORD_PREFIX => int(8),
            AML_NAME_OP => {
                let (name, name_len) = name_string(aml, at + 1);
                let (value, value_len) = decode(aml, at + 1 + name_len);
                (Aml::Name(name, Box::new(value)), 1 + name_len + value_len)
            }
            AML_SCOPE_OP | AML_PACKAGE_OP | AML_BUFFER_OP => {
                let (len, len_bytes) = pkg_length(aml, at + 1);
                let end = at + 1 + len;
                assert!(end <= aml.len(), "package runs past the table");
                let body = at + 1 + len_bytes;
                let object = match op {
                    AML_SCOPE_OP => {
                        let (name, name_len) = name_string(aml, body);
                        Aml::Scope(name, decode_list(&aml[..end], body + name_len))
                    }
                    AML_PACKAGE_OP => {
                        let count = aml[body] as usize;
                        let elements = decode_list(&aml[..end], body + 1);
                        assert_eq!(elements.len(), count);
                        Aml::Package(elements)
                    }
                    _ => {
                        let (size, size_len) = decode(aml, body);
                        let Aml::Integer(size) = size else {
                            panic!("buffer size is not an integer")
                        };
                        let data = &aml[body + size_len..end];
                        assert_eq!(data.len() as u64, size);
                        Aml::Buffer(data.to_vec())
                    }
                };
                (object, 1 + len)
            }
            AML_EXT_OP_PREFIX if aml[at + 1] == AML_DEVICE_OP => {
                let (len, len_bytes) = pkg_length(aml, at + 2);
                let end = at + 2 + len;
                assert!(end <= aml.len(), "device runs past the table");
                let (name, name_len) = name_string(aml, at + 2 + len_bytes);
                let body = decode_list(&aml[..end], at + 2 + len_bytes + name_len);
                (Aml::Device(name, body), 2 + len)
            }
            other => panic!("unexpected AML opcode {other:#04x} at {at}"),
        }
    }

    /// Decodes objects from `at` to the end of `aml`, which must end exactly on an object.
    pub(crate) fn decode_list(aml: &[u8], mut at: usize) -> Vec<Aml> {
        let mut objects = Vec::new();
        while at < aml.len() {
            let (object, len) = decode(aml, at);
            objects.push(object);
            at += len;
        }
        assert_eq!(at, aml.len());
        objects
    }
}

#[cfg(test)]
mod tests {
    use super::decoder::pkg_length;
    use super::*;

    #[test]
    fn aml_encodings() {
        assert_eq!(eisa_id(*b"PNP0A03"), 0x030a_d041);
        assert_eq!(eisa_id(*b"PNP0B00"), 0x000b_d041);
        assert_eq!(aml_pkg_length(0x3e), vec![0x3f]);
        // 0x3f content bytes + 2 length bytes = 0x41: lead 0x41 & 0xf | 1 << 6, then 0x41 >> 4.
        assert_eq!(aml_pkg_length(0x3f), vec![0x41, 0x04]);
        for len in [0, 10, 62, 63, 64, 300, 4000, 4094, 4095, 70_000] {
            let encoded = aml_pkg_length(len);
            assert_eq!(
                pkg_length(&encoded, 0),
                (len + encoded.len(), encoded.len())
            );
        }
        assert_eq!(aml_integer(0x1234), vec![0x0b, 0x34, 0x12]);
        assert_eq!(
            aml_integer(1 << 40),
            [&[0x0e][..], &(1u64 << 40).to_le_bytes()].concat()
        );
    }
}
