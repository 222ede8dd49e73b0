//! `struct page` and the mem_map array.
//!
//! Mirrors Linux's `struct page` (include/linux/mm_types.h), the page flags of
//! include/linux/page-flags.h (PG_reserved, PG_head, the PageBuddy page type) and the `list_head`
//! links (`page->buddy_list` / `page->pcp_list`, which share storage in Linux as they do here).
//! mem_map covers every PFN from the lowest to the highest PFN of RAM, holes included (like
//! FLATMEM's `mem_map`); pages in holes and reserved memory keep `PG_reserved` forever.
//!
//! Every field is an atomic accessed with `Relaxed` ordering: on arm64 that compiles to plain
//! loads and stores, except the reference count which uses real read-modify-write atomics as in
//! Linux (`put_page_testzero`). Which lock protects a field follows Linux: the free-list links
//! and `PG_buddy` are owned by `zone->lock`, the pcp links and `PG_pcp` by the pcp lock of the
//! list holding the page, everything else by whoever owns the allocated page. The locks provide
//! the acquire/release ordering.
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

bitflags::bitflags! {
    /// Page flags (Linux: `page->flags` bits and the PageBuddy page type).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PageFlags: u32 {
        /// Not managed by the page allocator: holes, memblock reservations, mem_map itself.
        const PG_RESERVED = 1 << 0;
        /// Head page of a free block on a zone `free_area[order]` list (Linux: PageBuddy).
        const PG_BUDDY = 1 << 1;
        /// Head page of a free block on a per-CPU page list (no Linux equivalent: Linux knows
        /// this only from the list; we keep the bit so a double free is caught cheaply).
        const PG_PCP = 1 << 2;
        /// Head of a compound allocation (`__GFP_COMP`).
        const PG_HEAD = 1 << 3;
    }
}

/// "No page" in the u32 list links.
pub const NIL: u32 = u32::MAX;

/// Value of `Page::zone` for PFNs outside every zone (holes below/above all zones).
pub const NO_ZONE: u8 = u8::MAX;

/// The struct page: 32 bytes (Linux: 64).
#[repr(C)]
pub struct Page {
    flags: AtomicU32,
    /// Linux `_refcount`: 1 for reserved pages and the head of an allocation, 0 when free.
    refcount: AtomicI32,
    /// List links as mem_map indices (`pfn - mem_map base pfn`), `NIL` terminated.
    pub(super) next: AtomicU32,
    pub(super) prev: AtomicU32,
    /// Linux keeps a free block's order in `page->private`. Here: the buddy order while
    /// `PG_BUDDY`, the block order while `PG_PCP`, the allocation order of an allocated head
    /// (0 after `split_page`), so a free with the wrong order is caught.
    order: AtomicU8,
    /// Zone index (Linux encodes it in the upper bits of `page->flags`).
    zone: AtomicU8,
    /// Free for the owner of an allocated page (Linux: `page->private`, e.g. the percpu chunk);
    /// the allocator never reads it and clears it when the page is allocated.
    private: AtomicU64,
}

const _: () = assert!(core::mem::size_of::<Page>() <= 32);

impl Page {
    /// A reserved page (Linux `__init_single_page`: refcount 1, PG_reserved).
    pub const fn new() -> Self {
        Page {
            flags: AtomicU32::new(PageFlags::PG_RESERVED.bits()),
            refcount: AtomicI32::new(1),
            next: AtomicU32::new(NIL),
            prev: AtomicU32::new(NIL),
            order: AtomicU8::new(0),
            zone: AtomicU8::new(NO_ZONE),
            private: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn flags(&self) -> PageFlags {
        PageFlags::from_bits_retain(self.flags.load(Relaxed))
    }
    #[inline]
    pub(super) fn set_flags(&self, f: PageFlags) {
        self.flags.store(f.bits(), Relaxed)
    }
    /// Non-atomic read-modify-write (Linux `__SetPageX`): callers own the page or hold its lock.
    #[inline]
    pub(super) fn insert_flags(&self, f: PageFlags) {
        self.flags.store(self.flags.load(Relaxed) | f.bits(), Relaxed)
    }
    #[inline]
    pub(super) fn remove_flags(&self, f: PageFlags) {
        self.flags.store(self.flags.load(Relaxed) & !f.bits(), Relaxed)
    }
    #[inline]
    pub fn is_reserved(&self) -> bool {
        self.flags().contains(PageFlags::PG_RESERVED)
    }
    /// Linux `PageBuddy`.
    #[inline]
    pub fn is_buddy(&self) -> bool {
        self.flags().contains(PageFlags::PG_BUDDY)
    }
    #[inline]
    pub fn is_pcp(&self) -> bool {
        self.flags().contains(PageFlags::PG_PCP)
    }
    /// Linux `page_count`.
    #[inline]
    pub fn page_count(&self) -> i32 {
        self.refcount.load(Relaxed)
    }
    #[inline]
    pub(super) fn set_page_count(&self, v: i32) {
        self.refcount.store(v, Relaxed)
    }
    /// Linux `page_ref_inc` (get_page without the checks).
    #[inline]
    pub(super) fn ref_inc(&self) -> i32 {
        self.refcount.fetch_add(1, Relaxed)
    }
    /// Atomic decrement returning the previous value (Linux `page_ref_dec_and_test` building block).
    #[inline]
    pub(super) fn ref_dec(&self) -> i32 {
        // Release so that the owner's last writes happen before the page is reused (Linux's
        // atomic_dec_and_test is fully ordered).
        self.refcount.fetch_sub(1, core::sync::atomic::Ordering::AcqRel)
    }
    /// Order field (buddy order / pcp block order / allocation order, see the struct).
    #[inline]
    pub fn order(&self) -> u32 {
        self.order.load(Relaxed) as u32
    }
    #[inline]
    pub(super) fn set_order(&self, order: u32) {
        self.order.store(order as u8, Relaxed)
    }
    /// Zone index (`page_zonenum`), `NO_ZONE` outside all zones.
    #[inline]
    pub fn zone_idx(&self) -> u8 {
        self.zone.load(Relaxed)
    }
    #[inline]
    pub(super) fn set_zone(&self, z: u8) {
        self.zone.store(z, Relaxed)
    }
    /// The owner's private word (Linux `page_private`).
    #[inline]
    pub fn private(&self) -> u64 {
        self.private.load(Relaxed)
    }
    #[inline]
    pub fn set_private(&self, v: u64) {
        self.private.store(v, Relaxed)
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Page {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Page {{ flags: {:?}, refcount: {}, order: {}, zone: {} }}",
            self.flags(),
            self.page_count(),
            self.order(),
            self.zone_idx()
        )
    }
}

/// Writes `Page::new()` into `n` uninitialised struct pages at `ptr` (the kernel's mem_map memory
/// from memblock) and returns them as a slice.
///
/// # Safety
/// `ptr` must be valid for writes of `n` pages, suitably aligned, not aliased, and live for `'a`.
pub unsafe fn init_mem_map_raw<'a>(ptr: *mut Page, n: usize) -> &'a [Page] {
    for i in 0..n {
        // SAFETY: i < n and the caller guarantees `ptr` is valid for writes of `n` aligned
        // pages, so `ptr.add(i)` stays inside that allocation and may be written; `write`
        // neither reads nor drops the uninitialised page there.
        unsafe { ptr.add(i).write(Page::new()) };
    }
    // SAFETY: the loop above initialised all `n` pages at `ptr` (valid, aligned, one
    // allocation by the caller's contract); the caller guarantees nothing else aliases them
    // mutably and that they live for `'a`.
    unsafe { core::slice::from_raw_parts(ptr, n) }
}

/// Bytes of mem_map needed for PFNs `[min_pfn, max_pfn)`.
pub const fn mem_map_bytes(min_pfn: u64, max_pfn: u64) -> usize {
    (max_pfn - min_pfn) as usize * core::mem::size_of::<Page>()
}

/// The mem_map: struct pages for PFNs `[base_pfn, base_pfn + pages.len())`.
#[derive(Clone, Copy)]
pub struct MemMap<'m> {
    pages: &'m [Page],
    base_pfn: u64,
}

impl<'m> MemMap<'m> {
    pub fn new(pages: &'m [Page], base_pfn: u64) -> Self {
        assert!(pages.len() < NIL as usize, "mem_map larger than 2^32 pages");
        MemMap { pages, base_pfn }
    }
    /// First PFN covered (Linux ARCH_PFN_OFFSET / min_low_pfn).
    #[inline]
    pub fn min_pfn(&self) -> u64 {
        self.base_pfn
    }
    /// One past the last PFN covered (max_pfn).
    #[inline]
    pub fn max_pfn(&self) -> u64 {
        self.base_pfn + self.pages.len() as u64
    }
    #[inline]
    pub fn pfn_valid(&self, pfn: u64) -> bool {
        pfn.wrapping_sub(self.base_pfn) < self.pages.len() as u64
    }
    /// `pfn_to_page`, `None` outside mem_map.
    #[inline]
    pub fn pfn_to_page(&self, pfn: u64) -> Option<&'m Page> {
        self.pages.get(pfn.wrapping_sub(self.base_pfn) as usize)
    }
    /// `pfn_to_page` for PFNs known to be valid (panics otherwise).
    #[inline]
    pub(super) fn page(&self, pfn: u64) -> &'m Page {
        &self.pages[(pfn - self.base_pfn) as usize]
    }
    /// `page_to_pfn`; `page` must be an element of this mem_map.
    #[inline]
    pub fn page_to_pfn(&self, page: &Page) -> u64 {
        let off = (page as *const Page as usize).wrapping_sub(self.pages.as_ptr() as usize)
            / core::mem::size_of::<Page>();
        debug_assert!(off < self.pages.len());
        self.base_pfn + off as u64
    }
    #[inline]
    pub(super) fn idx(&self, pfn: u64) -> u32 {
        (pfn - self.base_pfn) as u32
    }
    #[inline]
    pub(super) fn idx_to_pfn(&self, idx: u32) -> u64 {
        self.base_pfn + idx as u64
    }
    pub fn pages(&self) -> &'m [Page] {
        self.pages
    }
}

/// Head of an intrusive doubly linked list of pages (Linux `struct list_head`), links by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListHead {
    pub(super) first: u32,
    pub(super) last: u32,
}

impl ListHead {
    pub const fn new() -> Self {
        ListHead { first: NIL, last: NIL }
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.first == NIL
    }

    /// `list_add`: insert at the head.
    #[inline]
    pub(super) fn add(&mut self, mm: &MemMap<'_>, pfn: u64) {
        let idx = mm.idx(pfn);
        let p = mm.page(pfn);
        p.prev.store(NIL, Relaxed);
        p.next.store(self.first, Relaxed);
        if self.first == NIL {
            self.last = idx;
        } else {
            mm.pages[self.first as usize].prev.store(idx, Relaxed);
        }
        self.first = idx;
    }

    /// `list_add_tail`: insert at the tail.
    #[inline]
    pub(super) fn add_tail(&mut self, mm: &MemMap<'_>, pfn: u64) {
        let idx = mm.idx(pfn);
        let p = mm.page(pfn);
        p.next.store(NIL, Relaxed);
        p.prev.store(self.last, Relaxed);
        if self.last == NIL {
            self.first = idx;
        } else {
            mm.pages[self.last as usize].next.store(idx, Relaxed);
        }
        self.last = idx;
    }

    /// `list_del`: unlink a page that is on this list.
    #[inline]
    pub(super) fn del(&mut self, mm: &MemMap<'_>, pfn: u64) {
        let p = mm.page(pfn);
        let (next, prev) = (p.next.load(Relaxed), p.prev.load(Relaxed));
        if prev == NIL {
            debug_assert_eq!(self.first, mm.idx(pfn));
            self.first = next;
        } else {
            mm.pages[prev as usize].next.store(next, Relaxed);
        }
        if next == NIL {
            debug_assert_eq!(self.last, mm.idx(pfn));
            self.last = prev;
        } else {
            mm.pages[next as usize].prev.store(prev, Relaxed);
        }
        p.next.store(NIL, Relaxed);
        p.prev.store(NIL, Relaxed);
    }

    /// `list_first_entry_or_null`, as a PFN.
    #[inline]
    pub(super) fn first_pfn(&self, mm: &MemMap<'_>) -> Option<u64> {
        (self.first != NIL).then(|| mm.idx_to_pfn(self.first))
    }

    /// `list_last_entry`, as a PFN.
    #[inline]
    pub(super) fn last_pfn(&self, mm: &MemMap<'_>) -> Option<u64> {
        (self.last != NIL).then(|| mm.idx_to_pfn(self.last))
    }

    /// Calls `f(pfn)` for every entry from head to tail (stops early when `f` returns false).
    pub(super) fn for_each(&self, mm: &MemMap<'_>, mut f: impl FnMut(u64) -> bool) {
        let mut cur = self.first;
        while cur != NIL {
            if !f(mm.idx_to_pfn(cur)) {
                return;
            }
            cur = mm.pages[cur as usize].next.load(Relaxed);
        }
    }
}

impl Default for ListHead {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn page_is_32_bytes_or_less() {
        assert!(core::mem::size_of::<Page>() <= 32);
        assert_eq!(mem_map_bytes(0x40000, 0x40010), 16 * core::mem::size_of::<Page>());
    }

    #[test]
    fn list_ops() {
        let pages: Vec<Page> = (0..8).map(|_| Page::new()).collect();
        let mm = MemMap::new(&pages, 0x1000);
        let mut l = ListHead::new();
        assert!(l.is_empty());
        l.add(&mm, 0x1001);
        l.add(&mm, 0x1002);
        l.add_tail(&mm, 0x1003);
        let mut v = Vec::new();
        l.for_each(&mm, |p| {
            v.push(p);
            true
        });
        assert_eq!(v, [0x1002, 0x1001, 0x1003]);
        assert_eq!(l.first_pfn(&mm), Some(0x1002));
        assert_eq!(l.last_pfn(&mm), Some(0x1003));
        l.del(&mm, 0x1001);
        l.del(&mm, 0x1003);
        assert_eq!(l.first_pfn(&mm), Some(0x1002));
        assert_eq!(l.last_pfn(&mm), Some(0x1002));
        l.del(&mm, 0x1002);
        assert!(l.is_empty());
        assert_eq!(mm.page_to_pfn(&pages[5]), 0x1005);
        assert!(mm.pfn_to_page(0x1008).is_none());
        assert!(mm.pfn_to_page(0xfff).is_none());
    }
}
