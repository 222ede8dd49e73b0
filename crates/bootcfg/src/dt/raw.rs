//! The flattened-devicetree container: header checks, a bounds-checked walk of the structure
//! block, and the /memreserve/ map.
//!
//! Why our own walk: the `fdt` crate (0.2.0-alpha3) is only "fallible" once its constructor has
//! succeeded, and even that constructor adds `u32` offsets without overflow checks and slices
//! the root node with `len - 4`. Everything it later reads (node names, property values, name
//! offsets into the strings block) is checked here first, so the crate never sees a blob that
//! could make it panic. This mirrors libfdt's `fdt_check_header()` + `fdt_check_full()`.

use super::error::DtError;
use alloc::format;
use alloc::vec::Vec;

use super::spec::{FDT_BEGIN_NODE, FDT_END, FDT_END_NODE, FDT_NOP, FDT_PROP};
pub use super::spec::{FDT_MAGIC, HEADER_SIZE, MAX_DEPTH};

/// The fields of `struct fdt_header` we use.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub totalsize: u32,
    pub off_dt_struct: u32,
    pub off_dt_strings: u32,
    pub off_mem_rsvmap: u32,
    pub size_dt_strings: u32,
    pub size_dt_struct: u32,
}

pub fn be32(b: &[u8], off: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn be64(b: &[u8], off: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(off..off.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Checks magic, version and that the three blocks lie inside `totalsize <= dtb.len()`.
pub fn header(dtb: &[u8]) -> Result<Header, DtError> {
    let field = |i: usize| be32(dtb, i * 4).unwrap_or(0);
    if dtb.len() >= 4 && field(0) != FDT_MAGIC {
        return Err(DtError::BadMagic(field(0)));
    }
    if dtb.len() < HEADER_SIZE {
        return Err(DtError::TooSmall { len: dtb.len() });
    }
    let h = Header {
        totalsize: field(1),
        off_dt_struct: field(2),
        off_dt_strings: field(3),
        off_mem_rsvmap: field(4),
        size_dt_strings: field(8),
        size_dt_struct: field(9),
    };
    let (version, last_comp) = (field(5), field(6));
    if (h.totalsize as u64) > dtb.len() as u64 {
        return Err(DtError::Truncated { totalsize: h.totalsize, len: dtb.len() });
    }
    if (h.totalsize as usize) < HEADER_SIZE {
        return Err(DtError::BadHeader(format!(
            "totalsize {} is smaller than the header",
            h.totalsize
        )));
    }
    // Version 17 added size_dt_struct, which both our walk and the fdt crate rely on.
    if version < 17 || last_comp > 17 {
        return Err(DtError::Version { version, last_comp });
    }
    let block = |name: &str, off: u32, size: u32| {
        let end = off as u64 + size as u64;
        if (off as usize) < HEADER_SIZE || end > h.totalsize as u64 {
            return Err(DtError::BadHeader(format!(
                "{name} block [{off:#x}, {end:#x}) is outside [{HEADER_SIZE:#x}, totalsize {:#x})",
                h.totalsize
            )));
        }
        Ok(())
    };
    block("structure", h.off_dt_struct, h.size_dt_struct)?;
    block("strings", h.off_dt_strings, h.size_dt_strings)?;
    block("memory reservation", h.off_mem_rsvmap, 0)?;
    Ok(h)
}

/// The structure block of a header-checked blob.
fn structs<'a>(dtb: &'a [u8], h: &Header) -> &'a [u8] {
    let off = h.off_dt_struct as usize;
    dtb.get(off..off + h.size_dt_struct as usize).unwrap_or(&[])
}

fn strings<'a>(dtb: &'a [u8], h: &Header) -> &'a [u8] {
    let off = h.off_dt_strings as usize;
    dtb.get(off..off + h.size_dt_strings as usize).unwrap_or(&[])
}

/// A NUL-terminated UTF-8 string starting at `off`; returns it and the offset after the NUL.
fn cstr(b: &[u8], off: usize) -> Option<(&str, usize)> {
    let rest = b.get(off..)?;
    let len = rest.iter().position(|&c| c == 0)?;
    let s = core::str::from_utf8(&rest[..len]).ok()?;
    Some((s, off + len + 1))
}

fn align4(x: usize) -> usize {
    x.saturating_add(3) & !3
}

/// Walks every token of the structure block like libfdt's `fdt_check_full()`: one root node,
/// balanced BEGIN/END_NODE, properties before child nodes, every length and string offset in
/// range, UTF-8 names, nesting at most [`MAX_DEPTH`], and FDT_END as the block's last word.
/// FDT_NOP (which QEMU and firmware leave behind when deleting nodes) is allowed anywhere.
pub fn check_structure(dtb: &[u8], h: &Header) -> Result<(), DtError> {
    let s = structs(dtb, h);
    let strs = strings(dtb, h);
    let err = |offset: usize, what: &str| DtError::BadStructure { offset, what: what.into() };
    let (mut p, mut depth, mut seen_root, mut props_ok) = (0usize, 0usize, false, false);
    loop {
        let at = p;
        let tok = be32(s, p).ok_or_else(|| err(at, "structure block ends without FDT_END"))?;
        p += 4;
        match tok {
            FDT_BEGIN_NODE => {
                if depth == 0 && seen_root {
                    return Err(err(at, "a second root node"));
                }
                let (_, next) =
                    cstr(s, p).ok_or_else(|| err(p, "node name is unterminated or not UTF-8"))?;
                p = align4(next);
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(err(at, "nodes nested deeper than 64 levels"));
                }
                seen_root = true;
                props_ok = true;
            }
            FDT_END_NODE => {
                if depth == 0 {
                    return Err(err(at, "FDT_END_NODE outside any node"));
                }
                depth -= 1;
                props_ok = false;
            }
            FDT_PROP => {
                if !props_ok {
                    return Err(err(at, "property outside a node or after a child node"));
                }
                let len = be32(s, p).ok_or_else(|| err(p, "property header runs past the block"))?
                    as usize;
                let nameoff =
                    be32(s, p + 4).ok_or_else(|| err(p, "property header runs past the block"))?;
                p += 8;
                let end = p.checked_add(len).filter(|&e| e <= s.len());
                p = align4(
                    end.ok_or_else(|| err(at, "property value runs past the structure block"))?,
                );
                if cstr(strs, nameoff as usize).is_none() {
                    return Err(DtError::BadStructure {
                        offset: at,
                        what: format!(
                            "property name offset {nameoff:#x} is not a terminated UTF-8 string in the {}-byte strings block",
                            strs.len()
                        ),
                    });
                }
            }
            FDT_NOP => {}
            FDT_END => {
                if depth != 0 || !seen_root {
                    return Err(err(at, "FDT_END before the root node is closed"));
                }
                if p != s.len() {
                    return Err(err(p, "data after FDT_END inside size_dt_struct"));
                }
                return Ok(());
            }
            other => {
                return Err(DtError::BadStructure {
                    offset: at,
                    what: format!("unknown token {other:#x}"),
                });
            }
        }
    }
}

/// The /memreserve/ map: (address, size) pairs of big-endian u64 at `off_mem_rsvmap`, ended by
/// an entry with size 0 (as Linux's `early_init_fdt_scan_reserved_mem()` stops). The fdt crate
/// has no iterator for it, so it is read here, bounded by `totalsize`.
pub fn mem_reserve(dtb: &[u8], h: &Header) -> Result<Vec<(u64, u64)>, DtError> {
    let blob = dtb.get(..h.totalsize as usize).unwrap_or(&[]);
    let mut off = h.off_mem_rsvmap as usize;
    let mut out = Vec::new();
    loop {
        let (Some(base), Some(size)) = (be64(blob, off), be64(blob, off.saturating_add(8))) else {
            return Err(DtError::BadHeader(format!(
                "/memreserve/ map at {:#x} has no terminating entry before totalsize {:#x}",
                h.off_mem_rsvmap, h.totalsize
            )));
        };
        if size == 0 {
            return Ok(out);
        }
        if base.checked_add(size).is_none() {
            return Err(DtError::BadHeader(format!(
                "/memreserve/ entry {base:#x}+{size:#x} overflows"
            )));
        }
        out.push((base, size));
        off += 16;
    }
}
