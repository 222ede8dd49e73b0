//! Barriers and TLB maintenance: the [`TlbOps`] trait, TLBI operand helpers and the Linux
//! arm64 flush functions built on them.

use crate::{PAGE_SHIFT, PAGE_SIZE, PTRS_PER_TABLE};

/// Barriers and TLB maintenance. In the kernel these are single instructions (see `HwTlb` on
/// the target); on the host a mock records them.
///
/// VA arguments are plain virtual addresses; the implementation builds the TLBI operand
/// (use [`tlbi_vaddr`] and [`tlbi_range_operand`]).
pub trait TlbOps {
    /// `dmb ishst` (Linux `smp_wmb()`): orders zeroing a new table before linking it.
    fn dmb_ishst(&mut self);
    /// `dsb ishst`.
    fn dsb_ishst(&mut self);
    /// `dsb ish`.
    fn dsb_ish(&mut self);
    /// `isb`.
    fn isb(&mut self);
    /// `tlbi vaale1is`: one page, all ASIDs, last level only.
    fn tlbi_vaale1is(&mut self, va: u64);
    /// `tlbi vaae1is`: one page, all ASIDs, all levels (walk-cache invalidation).
    fn tlbi_vaae1is(&mut self, va: u64);
    /// `tlbi rvaale1is`: `(num + 1) << (5 * scale + 1)` pages from `va` (FEAT_TLBIRANGE only).
    fn tlbi_rvaale1is(&mut self, va: u64, scale: u32, num: u32);
    /// `tlbi vmalle1is`: all stage-1 EL1 entries, inner shareable.
    fn tlbi_vmalle1is(&mut self);
    /// FEAT_TLBIRANGE present (ID_AA64ISAR0_EL1.TLB == 0b0010).
    fn has_tlbirange(&self) -> bool;
}

/// The operand of a by-VA TLBI (Linux `__TLBI_VADDR(addr, 0)`): VA[55:12] in bits [43:0].
#[inline]
pub const fn tlbi_vaddr(va: u64) -> u64 {
    (va >> 12) & ((1 << 44) - 1)
}

/// The operand of a range TLBI (Linux `__tlbi_range` with asid 0, TTL unknown, no LPA2):
/// BADDR = VA >> 12 in [36:0], TTL = 0 in [38:37], NUM in [43:39], SCALE in [45:44],
/// TG = 1 (4 KiB) in [47:46].
#[inline]
pub const fn tlbi_range_operand(va: u64, scale: u32, num: u32) -> u64 {
    ((va >> 12) & ((1 << 37) - 1))
        | ((num as u64 & 0x1f) << 39)
        | ((scale as u64 & 0x3) << 44)
        | (1 << 46)
}

/// Pages covered by one range TLBI (Linux `__TLBI_RANGE_PAGES`).
pub const fn tlbi_range_pages(num: u64, scale: u32) -> u64 {
    (num + 1) << (5 * scale + 1)
}

/// Largest range one range TLBI can cover: 32 << 16 = 2^21 pages (8 GiB).
pub const MAX_TLBI_RANGE_PAGES: u64 = tlbi_range_pages(31, 3);

/// Linux MAX_DVM_OPS = PTRS_PER_PTE: without range TLBI, this many per-page ops or more
/// become one `TLBI VMALLE1IS` ("to avoid soft lock-ups", not for speed).
pub const MAX_DVM_OPS: u64 = PTRS_PER_TABLE as u64;

/// Linux `__flush_tlb_range_limit_excess` for a 4 KiB stride.
#[inline]
pub const fn flush_tlb_range_limit_excess(pages: u64, has_tlbirange: bool) -> bool {
    if has_tlbirange {
        pages > MAX_TLBI_RANGE_PAGES
    } else {
        pages >= MAX_DVM_OPS
    }
}

/// Linux `flush_tlb_all`: `DSB ISHST; TLBI VMALLE1IS; DSB ISH; ISB`.
pub fn flush_tlb_all<T: TlbOps + ?Sized>(tlb: &mut T) {
    tlb.dsb_ishst();
    tlb.tlbi_vmalle1is();
    tlb.dsb_ish();
    tlb.isb();
}

/// Linux arm64 `flush_tlb_kernel_range(start, end)` (mm tree 2026; same decisions since the
/// range-op rework of v6.7 "arm64: tlb: Refactor the core flush algorithm of __flush_tlb_range"):
///
/// 1. round `start` down and `end` up to pages;
/// 2. if the page count is excessive ([`flush_tlb_range_limit_excess`]: > 2^21 pages with
///    FEAT_TLBIRANGE, >= 512 pages without) do [`flush_tlb_all`];
/// 3. else `DSB ISHST`, then `__flush_tlb_range_op(vaale1is, ...)`: without FEAT_TLBIRANGE one
///    `TLBI VAALE1IS` per page; with it, range ops from SCALE 3 down to 0 each covering the largest
///    `(NUM+1) << (5*SCALE+1)` pages that fit, and a last odd page with `TLBI VAALE1IS`;
/// 4. `DSB ISH` (Linux repeats a TLBI + DSB on parts with ARM64_WORKAROUND_REPEAT_TLBI; not
///    modelled), `ISB`.
///
/// (Linux <= v6.6 used `MAX_TLBI_OPS` and per-page ops only for kernel ranges.)
pub fn flush_tlb_kernel_range<T: TlbOps + ?Sized>(tlb: &mut T, start: u64, end: u64) {
    let start = start & !(PAGE_SIZE as u64 - 1);
    let end = end.wrapping_add(PAGE_SIZE as u64 - 1) & !(PAGE_SIZE as u64 - 1);
    let pages = end.wrapping_sub(start) >> PAGE_SHIFT;
    let range = tlb.has_tlbirange();

    if flush_tlb_range_limit_excess(pages, range) {
        flush_tlb_all(tlb);
        return;
    }

    tlb.dsb_ishst();
    // __flush_tlb_range_op(vaale1is, rvaale1is, start, pages, PAGE_SIZE, asid 0, TTL unknown, lpa2 off)
    let mut addr = start;
    let mut scale: i32 = 3;
    while addr != end {
        let pages = end.wrapping_sub(addr) >> PAGE_SHIFT;
        if !range || pages == 1 {
            tlb.tlbi_vaale1is(addr);
            addr = addr.wrapping_add(PAGE_SIZE as u64);
            continue;
        }
        debug_assert!(scale >= 0);
        let num = (pages >> (5 * scale as u32 + 1)) as i64 - 1;
        if num >= 0 {
            tlb.tlbi_rvaale1is(addr, scale as u32, num as u32);
            addr = addr.wrapping_add(tlbi_range_pages(num as u64, scale as u32) << PAGE_SHIFT);
        }
        scale -= 1;
    }
    tlb.dsb_ish();
    tlb.isb();
}

/// Linux `__flush_tlb_kernel_pgtable(addr)`: invalidate walk-cache entries for an intermediate
/// level (used before freeing a table page): `DSB ISHST; TLBI VAAE1IS; DSB ISH; ISB`.
pub fn flush_tlb_kernel_pgtable<T: TlbOps + ?Sized>(tlb: &mut T, addr: u64) {
    tlb.dsb_ishst();
    tlb.tlbi_vaae1is(addr);
    tlb.dsb_ish();
    tlb.isb();
}

/// Make new valid kernel entries visible to the walker and discard stale speculative
/// translations (Linux `emit_pte_barriers`): `DSB ISHST; ISB`.
pub fn publish_mappings<T: TlbOps + ?Sized>(tlb: &mut T) {
    tlb.dsb_ishst();
    tlb.isb();
}
