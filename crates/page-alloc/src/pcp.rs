//! Per-CPU page lists: Linux `struct per_cpu_pages` (include/linux/mmzone.h), the per-CPU
//! pointer `zone->per_cpu_pageset`, and the helpers of mm/page_alloc.c that need only the pcp:
//! `order_to_pindex`, `pindex_to_order`, `pcp_allowed_order`, `nr_pcp_free`. The paths that
//! work on a zone and its pcps together (`rmqueue_bulk`, `__rmqueue_pcplist`,
//! `free_frozen_page_commit`, `nr_pcp_alloc`, `nr_pcp_high`, `free_pcppages_bulk`,
//! `decay_pcp_high`, the drains, `zone_set_pageset_high_and_batch`) take the zone as a parameter
//! and live above both, in the page allocator (`page_alloc::pcp_ops`).
//!
//! One pcp per zone per CPU, each behind its own spinlock taken with `try_lock` on the hot
//! paths exactly like Linux's `pcp_spin_trylock` (failure -> the caller goes to the buddy
//! under zone->lock). The lock is uncontended in normal operation: a CPU only touches its own
//! pcp, except `drain_pages` of another CPU, which Linux also does remotely under the pcp lock.
//! Callers pass their CPU number (`cpu`, from smp_processor_id with IRQs masked in the kernel,
//! a thread index in host tests); it selects the pcp and the per-CPU event counters.
//!
//! Differences from Linux: one migratetype (MIGRATE_UNMOVABLE), so the lists are orders 0..=3
//! plus one pageblock-order list (`NR_PCP_LISTS` = 5 instead of 14; Linux's extra lists would
//! all be empty). The adaptive `high`/`alloc_factor`/`free_count`/free_high logic is ported
//! as is; ZONE_RECLAIM_ACTIVE is never set (no kswapd/reclaim), and `decay_pcp_high` only runs
//! if the kernel calls `PageAllocator::decay_pcp_high` periodically (Linux: vmstat work, ~1 s).
use crate::page::ListHead;
use mm_types::{NR_CPUS, PAGEBLOCK_ORDER};
use spin::mutex::SpinMutex;

/// Linux PAGE_ALLOC_COSTLY_ORDER.
pub const PAGE_ALLOC_COSTLY_ORDER: u32 = 3;
/// Pcp migratetypes kept: only MIGRATE_UNMOVABLE (Linux MIGRATE_PCPTYPES = 3).
pub const MIGRATE_PCPTYPES: usize = 1;
pub const NR_LOWORDER_PCP_LISTS: usize = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER as usize + 1);
/// Pageblock-order lists (Linux NR_PCP_THP = 2: movable and the rest; one type here).
pub const NR_PCP_THP: usize = 1;
pub const NR_PCP_LISTS: usize = NR_LOWORDER_PCP_LISTS + NR_PCP_THP;
/// Linux CONFIG_PCP_BATCH_SCALE_MAX default.
pub const PCP_BATCH_SCALE_MAX: u32 = 5;
/// Boot pageset values, which effectively disable the pcp (`mm.pcp=off` uses them).
pub const BOOT_PAGESET_HIGH: i32 = 0;
pub const BOOT_PAGESET_BATCH: i32 = 1;
/// Linux MIN_PERCPU_PAGELIST_HIGH_FRACTION (also the fraction used for high_max).
pub const MIN_PERCPU_PAGELIST_HIGH_FRACTION: u32 = 8;

/// pcp->flags.
pub const PCPF_PREV_FREE_HIGH_ORDER: u8 = 1 << 0;
pub const PCPF_FREE_HIGH_BATCH: u8 = 1 << 1;

/// Linux `struct per_cpu_pages` (the lock is the `SpinMutex` around it).
#[derive(Debug)]
pub struct PerCpuPages {
    /// Pages on all lists (all orders).
    pub count: i32,
    pub high: i32,
    pub high_min: i32,
    pub high_max: i32,
    pub batch: i32,
    pub flags: u8,
    pub alloc_factor: u8,
    /// Pages freed in a row (halved on every allocation).
    pub free_count: i32,
    pub(super) lists: [ListHead; NR_PCP_LISTS],
}

impl PerCpuPages {
    /// `per_cpu_pages_init`: boot pageset values.
    pub const fn new() -> Self {
        PerCpuPages {
            count: 0,
            high: 0,
            high_min: BOOT_PAGESET_HIGH,
            high_max: BOOT_PAGESET_HIGH,
            batch: BOOT_PAGESET_BATCH,
            flags: 0,
            alloc_factor: 0,
            free_count: 0,
            lists: [ListHead::new(); NR_PCP_LISTS],
        }
    }
}

impl Default for PerCpuPages {
    fn default() -> Self {
        Self::new()
    }
}

/// One CPU's pcp for one zone, on its own cache line.
#[repr(align(64))]
pub struct PcpSlot(pub(super) SpinMutex<PerCpuPages>);

impl PcpSlot {
    pub const fn new() -> Self {
        PcpSlot(SpinMutex::new(PerCpuPages::new()))
    }
}

impl Default for PcpSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// `zone->per_cpu_pageset`, Linux's `struct per_cpu_pages __percpu *`: CPU n's pcp is at
/// `ptr + offsets[n]` (per_cpu_ptr with `__per_cpu_offset`). A zone starts on boot pagesets
/// (Linux `boot_pageset`; here a heap array, `ptr` 0 and `offsets` the slots' addresses) and
/// moves into per-CPU memory with
/// [`PageAllocator::setup_per_cpu_pageset`](crate::page_alloc::PageAllocator::setup_per_cpu_pageset).
pub struct PerCpuPageset {
    ptr: usize,
    offsets: [usize; NR_CPUS],
    /// CPUs that have a pcp (possible CPUs).
    nr: usize,
    boot: Option<alloc::boxed::Box<[PcpSlot; NR_CPUS]>>,
}

impl PerCpuPageset {
    /// Boot pagesets for all NR_CPUS CPUs.
    pub fn new_boot() -> Self {
        let boot =
            alloc::boxed::Box::new(core::array::from_fn::<PcpSlot, NR_CPUS, _>(|_| PcpSlot::new()));
        let offsets = core::array::from_fn(|cpu| &boot[cpu] as *const PcpSlot as usize);
        PerCpuPageset { ptr: 0, offsets, nr: NR_CPUS, boot: Some(boot) }
    }

    /// CPU `cpu`'s pcp (`per_cpu_ptr(zone->per_cpu_pageset, cpu)`). `cpu` must be one of
    /// the CPUs that have a pcp (`< nr`, checked in debug builds only, like Linux's
    /// `per_cpu_ptr` does not check it at all).
    #[inline(always)]
    pub fn get(&self, cpu: usize) -> &PcpSlot {
        debug_assert!(cpu < self.nr);
        // SAFETY: for every cpu < self.nr, ptr + offsets[cpu] is the address of an initialised
        // PcpSlot that outlives `self` and is only accessed through shared references (its
        // content is behind the SpinMutex): on the boot pagesets `ptr` is 0 and the offsets are
        // the addresses of the slots in `self.boot`, which `self` owns and never moves out of the
        // heap; after `move_to` they are the slots it wrote into the per-CPU memory that the
        // caller of `setup_per_cpu_pageset` provides for the rest of the allocator's life.
        // cpu < self.nr is this function's documented precondition (the `offsets` index itself
        // is bounds-checked against NR_CPUS).
        unsafe { &*(self.ptr.wrapping_add(self.offsets[cpu]) as *const PcpSlot) }
    }

    /// Every CPU's pcp.
    pub fn iter(&self) -> impl Iterator<Item = &PcpSlot> {
        (0..self.nr).map(move |cpu| self.get(cpu))
    }

    /// Address of `cpu`'s pcp (tests: it must lie in that CPU's per-CPU area).
    pub fn slot_addr(&self, cpu: usize) -> usize {
        self.get(cpu) as *const PcpSlot as usize
    }

    /// Moves every CPU's pcp, lists and all (they link pages by PFN, not by address), to the
    /// percpu pointer `ptr`; `offsets[..nr]` are the per-CPU offsets. Fails if a CPU without a
    /// per-CPU area still holds pages on its boot pageset.
    ///
    /// Contract (the one `PageAllocator::setup_per_cpu_pageset` documents): `nr <= NR_CPUS`,
    /// and for every cpu < nr, `ptr + offsets[cpu]` is valid for writes of a `PcpSlot`, aligned
    /// for it, not used by anything else, and stays allocated for as long as this pageset is
    /// used.
    pub(crate) fn move_to(
        &mut self,
        ptr: usize,
        offsets: &[usize; NR_CPUS],
        nr: usize,
    ) -> Result<(), &'static str> {
        let old_nr = self.nr;
        for cpu in nr..old_nr {
            if self.get(cpu).0.lock().count != 0 {
                return Err("pages on the boot pageset of a CPU without a per-CPU area");
            }
        }
        for (cpu, &offset) in offsets.iter().enumerate().take(nr) {
            let dst = ptr.wrapping_add(offset) as *mut PcpSlot;
            let v = if cpu < old_nr {
                core::mem::take(&mut *self.get(cpu).0.lock())
            } else {
                PerCpuPages::new()
            };
            // SAFETY: by the contract above, `dst` (ptr + offsets[cpu], cpu < nr) is valid for
            // writes of a PcpSlot, aligned and unused; `write` does not read or drop the
            // uninitialised memory there.
            unsafe { dst.write(PcpSlot(SpinMutex::new(v))) };
        }
        self.ptr = ptr;
        self.offsets = *offsets;
        self.nr = nr;
        self.boot = None;
        Ok(())
    }
}

impl core::ops::Index<usize> for PerCpuPageset {
    type Output = PcpSlot;
    #[inline(always)]
    fn index(&self, cpu: usize) -> &PcpSlot {
        self.get(cpu)
    }
}

/// Linux `order_to_pindex` (one migratetype).
#[inline]
pub const fn order_to_pindex(order: u32) -> usize {
    if order > PAGE_ALLOC_COSTLY_ORDER {
        NR_LOWORDER_PCP_LISTS
    } else {
        MIGRATE_PCPTYPES * order as usize
    }
}

/// Linux `pindex_to_order`.
#[inline]
pub const fn pindex_to_order(pindex: usize) -> u32 {
    if pindex >= NR_LOWORDER_PCP_LISTS {
        PAGEBLOCK_ORDER as u32
    } else {
        (pindex / MIGRATE_PCPTYPES) as u32
    }
}

/// Linux `pcp_allowed_order`: orders 0..=3 and the PMD order (THP configured).
#[inline]
pub const fn pcp_allowed_order(order: u32) -> bool {
    order <= PAGE_ALLOC_COSTLY_ORDER || order == PAGEBLOCK_ORDER as u32
}

/// Linux's `clamp(val, lo, hi)` = `min(max(val, lo), hi)` (no panic when lo > hi).
#[inline]
pub(crate) fn clamp(v: i32, lo: i32, hi: i32) -> i32 {
    v.max(lo).min(hi)
}

/// Linux `nr_pcp_free`.
pub(crate) fn nr_pcp_free(pcp: &PerCpuPages, batch: i32, high: i32, free_high: bool) -> i32 {
    // Free as much as possible if batch freeing high-order pages.
    if free_high {
        return pcp.count.min(batch << PCP_BATCH_SCALE_MAX);
    }
    // Check for PCP disabled or boot pageset.
    if high < batch {
        return 1;
    }
    // Leave at least pcp->batch pages on the list; grow with the free streak.
    let (min_nr_free, max_nr_free) = (batch, high - batch);
    clamp(pcp.free_count, min_nr_free, max_nr_free)
}

/// Copy of a pcp's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcpSnapshot {
    pub count: i32,
    pub high: i32,
    pub high_min: i32,
    pub high_max: i32,
    pub batch: i32,
    pub alloc_factor: u8,
    pub free_count: i32,
    pub flags: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pindex() {
        assert_eq!(NR_PCP_LISTS, 5);
        for o in 0..=3 {
            assert_eq!(pindex_to_order(order_to_pindex(o)), o);
        }
        assert_eq!(order_to_pindex(9), 4);
        assert_eq!(pindex_to_order(4), 9);
        assert!(pcp_allowed_order(0) && pcp_allowed_order(3) && pcp_allowed_order(9));
        for o in [4, 5, 6, 7, 8, 10] {
            assert!(!pcp_allowed_order(o));
        }
    }
}
