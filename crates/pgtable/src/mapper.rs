//! The page table ([`PageTable`]) and its mapping paths ([`PageTable::map_range`],
//! [`PageTable::map_pages`]), with their options, results and errors.

use crate::desc::{desc_addr, desc_is_table, desc_valid, kernel_table_desc, PageProt, PteFlags};
use crate::entry::{addr_end, check_range, get, pt_index, set, tbl};
use crate::pool::PtMemory;
use crate::tlb::{flush_tlb_kernel_pgtable, publish_mappings, TlbOps};
use crate::{
    CONT_PTES, CONT_PTE_SHIFT, CONT_PTE_SIZE, PAGE_SHIFT, PAGE_SIZE, PGDIR_SHIFT, PGDIR_SIZE,
    PMD_SHIFT, PMD_SIZE, PTE_ADDR_MASK, PTRS_PER_TABLE, PUD_SHIFT, PUD_SIZE,
};
use bitflags::bitflags;

// ------------------------------------------------------------------------------------------------
// Mapping options, results, errors
// ------------------------------------------------------------------------------------------------

bitflags! {
    /// What a mapping call may do (Linux expresses the first three as `max_page_shift`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct MapFlags: u32 {
        /// Use 64 KiB contiguous-PTE runs where VA, PA and the remaining length allow
        /// (arm64 `arch_vmap_pte_range_map_size`; Linux: max_page_shift >= CONT_PTE_SHIFT).
        const CONT_PTE = 1 << 0;
        /// Use 2 MiB PMD blocks where a whole aligned 2 MiB chunk fits (`vmap_try_huge_pmd`;
        /// max_page_shift >= PMD_SHIFT).
        const BLOCK_PMD = 1 << 1;
        /// Use 1 GiB PUD blocks (`vmap_try_huge_pud`; max_page_shift >= PUD_SHIFT; linear map).
        const BLOCK_PUD = 1 << 2;
        /// Replace live leaf entries with break-before-make instead of failing.
        const REPLACE = 1 << 3;
        /// Do not emit the closing `DSB ISHST; ISB`; the caller batches and calls
        /// [`publish_mappings`] itself.
        const NO_BARRIER = 1 << 4;
    }
}

impl MapFlags {
    /// The huge-mapping permissions Linux derives from `max_page_shift`
    /// (12 -> none, 16 -> CONT_PTE, 21 -> + BLOCK_PMD, 30 -> + BLOCK_PUD).
    pub const fn for_page_shift(shift: u32) -> MapFlags {
        let mut bits = 0;
        if shift >= CONT_PTE_SHIFT {
            bits |= MapFlags::CONT_PTE.bits();
        }
        if shift >= PMD_SHIFT {
            bits |= MapFlags::BLOCK_PMD.bits();
        }
        if shift >= PUD_SHIFT {
            bits |= MapFlags::BLOCK_PUD.bits();
        }
        MapFlags::from_bits_retain(bits)
    }
}

/// What a mapping call wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapStats {
    /// L3 entries written (a contiguous run counts 16).
    pub ptes: u64,
    /// Contiguous-PTE runs written.
    pub cont_runs: u64,
    /// 2 MiB blocks written.
    pub pmd_blocks: u64,
    /// 1 GiB blocks written.
    pub pud_blocks: u64,
    /// Intermediate table pages allocated.
    pub tables_allocated: u64,
    /// Empty table pages freed because a block replaced them.
    pub tables_freed: u64,
    /// Live leaf entries replaced with break-before-make ([`MapFlags::REPLACE`]).
    pub bbm: u64,
}

/// A mapping failure. On error the part of the range before the failing address may already
/// be mapped (as in Linux); the caller unmaps it (vmalloc: `vunmap` of the whole area).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// VA, PA or size not page aligned, size zero, VA + size overflows, PA beyond 48 bits, or
    /// (map_pages) the page count not a multiple of the mapping granule.
    Invalid,
    /// `alloc_table` failed while mapping `va`.
    NoMemory {
        /// The address being mapped.
        va: u64,
    },
    /// A live entry was found where a new one had to be written (the vmalloc-path bug check),
    /// or a block was found where a table is needed (block splitting is not supported).
    AlreadyMapped {
        /// The address being mapped.
        va: u64,
        /// Table level of the entry (0..=3).
        level: u8,
        /// The live descriptor.
        desc: u64,
    },
    /// REPLACE would break a live contiguous run without covering all of it.
    PartialContRun {
        /// The address being mapped.
        va: u64,
    },
    /// An entry is non-zero but invalid (the kernel never writes such entries).
    BadEntry {
        /// The address being mapped.
        va: u64,
        /// Table level.
        level: u8,
        /// The descriptor.
        desc: u64,
    },
}

// ------------------------------------------------------------------------------------------------
// The page table
// ------------------------------------------------------------------------------------------------

/// A 4-level table tree identified by the PA of its root (L0) table: `swapper_pg_dir` for the
/// kernel (TTBR1), or an identity map (TTBR0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTable {
    /// Physical address of the L0 table.
    pub root_pa: u64,
}

struct Mapper<'a, M: PtMemory + ?Sized, T: TlbOps + ?Sized> {
    mem: &'a mut M,
    tlb: &'a mut T,
    flags: MapFlags,
    prot: PageProt,
    /// Whole range of this call, for REPLACE's contiguous-run coverage check.
    start: u64,
    end: u64,
    stats: MapStats,
}

impl PageTable {
    /// Wrap an existing root table.
    pub const fn from_root(root_pa: u64) -> Self {
        PageTable { root_pa }
    }

    /// Allocate an empty root table.
    pub fn new<M: PtMemory + ?Sized>(mem: &mut M) -> Option<Self> {
        mem.alloc_table().map(|root_pa| PageTable { root_pa })
    }

    /// Map `[va, va + size)` to `[pa, pa + size)` with `prot` (Linux `vmap_range_noflush` with
    /// the huge options of `flags`; `ioremap_page_range` and the linear map use it with
    /// BLOCK_PUD). Missing intermediate tables come from `mem.alloc_table()`.
    ///
    /// Per chunk: a 1 GiB / 2 MiB block when allowed, the chunk is exactly one block and VA
    /// and PA are block aligned (an empty table already there is freed first, like
    /// `pmd_free_pte_page`); otherwise PTEs, as 16-entry contiguous runs where allowed and
    /// VA, PA and the remaining length permit (`arch_vmap_pte_range_map_size`).
    ///
    /// Ends with one `DSB ISHST; ISB` unless [`MapFlags::NO_BARRIER`]. See the crate docs for
    /// live entries.
    #[allow(clippy::too_many_arguments)]
    pub fn map_range<M: PtMemory + ?Sized, T: TlbOps + ?Sized>(
        &self,
        mem: &mut M,
        tlb: &mut T,
        va: u64,
        pa: u64,
        size: u64,
        prot: PageProt,
        flags: MapFlags,
    ) -> Result<MapStats, MapError> {
        let end = check_range(va, size).ok_or(MapError::Invalid)?;
        if pa & (PAGE_SIZE as u64 - 1) != 0
            || pa.checked_add(size).is_none_or(|e| e - 1 > PTE_ADDR_MASK | 0xfff)
        {
            return Err(MapError::Invalid);
        }
        let mut m = Mapper { mem, tlb, flags, prot, start: va, end, stats: MapStats::default() };
        let r = m.map_pgd_range(self.root_pa, va, end, pa);
        m.finish(r)
    }

    /// Map `nr_pages` 4 KiB pages at `va`, page `i` at PA `page_pa(i)` (Linux
    /// `__vmap_pages_range_noflush`). `page_shift` is the vm area's mapping granule
    /// (`vm->page_order + PAGE_SHIFT`): 12 maps one PTE per page
    /// (`vmap_small_pages_range_noflush`, pages may be scattered); larger values map each
    /// `2^page_shift` chunk, whose pages must be physically contiguous and aligned like a
    /// split high-order block, with `vmap_range_noflush` (contiguous PTEs for 16, PMD block for 21).
    /// `flags` may add REPLACE / NO_BARRIER; the huge permissions come from `page_shift`.
    #[allow(clippy::too_many_arguments)]
    pub fn map_pages<M: PtMemory + ?Sized, T: TlbOps + ?Sized, F: FnMut(usize) -> u64>(
        &self,
        mem: &mut M,
        tlb: &mut T,
        va: u64,
        nr_pages: usize,
        mut page_pa: F,
        prot: PageProt,
        page_shift: u32,
        flags: MapFlags,
    ) -> Result<MapStats, MapError> {
        if !(PAGE_SHIFT..=PUD_SHIFT).contains(&page_shift) {
            return Err(MapError::Invalid);
        }
        let step = 1usize << (page_shift - PAGE_SHIFT);
        if !nr_pages.is_multiple_of(step) {
            return Err(MapError::Invalid);
        }
        let size = (nr_pages as u64).checked_mul(PAGE_SIZE as u64).ok_or(MapError::Invalid)?;
        let end = check_range(va, size).ok_or(MapError::Invalid)?;
        let flags = (flags & (MapFlags::REPLACE | MapFlags::NO_BARRIER))
            | MapFlags::for_page_shift(page_shift);
        let mut m = Mapper { mem, tlb, flags, prot, start: va, end, stats: MapStats::default() };
        let r = if page_shift == PAGE_SHIFT {
            m.map_small_pages(self.root_pa, va, end, &mut page_pa)
        } else {
            let chunk = 1u64 << page_shift;
            let mut r = Ok(());
            let mut addr = va;
            let mut i = 0;
            while i < nr_pages {
                let pa = page_pa(i);
                if pa & (PAGE_SIZE as u64 - 1) != 0 || pa > PTE_ADDR_MASK {
                    r = Err(MapError::Invalid);
                    break;
                }
                r = m.map_pgd_range(self.root_pa, addr, addr + chunk, pa);
                if r.is_err() {
                    break;
                }
                addr += chunk;
                i += step;
            }
            r
        };
        m.finish(r)
    }

    /// Free every table page of this tree, root included. Only for trees nobody walks any more
    /// (host simulations, a discarded boot identity map).
    pub fn free_all<M: PtMemory + ?Sized>(self, mem: &mut M) {
        free_tree(mem, self.root_pa, 0);
    }
}

impl<M: PtMemory + ?Sized, T: TlbOps + ?Sized> Mapper<'_, M, T> {
    fn finish(self, r: Result<(), MapError>) -> Result<MapStats, MapError> {
        let s = self.stats;
        let wrote = s.ptes + s.pmd_blocks + s.pud_blocks + s.tables_allocated != 0;
        if wrote && !self.flags.contains(MapFlags::NO_BARRIER) {
            publish_mappings(self.tlb);
        }
        r.map(|()| s)
    }

    /// The next-level table under entry `i` of `table`, allocating it if the entry is empty
    /// (Linux `pXd_alloc_track` / `pte_alloc_kernel_track`).
    #[inline(always)]
    fn next_table(&mut self, table: u64, i: usize, va: u64, level: u8) -> Result<u64, MapError> {
        let t = tbl(self.mem, table);
        // SAFETY: `table` is a table of this tree (the root or a PA `next_table` returned), so
        // `t` is valid per `tbl`; callers pass `i` from `pt_index`, which is below 512.
        let e = unsafe { get(t, i) };
        if desc_is_table(e) {
            return Ok(desc_addr(e));
        }
        self.populate(t, e, i, va, level)
    }

    /// `next_table` when entry `i` of `t` is not a table link: refuse, or allocate and link one.
    /// Only `next_table` calls it, with `t` = `tbl(table)` of a table of this tree, `i < 512`
    /// and `e` the entry it read there. Out of line: the hot walk finds tables already linked.
    #[cold]
    #[inline(never)]
    fn populate(
        &mut self,
        t: *mut u64,
        e: u64,
        i: usize,
        va: u64,
        level: u8,
    ) -> Result<u64, MapError> {
        if e != 0 {
            return Err(if desc_valid(e) {
                MapError::AlreadyMapped { va, level, desc: e }
            } else {
                MapError::BadEntry { va, level, desc: e }
            });
        }
        let new = self.mem.alloc_table().ok_or(MapError::NoMemory { va })?;
        debug_assert_eq!(new & (PAGE_SIZE as u64 - 1), 0);
        // The zeroed table must be visible before the walker can see the link (Linux: smp_wmb()
        // in __pte_alloc_kernel / __pmd_alloc before pmd_populate).
        self.tlb.dmb_ishst();
        // Link it under the populate lock, unless another CPU linked one meanwhile (Linux:
        // `if (likely(pmd_none(*pmd))) pmd_populate_kernel(...), new = NULL;` then free `new`).
        let mut cur = 0;
        self.mem.with_populate_lock(&mut || {
            // SAFETY: `t` and `i` as next_table read them (see above); nothing in this call frees
            // that table (only a table under an entry replaced by a block is freed).
            cur = unsafe { get(t, i) };
            if cur == 0 {
                // SAFETY: same `t` and `i`; the populate lock serialises this store with other
                // writers of a table link, as the PtMemory contract requires.
                unsafe { set(t, i, kernel_table_desc(new)) };
            }
        });
        if cur != 0 {
            self.mem.free_table(new);
            return if desc_is_table(cur) {
                Ok(desc_addr(cur))
            } else if desc_valid(cur) {
                Err(MapError::AlreadyMapped { va, level, desc: cur })
            } else {
                Err(MapError::BadEntry { va, level, desc: cur })
            };
        }
        self.stats.tables_allocated += 1;
        Ok(new)
    }

    fn map_pgd_range(
        &mut self,
        root: u64,
        mut addr: u64,
        end: u64,
        mut pa: u64,
    ) -> Result<(), MapError> {
        loop {
            let next = addr_end(addr, end, PGDIR_SIZE);
            let pud = self.next_table(root, pt_index(addr, PGDIR_SHIFT), addr, 0)?;
            self.map_pud_range(pud, addr, next, pa)?;
            pa += next - addr;
            addr = next;
            if addr == end {
                return Ok(());
            }
        }
    }

    fn map_pud_range(
        &mut self,
        table: u64,
        mut addr: u64,
        end: u64,
        mut pa: u64,
    ) -> Result<(), MapError> {
        loop {
            let next = addr_end(addr, end, PUD_SIZE);
            let i = pt_index(addr, PUD_SHIFT);
            if !self.try_huge(table, i, addr, next, pa, 1)? {
                let pmd = self.next_table(table, i, addr, 1)?;
                self.map_pmd_range(pmd, addr, next, pa)?;
            }
            pa += next - addr;
            addr = next;
            if addr == end {
                return Ok(());
            }
        }
    }

    fn map_pmd_range(
        &mut self,
        table: u64,
        mut addr: u64,
        end: u64,
        mut pa: u64,
    ) -> Result<(), MapError> {
        loop {
            let next = addr_end(addr, end, PMD_SIZE);
            let i = pt_index(addr, PMD_SHIFT);
            if !self.try_huge(table, i, addr, next, pa, 2)? {
                let pte = self.next_table(table, i, addr, 2)?;
                self.map_pte_range(pte, addr, next, pa)?;
            }
            pa += next - addr;
            addr = next;
            if addr == end {
                return Ok(());
            }
        }
    }

    /// `vmap_try_huge_pud` / `vmap_try_huge_pmd` + `pXd_set_huge`.
    fn try_huge(
        &mut self,
        table: u64,
        i: usize,
        addr: u64,
        next: u64,
        pa: u64,
        level: u8,
    ) -> Result<bool, MapError> {
        let (size, allowed) = if level == 1 {
            (PUD_SIZE, self.flags.contains(MapFlags::BLOCK_PUD))
        } else {
            (PMD_SIZE, self.flags.contains(MapFlags::BLOCK_PMD))
        };
        if !allowed || next - addr != size || addr & (size - 1) != 0 || pa & (size - 1) != 0 {
            return Ok(false);
        }
        let t = tbl(self.mem, table);
        let new = self.prot.block_desc(pa);
        // SAFETY: `table` is a table of this tree (from `next_table`), so `t` is valid per
        // `tbl`; callers pass `i` from `pt_index`, which is below 512.
        let old = unsafe { get(t, i) };
        if old != 0 {
            if !desc_valid(old) {
                return Err(MapError::BadEntry { va: addr, level, desc: old });
            }
            if desc_is_table(old) {
                // pmd_free_pte_page / pud_free_pmd_page: Linux assumes the table maps nothing;
                // we check it and refuse otherwise.
                if !subtree_empty(self.mem, desc_addr(old), level + 1) {
                    return Err(MapError::AlreadyMapped { va: addr, level, desc: old });
                }
                // SAFETY: same `t` and `i` as the read above.
                unsafe { set(t, i, 0) };
                flush_tlb_kernel_pgtable(self.tlb, addr);
                self.stats.tables_freed += free_tree(self.mem, desc_addr(old), level + 1);
            } else if old == new {
                return Ok(true);
            } else if self.flags.contains(MapFlags::REPLACE) {
                // Break-before-make on a live block.
                // SAFETY: same `t` and `i` as the read above.
                unsafe { set(t, i, 0) };
                self.tlb.dsb_ishst();
                self.tlb.tlbi_vaale1is(addr);
                self.tlb.dsb_ish();
                self.stats.bbm += 1;
            } else {
                return Err(MapError::AlreadyMapped { va: addr, level, desc: old });
            }
        }
        // SAFETY: same `t` and `i` as the read above (only the table under entry `i` may have
        // been freed, not `t` itself).
        unsafe { set(t, i, new) };
        if level == 1 {
            self.stats.pud_blocks += 1;
        } else {
            self.stats.pmd_blocks += 1;
        }
        Ok(true)
    }

    /// `vmap_pte_range` with arm64 `arch_vmap_pte_range_map_size` + `set_huge_pte_at`.
    fn map_pte_range(
        &mut self,
        table: u64,
        mut addr: u64,
        end: u64,
        mut pa: u64,
    ) -> Result<(), MapError> {
        let t = tbl(self.mem, table);
        let mut i = pt_index(addr, PAGE_SHIFT);
        let cont_ok = self.flags.contains(MapFlags::CONT_PTE);
        while addr != end {
            let cont = cont_ok
                && end - addr >= CONT_PTE_SIZE
                && addr & (CONT_PTE_SIZE - 1) == 0
                && pa & (CONT_PTE_SIZE - 1) == 0;
            let n = if cont { CONT_PTES } else { 1 };
            let desc = if cont {
                self.prot.page_desc(pa) | PteFlags::CONT.bits()
            } else {
                self.prot.page_desc(pa) & !PteFlags::CONT.bits()
            };
            for k in 0..n {
                // SAFETY: `table` is a table of this tree (from `next_table`), so `t` is valid
                // per `tbl`. `[addr, end)` lies in the one PMD span this table maps (`end` is
                // capped at the next PMD boundary), so `i` stays below 512 for every page of it,
                // and a run (`n` = 16) is only taken when 16 pages remain: `i + k < 512`.
                let old = unsafe { get(t, i + k) };
                if old != 0 {
                    self.live_pte(
                        t,
                        i + k,
                        addr + k as u64 * PAGE_SIZE as u64,
                        old,
                        desc + k as u64 * PAGE_SIZE as u64,
                    )?;
                }
            }
            for k in 0..n {
                // SAFETY: same `t` and indices as the reads above.
                unsafe { set(t, i + k, desc + k as u64 * PAGE_SIZE as u64) };
            }
            self.stats.ptes += n as u64;
            if cont {
                self.stats.cont_runs += 1;
            }
            i += n;
            addr += n as u64 * PAGE_SIZE as u64;
            pa += n as u64 * PAGE_SIZE as u64;
        }
        Ok(())
    }

    /// A live PTE where a new one is about to be written: refuse (vmalloc) or break it (REPLACE).
    #[cold]
    fn live_pte(
        &mut self,
        t: *mut u64,
        i: usize,
        va: u64,
        old: u64,
        new: u64,
    ) -> Result<(), MapError> {
        if !desc_valid(old) {
            return Err(MapError::BadEntry { va, level: 3, desc: old });
        }
        if !self.flags.contains(MapFlags::REPLACE) {
            return Err(MapError::AlreadyMapped { va, level: 3, desc: old });
        }
        if old == new {
            return Ok(());
        }
        if old & PteFlags::CONT.bits() != 0 {
            // The whole old run must go, and the new range must cover it.
            let run = va & !(CONT_PTE_SIZE - 1);
            if run < self.start || run + CONT_PTE_SIZE > self.end {
                return Err(MapError::PartialContRun { va });
            }
            let first = i & !(CONT_PTES - 1);
            for k in 0..CONT_PTES {
                // SAFETY: `t` and `i` are valid (the caller's table and an index below 512);
                // `first` is `i` rounded down to a multiple of 16, and 512 is one, so
                // `first + k <= i | 15 < 512`: the run is inside this table.
                unsafe { set(t, first + k, 0) };
            }
            self.tlb.dsb_ishst();
            for k in 0..CONT_PTES as u64 {
                self.tlb.tlbi_vaale1is(run + k * PAGE_SIZE as u64);
            }
            self.tlb.dsb_ish();
        } else {
            // SAFETY: `t` and `i` come from the caller, which has just read entry `i` of `t`
            // under the `get` contract.
            unsafe { set(t, i, 0) };
            self.tlb.dsb_ishst();
            self.tlb.tlbi_vaale1is(va);
            self.tlb.dsb_ish();
        }
        self.stats.bbm += 1;
        Ok(())
    }

    /// `vmap_small_pages_range_noflush`: one PTE per (possibly scattered) page.
    fn map_small_pages<F: FnMut(usize) -> u64>(
        &mut self,
        root: u64,
        va: u64,
        end: u64,
        page_pa: &mut F,
    ) -> Result<(), MapError> {
        let mut addr = va;
        let mut nr = 0usize;
        while addr != end {
            let next = addr_end(addr, end, PMD_SIZE);
            let pud = self.next_table(root, pt_index(addr, PGDIR_SHIFT), addr, 0)?;
            let pmd = self.next_table(pud, pt_index(addr, PUD_SHIFT), addr, 1)?;
            let pte = self.next_table(pmd, pt_index(addr, PMD_SHIFT), addr, 2)?;
            let t = tbl(self.mem, pte);
            let mut i = pt_index(addr, PAGE_SHIFT);
            while addr != next {
                let pa = page_pa(nr);
                if pa & (PAGE_SIZE as u64 - 1) != 0 || pa > PTE_ADDR_MASK {
                    return Err(MapError::Invalid);
                }
                let desc = self.prot.page_desc(pa) & !PteFlags::CONT.bits();
                // SAFETY: `pte` is a table of this tree (from `next_table`), so `t` is valid per
                // `tbl`; `[addr, next)` lies in the PMD span that table maps, so `i < 512`.
                let old = unsafe { get(t, i) };
                if old != 0 {
                    self.live_pte(t, i, addr, old, desc)?;
                }
                // SAFETY: same `t` and `i` as the read above.
                unsafe { set(t, i, desc) };
                self.stats.ptes += 1;
                nr += 1;
                i += 1;
                addr += PAGE_SIZE as u64;
            }
        }
        Ok(())
    }
}

/// True when the tree under `table` (a table at `level`) has no valid leaf.
fn subtree_empty<M: PtMemory + ?Sized>(mem: &M, table: u64, level: u8) -> bool {
    let t = tbl(mem, table);
    (0..PTRS_PER_TABLE).all(|i| {
        // SAFETY: `table` is a table of the tree (a table descriptor's address), so `t` is valid
        // per `tbl`; `i < PTRS_PER_TABLE` = 512.
        let e = unsafe { get(t, i) };
        if e == 0 {
            true
        } else if level < 3 && desc_is_table(e) {
            subtree_empty(mem, desc_addr(e), level + 1)
        } else {
            false
        }
    })
}

/// Free `table` (at `level`) and every table under it; returns the number of pages freed.
fn free_tree<M: PtMemory + ?Sized>(mem: &mut M, table: u64, level: u8) -> u64 {
    let mut n = 0;
    if level < 3 {
        let t = tbl(mem, table);
        for i in 0..PTRS_PER_TABLE {
            // SAFETY: `table` is a table of the tree (the root or a table descriptor's address)
            // and is freed only after this loop, so `t` is valid per `tbl`; `i < 512`.
            let e = unsafe { get(t, i) };
            if desc_is_table(e) {
                n += free_tree(mem, desc_addr(e), level + 1);
            }
        }
    }
    mem.free_table(table);
    n + 1
}
