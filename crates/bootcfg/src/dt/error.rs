//! The one error type of device-tree parsing.
use alloc::string::String;
use core::fmt;

use super::spec as raw;

/// Why the device tree could not be used. `Display` gives a one-line message for the panic
/// banner, always starting with "device tree: ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtError {
    /// Shorter than the 40-byte header.
    TooSmall {
        len: usize,
    },
    BadMagic(u32),
    /// The header's totalsize exceeds the buffer.
    Truncated {
        totalsize: u32,
        len: usize,
    },
    Version {
        version: u32,
        last_comp: u32,
    },
    BadHeader(String),
    BadStructure {
        offset: usize,
        what: String,
    },
    /// The fdt crate rejected a blob that passed our own checks.
    Fdt(String),
    BadProperty {
        node: String,
        prop: &'static str,
        what: String,
    },
    NoMemory,
    NoConsole {
        stdout_path: String,
        reason: String,
    },
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("device tree: ")?;
        match self {
            DtError::TooSmall { len } => {
                write!(
                    f,
                    "buffer of {len} bytes is smaller than the {}-byte header",
                    raw::HEADER_SIZE
                )
            }
            DtError::BadMagic(m) => {
                write!(f, "bad magic {m:#010x} (expected {:#010x})", raw::FDT_MAGIC)
            }
            DtError::Truncated { totalsize, len } => {
                write!(f, "truncated: header says {totalsize} bytes, buffer has {len}")
            }
            DtError::Version { version, last_comp } => write!(
                f,
                "unsupported format version {version} (last compatible {last_comp}); need 17"
            ),
            DtError::BadHeader(s) => write!(f, "bad header: {s}"),
            DtError::BadStructure { offset, what } => {
                write!(f, "corrupt structure block at offset {offset:#x}: {what}")
            }
            DtError::Fdt(s) => write!(f, "fdt crate: {s}"),
            DtError::BadProperty { node, prop, what } => write!(f, "{node}: bad `{prop}`: {what}"),
            DtError::NoMemory => write!(f, "no /memory node with a non-empty reg"),
            DtError::NoConsole { stdout_path, reason } => write!(
                f,
                "no usable console (stdout-path \"{stdout_path}\": {reason}; and no enabled \
                 arm,pl011 or brcm,bcm2835-aux-uart node)"
            ),
        }
    }
}
