//! Per-CPU page lists: Linux `struct per_cpu_pages` (include/linux/mmzone.h) and its code in
//! mm/page_alloc.c: `order_to_pindex`, `pcp_allowed_order`, `nr_pcp_alloc`,
//! `__rmqueue_pcplist`, `rmqueue_pcplist`, `rmqueue_bulk`, `free_frozen_page_commit`,
//! `nr_pcp_high`, `nr_pcp_free`, `free_pcppages_bulk`, `decay_pcp_high`, `drain_pages_zone`,
//! `drain_pages`, `drain_all_pages`, `zone_set_pageset_high_and_batch`.
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
use crate::page::PageFlags;
use crate::page_alloc::{PageAllocator, FPI_NONE};
use crate::stat::VmEvent;
use crate::zone::{Zone, WMARK_HIGH, ZONE_NORMAL};
use core::sync::atomic::Ordering::Relaxed;
use mm_types::PAGEBLOCK_ORDER;
use spin::mutex::{SpinMutex, SpinMutexGuard};

use mm_types::NR_CPUS;
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
/// moves into per-CPU memory with [`PageAllocator::setup_per_cpu_pageset`].
pub struct PerCpuPageset {
    ptr: usize,
    offsets: [usize; NR_CPUS],
    /// CPUs that have a pcp (possible CPUs).
    nr: usize,
    boot: Option<alloc::boxed::Box<[PcpSlot; NR_CPUS]>>,
}

// The slots are PcpSlots (Sync); the pointers only locate them.
unsafe impl Send for PerCpuPageset {}
unsafe impl Sync for PerCpuPageset {}

impl PerCpuPageset {
    /// Boot pagesets for all NR_CPUS CPUs.
    pub fn new_boot() -> Self {
        let boot =
            alloc::boxed::Box::new(core::array::from_fn::<PcpSlot, NR_CPUS, _>(|_| PcpSlot::new()));
        let offsets = core::array::from_fn(|cpu| &boot[cpu] as *const PcpSlot as usize);
        PerCpuPageset { ptr: 0, offsets, nr: NR_CPUS, boot: Some(boot) }
    }

    /// CPU `cpu`'s pcp (`per_cpu_ptr(zone->per_cpu_pageset, cpu)`).
    #[inline(always)]
    pub fn get(&self, cpu: usize) -> &PcpSlot {
        debug_assert!(cpu < self.nr);
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
    fn move_to(
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
        for cpu in 0..nr {
            let dst = ptr.wrapping_add(offsets[cpu]) as *mut PcpSlot;
            let v = if cpu < old_nr {
                core::mem::take(&mut *self.get(cpu).0.lock())
            } else {
                PerCpuPages::new()
            };
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

impl PageAllocator<'_> {
    /// Linux `setup_per_cpu_pageset`: every zone's pcps leave the boot pagesets for per-CPU
    /// memory. `alloc(size, align)` is `__alloc_percpu` (returns a percpu pointer),
    /// `offsets[..nr_cpus]` are `__per_cpu_offset`. Unlike Linux, the boot pagesets may already
    /// hold pages and tuned high/batch values: they move along unchanged. Call before other
    /// CPUs use the allocator (`&mut self` makes sure nobody else holds it).
    pub fn setup_per_cpu_pageset(
        &mut self,
        nr_cpus: usize,
        offsets: &[usize; NR_CPUS],
        mut alloc: impl FnMut(usize, usize) -> Option<usize>,
    ) -> Result<(), &'static str> {
        let nr_cpus = nr_cpus.clamp(1, NR_CPUS);
        for zone in self.zones.iter_mut() {
            let ptr = alloc(core::mem::size_of::<PcpSlot>(), core::mem::align_of::<PcpSlot>())
                .ok_or("no percpu memory for the pagesets")?;
            zone.per_cpu_pageset.move_to(ptr, offsets, nr_cpus)?;
        }
        Ok(())
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
fn clamp(v: i32, lo: i32, hi: i32) -> i32 {
    v.max(lo).min(hi)
}

/// Linux `nr_pcp_alloc`: how many blocks a refill takes from the buddy.
pub(super) fn nr_pcp_alloc(pcp: &mut PerCpuPages, zone: &Zone, order: u32) -> i32 {
    let base_batch = pcp.batch;
    let (high_min, high_max) = (pcp.high_min, pcp.high_max);
    pcp.high = clamp(pcp.high, high_min, high_max);
    let mut high = pcp.high;

    // Check for PCP disabled or boot pageset.
    if high < base_batch {
        return 1;
    }
    let mut batch = if order != 0 { base_batch } else { base_batch << pcp.alloc_factor };

    // If we had larger pcp->high, we could avoid to allocate from zone.
    if high_min != high_max && !zone.is_below_high() {
        high = (high + batch).min(high_max);
        pcp.high = high;
    }
    if order == 0 {
        let max_nr_alloc = (high - pcp.count - base_batch).max(base_batch);
        // Double the number of pages allocated each time there is subsequent allocation of
        // order-0 pages without any freeing.
        if batch <= max_nr_alloc && (pcp.alloc_factor as u32) < PCP_BATCH_SCALE_MAX {
            pcp.alloc_factor += 1;
        }
        batch = batch.min(max_nr_alloc);
    }
    // Scale batch relative to order if batch implies free pages can be stored on the PCP.
    if batch > 1 {
        batch = (batch >> order).max(2);
    }
    batch
}

/// Linux `nr_pcp_free`.
pub(super) fn nr_pcp_free(pcp: &PerCpuPages, batch: i32, high: i32, free_high: bool) -> i32 {
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

/// Linux `nr_pcp_high` (ZONE_RECLAIM_ACTIVE never set here).
pub(super) fn nr_pcp_high(pcp: &mut PerCpuPages, zone: &Zone, batch: i32, free_high: bool) -> i32 {
    let (high_min, high_max) = (pcp.high_min, pcp.high_max);
    pcp.high = clamp(pcp.high, high_min, high_max);
    let mut high = pcp.high;
    if high == 0 {
        return 0;
    }
    if free_high {
        pcp.high = (high - (batch << PCP_BATCH_SCALE_MAX)).max(high_min);
        return 0;
    }
    if high_min == high_max {
        return high;
    }
    if zone.is_below_high() {
        let free_count = pcp.free_count.max(batch);
        pcp.high = (high - free_count).max(high_min);
        high = pcp.count.max(high_min);
    } else if pcp.count >= high {
        let need_high = pcp.free_count + batch;
        // pcp->high should be large enough to hold batch freed pages.
        if pcp.high < need_high {
            pcp.high = clamp(need_high, high_min, high_max);
        }
    }
    high
}

impl<'m> PageAllocator<'m> {
    /// Linux `rmqueue_bulk`: takes `count` blocks of `order` from the buddy under one
    /// zone->lock acquisition and appends them to `list` (physical order kept). Returns the
    /// number of blocks taken.
    pub(super) fn rmqueue_bulk(
        &self,
        cpu: usize,
        zone: &Zone,
        order: u32,
        count: i32,
        list: &mut ListHead,
    ) -> i32 {
        let mm = &self.mem_map;
        let mut zf = self.zone_lock(cpu, zone);
        let mut i = 0;
        while i < count {
            let Some(pfn) = self.__rmqueue(zone, &mut zf, order) else { break };
            let page = mm.page(pfn);
            page.insert_flags(PageFlags::PG_PCP);
            page.set_order(order);
            list.add_tail(mm, pfn);
            i += 1;
        }
        drop(zf);
        let ev = self.events(cpu);
        ev.count(VmEvent::PcpRefill, 1);
        ev.count(VmEvent::PcpRefillPages, (i as u64) << order);
        i
    }

    /// Linux `__rmqueue_pcplist`: first block of the list, refilling it from the buddy when
    /// empty. Caller holds the pcp lock.
    pub(super) fn __rmqueue_pcplist(
        &self,
        cpu: usize,
        zone: &Zone,
        order: u32,
        alloc_flags: u32,
        pcp: &mut PerCpuPages,
        pindex: usize,
    ) -> Option<u64> {
        let mm = &self.mem_map;
        if pcp.lists[pindex].is_empty() {
            let batch = nr_pcp_alloc(pcp, zone, order);
            // Don't refill the list for a higher order atomic allocation under memory pressure.
            if alloc_flags & mm_types::gfp::ALLOC_HIGHATOMIC != 0 {
                return None;
            }
            let alloced = self.rmqueue_bulk(cpu, zone, order, batch, &mut pcp.lists[pindex]);
            pcp.count += alloced << order;
            if pcp.lists[pindex].is_empty() {
                return None;
            }
        }
        let pfn = pcp.lists[pindex].first_pfn(mm)?;
        pcp.lists[pindex].del(mm, pfn);
        pcp.count -= 1 << order;
        mm.page(pfn).remove_flags(PageFlags::PG_PCP);
        Some(pfn)
    }

    /// Linux `rmqueue_pcplist`. `None` if the pcp lock is busy or the buddy is empty.
    pub(super) fn rmqueue_pcplist(
        &self,
        cpu: usize,
        zone: &Zone,
        order: u32,
        alloc_flags: u32,
    ) -> Option<u64> {
        let Some(mut pcp) = zone.per_cpu_pageset[cpu].0.try_lock() else {
            self.events(cpu).count(VmEvent::PcpTrylockFail, 1);
            return None;
        };
        // On allocation, reduce the number of pages that are batch freed.
        pcp.free_count >>= 1;
        let pfn =
            self.__rmqueue_pcplist(cpu, zone, order, alloc_flags, &mut pcp, order_to_pindex(order));
        drop(pcp);
        if pfn.is_some() {
            self.events(cpu).count(VmEvent::pgalloc_zone(zone.idx), 1 << order);
        }
        pfn
    }

    /// Linux `free_pcppages_bulk`: frees `count` pages from the pcp lists to the buddy under
    /// one zone->lock acquisition, round-robin over the lists starting with `pindex`, taking
    /// the coldest block (list tail) first.
    pub(super) fn free_pcppages_bulk(
        &self,
        cpu: usize,
        zone: &Zone,
        count: i32,
        pcp: &mut PerCpuPages,
        pindex: usize,
    ) {
        let mm = &self.mem_map;
        let mut count = count.min(pcp.count);
        if count <= 0 {
            return;
        }
        // Ensure requested pindex is drained first.
        let mut pindex = pindex as isize - 1;
        let mut zf = self.zone_lock(cpu, zone);
        let mut freed = 0u64;
        'outer: while count > 0 {
            // Remove pages from lists in a round-robin fashion.
            let mut tries = 0;
            loop {
                pindex += 1;
                if pindex > NR_PCP_LISTS as isize - 1 {
                    pindex = 0;
                }
                if !pcp.lists[pindex as usize].is_empty() {
                    break;
                }
                tries += 1;
                if tries > NR_PCP_LISTS {
                    debug_assert!(false, "pcp->count {} but all lists empty", pcp.count);
                    break 'outer;
                }
            }
            let list = &mut pcp.lists[pindex as usize];
            let order = pindex_to_order(pindex as usize);
            let nr_pages = 1i32 << order;
            loop {
                let pfn = list.last_pfn(mm).expect("non-empty");
                list.del(mm, pfn);
                count -= nr_pages;
                pcp.count -= nr_pages;
                let page = mm.page(pfn);
                page.remove_flags(PageFlags::PG_PCP);
                page.set_order(0);
                self.__free_one_page(zone, &mut zf, pfn, order, FPI_NONE);
                freed += nr_pages as u64;
                if count <= 0 || list.is_empty() {
                    break;
                }
            }
        }
        drop(zf);
        let ev = self.events(cpu);
        ev.count(VmEvent::PcpDrain, 1);
        ev.count(VmEvent::PcpDrainPages, freed);
    }

    /// Linux `free_frozen_page_commit`: put the block on the pcp list head, tune high /
    /// alloc_factor / free_count, and flush `nr_pcp_free` pages in `batch` chunks when
    /// `count >= high`, re-taking the pcp lock between chunks.
    pub(super) fn free_frozen_page_commit(
        &self,
        cpu: usize,
        zone: &Zone,
        mut pcp: SpinMutexGuard<'_, PerCpuPages>,
        pfn: u64,
        order: u32,
    ) {
        let mm = &self.mem_map;
        // On freeing, reduce the number of pages that are batch allocated.
        pcp.alloc_factor >>= 1;
        self.events(cpu).count(VmEvent::Pgfree, 1 << order);
        let pindex = order_to_pindex(order);
        let page = mm.page(pfn);
        page.insert_flags(PageFlags::PG_PCP);
        page.set_order(order);
        pcp.lists[pindex].add(mm, pfn);
        pcp.count += 1 << order;

        let batch = pcp.batch;
        // As high-order pages other than THP's stored on PCP can contribute to
        // fragmentation, limit the number stored when PCP is heavily freeing without
        // allocation.
        let mut free_high = false;
        if order != 0 && order <= PAGE_ALLOC_COSTLY_ORDER {
            free_high = pcp.free_count >= batch + pcp.high_min / 2
                && pcp.flags & PCPF_PREV_FREE_HIGH_ORDER != 0
                && (pcp.flags & PCPF_FREE_HIGH_BATCH == 0 || pcp.count >= batch);
            pcp.flags |= PCPF_PREV_FREE_HIGH_ORDER;
        } else if pcp.flags & PCPF_PREV_FREE_HIGH_ORDER != 0 {
            pcp.flags &= !PCPF_PREV_FREE_HIGH_ORDER;
        }
        if pcp.free_count < (batch << PCP_BATCH_SCALE_MAX) {
            pcp.free_count += 1 << order;
        }

        let high = nr_pcp_high(&mut pcp, zone, batch, free_high);
        if pcp.count < high {
            return;
        }
        let mut to_free = nr_pcp_free(&pcp, batch, high, free_high);
        let mut guard = Some(pcp);
        while let Some(pcp) = guard.as_mut() {
            if !(to_free > 0 && pcp.count > 0) {
                break;
            }
            let chunk = to_free.min(batch);
            self.free_pcppages_bulk(cpu, zone, chunk, pcp, pindex);
            to_free -= chunk;
            if to_free == 0 || pcp.count == 0 {
                break;
            }
            // Let others (a remote drain) in between chunks, like pcp_spin_unlock/trylock.
            drop(guard.take());
            guard = zone.per_cpu_pageset[cpu].0.try_lock();
        }
        drop(guard);

        if zone.is_below_high()
            && zone.zone_watermark_ok(0, zone.wmark_pages(WMARK_HIGH), ZONE_NORMAL, 0)
        {
            zone.below_high.store(false, Relaxed);
        }
    }

    /// Linux `__free_frozen_pages` for a prepared block (refcount 0, checks done): pcp orders
    /// go to this CPU's pcp list (or the buddy if its lock is busy), other orders straight to
    /// the buddy under zone->lock.
    pub(super) fn __free_frozen_pages(&self, cpu: usize, pfn: u64, order: u32, fpi: u32) {
        let zone = &self.zones[self.mem_map.page(pfn).zone_idx() as usize];
        self.events(cpu).count(VmEvent::pgfree_order(order), 1);
        if !pcp_allowed_order(order) {
            self.free_one_page(cpu, zone, pfn, order, fpi);
            return;
        }
        match zone.per_cpu_pageset[cpu].0.try_lock() {
            Some(pcp) => self.free_frozen_page_commit(cpu, zone, pcp, pfn, order),
            None => {
                self.events(cpu).count(VmEvent::PcpTrylockFail, 1);
                self.free_one_page(cpu, zone, pfn, order, fpi);
            }
        }
    }

    /// Linux `drain_pages_zone`: empty `cpu`'s pcp of `zone` (in chunks of batch << 5 pages
    /// under the pcp lock). `this_cpu` is the CPU doing the work (for the counters).
    pub(super) fn drain_pages_zone(&self, this_cpu: usize, cpu: usize, zone: &Zone) {
        loop {
            let mut pcp = zone.per_cpu_pageset[cpu].0.lock();
            let mut count = pcp.count;
            if count > 0 {
                let to_drain = count.min(pcp.batch << PCP_BATCH_SCALE_MAX);
                self.free_pcppages_bulk(this_cpu, zone, to_drain, &mut pcp, 0);
                count -= to_drain;
            }
            drop(pcp);
            if count <= 0 {
                break;
            }
        }
    }

    /// Linux `drain_pages(cpu)`: spill `cpu`'s pcp lists of every zone back into the buddy.
    /// Safe from any CPU: it takes that CPU's pcp locks (Linux drains remotely the same way).
    pub fn drain_pages(&self, this_cpu: usize, cpu: usize) {
        for zone in self.zones.iter().filter(|z| z.populated()) {
            self.drain_pages_zone(this_cpu, cpu, zone);
        }
    }

    /// Linux `drain_local_pages(NULL)`.
    pub fn drain_local_pages(&self, cpu: usize) {
        self.drain_pages(cpu, cpu);
    }

    /// Linux `drain_all_pages(NULL)` with `force_all_cpus`: every CPU's lists, from this CPU
    /// (the pcp locks make the remote drain safe, no IPI or work item needed). Linux's
    /// pcpu_drain_mutex (skip if a drain is running) is not needed: drains may run in parallel.
    pub fn drain_all_pages(&self, this_cpu: usize) {
        self.events(this_cpu).count(VmEvent::DrainAll, 1);
        for cpu in 0..self.nr_cpus() {
            self.drain_pages(this_cpu, cpu);
        }
    }

    /// Linux `decay_pcp_high` for every populated zone of `cpu` (call it about once a second
    /// from `cpu`, like Linux's vmstat work): lowers high by 1/8 towards high_min and frees the
    /// excess. Returns whether more decay work remains.
    pub fn decay_pcp_high(&self, cpu: usize) -> bool {
        let mut todo = false;
        for zone in self.zones.iter().filter(|z| z.populated()) {
            let mut pcp = zone.per_cpu_pageset[cpu].0.lock();
            let (high_min, batch) = (pcp.high_min, pcp.batch);
            if pcp.high > high_min {
                pcp.high = (pcp.count - (batch << PCP_BATCH_SCALE_MAX))
                    .max(pcp.high - (pcp.high >> 3))
                    .max(high_min);
                if pcp.high > high_min {
                    todo = true;
                }
            }
            let mut to_drain = pcp.count - pcp.high;
            while to_drain > 0 {
                let chunk = to_drain.min(batch);
                self.free_pcppages_bulk(cpu, zone, chunk, &mut pcp, 0);
                todo = true;
                to_drain -= chunk;
            }
        }
        todo
    }

    /// Linux `zone_set_pageset_high_and_batch` + `pageset_update` for one zone.
    pub(super) fn zone_set_pageset_high_and_batch(
        &self,
        zone: &Zone,
        nr_cpus: usize,
        high_fraction: u32,
    ) {
        let (batch, high_min, high_max) = if !zone.populated() || !self.pcp_enabled() {
            (BOOT_PAGESET_BATCH as u32, BOOT_PAGESET_HIGH as u32, BOOT_PAGESET_HIGH as u32)
        } else {
            let managed = zone.managed_pages();
            let batch = crate::zone::zone_batchsize(managed);
            let low = zone.low_wmark_pages();
            if high_fraction != 0 {
                let h = crate::zone::zone_highsize(low, managed, batch, nr_cpus, high_fraction);
                (batch, h, h)
            } else {
                (
                    batch,
                    crate::zone::zone_highsize(low, managed, batch, nr_cpus, 0),
                    crate::zone::zone_highsize(
                        low,
                        managed,
                        batch,
                        nr_cpus,
                        MIN_PERCPU_PAGELIST_HIGH_FRACTION,
                    ),
                )
            }
        };
        zone.pageset_batch.store(batch, Relaxed);
        zone.pageset_high_min.store(high_min, Relaxed);
        zone.pageset_high_max.store(high_max, Relaxed);
        for slot in zone.per_cpu_pageset.iter() {
            let mut pcp = slot.0.lock();
            pcp.batch = batch as i32;
            pcp.high_min = high_min as i32;
            pcp.high_max = high_max as i32;
        }
    }

    /// Sets PCPF_FREE_HIGH_BATCH on `cpu`'s pcps when its share of the data cache
    /// (`per_cpu_data_slice_size`, bytes) holds more than 3 * batch pages (Linux
    /// `zone_pcp_update_cacheinfo`). Off by default, as before cacheinfo is known.
    pub fn setup_pcp_cacheinfo(&self, cpu: usize, per_cpu_data_slice_size: u64) {
        for zone in self.zones.iter().filter(|z| z.populated()) {
            let mut pcp = zone.per_cpu_pageset[cpu].0.lock();
            if (per_cpu_data_slice_size >> mm_types::PAGE_SHIFT) > 3 * pcp.batch as u64 {
                pcp.flags |= PCPF_FREE_HIGH_BATCH;
            } else {
                pcp.flags &= !PCPF_FREE_HIGH_BATCH;
            }
        }
    }

    /// Snapshot of `cpu`'s pcp for `zone_idx` (count, high, high_min, high_max, batch, ...).
    /// Where `cpu`'s pcp of zone `zone_idx` lives.
    pub fn zone_pcp_slot_addr(&self, zone_idx: usize, cpu: usize) -> usize {
        self.zones[zone_idx].per_cpu_pageset.slot_addr(cpu)
    }

    pub fn pcp_snapshot(&self, cpu: usize, zone_idx: usize) -> PcpSnapshot {
        let pcp = self.zones[zone_idx].per_cpu_pageset[cpu].0.lock();
        PcpSnapshot {
            count: pcp.count,
            high: pcp.high,
            high_min: pcp.high_min,
            high_max: pcp.high_max,
            batch: pcp.batch,
            alloc_factor: pcp.alloc_factor,
            free_count: pcp.free_count,
            flags: pcp.flags,
        }
    }

    /// Calls `f(pfn)` for the blocks on `cpu`'s pcp list `pindex` of `zone_idx`, hottest
    /// (head) first. Takes the pcp lock.
    pub fn pcp_list_for_each(
        &self,
        cpu: usize,
        zone_idx: usize,
        pindex: usize,
        mut f: impl FnMut(u64),
    ) {
        let pcp = self.zones[zone_idx].per_cpu_pageset[cpu].0.lock();
        pcp.lists[pindex].for_each(&self.mem_map, |pfn| {
            f(pfn);
            true
        });
    }
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
