//! The per-CPU page list paths that work on a zone and its pcps together (mm/page_alloc.c):
//! `nr_pcp_alloc` / `nr_pcp_high` (they read ZONE_BELOW_HIGH), `rmqueue_bulk`,
//! `__rmqueue_pcplist`, `rmqueue_pcplist`, `free_pcppages_bulk`, `free_frozen_page_commit`,
//! `drain_pages_zone`, `drain_pages`, `drain_all_pages`, `decay_pcp_high`,
//! `zone_set_pageset_high_and_batch`, `setup_per_cpu_pageset`, plus pcp inspection for tests.
//! The list structures and the formulas that need only the pcp live in [`crate::pcp`]; see its
//! documentation for the locking and the differences from Linux.
#![forbid(unsafe_code)]
use super::PageAllocator;
use crate::buddy::{__free_one_page, __rmqueue, FPI_NONE};
use crate::page::{ListHead, PageFlags};
use crate::pcp::{
    clamp, nr_pcp_free, order_to_pindex, pindex_to_order, PcpSlot, PcpSnapshot, PerCpuPages,
    BOOT_PAGESET_BATCH, BOOT_PAGESET_HIGH, MIN_PERCPU_PAGELIST_HIGH_FRACTION, NR_PCP_LISTS,
    PAGE_ALLOC_COSTLY_ORDER, PCPF_FREE_HIGH_BATCH, PCPF_PREV_FREE_HIGH_ORDER, PCP_BATCH_SCALE_MAX,
};
use crate::stat::VmEvent;
use crate::zone::{zone_batchsize, zone_highsize, Zone, WMARK_HIGH, ZONE_NORMAL};
use core::sync::atomic::Ordering::Relaxed;
use mm_types::gfp::ALLOC_HIGHATOMIC;
use mm_types::{NR_CPUS, PAGE_SHIFT};
use spin::mutex::SpinMutexGuard;

/// Linux `nr_pcp_alloc`: how many blocks a refill takes from the buddy.
fn nr_pcp_alloc(pcp: &mut PerCpuPages, zone: &Zone, order: u32) -> i32 {
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

/// Linux `nr_pcp_high` (ZONE_RECLAIM_ACTIVE never set here). Inline: it runs on every free to
/// a pcp list, and with free_frozen_page_commit inlined LLVM otherwise keeps it out of line.
#[inline(always)]
fn nr_pcp_high(pcp: &mut PerCpuPages, zone: &Zone, batch: i32, free_high: bool) -> i32 {
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
    /// Linux `setup_per_cpu_pageset`: every zone's pcps leave the boot pagesets for per-CPU
    /// memory. `alloc(size, align)` is `__alloc_percpu` (returns a percpu pointer),
    /// `offsets[..nr_cpus]` are `__per_cpu_offset`. Unlike Linux, the boot pagesets may already
    /// hold pages and tuned high/batch values: they move along unchanged. Call before other
    /// CPUs use the allocator (`&mut self` makes sure nobody else holds it).
    ///
    /// The caller vouches for the memory (the pcps are then reached through it without
    /// checks): for every cpu < `nr_cpus` (clamped to 1..=NR_CPUS), the address returned by
    /// `alloc` plus `offsets[cpu]` must be valid for reads and writes of `size` bytes with the
    /// requested alignment, used by nothing else, and stay allocated for the allocator's
    /// lifetime; later calls must pass CPU numbers below `nr_cpus`.
    pub fn setup_per_cpu_pageset(
        &mut self,
        nr_cpus: usize,
        offsets: &[usize; NR_CPUS],
        mut alloc: impl FnMut(usize, usize) -> Option<usize>,
    ) -> Result<(), &'static str> {
        let nr_cpus = nr_cpus.clamp(1, NR_CPUS);
        for zone in self.node.zones.iter_mut() {
            let ptr = alloc(core::mem::size_of::<PcpSlot>(), core::mem::align_of::<PcpSlot>())
                .ok_or("no percpu memory for the pagesets")?;
            zone.per_cpu_pageset.move_to(ptr, offsets, nr_cpus)?;
        }
        Ok(())
    }

    /// Linux `rmqueue_bulk`: takes `count` blocks of `order` from the buddy under one
    /// zone->lock acquisition and appends them to `list` (physical order kept). Returns the
    /// number of blocks taken. Out of line: the pcp fast path inlines its caller.
    #[inline(never)]
    fn rmqueue_bulk(
        &self,
        cpu: usize,
        zone: &Zone,
        order: u32,
        count: i32,
        list: &mut ListHead,
    ) -> i32 {
        let mm = &self.node.mem_map;
        let mut zf = self.zone_lock(cpu, zone);
        let mut i = 0;
        while i < count {
            let Some(pfn) = __rmqueue(&self.node, zone, &mut zf, order) else { break };
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
    /// empty. Caller holds the pcp lock. Inlined into rmqueue_pcplist, its only caller (Linux:
    /// `static inline`); the refill stays out of line.
    #[inline(always)]
    pub(super) fn __rmqueue_pcplist(
        &self,
        cpu: usize,
        zone: &Zone,
        order: u32,
        alloc_flags: u32,
        pcp: &mut PerCpuPages,
        pindex: usize,
    ) -> Option<u64> {
        let mm = &self.node.mem_map;
        if pcp.lists[pindex].is_empty() {
            let batch = nr_pcp_alloc(pcp, zone, order);
            // Don't refill the list for a higher order atomic allocation under memory pressure.
            if alloc_flags & ALLOC_HIGHATOMIC != 0 {
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
    // Inline: on the path of every vmalloc/vfree (its call and return were two TB
    // lookups per loop under TCG; README "Fifth round").
    #[inline(always)]
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
    fn free_pcppages_bulk(
        &self,
        cpu: usize,
        zone: &Zone,
        count: i32,
        pcp: &mut PerCpuPages,
        pindex: usize,
    ) {
        let mm = &self.node.mem_map;
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
                __free_one_page(&self.node, zone, &mut zf, pfn, order, FPI_NONE);
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
    // Inline: on the path of every vmalloc/vfree (its call and return were two TB
    // lookups per loop under TCG; README "Fifth round").
    #[inline(always)]
    pub(super) fn free_frozen_page_commit(
        &self,
        cpu: usize,
        zone: &Zone,
        mut pcp: SpinMutexGuard<'_, PerCpuPages>,
        pfn: u64,
        order: u32,
    ) {
        let mm = &self.node.mem_map;
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

    /// Linux `drain_pages_zone`: empty `cpu`'s pcp of `zone` (in chunks of batch << 5 pages
    /// under the pcp lock). `this_cpu` is the CPU doing the work (for the counters).
    fn drain_pages_zone(&self, this_cpu: usize, cpu: usize, zone: &Zone) {
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
        for zone in self.node.zones.iter().filter(|z| z.populated()) {
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
        for zone in self.node.zones.iter().filter(|z| z.populated()) {
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
            let batch = zone_batchsize(managed);
            let low = zone.low_wmark_pages();
            if high_fraction != 0 {
                let h = zone_highsize(low, managed, batch, nr_cpus, high_fraction);
                (batch, h, h)
            } else {
                (
                    batch,
                    zone_highsize(low, managed, batch, nr_cpus, 0),
                    zone_highsize(low, managed, batch, nr_cpus, MIN_PERCPU_PAGELIST_HIGH_FRACTION),
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
        for zone in self.node.zones.iter().filter(|z| z.populated()) {
            let mut pcp = zone.per_cpu_pageset[cpu].0.lock();
            if (per_cpu_data_slice_size >> PAGE_SHIFT) > 3 * pcp.batch as u64 {
                pcp.flags |= PCPF_FREE_HIGH_BATCH;
            } else {
                pcp.flags &= !PCPF_FREE_HIGH_BATCH;
            }
        }
    }

    /// Runs `f` with `cpu`'s pcp of zone `zone_idx` locked (tests: an interrupt taken while a
    /// pcp lock is held must fall back to the zone, not spin).
    pub fn with_pcp_locked<R>(&self, cpu: usize, zone_idx: usize, f: impl FnOnce() -> R) -> R {
        let _pcp = self.node.zones[zone_idx].per_cpu_pageset[cpu].0.lock();
        f()
    }

    /// Runs `f` with zone->lock of `zone_idx` held as the allocator takes it (interrupts saved
    /// and masked through the irq hooks), counted on `cpu` (tests).
    pub fn with_zone_locked<R>(&self, cpu: usize, zone_idx: usize, f: impl FnOnce() -> R) -> R {
        let _z = self.zone_lock(cpu, &self.node.zones[zone_idx]);
        f()
    }

    /// Where `cpu`'s pcp of zone `zone_idx` lives.
    pub fn zone_pcp_slot_addr(&self, zone_idx: usize, cpu: usize) -> usize {
        self.node.zones[zone_idx].per_cpu_pageset.slot_addr(cpu)
    }

    /// Snapshot of `cpu`'s pcp for `zone_idx` (count, high, high_min, high_max, batch, ...).
    pub fn pcp_snapshot(&self, cpu: usize, zone_idx: usize) -> PcpSnapshot {
        let pcp = self.node.zones[zone_idx].per_cpu_pageset[cpu].0.lock();
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
        let pcp = self.node.zones[zone_idx].per_cpu_pageset[cpu].0.lock();
        pcp.lists[pindex].for_each(&self.node.mem_map, |pfn| {
            f(pfn);
            true
        });
    }
}
