//! Entry access: table indices, range steps and the volatile descriptor loads and stores
//! every walker uses.

use crate::pool::PtMemory;
use crate::{PAGE_SHIFT, PAGE_SIZE, PGDIR_SHIFT, PMD_SHIFT, PTRS_PER_TABLE, PUD_SHIFT};
use core::ptr;

#[inline(always)]
pub(crate) const fn pt_index(va: u64, shift: u32) -> usize {
    ((va >> shift) & (PTRS_PER_TABLE as u64 - 1)) as usize
}

/// `pXd_addr_end`: the next `size` boundary after `addr`, capped at `end` (wrap-safe).
#[inline(always)]
pub(crate) const fn addr_end(addr: u64, end: u64, size: u64) -> u64 {
    let boundary = addr.wrapping_add(size) & !(size - 1);
    if boundary.wrapping_sub(1) < end.wrapping_sub(1) {
        boundary
    } else {
        end
    }
}

/// The table page at `pa` as an array of descriptors.
///
/// The walkers only pass table PAs of the tree they walk: its root, an address read from one of
/// its table descriptors, or a page just returned by [`PtMemory::alloc_table`]. The
/// [`PtMemory`] contract makes the pointer for each of those a 4 KiB, 8-byte aligned table page
/// valid for reads and writes, which is what [`get`] and [`set`] require.
#[inline(always)]
pub(crate) fn tbl<M: PtMemory + ?Sized>(mem: &M, pa: u64) -> *mut u64 {
    mem.table(pa) as *mut u64
}

/// Entry `i` of table `t` (a volatile 64-bit load: Linux READ_ONCE).
///
/// # Safety
/// `t` must be a table page as [`PtMemory::table`] returns it for a live table PA (see [`tbl`]):
/// 512 descriptors, 8-byte aligned, valid for reads. `i` must be below 512.
#[inline(always)]
pub(crate) unsafe fn get(t: *mut u64, i: usize) -> u64 {
    debug_assert!(i < PTRS_PER_TABLE);
    // Host tests count descriptor reads (unmap is one walk); compiled out of the kernel.
    #[cfg(test)]
    crate::tests::note_read(t as usize + i * core::mem::size_of::<u64>());
    // SAFETY: `t` points to a 512-entry table page and `i < 512` (caller contract), so the
    // offset stays inside that page.
    let p = unsafe { t.add(i) };
    // SAFETY: `p` is an aligned entry of a table page the caller guarantees valid for reads.
    unsafe { ptr::read_volatile(p) }
}

/// Write `v` to entry `i` of table `t` (a volatile 64-bit store: Linux WRITE_ONCE).
///
/// # Safety
/// `t` must be a table page as [`PtMemory::table`] returns it for a live table PA (see [`tbl`]):
/// 512 descriptors, 8-byte aligned, valid for writes. `i` must be below 512. Other writers of
/// the same entry must be serialised with this one (the [`PtMemory`] contract).
#[inline(always)]
pub(crate) unsafe fn set(t: *mut u64, i: usize, v: u64) {
    debug_assert!(i < PTRS_PER_TABLE);
    // SAFETY: `t` points to a 512-entry table page and `i < 512` (caller contract), so the
    // offset stays inside that page.
    let p = unsafe { t.add(i) };
    // SAFETY: `p` is an aligned entry of a table page the caller guarantees valid for writes.
    unsafe { ptr::write_volatile(p, v) }
}

pub(crate) const fn level_shift(level: u8) -> u32 {
    match level {
        0 => PGDIR_SHIFT,
        1 => PUD_SHIFT,
        2 => PMD_SHIFT,
        _ => PAGE_SHIFT,
    }
}

/// `[va, va+size)` sanity: page aligned, non-empty, no overflow. Returns `end`.
pub(crate) fn check_range(va: u64, size: u64) -> Option<u64> {
    if size == 0 || va & (PAGE_SIZE as u64 - 1) != 0 || size & (PAGE_SIZE as u64 - 1) != 0 {
        return None;
    }
    va.checked_add(size)
}
