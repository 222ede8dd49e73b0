//! The buddy allocator proper (mm/page_alloc.c): `__find_buddy_pfn` / `page_is_buddy`,
//! `__add_to_free_list` / `__del_page_from_free_list`, `__free_one_page` (merge with
//! `buddy_pfn = pfn ^ (1 << order)`, head/tail placement via `buddy_merge_likely`), `expand`,
//! `page_del_and_expand`, `__rmqueue_smallest` and `__rmqueue`: operations on one zone's free
//! areas and the node's mem_map (`zone::Node`), all with zone->lock held (`zf`, the guarded
//! [`ZoneFreeLists`]).
//! Taking the lock (`zone_lock`, counted), `free_one_page`, `rmqueue_buddy` and the boot
//! release (`memblock_free_all`) are the page allocator's ([`crate::page_alloc`]).
//!
//! Migratetypes are not modelled: every free block is MIGRATE_UNMOVABLE, so there is one free
//! list per order, `__rmqueue` is `__rmqueue_smallest` (no fallback/claim/steal needed), and
//! `split_large_buddy` (which splits >pageblock frees per pageblock migratetype and merges
//! them straight back) is skipped. Guard pages, page reporting, page shuffling and compaction
//! capture are not modelled either.
#![forbid(unsafe_code)]
use crate::page::PageFlags;
use crate::zone::{Node, Zone, ZoneFreeLists};
use core::sync::atomic::Ordering::Relaxed;
use mm_types::MAX_PAGE_ORDER;

/// Free Page Internal flags (Linux fpi_t).
pub const FPI_NONE: u32 = 0;
/// Place the (possibly merged) block at the tail of its free list.
pub const FPI_TO_TAIL: u32 = 1 << 1;
/// free_pages_prepare() was already done for the block.
pub const FPI_PREPARED: u32 = 1 << 3;

/// Linux `__find_buddy_pfn`.
#[inline]
pub const fn find_buddy_pfn(pfn: u64, order: u32) -> u64 {
    pfn ^ (1 << order)
}

/// Linux `page_is_buddy` + `find_buddy_page_pfn`: is `buddy_pfn` the head of a free block
/// of exactly `order` in zone `zone_idx`? (Also false outside mem_map.)
#[inline]
fn page_is_buddy(node: &Node<'_>, buddy_pfn: u64, order: u32, zone_idx: u8) -> bool {
    match node.mem_map.pfn_to_page(buddy_pfn) {
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
    node: &Node<'_>,
    zone: &Zone,
    zf: &mut ZoneFreeLists,
    pfn: u64,
    order: u32,
    tail: bool,
) {
    let page = node.mem_map.page(pfn);
    page.set_order(order);
    page.insert_flags(PageFlags::PG_BUDDY);
    let list = &mut zf.free_list[order as usize];
    if tail {
        list.add_tail(&node.mem_map, pfn);
    } else {
        list.add(&node.mem_map, pfn);
    }
    nr_free_add(zone, order, 1);
}

/// Linux `__del_page_from_free_list` (no accounting).
#[inline]
fn __del_page_from_free_list(
    node: &Node<'_>,
    zone: &Zone,
    zf: &mut ZoneFreeLists,
    pfn: u64,
    order: u32,
) {
    let page = node.mem_map.page(pfn);
    zf.free_list[order as usize].del(&node.mem_map, pfn);
    page.remove_flags(PageFlags::PG_BUDDY);
    page.set_order(0);
    nr_free_add(zone, order, -1);
}

/// Linux `buddy_merge_likely`: if the buddy of the merged block's next-higher order is
/// free, the block will probably merge soon; put it at the list tail so it is not handed
/// out first.
#[inline]
fn buddy_merge_likely(node: &Node<'_>, pfn: u64, buddy_pfn: u64, order: u32, zone_idx: u8) -> bool {
    if order as usize >= MAX_PAGE_ORDER - 1 {
        return false;
    }
    let higher_page_pfn = buddy_pfn & pfn;
    page_is_buddy(node, find_buddy_pfn(higher_page_pfn, order + 1), order + 1, zone_idx)
}

/// Linux `__free_one_page`: free a (prepared, refcount 0) block of `order` at `pfn`,
/// merging with free buddies up to MAX_PAGE_ORDER. zone->lock held.
pub(crate) fn __free_one_page(
    node: &Node<'_>,
    zone: &Zone,
    zf: &mut ZoneFreeLists,
    mut pfn: u64,
    mut order: u32,
    fpi: u32,
) {
    let zone_idx = zone.idx as u8;
    debug_assert!(pfn & ((1 << order) - 1) == 0, "pfn {:#x} not aligned to order {}", pfn, order);
    debug_assert!(zone.zone_spans_pfn(pfn));
    debug_assert!(!node
        .mem_map
        .page(pfn)
        .flags()
        .intersects(PageFlags::PG_BUDDY | PageFlags::PG_PCP));
    account_freepages(zone, 1 << order);

    let mut buddy_pfn = 0;
    while (order as usize) < MAX_PAGE_ORDER {
        buddy_pfn = find_buddy_pfn(pfn, order);
        if !page_is_buddy(node, buddy_pfn, order, zone_idx) {
            break;
        }
        // Our buddy is free: merge with it and move up one order.
        __del_page_from_free_list(node, zone, zf, buddy_pfn, order);
        pfn &= buddy_pfn;
        order += 1;
    }
    let to_tail =
        fpi & FPI_TO_TAIL != 0 || buddy_merge_likely(node, pfn, buddy_pfn, order, zone_idx);
    __add_to_free_list(node, zone, zf, pfn, order, to_tail);
}

/// Linux `expand`: hand out the lowest `2^low` pages of the `2^high` block at `pfn`,
/// returning each upper half to the free list of its order. Returns the pages put back.
#[inline]
fn expand(
    node: &Node<'_>,
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
        __add_to_free_list(node, zone, zf, pfn + size, high, false);
        nr_added += size;
    }
    nr_added
}

/// Linux `page_del_and_expand`.
#[inline]
fn page_del_and_expand(
    node: &Node<'_>,
    zone: &Zone,
    zf: &mut ZoneFreeLists,
    pfn: u64,
    low: u32,
    high: u32,
) {
    let mut nr_pages = 1i64 << high;
    __del_page_from_free_list(node, zone, zf, pfn, high);
    nr_pages -= expand(node, zone, zf, pfn, low, high) as i64;
    account_freepages(zone, -nr_pages);
}

/// Linux `__rmqueue_smallest`: the first block of the smallest non-empty order >= `order`,
/// split down to `order`.
pub(crate) fn __rmqueue_smallest(
    node: &Node<'_>,
    zone: &Zone,
    zf: &mut ZoneFreeLists,
    order: u32,
) -> Option<u64> {
    for current_order in order..=MAX_PAGE_ORDER as u32 {
        if let Some(pfn) = zf.free_list[current_order as usize].first_pfn(&node.mem_map) {
            page_del_and_expand(node, zone, zf, pfn, order, current_order);
            return Some(pfn);
        }
    }
    None
}

/// Linux `__rmqueue` with a single migratetype.
#[inline]
pub(crate) fn __rmqueue(
    node: &Node<'_>,
    zone: &Zone,
    zf: &mut ZoneFreeLists,
    order: u32,
) -> Option<u64> {
    __rmqueue_smallest(node, zone, zf, order)
}
