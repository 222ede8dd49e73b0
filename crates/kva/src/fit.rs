//! How a request fits a free block (Linux `enum fit_type`, `classify_va_fit_type`,
//! `is_within_this_va`): pure address arithmetic shared by the free-tree searches (`tree`) and
//! the allocator that carves the block found (`free`).
#![forbid(unsafe_code)]

/// Linux `enum fit_type`: how an allocation `[nva, nva + size)` sits inside a free block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitType {
    /// NOTHING_FIT: not inside the block.
    Nothing,
    /// FL_FIT_TYPE: the whole block; its node is removed and freed.
    Full,
    /// LE_FIT_TYPE: at the block's start; the block's start advances.
    LeftEdge,
    /// RE_FIT_TYPE: at the block's end; the block's end is lowered.
    RightEdge,
    /// NE_FIT_TYPE: strictly inside; the block is split in two (needs a second node).
    NoEdge,
}

/// Linux `classify_va_fit_type`.
pub fn classify_va_fit_type(va_start: u64, va_end: u64, nva_start: u64, size: u64) -> FitType {
    let nva_end = match nva_start.checked_add(size) {
        Some(e) => e,
        None => return FitType::Nothing,
    };
    if nva_start < va_start || nva_end > va_end {
        return FitType::Nothing;
    }
    if va_start == nva_start {
        if va_end == nva_end {
            FitType::Full
        } else {
            FitType::LeftEdge
        }
    } else if va_end == nva_end {
        FitType::RightEdge
    } else {
        FitType::NoEdge
    }
}

#[inline]
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// Linux `is_within_this_va`: the aligned start if `[nva, nva + size)` fits in the block
/// `[va_start, va_end)` at or after `vstart` (overflow counts as not fitting).
#[inline]
pub(crate) fn is_within_this_va(
    va_start: u64,
    va_end: u64,
    size: u64,
    align: u64,
    vstart: u64,
) -> Option<u64> {
    let base = if va_start > vstart { va_start } else { vstart };
    let nva = align_up(base, align)?;
    let end = nva.checked_add(size)?;
    if end <= va_end {
        Some(nva)
    } else {
        None
    }
}

/// Top-down counterpart: the highest aligned start with `[nva, nva + size)` inside the block
/// `[va_start, va_end)` and inside `[vstart, vend)`.
#[inline]
pub(crate) fn fits_top(
    va_start: u64,
    va_end: u64,
    size: u64,
    align: u64,
    vstart: u64,
    vend: u64,
) -> Option<u64> {
    let top = va_end.min(vend);
    if top < size {
        return None;
    }
    let nva = (top - size) & !(align - 1);
    if nva >= va_start && nva >= vstart {
        Some(nva)
    } else {
        None
    }
}
