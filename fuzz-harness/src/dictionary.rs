//! AFL/libFuzzer dictionaries (`--dict FILE`): one token a line, `"value"` or `name="value"` (AFL
//! also allows `name@level="value"`), `#` comments, escapes `\\`, `\"` and `\xHH`.
//!
//! Written by hand because LibAFL's `Tokens::add_from_file` panics on a line that is not UTF-8
//! and its errors do not say which line is wrong.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Largest dictionary file read.
pub const MAX_DICT_FILE_LEN: u64 = 16 * 1024 * 1024;
/// Largest token (AFL++ allows 128 bytes; libFuzzer dictionaries have longer ones).
pub const MAX_TOKEN_LEN: usize = 1024;
/// Most tokens kept.
pub const MAX_TOKENS: usize = 65_536;

/// Errors reading a dictionary.
#[derive(Debug, thiserror::Error)]
pub enum DictError {
    #[error("cannot read dictionary {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("dictionary {path} is larger than {MAX_DICT_FILE_LEN} bytes")]
    TooLarge { path: PathBuf },
    #[error("dictionary {path} line {line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("dictionary {path} has more than {MAX_TOKENS} tokens")]
    TooManyTokens { path: PathBuf },
}

/// Reads the tokens of a dictionary file (duplicates removed, order kept).
pub fn load(path: &Path) -> Result<Vec<Vec<u8>>, DictError> {
    let read_error = |source| DictError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_error)?;
    let mut text = Vec::new();
    file.take(MAX_DICT_FILE_LEN + 1)
        .read_to_end(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_DICT_FILE_LEN {
        return Err(DictError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    parse(&text).map_err(|(line, reason)| match reason {
        ParseError::Syntax(reason) => DictError::Syntax {
            path: path.to_path_buf(),
            line,
            reason,
        },
        ParseError::TooManyTokens => DictError::TooManyTokens {
            path: path.to_path_buf(),
        },
    })
}

/// Why a dictionary text is rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Syntax(&'static str),
    TooManyTokens,
}

/// Parses a dictionary; errors carry the 1-based line number.
pub fn parse(text: &[u8]) -> Result<Vec<Vec<u8>>, (usize, ParseError)> {
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, raw_line) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let line = raw_line.trim_ascii();
        if line.is_empty() || line.first() == Some(&b'#') {
            continue;
        }
        let token = parse_line(line).map_err(|reason| (line_no, ParseError::Syntax(reason)))?;
        if token.is_empty() {
            continue;
        }
        if seen.insert(token.clone()) {
            if tokens.len() >= MAX_TOKENS {
                return Err((line_no, ParseError::TooManyTokens));
            }
            tokens.push(token);
        }
    }
    Ok(tokens)
}

/// One `[name[@level]=]"value"` line.
fn parse_line(line: &[u8]) -> Result<Vec<u8>, &'static str> {
    let quote = line
        .iter()
        .position(|&b| b == b'"')
        .ok_or("expected a quoted value")?;
    let name = line.get(..quote).unwrap_or_default().trim_ascii();
    if !name.is_empty() {
        let name = name
            .strip_suffix(b"=")
            .ok_or("expected = before the value")?
            .trim_ascii();
        let valid = name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'@' | b'-' | b'.'));
        if !valid {
            return Err("invalid keyword name");
        }
    }
    let rest = line.get(quote + 1..).unwrap_or_default();
    let (value, after) = split_closing_quote(rest).ok_or("missing closing quote")?;
    if !after.trim_ascii().is_empty() {
        return Err("text after the closing quote");
    }
    decode(value)
}

/// Splits at the first unescaped `"`.
fn split_closing_quote(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut escaped = false;
    for (i, &b) in rest.iter().enumerate() {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some((rest.get(..i)?, rest.get(i + 1..)?)),
            _ => {}
        }
    }
    None
}

/// Decodes `\\`, `\"` and `\xHH`; other bytes must be printable ASCII.
fn decode(value: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(b'\\') => out.push(b'\\'),
                Some(b'"') => out.push(b'"'),
                Some(b'x') => {
                    let hi = bytes.next().and_then(|&h| hex_digit(h));
                    let lo = bytes.next().and_then(|&l| hex_digit(l));
                    match (hi, lo) {
                        (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                        _ => return Err("\\x needs two hex digits"),
                    }
                }
                _ => return Err("unknown escape (use \\\\, \\\" or \\xHH)"),
            },
            0x20..=0x7e => out.push(b),
            _ => return Err("non-printable byte in value (escape it as \\xHH)"),
        }
        if out.len() > MAX_TOKEN_LEN {
            return Err("token longer than 1024 bytes");
        }
    }
    Ok(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_afl_and_libfuzzer_lines() {
        let text = b"# comment\n\nkw1=\"GIF89a\"\n\"\\x00\\xffab\\\\\\\"\"\nkw@2 = \"x\"\n\"GIF89a\"\n\"\"\n";
        let tokens = parse(text).unwrap();
        assert_eq!(
            tokens,
            vec![
                b"GIF89a".to_vec(),
                vec![0, 0xff, b'a', b'b', b'\\', b'"'],
                b"x".to_vec()
            ]
        );
    }

    #[test]
    fn reports_the_bad_line() {
        assert_eq!(
            parse(b"\"ok\"\nbroken\n"),
            Err((2, ParseError::Syntax("expected a quoted value")))
        );
        assert_eq!(
            parse(b"\"a\\x4\"\n"),
            Err((1, ParseError::Syntax("\\x needs two hex digits")))
        );
        assert_eq!(
            parse(b"\"unterminated\n"),
            Err((1, ParseError::Syntax("missing closing quote")))
        );
        assert!(matches!(parse(b"\"a\" junk"), Err((1, _))));
        assert!(matches!(parse(b"\"\xff\""), Err((1, _))));
        assert!(matches!(parse(b"a b=\"x\""), Err((1, _))));
    }
}
