//! `PageAllocator::verify`: the consistency check of every free list and pcp list (host
//! tests, fuzzing and the in-kernel tests call it on a quiescent allocator).
#![forbid(unsafe_code)]
use super::{PageAllocator, VerifyError, VerifyReport};
use crate::buddy::find_buddy_pfn;
use crate::page::{PageFlags, NIL};
use crate::pcp::{pindex_to_order, NR_PCP_LISTS};
use crate::zone::NR_PAGE_ORDERS;
use core::sync::atomic::Ordering::Relaxed;
use mm_types::MAX_PAGE_ORDER;

impl PageAllocator<'_> {
    /// Walks every free list and pcp list (takes each lock in turn, so only exact when the
    /// allocator is quiescent) and checks: free-list entries are PG_buddy heads of their order
    /// in their zone with refcount 0, aligned, inside the zone, not mergeable with their buddy;
    /// list counts match `nr_free`, NR_FREE_PAGES and `pcp->count`; pcp entries are PG_pcp
    /// with the list's order. Calls `f(pfn, order, on_pcp)` for every free block.
    pub fn verify(&self, mut f: impl FnMut(u64, u32, bool)) -> Result<VerifyReport, VerifyError> {
        let mm = &self.node.mem_map;
        let mut rep = VerifyReport::default();
        let err = |pfn, what| Err(VerifyError { pfn, what });
        for zone in self.node.zones.iter() {
            let zf = zone.lock.lock();
            let mut total = 0u64;
            for order in 0..NR_PAGE_ORDERS as u32 {
                let mut n = 0u64;
                let mut prev = NIL;
                let mut bad_entry: Option<(u64, &'static str)> = None;
                zf.free_list[order as usize].for_each(mm, |pfn| {
                    let page = mm.page(pfn);
                    let why = if page.flags() != PageFlags::PG_BUDDY {
                        Some("free list entry flags != PG_buddy")
                    } else if page.order() != order {
                        Some("free list entry has the wrong order")
                    } else if page.zone_idx() as usize != zone.idx {
                        Some("free list entry in another zone")
                    } else if page.page_count() != 0 {
                        Some("free list entry with nonzero refcount")
                    } else if pfn & ((1 << order) - 1) != 0 {
                        Some("free block misaligned")
                    } else if !zone.zone_spans_pfn(pfn)
                        || !zone.zone_spans_pfn(pfn + (1 << order) - 1)
                    {
                        Some("free block outside its zone")
                    } else if page.prev.load(Relaxed) != prev {
                        Some("free list prev link broken")
                    } else if (order as usize) < MAX_PAGE_ORDER && {
                        let b = find_buddy_pfn(pfn, order);
                        mm.pfn_to_page(b).is_some_and(|bp| {
                            bp.is_buddy()
                                && bp.order() == order
                                && bp.zone_idx() as usize == zone.idx
                        })
                    } {
                        Some("free block and its buddy both free (missed merge)")
                    } else {
                        None
                    };
                    if let Some(w) = why {
                        bad_entry = Some((pfn, w));
                        return false;
                    }
                    prev = mm.idx(pfn);
                    n += 1;
                    f(pfn, order, false);
                    n < 1 << 40
                });
                if let Some((pfn, w)) = bad_entry {
                    return err(pfn, w);
                }
                if n != zone.nr_free(order as usize) as u64 {
                    return err(zone.zone_start_pfn, "free list length != nr_free");
                }
                rep.nr_free[zone.idx][order as usize] = n;
                total += n << order;
            }
            drop(zf);
            if total as i64 != zone.nr_free_pages() {
                return err(zone.zone_start_pfn, "sum of free lists != NR_FREE_PAGES");
            }
            rep.buddy_pages[zone.idx] = total;
            for slot in zone.per_cpu_pageset.iter() {
                let pcp = slot.0.lock();
                let mut count = 0i64;
                for pindex in 0..NR_PCP_LISTS {
                    let order = pindex_to_order(pindex);
                    let mut bad_entry = None;
                    pcp.lists[pindex].for_each(mm, |pfn| {
                        let page = mm.page(pfn);
                        if page.flags() != PageFlags::PG_PCP
                            || page.order() != order
                            || page.zone_idx() as usize != zone.idx
                            || page.page_count() != 0
                            || pfn & ((1 << order) - 1) != 0
                        {
                            bad_entry = Some(pfn);
                            return false;
                        }
                        count += 1 << order;
                        f(pfn, order, true);
                        true
                    });
                    if let Some(pfn) = bad_entry {
                        return err(pfn, "bad pcp list entry");
                    }
                }
                if count != pcp.count as i64 {
                    return err(zone.zone_start_pfn, "pcp list pages != pcp->count");
                }
                rep.pcp_pages[zone.idx] += count as u64;
            }
        }
        Ok(rep)
    }
}
