//! What the user asked for, parsed and checked before any KVM object exists.

use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

pub use crate::memory::{MAX_MEM_BYTES, MIN_MEM_BYTES};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "'{0}' is not a size: use a number with an optional K, M or G suffix, e.g. 256M or 1G"
    )]
    NotASize(String),
    #[error("--mem {given} is too small: the minimum is {} MiB", MIN_MEM_BYTES >> 20)]
    MemTooSmall { given: String },
    #[error("--mem {given} is too large: the maximum is {} GiB", MAX_MEM_BYTES >> 30)]
    MemTooLarge { given: String },
    #[error("--mem {given} is not a multiple of 4 KiB")]
    MemNotPageAligned { given: String },
    #[error("--serial must be 'stdio' or 'file:PATH', not '{0}'")]
    BadSerial(String),
}

/// A guest RAM size in bytes, parsed from strings such as `256M`, `1G`, `65536K` or `16777216`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSize(pub u64);

impl FromStr for MemSize {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let not_a_size = || ConfigError::NotASize(text.to_string());
        let trimmed = text.trim();
        let (digits, shift) = match trimmed.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    _ => return Err(not_a_size()),
                };
                (&trimmed[..i], shift)
            }
            _ => (trimmed, 0),
        };
        // Allow the common "MiB"-less forms only; anything else is rejected rather than guessed.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_a_size());
        }
        let value: u64 = digits.parse().map_err(|_| not_a_size())?;
        let bytes = value
            .checked_shl(shift)
            .filter(|b| b >> shift == value)
            .ok_or_else(|| ConfigError::MemTooLarge {
                given: text.to_string(),
            })?;
        if bytes < MIN_MEM_BYTES {
            return Err(ConfigError::MemTooSmall {
                given: text.to_string(),
            });
        }
        if bytes > MAX_MEM_BYTES {
            return Err(ConfigError::MemTooLarge {
                given: text.to_string(),
            });
        }
        if !bytes.is_multiple_of(4096) {
            return Err(ConfigError::MemNotPageAligned {
                given: text.to_string(),
            });
        }
        Ok(MemSize(bytes))
    }
}

/// Where the guest's COM1 output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialOutput {
    #[default]
    Stdio,
    File(PathBuf),
    /// Nowhere (fuzzing, benchmarks, library users that do not read it).
    Discard,
}

impl FromStr for SerialOutput {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "stdio" => Ok(SerialOutput::Stdio),
            _ => match text.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialOutput::File(PathBuf::from(path))),
                _ => Err(ConfigError::BadSerial(text.to_string())),
            },
        }
    }
}

/// The kernel to boot: a file, or a guest built into the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    File(PathBuf),
    Builtin {
        name: &'static str,
        image: &'static [u8],
    },
}

/// Everything needed to boot a machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub kernel: KernelSource,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_bytes: u64,
    pub serial: SerialOutput,
    /// Snapshot engine options (restore strategy, verification).
    pub engine: crate::engine::EngineOptions,
    /// Devices (the snapshot device's slot and buffer sizes).
    pub devices: crate::device_manager::DeviceOptions,
}

impl MachineConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: KernelSource) -> Self {
        MachineConfig {
            kernel,
            initrd: None,
            cmdline: String::new(),
            mem_bytes: 256 << 20,
            serial: SerialOutput::Stdio,
            engine: Default::default(),
            devices: Default::default(),
        }
    }
}

/// What resuming a machine state takes besides the state: where its output goes, how it restores.
#[derive(Debug, Clone, Default)]
pub struct ResumeOptions {
    pub serial: SerialOutput,
    pub engine: crate::engine::EngineOptions,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!("256M".parse(), Ok(MemSize(256 << 20)));
        assert_eq!("1G".parse(), Ok(MemSize(1 << 30)));
        assert_eq!("1g".parse(), Ok(MemSize(1 << 30)));
        assert_eq!("65536K".parse(), Ok(MemSize(64 << 20)));
        assert_eq!("16777216".parse(), Ok(MemSize(16 << 20)));
    }

    #[test]
    fn bad_sizes_are_rejected_with_the_reason() {
        assert!(matches!(
            "".parse::<MemSize>(),
            Err(ConfigError::NotASize(_))
        ));
        assert!(matches!(
            "abc".parse::<MemSize>(),
            Err(ConfigError::NotASize(_))
        ));
        assert!(matches!(
            "12X".parse::<MemSize>(),
            Err(ConfigError::NotASize(_))
        ));
        assert!(matches!(
            "-5M".parse::<MemSize>(),
            Err(ConfigError::NotASize(_))
        ));
        assert!(matches!(
            "1.5G".parse::<MemSize>(),
            Err(ConfigError::NotASize(_))
        ));
        assert!(matches!(
            "M".parse::<MemSize>(),
            Err(ConfigError::NotASize(_))
        ));
        assert!(matches!(
            "1M".parse::<MemSize>(),
            Err(ConfigError::MemTooSmall { .. })
        ));
        assert!(matches!(
            "0".parse::<MemSize>(),
            Err(ConfigError::MemTooSmall { .. })
        ));
        assert!(matches!(
            "65G".parse::<MemSize>(),
            Err(ConfigError::MemTooLarge { .. })
        ));
        assert!(matches!(
            "99999999999999999999G".parse::<MemSize>(),
            Err(ConfigError::NotASize(_))
        ));
        assert!(matches!(
            "9999999999999G".parse::<MemSize>(),
            Err(ConfigError::MemTooLarge { .. })
        ));
        assert!(matches!(
            "16777217".parse::<MemSize>(),
            Err(ConfigError::MemNotPageAligned { .. })
        ));
    }

    #[test]
    fn serial_targets_parse() {
        assert_eq!("stdio".parse(), Ok(SerialOutput::Stdio));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(SerialOutput::File(PathBuf::from("/tmp/x")))
        );
        assert!("file:".parse::<SerialOutput>().is_err());
        assert!("tcp:1".parse::<SerialOutput>().is_err());
    }
}
