//! Bitmap helpers (Linux lib/bitmap.c / find_bit semantics on u64 words).

pub(crate) fn bits_to_words(bits: usize) -> usize {
    bits.div_ceil(64)
}

pub(crate) fn test_bit(map: &[u64], i: usize) -> bool {
    map[i / 64] >> (i % 64) & 1 != 0
}

pub(crate) fn set_bit(map: &mut [u64], i: usize) {
    map[i / 64] |= 1 << (i % 64);
}

/// `bitmap_set` / `bitmap_clear` on `[start, start + n)`.
pub(crate) fn bitmap_assign(map: &mut [u64], start: usize, n: usize, value: bool) {
    let mut i = start;
    let end = start + n;
    while i < end {
        let w = i / 64;
        let lo = i % 64;
        let hi = core::cmp::min(64, lo + (end - i));
        let mask = if hi - lo == 64 { !0u64 } else { ((1u64 << (hi - lo)) - 1) << lo };
        if value {
            map[w] |= mask;
        } else {
            map[w] &= !mask;
        }
        i += hi - lo;
    }
}

/// `find_next_bit` (`invert == false`) / `find_next_zero_bit` (`invert == true`): the first bit
/// in `[start, size)` that is set (clear), or `size`.
pub(crate) fn find_next(map: &[u64], size: usize, start: usize, invert: bool) -> usize {
    if start >= size {
        return size;
    }
    let flip = if invert { !0u64 } else { 0 };
    let mut w = start / 64;
    let mut word = (map[w] ^ flip) & (!0u64 << (start % 64));
    loop {
        if word != 0 {
            return core::cmp::min(w * 64 + word.trailing_zeros() as usize, size);
        }
        w += 1;
        if w * 64 >= size {
            return size;
        }
        word = map[w] ^ flip;
    }
}

pub(crate) fn find_next_bit(map: &[u64], size: usize, start: usize) -> usize {
    find_next(map, size, start, false)
}

pub(crate) fn find_next_zero_bit(map: &[u64], size: usize, start: usize) -> usize {
    find_next(map, size, start, true)
}

/// The last set bit in `[lo, hi)` (Linux `find_last_bit` on a sub-bitmap).
pub(crate) fn find_last_bit_in(map: &[u64], lo: usize, hi: usize) -> Option<usize> {
    if hi <= lo {
        return None;
    }
    let mut w = (hi - 1) / 64;
    let top = (hi - 1) % 64;
    let mut word = map[w] & if top == 63 { !0u64 } else { (1u64 << (top + 1)) - 1 };
    loop {
        if word != 0 {
            let bit = w * 64 + 63 - word.leading_zeros() as usize;
            return if bit >= lo { Some(bit) } else { None };
        }
        if w * 64 <= lo || w == 0 {
            return None;
        }
        w -= 1;
        word = map[w];
    }
}

pub(crate) fn align_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

/// Linux `pcpu_region_overlap`: do `[a, b)` and `[x, y)` overlap?
pub(crate) fn region_overlap(a: usize, b: usize, x: usize, y: usize) -> bool {
    a < y && x < b
}
