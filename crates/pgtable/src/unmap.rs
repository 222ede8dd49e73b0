//! Unmapping ([`PageTable::unmap_range`]) and what it reports.

use crate::desc::{desc_addr, desc_is_block, desc_is_table, desc_valid, PteFlags};
use crate::entry::{addr_end, check_range, get, pt_index, set, tbl};
use crate::mapper::PageTable;
use crate::pool::PtMemory;
use crate::{
    CONT_PTES, CONT_PTE_SIZE, PAGE_SHIFT, PAGE_SIZE, PGDIR_SHIFT, PGDIR_SIZE, PMD_SHIFT, PMD_SIZE,
    PUD_SHIFT, PUD_SIZE,
};

/// What an unmap cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnmapResult {
    /// 4 KiB pages no longer mapped.
    pub pages: u64,
    /// L3 entries cleared.
    pub ptes: u64,
    /// Contiguous runs cleared (counted at their first entry).
    pub cont_runs: u64,
    /// 2 MiB blocks cleared.
    pub pmd_blocks: u64,
    /// 1 GiB blocks cleared.
    pub pud_blocks: u64,
}

/// An unmap failure (see [`PageTable::unmap_range`] for what has been cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmapError {
    /// Start or size not page aligned, size zero, or the range overflows. Nothing has been
    /// changed.
    Invalid,
    /// The range starts or ends inside a block or contiguous run (splitting is not supported;
    /// Linux WARNs and clears the whole block anyway). That block/run is left intact. If it
    /// holds the range start nothing has been changed; otherwise it holds the range end and
    /// every other leaf of the range has been cleared.
    PartialBlock {
        /// Start of the block/run.
        va: u64,
        /// Its size (64 KiB, 2 MiB or 1 GiB).
        size: u64,
    },
}

impl PageTable {
    /// Clear every leaf in `[va, va + size)`: PTEs, contiguous runs and blocks (Linux
    /// `vunmap_range_noflush`). No TLB maintenance (the vmalloc layer flushes lazily with
    /// [`flush_tlb_kernel_range`](crate::flush_tlb_kernel_range) before the VA is reused) and no
    /// table page is freed (Linux keeps kernel page tables).
    ///
    /// One walk of the range, as in Linux: each descriptor covering the range is read once, and a
    /// leaf that does not fit in the range is detected where the walk meets it (Linux
    /// `WARN_ON(next - addr < PMD_SIZE)` after `pmd_clear_huge` / `pud_clear_huge`, and the
    /// `WARN_ON`s around `huge_ptep_get_and_clear` for a contiguous run). Where Linux warns and
    /// clears the whole block or run anyway, this refuses: the straddling block or run is left
    /// intact and [`UnmapError::PartialBlock`] names it. Since only the leaf holding `va` can
    /// straddle the start and only the leaf holding `va + size - 1` can straddle the end:
    ///
    /// - straddling the **start** (the block/run holding `va` begins before `va`, whatever its
    ///   end): it is the first leaf the walk reaches, so the error is returned before anything
    ///   is written; nothing is changed;
    /// - straddling only the **end** (the block/run holding `va + size - 1` ends after
    ///   `va + size`): it is the last leaf the walk reaches, so everything else in the range has
    ///   already been cleared (as Linux does) when the error is returned; only that block or
    ///   run is left mapped, untouched.
    ///
    /// A run is recognised by the contiguous bit of the entry the walk reads. In a malformed
    /// run (the kernel never writes one: some of its 16 entries lack the bit) the entries
    /// without the bit are cleared as plain pages, so there a start straddle can be reported
    /// after such entries inside the range were cleared. Nothing outside the range is ever
    /// written. On an end straddle the counts of what was cleared are not returned (the error
    /// carries only the block/run).
    // Inline: on the path of every vmalloc/vfree (its call and return were two TB
    // lookups per loop under TCG; README "Fifth round").
    #[inline(always)]
    pub fn unmap_range<M: PtMemory + ?Sized>(
        &self,
        mem: &mut M,
        va: u64,
        size: u64,
    ) -> Result<UnmapResult, UnmapError> {
        let end = check_range(va, size).ok_or(UnmapError::Invalid)?;
        let mut res = UnmapResult::default();
        let root = tbl(mem, self.root_pa);
        let mut addr = va;
        loop {
            let next = addr_end(addr, end, PGDIR_SIZE);
            // SAFETY: `root` is the root table, valid per `tbl` (the PtMemory contract covers the
            // root PA); `pt_index` is below 512.
            let e = unsafe { get(root, pt_index(addr, PGDIR_SHIFT)) };
            if desc_is_table(e) {
                unmap_pud_range(mem, desc_addr(e), addr, next, &mut res)?;
            }
            addr = next;
            if addr == end {
                break;
            }
        }
        Ok(res)
    }
}

// Unmap walkers (Linux `vunmap_pud_range` / `vunmap_pmd_range` / `vunmap_pte_range`). Each
// is handed the part `[addr, end)` of the range that falls in its table and reads each entry
// of that part once. A block or run is cleared only when it lies entirely inside `[addr, end)`;
// a block/run that sticks out on the left can only be the first leaf of the whole range, one
// that sticks out on the right only the last (see `PageTable::unmap_range`).

/// The straddle check of `pud_clear_huge` / `pmd_clear_huge` (Linux: `WARN_ON(next - addr <
/// size)`): a block entry for the chunk `[addr, next)` is cleared only when the chunk is the
/// whole block.
#[inline(always)]
fn whole_block(addr: u64, next: u64, size: u64) -> Result<(), UnmapError> {
    if next - addr == size {
        Ok(())
    } else {
        Err(UnmapError::PartialBlock { va: addr & !(size - 1), size })
    }
}

fn unmap_pud_range<M: PtMemory + ?Sized>(
    mem: &mut M,
    table: u64,
    mut addr: u64,
    end: u64,
    res: &mut UnmapResult,
) -> Result<(), UnmapError> {
    let t = tbl(mem, table);
    loop {
        let next = addr_end(addr, end, PUD_SIZE);
        let i = pt_index(addr, PUD_SHIFT);
        // SAFETY: `table` is the address of a table descriptor of this tree, so `t` is valid per
        // `tbl`; `i` from `pt_index` is below 512.
        let e = unsafe { get(t, i) };
        if desc_is_block(e) {
            // pud_clear_huge
            whole_block(addr, next, PUD_SIZE)?;
            // SAFETY: same `t` and `i` as the read above.
            unsafe { set(t, i, 0) };
            res.pud_blocks += 1;
            res.pages += PUD_SIZE / PAGE_SIZE as u64;
        } else if desc_is_table(e) {
            unmap_pmd_range(mem, desc_addr(e), addr, next, res)?;
        }
        addr = next;
        if addr == end {
            return Ok(());
        }
    }
}

fn unmap_pmd_range<M: PtMemory + ?Sized>(
    mem: &mut M,
    table: u64,
    mut addr: u64,
    end: u64,
    res: &mut UnmapResult,
) -> Result<(), UnmapError> {
    let t = tbl(mem, table);
    loop {
        let next = addr_end(addr, end, PMD_SIZE);
        let i = pt_index(addr, PMD_SHIFT);
        // SAFETY: `table` is the address of a table descriptor of this tree, so `t` is valid per
        // `tbl`; `i` from `pt_index` is below 512.
        let e = unsafe { get(t, i) };
        if desc_is_block(e) {
            // pmd_clear_huge
            whole_block(addr, next, PMD_SIZE)?;
            // SAFETY: same `t` and `i` as the read above.
            unsafe { set(t, i, 0) };
            res.pmd_blocks += 1;
            res.pages += PMD_SIZE / PAGE_SIZE as u64;
        } else if desc_is_table(e) {
            unmap_pte_range(mem, desc_addr(e), addr, next, res)?;
        }
        addr = next;
        if addr == end {
            return Ok(());
        }
    }
}

/// `vunmap_pte_range` for `[addr, end)` inside one PTE table, with arm64's
/// `arch_vmap_pte_range_unmap_size`: a valid entry with the contiguous bit is cleared together
/// with the rest of its 16-entry run (`huge_ptep_get_and_clear`), provided the run lies inside
/// `[addr, end)`; otherwise nothing more is cleared and the run is reported. `addr` is the range
/// start or PMD aligned and `end` the range end or PMD aligned, and a run never crosses a PMD
/// boundary, so "inside `[addr, end)`" is "inside the whole range".
fn unmap_pte_range<M: PtMemory + ?Sized>(
    mem: &mut M,
    table: u64,
    addr: u64,
    end: u64,
    res: &mut UnmapResult,
) -> Result<(), UnmapError> {
    const CONT: u64 = PteFlags::CONT.bits();
    let pt = tbl(mem, table);
    let first = pt_index(addr, PAGE_SHIFT);
    let stop = first + ((end - addr) / PAGE_SIZE as u64) as usize;
    let mut k = first;
    while k < stop {
        // SAFETY: `table` is the address of a table descriptor of this tree, so `pt` is valid
        // per `tbl`. `[addr, end)` lies in the one PMD span this table maps (the caller caps it
        // at PMD boundaries), so `stop <= 512` and `k < stop`.
        let p = unsafe { get(pt, k) };
        if p == 0 {
            k += 1;
            continue;
        }
        if desc_valid(p) && p & CONT != 0 {
            // Linux WARNs on a run not aligned to `addr` (and aligns down) or going past `end`
            // (and clears it whole); here the run is left alone and reported.
            let run_first = k & !(CONT_PTES - 1);
            let run_stop = run_first + CONT_PTES;
            if run_first < first || run_stop > stop {
                let va_k = addr + (k - first) as u64 * PAGE_SIZE as u64;
                return Err(UnmapError::PartialBlock {
                    va: va_k & !(CONT_PTE_SIZE - 1),
                    size: CONT_PTE_SIZE,
                });
            }
            // Clear the run from here (its first entry for a well-formed run) to its end.
            // SAFETY: same `pt` and `k` as the read above.
            unsafe { set(pt, k, 0) };
            res.ptes += 1;
            res.pages += 1;
            for j in k + 1..run_stop {
                // SAFETY: `pt` as above; `j < run_stop <= stop <= 512` (a run sticking out past
                // `stop` was refused above).
                let q = unsafe { get(pt, j) };
                if q != 0 {
                    // SAFETY: same `pt` and `j` as the read above.
                    unsafe { set(pt, j, 0) };
                    if desc_valid(q) {
                        res.ptes += 1;
                        res.pages += 1;
                    }
                }
            }
            res.cont_runs += 1;
            k = run_stop;
        } else {
            // SAFETY: same `pt` and `k` as the read above.
            unsafe { set(pt, k, 0) };
            if desc_valid(p) {
                res.ptes += 1;
                res.pages += 1;
            }
            k += 1;
        }
    }
    Ok(())
}
