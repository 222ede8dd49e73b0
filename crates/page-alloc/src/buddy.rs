//! The buddy allocator proper (mm/page_alloc.c): `__find_buddy_pfn` / `page_is_buddy`,
//! `__add_to_free_list` / `__del_page_from_free_list`, `__free_one_page` (merge with
//! `buddy_pfn = pfn ^ (1 << order)`, head/tail placement via `buddy_merge_likely`), `expand`,
//! `page_del_and_expand`, `__rmqueue_smallest`, `free_one_page`, `rmqueue_buddy`, and the boot
//! release of mm/memblock.c + mm/mm_init.c: `memblock_free_all` -> `__free_pages_memory` ->
//! `__free_pages_core` (largest naturally aligned blocks, placed at the list tails).
//!
//! Migratetypes are not modelled: every free block is MIGRATE_UNMOVABLE, so there is one free
//! list per order, `__rmqueue` is `__rmqueue_smallest` (no fallback/claim/steal needed), and
//! `split_large_buddy` (which splits >pageblock frees per pageblock migratetype and merges
//! them straight back) is skipped. Guard pages, page reporting, page shuffling and compaction
//! capture are not modelled either. All functions here run with zone->lock held (`zf`).
use crate::memblock::Memblock;
use crate::page::PageFlags;
use crate::page_alloc::{PageAllocator, FPI_TO_TAIL};
use crate::stat::VmEvent;
use crate::zone::{Zone, ZoneFreeLists};
use core::sync::atomic::Ordering::Relaxed;
use mm_types::{MAX_PAGE_ORDER, PAGE_SHIFT};
use spin::mutex::SpinMutexGuard;

/// Linux `__find_buddy_pfn`.
#[inline]
pub const fn find_buddy_pfn(pfn: u64, order: u32) -> u64 {
    pfn ^ (1 << order)
}

impl<'m> PageAllocator<'m> {
    /// `spin_lock_irqsave(&zone->lock)`, counted.
    #[inline]
    pub(super) fn zone_lock<'a>(
        &self,
        cpu: usize,
        zone: &'a Zone,
    ) -> SpinMutexGuard<'a, ZoneFreeLists> {
        self.events(cpu).count(VmEvent::ZoneLock, 1);
        zone.lock.lock()
    }

    /// Linux `page_is_buddy` + `find_buddy_page_pfn`: is `buddy_pfn` the head of a free block
    /// of exactly `order` in zone `zone_idx`? (Also false outside mem_map.)
    #[inline]
    fn page_is_buddy(&self, buddy_pfn: u64, order: u32, zone_idx: u8) -> bool {
        match self.mem_map.pfn_to_page(buddy_pfn) {
            Some(b) => b.is_buddy() && b.order() == order && b.zone_idx() == zone_idx,
            None => false,
        }
    }

    /// Linux `account_freepages` (zone->lock held, so a plain add).
    #[inline]
    fn account_freepages(zone: &Zone, nr_pages: i64) {
        zone.nr_free_pages.store(zone.nr_free_pages.load(Relaxed) + nr_pages, Relaxed);
    }

    #[inline]
    fn nr_free_add(zone: &Zone, order: u32, d: i32) {
        let c = &zone.nr_free[order as usize];
        c.store((c.load(Relaxed) as i32 + d) as u32, Relaxed);
    }

    /// Linux `__add_to_free_list` + `set_buddy_order`.
    #[inline]
    fn __add_to_free_list(
        &self,
        zone: &Zone,
        zf: &mut ZoneFreeLists,
        pfn: u64,
        order: u32,
        tail: bool,
    ) {
        let page = self.mem_map.page(pfn);
        page.set_order(order);
        page.insert_flags(PageFlags::PG_BUDDY);
        let list = &mut zf.free_list[order as usize];
        if tail {
            list.add_tail(&self.mem_map, pfn);
        } else {
            list.add(&self.mem_map, pfn);
        }
        Self::nr_free_add(zone, order, 1);
    }

    /// Linux `__del_page_from_free_list` (no accounting).
    #[inline]
    fn __del_page_from_free_list(&self, zone: &Zone, zf: &mut ZoneFreeLists, pfn: u64, order: u32) {
        let page = self.mem_map.page(pfn);
        zf.free_list[order as usize].del(&self.mem_map, pfn);
        page.remove_flags(PageFlags::PG_BUDDY);
        page.set_order(0);
        Self::nr_free_add(zone, order, -1);
    }

    /// Linux `buddy_merge_likely`: if the buddy of the merged block's next-higher order is
    /// free, the block will probably merge soon; put it at the list tail so it is not handed
    /// out first.
    #[inline]
    fn buddy_merge_likely(&self, pfn: u64, buddy_pfn: u64, order: u32, zone_idx: u8) -> bool {
        if order as usize >= MAX_PAGE_ORDER - 1 {
            return false;
        }
        let higher_page_pfn = buddy_pfn & pfn;
        self.page_is_buddy(find_buddy_pfn(higher_page_pfn, order + 1), order + 1, zone_idx)
    }

    /// Linux `__free_one_page`: free a (prepared, refcount 0) block of `order` at `pfn`,
    /// merging with free buddies up to MAX_PAGE_ORDER. zone->lock held.
    pub(super) fn __free_one_page(
        &self,
        zone: &Zone,
        zf: &mut ZoneFreeLists,
        mut pfn: u64,
        mut order: u32,
        fpi: u32,
    ) {
        let zone_idx = zone.idx as u8;
        debug_assert!(
            pfn & ((1 << order) - 1) == 0,
            "pfn {:#x} not aligned to order {}",
            pfn,
            order
        );
        debug_assert!(zone.zone_spans_pfn(pfn));
        debug_assert!(!self
            .mem_map
            .page(pfn)
            .flags()
            .intersects(PageFlags::PG_BUDDY | PageFlags::PG_PCP));
        Self::account_freepages(zone, 1 << order);

        let mut buddy_pfn = 0;
        while (order as usize) < MAX_PAGE_ORDER {
            buddy_pfn = find_buddy_pfn(pfn, order);
            if !self.page_is_buddy(buddy_pfn, order, zone_idx) {
                break;
            }
            // Our buddy is free: merge with it and move up one order.
            self.__del_page_from_free_list(zone, zf, buddy_pfn, order);
            pfn &= buddy_pfn;
            order += 1;
        }
        let to_tail =
            fpi & FPI_TO_TAIL != 0 || self.buddy_merge_likely(pfn, buddy_pfn, order, zone_idx);
        self.__add_to_free_list(zone, zf, pfn, order, to_tail);
    }

    /// Linux `expand`: hand out the lowest `2^low` pages of the `2^high` block at `pfn`,
    /// returning each upper half to the free list of its order. Returns the pages put back.
    #[inline]
    fn expand(
        &self,
        zone: &Zone,
        zf: &mut ZoneFreeLists,
        pfn: u64,
        low: u32,
        mut high: u32,
    ) -> u64 {
        let mut size = 1u64 << high;
        let mut nr_added = 0;
        while high > low {
            high -= 1;
            size >>= 1;
            self.__add_to_free_list(zone, zf, pfn + size, high, false);
            nr_added += size;
        }
        nr_added
    }

    /// Linux `page_del_and_expand`.
    #[inline]
    fn page_del_and_expand(
        &self,
        zone: &Zone,
        zf: &mut ZoneFreeLists,
        pfn: u64,
        low: u32,
        high: u32,
    ) {
        let mut nr_pages = 1i64 << high;
        self.__del_page_from_free_list(zone, zf, pfn, high);
        nr_pages -= self.expand(zone, zf, pfn, low, high) as i64;
        Self::account_freepages(zone, -nr_pages);
    }

    /// Linux `__rmqueue_smallest`: the first block of the smallest non-empty order >= `order`,
    /// split down to `order`.
    pub(super) fn __rmqueue_smallest(
        &self,
        zone: &Zone,
        zf: &mut ZoneFreeLists,
        order: u32,
    ) -> Option<u64> {
        for current_order in order..=MAX_PAGE_ORDER as u32 {
            if let Some(pfn) = zf.free_list[current_order as usize].first_pfn(&self.mem_map) {
                self.page_del_and_expand(zone, zf, pfn, order, current_order);
                return Some(pfn);
            }
        }
        None
    }

    /// Linux `__rmqueue` with a single migratetype.
    #[inline]
    pub(super) fn __rmqueue(&self, zone: &Zone, zf: &mut ZoneFreeLists, order: u32) -> Option<u64> {
        self.__rmqueue_smallest(zone, zf, order)
    }

    /// Linux `free_one_page`: one block straight to the buddy under zone->lock.
    pub(super) fn free_one_page(&self, cpu: usize, zone: &Zone, pfn: u64, order: u32, fpi: u32) {
        let mut zf = self.zone_lock(cpu, zone);
        self.__free_one_page(zone, &mut zf, pfn, order, fpi);
        drop(zf);
        self.events(cpu).count(VmEvent::Pgfree, 1 << order);
    }

    /// Linux `rmqueue_buddy`: one block from the buddy under zone->lock (orders the pcp does
    /// not cache, or when the pcp lock is busy).
    pub(super) fn rmqueue_buddy(&self, cpu: usize, zone: &Zone, order: u32) -> Option<u64> {
        let mut zf = self.zone_lock(cpu, zone);
        let pfn = self.__rmqueue(zone, &mut zf, order);
        drop(zf);
        if pfn.is_some() {
            self.events(cpu).count(VmEvent::pgalloc_zone(zone.idx), 1 << order);
        }
        pfn
    }

    /// Linux `__free_pages_core` (MEMINIT_EARLY): hand a reserved block to the buddy:
    /// clear PG_reserved, refcount 0, managed_pages += 2^order, free to the list tail.
    fn __free_pages_core(&self, zone: &Zone, pfn: u64, order: u32) {
        let nr = 1u64 << order;
        for p in pfn..pfn + nr {
            let page = self.mem_map.page(p);
            page.remove_flags(PageFlags::PG_RESERVED);
            page.set_page_count(0);
        }
        zone.managed_pages.fetch_add(nr, Relaxed);
        // Bypass the pcp and place fresh pages at the tail (__free_pages_ok(FPI_TO_TAIL)).
        self.free_one_page(0, zone, pfn, order, FPI_TO_TAIL);
    }

    /// Linux `__free_pages_memory`: `[start, end)` (PFNs, inside one zone) in the largest
    /// naturally aligned blocks, at most MAX_PAGE_ORDER.
    fn __free_pages_memory(&self, zone: &Zone, mut start: u64, end: u64) {
        while start < end {
            let mut order = if start != 0 {
                (start.trailing_zeros() as usize).min(MAX_PAGE_ORDER)
            } else {
                MAX_PAGE_ORDER
            } as u32;
            while start + (1 << order) > end {
                order -= 1;
            }
            self.__free_pages_core(zone, start, order);
            start += 1 << order;
        }
    }

    /// Linux `memblock_free_all`: release every free memblock range (rounded to whole pages)
    /// to the buddy, split at zone boundaries. Returns the pages released.
    pub(super) fn memblock_free_all(&self, memblock: &Memblock) -> u64 {
        let mut total = 0;
        for (s, e) in memblock.free_ranges() {
            let (spfn, epfn) = (s >> PAGE_SHIFT, e >> PAGE_SHIFT);
            for zone in self.zones.iter().filter(|z| z.spanned_pages != 0) {
                let (zs, ze) = (spfn.max(zone.zone_start_pfn), epfn.min(zone.zone_end_pfn()));
                if zs < ze {
                    self.__free_pages_memory(zone, zs, ze);
                    total += ze - zs;
                }
            }
        }
        total
    }
}
