//! The free paths (mm/page_alloc.c): the always-on checks, `__free_pages` / `put_page` /
//! `get_page` / `split_page`, `__free_frozen_pages` (pcp orders to this CPU's pcp, the rest
//! and trylock failures to `free_one_page`), the old `free_contig_range` and the vfree patch
//! series' `__free_contig_range` / `free_prepared_contig_range` / `free_pages_bulk`.
#![forbid(unsafe_code)]
use super::{bad, contig_chunk_order, num_pages_contiguous, BadPage, MmError, PageAllocator};
use crate::buddy::{__free_one_page, FPI_NONE, FPI_PREPARED};
use crate::page::{Page, PageFlags};
use crate::pcp::pcp_allowed_order;
use crate::stat::VmEvent;
use crate::zone::Zone;
use mm_types::MAX_PAGE_ORDER;

impl<'m> PageAllocator<'m> {
    /// Linux `free_one_page`: one block straight to the buddy under zone->lock.
    pub(super) fn free_one_page(&self, cpu: usize, zone: &Zone, pfn: u64, order: u32, fpi: u32) {
        let mut zf = self.zone_lock(cpu, zone);
        __free_one_page(&self.node, zone, &mut zf, pfn, order, fpi);
        drop(zf);
        self.events(cpu).count(VmEvent::Pgfree, 1 << order);
    }

    /// The cheap always-on checks of a free of `2^order` pages at `pfn` (Linux
    /// `free_page_is_bad` / `bad_page` on the head page plus the order bookkeeping).
    #[inline]
    fn free_pages_check(&self, pfn: u64, order: u32) -> Result<&'m Page, MmError> {
        let page = self.node.mem_map.pfn_to_page(pfn).ok_or(bad(pfn, BadPage::OutOfRange))?;
        if order as usize > MAX_PAGE_ORDER {
            return Err(bad(pfn, BadPage::BadOrder { order }));
        }
        if pfn & ((1u64 << order) - 1) != 0 {
            return Err(bad(pfn, BadPage::Misaligned { order }));
        }
        let flags = page.flags();
        if flags.intersects(PageFlags::PG_RESERVED | PageFlags::PG_BUDDY | PageFlags::PG_PCP) {
            return Err(bad(
                pfn,
                if flags.contains(PageFlags::PG_RESERVED) {
                    BadPage::Reserved
                } else if flags.contains(PageFlags::PG_BUDDY) {
                    BadPage::DoubleFreeBuddy { order: page.order() }
                } else {
                    BadPage::DoubleFreePcp { order: page.order() }
                },
            ));
        }
        if page.page_count() <= 0 {
            return Err(bad(pfn, BadPage::NotAllocated));
        }
        if page.order() != order {
            return Err(bad(pfn, BadPage::WrongOrder { freed: order, allocated: page.order() }));
        }
        Ok(page)
    }

    /// Linux `put_page_testzero`: drop a reference; Ok(true) when it was the last.
    #[inline]
    fn put_page_testzero(page: &Page, pfn: u64) -> Result<bool, MmError> {
        let old = page.ref_dec();
        if old <= 0 {
            page.ref_inc();
            return Err(bad(pfn, BadPage::RefcountUnderflow));
        }
        Ok(old == 1)
    }

    /// Linux `free_pages_prepare` (what is left of it: clear PG_head and private).
    #[inline]
    fn free_pages_prepare(page: &Page) {
        if page.flags().contains(PageFlags::PG_HEAD) {
            page.remove_flags(PageFlags::PG_HEAD);
        }
        page.set_private(0);
        page.set_order(0);
    }

    /// Linux `__free_pages(page, order)`: drop a reference to the block allocated with
    /// `alloc_pages(.., order)` at `pfn`; the last one frees it (pcp orders to this CPU's pcp
    /// list, the others to the buddy).
    #[inline]
    pub fn __free_pages(&self, cpu: usize, pfn: u64, order: u32) -> Result<(), MmError> {
        let page = self.free_pages_check(pfn, order)?;
        if Self::put_page_testzero(page, pfn)? {
            Self::free_pages_prepare(page);
            self.__free_frozen_pages(cpu, pfn, order, FPI_NONE);
        }
        Ok(())
    }

    /// Linux `__free_page`.
    #[inline]
    pub fn __free_page(&self, cpu: usize, pfn: u64) -> Result<(), MmError> {
        self.__free_pages(cpu, pfn, 0)
    }

    /// Linux `get_page`: take a reference to an allocated (or reserved) page.
    pub fn get_page(&self, pfn: u64) -> Result<(), MmError> {
        let page = self.node.mem_map.pfn_to_page(pfn).ok_or(bad(pfn, BadPage::OutOfRange))?;
        let f = page.flags();
        if f.contains(PageFlags::PG_BUDDY) {
            return Err(bad(pfn, BadPage::DoubleFreeBuddy { order: page.order() }));
        }
        if f.contains(PageFlags::PG_PCP) {
            return Err(bad(pfn, BadPage::DoubleFreePcp { order: page.order() }));
        }
        if page.page_count() <= 0 {
            return Err(bad(pfn, BadPage::NotAllocated));
        }
        page.ref_inc();
        Ok(())
    }

    /// Linux `put_page` for pages from this allocator: drop a reference; the last one frees
    /// the block with the order it was allocated with (like a compound page; 0 after split).
    pub fn put_page(&self, cpu: usize, pfn: u64) -> Result<(), MmError> {
        let page = self.node.mem_map.pfn_to_page(pfn).ok_or(bad(pfn, BadPage::OutOfRange))?;
        if page.is_reserved() {
            // Reserved pages keep their initial reference forever.
            if page.page_count() <= 1 {
                return Err(bad(pfn, BadPage::Reserved));
            }
            page.ref_dec();
            return Ok(());
        }
        self.__free_pages(cpu, pfn, page.order())
    }

    /// Linux `split_page`: turn an allocated, non-compound block of `order` into 2^order
    /// independent order-0 pages with refcount 1 each (the head keeps its count).
    pub fn split_page(&self, pfn: u64, order: u32) -> Result<(), MmError> {
        let page = self.free_pages_check(pfn, order)?;
        if page.flags().contains(PageFlags::PG_HEAD) {
            return Err(bad(pfn, BadPage::SplitCompound));
        }
        for p in pfn + 1..pfn + (1 << order) {
            let tail = self.node.mem_map.page(p);
            tail.set_page_count(1);
            tail.set_order(0);
        }
        page.set_order(0);
        Ok(())
    }

    /// Old `free_contig_range(pfn, nr_pages)` (before the patch series): one `__free_page`
    /// per page, each going to the order-0 pcp list. Every page is attempted; returns the
    /// first error.
    pub fn free_contig_range(&self, cpu: usize, pfn: u64, nr_pages: u64) -> Result<(), MmError> {
        let mut res = Ok(());
        for p in pfn..pfn.saturating_add(nr_pages) {
            if let Err(e) = self.__free_page(cpu, p) {
                res = res.and(Err(e));
            }
        }
        res
    }

    /// Linux `free_prepared_contig_range`: free `[pfn, pfn + nr_pages)`, already prepared,
    /// in naturally aligned power-of-two chunks through the normal free path.
    // Inline: on the path of every vmalloc/vfree (its call and return were two TB
    // lookups per loop under TCG; README "Fifth round").
    #[inline(always)]
    fn free_prepared_contig_range(&self, cpu: usize, mut pfn: u64, mut nr_pages: u64) {
        while nr_pages != 0 {
            let order = contig_chunk_order(pfn, nr_pages);
            self.__free_frozen_pages(cpu, pfn, order, FPI_PREPARED);
            pfn += 1 << order;
            nr_pages -= 1 << order;
        }
    }

    /// Linux `__free_contig_range(pfn, nr_pages)` (patch 1/3): for each order-0 page, drop a
    /// reference and prepare it; runs of freeable pages are freed as naturally aligned
    /// power-of-two blocks (`min(ffs(pfn), ilog2(remaining), MAX_PAGE_ORDER)`), so they reach
    /// the pcp list of their order (0..3, 9) or the buddy (4..8, 10) in one go. A page that
    /// is still referenced or fails the checks ends the current run and is skipped; the first
    /// error is returned after everything else was freed. Runs are also cut at zone
    /// boundaries (Linux cuts them at memory sections).
    #[inline]
    pub fn __free_contig_range(&self, cpu: usize, pfn: u64, nr_pages: u64) -> Result<(), MmError> {
        self.__free_contig_range_inline(cpu, pfn, nr_pages)
    }

    /// [`Self::__free_contig_range`], inlined into free_pages_bulk (one call frame per vfree
    /// fewer: Linux's compiler inlines the static helpers of page_alloc.c the same way).
    #[inline(always)]
    fn __free_contig_range_inline(
        &self,
        cpu: usize,
        pfn: u64,
        nr_pages: u64,
    ) -> Result<(), MmError> {
        let mut res = Ok(());
        let end = pfn.saturating_add(nr_pages);
        // [run, p): prepared pages of zone `run_zone`, not yet freed.
        let mut run = pfn;
        let mut run_zone = u8::MAX;
        let mut p = pfn;
        while p < end {
            let freeable = match self.free_pages_check(p, 0) {
                Ok(page) => match Self::put_page_testzero(page, p) {
                    Ok(true) => {
                        Self::free_pages_prepare(page);
                        Some(page.zone_idx())
                    }
                    Ok(false) => None,
                    Err(e) => {
                        res = res.and(Err(e));
                        None
                    }
                },
                Err(e) => {
                    res = res.and(Err(e));
                    None
                }
            };
            match freeable {
                Some(z) => {
                    if z != run_zone {
                        if p != run {
                            self.free_prepared_contig_range(cpu, run, p - run);
                            run = p;
                        }
                        run_zone = z;
                    }
                }
                None => {
                    if p != run {
                        self.free_prepared_contig_range(cpu, run, p - run);
                    }
                    run = p + 1;
                }
            }
            p += 1;
        }
        if run < end {
            self.free_prepared_contig_range(cpu, run, end - run);
        }
        res
    }

    /// Linux `free_pages_bulk(page_array, nr_pages)` (patch 2/3, merged revision): frees an
    /// array of order-0 pages, each run of consecutive PFNs with one `__free_contig_range`,
    /// calling `resched` after each run (Linux: `cond_resched()`). Ascending PFN order gives
    /// the longest runs. Returns the first error.
    pub fn free_pages_bulk(
        &self,
        cpu: usize,
        pages: &[u64],
        mut resched: impl FnMut(),
    ) -> Result<(), MmError> {
        let mut res = Ok(());
        let mut rest = pages;
        while !rest.is_empty() {
            let (nr_contig, r) = self.free_pages_bulk_run(cpu, rest);
            res = res.and(r);
            rest = &rest[nr_contig..];
            resched();
        }
        res
    }

    /// One step of [`Self::free_pages_bulk`]: frees the leading PFN run of `pages` and returns
    /// its length (the kernel's glue calls this with interrupts masked per run, so that the
    /// `cond_resched()` between runs runs with them unmasked, as in Linux).
    #[inline(always)]
    pub fn free_pages_bulk_run(&self, cpu: usize, pages: &[u64]) -> (usize, Result<(), MmError>) {
        let nr_contig = num_pages_contiguous(pages);
        (nr_contig, self.__free_contig_range_inline(cpu, pages[0], nr_contig as u64))
    }

    /// Linux `__free_frozen_pages` for a prepared block (refcount 0, checks done): pcp orders
    /// go to this CPU's pcp list (or the buddy if its lock is busy), other orders straight to
    /// the buddy under zone->lock.
    // Inline: on the path of every vmalloc/vfree (its call and return were two TB
    // lookups per loop under TCG; README "Fifth round").
    #[inline(always)]
    fn __free_frozen_pages(&self, cpu: usize, pfn: u64, order: u32, fpi: u32) {
        let zone = &self.node.zones[self.node.mem_map.page(pfn).zone_idx() as usize];
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
}
