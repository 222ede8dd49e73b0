//! The allocation path (mm/page_alloc.c): `alloc_pages` -> `get_page_from_freelist` (zonelist
//! walk, watermarks, ZONE_BELOW_HIGH) -> `rmqueue` (pcp for pcp orders, else `rmqueue_buddy`)
//! -> `prep_new_page`, the `__alloc_pages_slowpath` retries and `warn_alloc`, and
//! `alloc_pages_bulk`.
#![forbid(unsafe_code)]
use super::PageAllocator;
use crate::buddy::__rmqueue;
use crate::page::PageFlags;
use crate::pcp::{order_to_pindex, pcp_allowed_order, PAGE_ALLOC_COSTLY_ORDER};
use crate::stat::VmEvent;
use crate::zone::{Zone, WMARK_HIGH};
use core::sync::atomic::Ordering::Relaxed;
use mm_types::gfp::{
    alloc_flags_nonblocking, alloc_flags_slowpath, gfp_pfmemalloc_flags, gfp_zone, AllocFlags,
    GfpFlags, ALLOC_HIGHATOMIC, ALLOC_KSWAPD, ALLOC_MIN_RESERVE, ALLOC_NO_WATERMARKS,
    ALLOC_WMARK_LOW, ALLOC_WMARK_MASK,
};
use mm_types::MAX_PAGE_ORDER;

impl<'m> PageAllocator<'m> {
    /// Linux `rmqueue_buddy`: one block from the buddy under zone->lock (orders the pcp does
    /// not cache, or when the pcp lock is busy).
    fn rmqueue_buddy(&self, cpu: usize, zone: &Zone, order: u32) -> Option<u64> {
        let mut zf = self.zone_lock(cpu, zone);
        let pfn = __rmqueue(&self.node, zone, &mut zf, order);
        drop(zf);
        if pfn.is_some() {
            self.events(cpu).count(VmEvent::pgalloc_zone(zone.idx), 1 << order);
        }
        pfn
    }

    /// Linux `prep_new_page` + `set_page_refcounted`: the head page becomes an allocated block
    /// of `order` with refcount 1.
    #[inline]
    fn prep_new_page(&self, cpu: usize, pfn: u64, order: u32, gfp: GfpFlags) {
        let page = self.node.mem_map.page(pfn);
        debug_assert!(
            page.page_count() == 0
                && !page
                    .flags()
                    .intersects(PageFlags::PG_RESERVED | PageFlags::PG_BUDDY | PageFlags::PG_PCP),
            "allocating a bad page {:#x}: {:?}",
            pfn,
            page
        );
        page.set_order(order);
        page.set_private(0);
        if order != 0 && gfp.contains(GfpFlags::__GFP_COMP) {
            page.insert_flags(PageFlags::PG_HEAD);
        }
        if gfp.contains(GfpFlags::__GFP_ZERO) {
            (self.hooks.zero)(pfn, 1 << order);
        }
        page.set_page_count(1);
        self.events(cpu).count(VmEvent::pgalloc_order(order), 1);
    }

    /// Linux `rmqueue`: pcp for pcp orders, else (or if that failed) the buddy.
    #[inline]
    fn rmqueue(&self, cpu: usize, zone: &Zone, order: u32, alloc_flags: AllocFlags) -> Option<u64> {
        if pcp_allowed_order(order) {
            if let Some(pfn) = self.rmqueue_pcplist(cpu, zone, order, alloc_flags) {
                return Some(pfn);
            }
        }
        self.rmqueue_buddy(cpu, zone, order)
    }

    /// Linux `get_page_from_freelist`: the first zone of the zonelist that passes its
    /// watermark (noting ZONE_BELOW_HIGH on the way) and has a block.
    // Inline: on the path of every vmalloc/vfree (its call and return were two TB
    // lookups per loop under TCG; README "Fifth round").
    #[inline(always)]
    fn get_page_from_freelist(
        &self,
        cpu: usize,
        gfp: GfpFlags,
        order: u32,
        alloc_flags: AllocFlags,
        highest_zoneidx: usize,
    ) -> Option<u64> {
        for zone in self.zonelist(highest_zoneidx) {
            let mut ok = false;
            if !zone.is_below_high() {
                if zone.zone_watermark_fast(
                    order,
                    zone.wmark_pages(WMARK_HIGH),
                    highest_zoneidx,
                    alloc_flags,
                ) {
                    ok = true;
                } else {
                    zone.below_high.store(true, Relaxed);
                }
            }
            if !ok {
                let mark = zone.wmark_pages((alloc_flags & ALLOC_WMARK_MASK) as usize);
                if !zone.zone_watermark_fast(order, mark, highest_zoneidx, alloc_flags)
                    && alloc_flags & ALLOC_NO_WATERMARKS == 0
                {
                    continue;
                }
            }
            if let Some(pfn) = self.rmqueue(cpu, zone, order, alloc_flags) {
                self.prep_new_page(cpu, pfn, order, gfp);
                return Some(pfn);
            }
        }
        None
    }

    /// Linux `warn_alloc` ("page allocation failure").
    fn warn_alloc(&self, cpu: usize, gfp: GfpFlags, order: u32) {
        self.events(cpu).count(VmEvent::AllocFail, 1);
        if !gfp.contains(GfpFlags::__GFP_NOWARN) {
            (self.hooks.warn)(format_args!(
                "cpu{}: page allocation failure: order:{}, mode:{:#x}({:?})",
                cpu,
                order,
                gfp.bits(),
                gfp
            ));
        }
    }

    /// Linux `__alloc_pages_slowpath`, reduced to what exists here (see gfp.rs): min
    /// watermark with the gfp's reserve rights, `__GFP_MEMALLOC` without watermarks, then for
    /// `__GFP_DIRECT_RECLAIM` one `drain_all_pages` + retry, `__GFP_NOFAIL` one last attempt
    /// with ALLOC_MIN_RESERVE, then the failure warning.
    #[cold]
    fn __alloc_pages_slowpath(
        &self,
        cpu: usize,
        gfp: GfpFlags,
        order: u32,
        highest_zoneidx: usize,
    ) -> Option<u64> {
        let costly_order = order > PAGE_ALLOC_COSTLY_ORDER;
        let nofail = gfp.contains(GfpFlags::__GFP_NOFAIL);
        let costly_noretry = costly_order
            && gfp.contains(GfpFlags::__GFP_NORETRY)
            && !gfp.intersects(GfpFlags::__GFP_THISNODE | GfpFlags::__GFP_NOFAIL);
        let can_direct_reclaim = !costly_noretry && gfp.contains(GfpFlags::__GFP_DIRECT_RECLAIM);
        let mut alloc_flags = alloc_flags_slowpath(gfp, order);

        if let Some(pfn) =
            self.get_page_from_freelist(cpu, gfp, order, alloc_flags, highest_zoneidx)
        {
            return Some(pfn);
        }
        let reserve_flags = gfp_pfmemalloc_flags(gfp);
        if reserve_flags != 0 {
            alloc_flags = reserve_flags | (alloc_flags & ALLOC_KSWAPD);
            if let Some(pfn) =
                self.get_page_from_freelist(cpu, gfp, order, alloc_flags, highest_zoneidx)
            {
                return Some(pfn);
            }
        }
        if can_direct_reclaim {
            // __alloc_pages_direct_reclaim: pages pinned on the pcp lists are all we can
            // reclaim; drain them and retry.
            self.drain_all_pages(cpu);
            if let Some(pfn) =
                self.get_page_from_freelist(cpu, gfp, order, alloc_flags, highest_zoneidx)
            {
                return Some(pfn);
            }
        }
        if nofail && can_direct_reclaim {
            if let Some(pfn) =
                self.get_page_from_freelist(cpu, gfp, order, ALLOC_MIN_RESERVE, highest_zoneidx)
            {
                return Some(pfn);
            }
        }
        self.warn_alloc(cpu, gfp, order);
        None
    }

    /// Linux `alloc_pages(gfp, order)` on CPU `cpu`: a block of 2^order pages, returned as the
    /// PFN of its head page (refcount 1, order recorded), or None.
    #[inline]
    pub fn alloc_pages(&self, cpu: usize, gfp: GfpFlags, order: u32) -> Option<u64> {
        if order as usize > MAX_PAGE_ORDER {
            self.warn_alloc(cpu, gfp, order);
            return None;
        }
        let highest_zoneidx = gfp_zone(gfp);
        let mut alloc_flags = ALLOC_WMARK_LOW;
        if gfp.contains(GfpFlags::__GFP_KSWAPD_RECLAIM) {
            alloc_flags |= ALLOC_KSWAPD;
        }
        alloc_flags |= alloc_flags_nonblocking(gfp, order) & ALLOC_HIGHATOMIC;
        if let Some(pfn) =
            self.get_page_from_freelist(cpu, gfp, order, alloc_flags, highest_zoneidx)
        {
            return Some(pfn);
        }
        self.__alloc_pages_slowpath(cpu, gfp, order, highest_zoneidx)
    }

    /// Linux `alloc_page`.
    #[inline]
    pub fn alloc_page(&self, cpu: usize, gfp: GfpFlags) -> Option<u64> {
        self.alloc_pages(cpu, gfp, 0)
    }

    /// Linux `alloc_pages_bulk`: fills the empty (`None`) slots among the first `nr_pages` of
    /// `page_array` with order-0 pages taken from this CPU's order-0 pcp list under one pcp
    /// lock hold (refilling it from the buddy as needed). Returns the number of filled slots
    /// (including ones filled on entry); slots are filled from the beginning. Falls back to
    /// one `alloc_pages` when a single page is wanted, no zone passes the low watermark plus
    /// the request, the pcp lock is busy, or the pcp could not provide even one page.
    pub fn alloc_pages_bulk(
        &self,
        cpu: usize,
        gfp: GfpFlags,
        nr_pages: usize,
        page_array: &mut [Option<u64>],
    ) -> usize {
        let nr_pages = nr_pages.min(page_array.len());
        let mut nr_populated = 0;
        while nr_populated < nr_pages && page_array[nr_populated].is_some() {
            nr_populated += 1;
        }
        if nr_pages == nr_populated {
            return nr_populated;
        }
        'fast: {
            // Use the single page allocator for one page.
            if nr_pages - nr_populated == 1 {
                break 'fast;
            }
            let highest_zoneidx = gfp_zone(gfp);
            let alloc_flags = ALLOC_WMARK_LOW;
            let Some(preferred) = self.zonelist(highest_zoneidx).next() else { break 'fast };
            // Find an allowed zone that meets the low watermark plus the request.
            let want = (nr_pages - nr_populated) as u64;
            let Some(zone) = self.zonelist(highest_zoneidx).find(|z| {
                z.zone_watermark_fast(
                    0,
                    z.wmark_pages((alloc_flags & ALLOC_WMARK_MASK) as usize) + want,
                    preferred.idx,
                    alloc_flags,
                )
            }) else {
                break 'fast;
            };
            let Some(mut pcp) = zone.per_cpu_pageset[cpu].0.try_lock() else {
                self.events(cpu).count(VmEvent::PcpTrylockFail, 1);
                break 'fast;
            };
            let pindex = order_to_pindex(0);
            let mut nr_account = 0u64;
            while nr_populated < nr_pages {
                if page_array[nr_populated].is_some() {
                    nr_populated += 1;
                    continue;
                }
                match self.__rmqueue_pcplist(cpu, zone, 0, alloc_flags, &mut pcp, pindex) {
                    Some(pfn) => {
                        nr_account += 1;
                        self.prep_new_page(cpu, pfn, 0, gfp);
                        page_array[nr_populated] = Some(pfn);
                        nr_populated += 1;
                    }
                    None => {
                        if nr_account == 0 {
                            drop(pcp);
                            break 'fast;
                        }
                        break;
                    }
                }
            }
            drop(pcp);
            self.events(cpu).count(VmEvent::pgalloc_zone(zone.idx), nr_account);
            return nr_populated;
        }
        // failed:
        if let Some(pfn) = self.alloc_pages(cpu, gfp, 0) {
            page_array[nr_populated] = Some(pfn);
            nr_populated += 1;
        }
        nr_populated
    }
}
