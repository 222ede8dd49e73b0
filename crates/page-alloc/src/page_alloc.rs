//! The page allocator API: Linux mm/page_alloc.c (+ mm/mm_init.c for initialisation).
//!
//! `PageAllocator` is one NUMA node (`pg_data_t`): its zones, the mem_map, per-CPU state and
//! counters. It mirrors `alloc_pages` (`__alloc_frozen_pages` -> `get_page_from_freelist` ->
//! `rmqueue` -> pcp or buddy, then `__alloc_pages_slowpath`), `prep_new_page`,
//! `__free_pages` (`put_page_testzero` -> `__free_frozen_pages`), `split_page`,
//! `alloc_pages_bulk`, the vfree patch series' `__free_contig_range` /
//! `free_prepared_contig_range` / `free_pages_bulk` / `num_pages_contiguous`, and the old
//! `free_contig_range` (one order-0 free per page).
//!
//! Initialisation (what `mm_core_init` does between `free_area_init` and
//! `init_per_zone_wmark_min`): `PageAllocator::new(mem_map, min_pfn, &memblock, &config)`
//! sizes the zones from memblock and the arm64 zone limits, initialises every struct page,
//! releases all free memblock memory in max-order blocks, computes the watermarks
//! (min_free_kbytes), lowmem reserves and the pcp batch/high values for `nr_cpus` CPUs.
//!
//! Misuse detection is always on and cheap (the head page only, as Linux without
//! CONFIG_DEBUG_VM): every public free path returns `Err(MmError)` without touching the
//! allocator's state when it finds a double free, a reserved page, a wrong order, a
//! misaligned PFN, a tail page or a refcount underflow.
use crate::memblock::Memblock;
use crate::page::{MemMap, Page, PageFlags, NO_ZONE};
use crate::pcp::{
    order_to_pindex, pcp_allowed_order, pindex_to_order, NR_PCP_LISTS, PAGE_ALLOC_COSTLY_ORDER,
};
use crate::stat::{NodeStats, PerCpuStats, VmEvent};
use crate::zone::{
    arch_zone_limits, calculate_min_free_kbytes, calculate_normal_threshold, pfn_down, pfn_up,
    setup_per_zone_lowmem_reserve, setup_per_zone_wmarks, zone_spans, Zone, NR_PAGE_ORDERS,
    WATERMARK_SCALE_FACTOR, WMARK_HIGH,
};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use mm_types::gfp::{
    alloc_flags_nonblocking, alloc_flags_slowpath, gfp_pfmemalloc_flags, gfp_zone, AllocFlags,
    GfpFlags, ALLOC_HIGHATOMIC, ALLOC_KSWAPD, ALLOC_MIN_RESERVE, ALLOC_NO_WATERMARKS,
    ALLOC_WMARK_LOW, ALLOC_WMARK_MASK, MAX_NR_ZONES,
};
use mm_types::{MAX_PAGE_ORDER, NR_CPUS, PAGE_SHIFT};

/// Free Page Internal flags (Linux fpi_t).
pub const FPI_NONE: u32 = 0;
/// Place the (possibly merged) block at the tail of its free list.
pub const FPI_TO_TAIL: u32 = 1 << 1;
/// free_pages_prepare() was already done for the block.
pub const FPI_PREPARED: u32 = 1 << 3;

/// What a free path found wrong (Linux `bad_page` reasons, more specific).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPage {
    /// PFN not covered by mem_map.
    OutOfRange,
    /// Order above MAX_PAGE_ORDER.
    BadOrder { order: u32 },
    /// PFN not aligned to the order freed.
    Misaligned { order: u32 },
    /// PG_reserved: a hole, a memblock reservation or mem_map; never allocated.
    Reserved,
    /// The page heads a free block in the buddy.
    DoubleFreeBuddy { order: u32 },
    /// The page heads a free block on a pcp list.
    DoubleFreePcp { order: u32 },
    /// Refcount already 0: freed before (and merged into a larger free block), or a tail page
    /// of a higher-order allocation that was not split.
    NotAllocated,
    /// Freed with another order than it was allocated with (or split to).
    WrongOrder { freed: u32, allocated: u32 },
    /// The reference count went below zero (a racing put).
    RefcountUnderflow,
    /// split_page of a `__GFP_COMP` (compound) allocation.
    SplitCompound,
}

impl fmt::Display for BadPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BadPage::OutOfRange => write!(f, "pfn outside mem_map"),
            BadPage::BadOrder { order } => {
                write!(f, "order {} > MAX_PAGE_ORDER {}", order, MAX_PAGE_ORDER)
            }
            BadPage::Misaligned { order } => write!(f, "pfn not aligned to order {}", order),
            BadPage::Reserved => write!(f, "freeing a reserved page (PG_reserved)"),
            BadPage::DoubleFreeBuddy { order } => {
                write!(f, "double free (page is already free in the buddy, order {})", order)
            }
            BadPage::DoubleFreePcp { order } => {
                write!(f, "double free (page is already free on a pcp list, order {})", order)
            }
            BadPage::NotAllocated => {
                write!(
                    f,
                    "refcount already 0 (double free, or a tail page of a higher-order allocation)"
                )
            }
            BadPage::WrongOrder { freed, allocated } => {
                write!(
                    f,
                    "wrong order (freed as order {}, allocated as order {})",
                    freed, allocated
                )
            }
            BadPage::RefcountUnderflow => write!(f, "refcount underflow"),
            BadPage::SplitCompound => write!(f, "split_page of a compound (__GFP_COMP) page"),
        }
    }
}

/// A detected misuse: `Display` gives "BUG: Bad page state: pfn 0x41234: double free (...)".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmError {
    pub pfn: u64,
    pub what: BadPage,
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BUG: Bad page state: pfn {:#x}: {}", self.pfn, self.what)
    }
}

#[inline]
fn bad(pfn: u64, what: BadPage) -> MmError {
    MmError { pfn, what }
}

/// Hooks into the kernel.
#[derive(Clone, Copy)]
pub struct PageAllocHooks {
    /// Clear `nr_pages` pages starting at `pfn` (for `__GFP_ZERO`; the kernel writes zeros
    /// through the linear map).
    pub zero: fn(pfn: u64, nr_pages: usize),
    /// Print a warning line (allocation failure without `__GFP_NOWARN`). Rate limiting, if
    /// wanted, is the kernel's business (Linux: one per 10 s).
    pub warn: fn(fmt::Arguments<'_>),
}

fn no_zero(_pfn: u64, _nr: usize) {}
fn no_warn(_args: fmt::Arguments<'_>) {}

impl PageAllocHooks {
    pub const NONE: PageAllocHooks = PageAllocHooks { zero: no_zero, warn: no_warn };
}

impl Default for PageAllocHooks {
    fn default() -> Self {
        Self::NONE
    }
}

/// Boot parameters of the page allocator.
#[derive(Clone, Copy)]
pub struct PageAllocConfig {
    /// Highest CPU address all DMA masters reach (DT `dma-ranges`; 0x3fff_ffff on a Pi 4),
    /// None if unconstrained. See `zone::arch_zone_limits`.
    pub zone_dma_limit: Option<u64>,
    /// CPUs that will use the allocator (1..=NR_CPUS): divides pcp high.
    pub nr_cpus: usize,
    /// `vm.min_free_kbytes` override (None: Linux's sqrt formula).
    pub min_free_kbytes: Option<u64>,
    /// `vm.watermark_scale_factor` (Linux default 10).
    pub watermark_scale_factor: u32,
    /// `vm.percpu_pagelist_high_fraction` (0 = default auto-tuned high, else >= 8).
    pub percpu_pagelist_high_fraction: u32,
    /// false: boot pagesets (high 0, batch 1), every page goes through the zone lock.
    pub pcp_enabled: bool,
    pub hooks: PageAllocHooks,
}

impl Default for PageAllocConfig {
    fn default() -> Self {
        PageAllocConfig {
            zone_dma_limit: None,
            nr_cpus: 1,
            min_free_kbytes: None,
            watermark_scale_factor: WATERMARK_SCALE_FACTOR,
            percpu_pagelist_high_fraction: 0,
            pcp_enabled: true,
            hooks: PageAllocHooks::NONE,
        }
    }
}

/// Why `PageAllocator::new` refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    NoMemory,
    /// mem_map must cover PFNs [need_start, need_end).
    MemMapTooSmall {
        need_start: u64,
        need_end: u64,
        have_start: u64,
        have_end: u64,
    },
    BadCpuCount(usize),
    BadHighFraction(u32),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InitError::NoMemory => write!(f, "page_alloc: no memory in memblock"),
            InitError::MemMapTooSmall { need_start, need_end, have_start, have_end } => write!(
                f,
                "page_alloc: mem_map covers PFN {:#x}-{:#x}, RAM needs {:#x}-{:#x}",
                have_start, have_end, need_start, need_end
            ),
            InitError::BadCpuCount(n) => {
                write!(f, "page_alloc: nr_cpus {} not in 1..={}", n, NR_CPUS)
            }
            InitError::BadHighFraction(n) => {
                write!(f, "page_alloc: percpu_pagelist_high_fraction {} < 8", n)
            }
        }
    }
}

/// One node's page allocator (Linux `pg_data_t` + the global page allocator state).
pub struct PageAllocator<'m> {
    pub(super) mem_map: MemMap<'m>,
    pub(super) zones: [Zone; MAX_NR_ZONES],
    /// Populated zones, highest first (Linux node_zonelists[ZONELIST_FALLBACK]).
    zonelist: [u8; MAX_NR_ZONES],
    nr_zonelist: usize,
    nr_cpus: AtomicUsize,
    hooks: PageAllocHooks,
    pub(super) pcpu_stats: [PerCpuStats; NR_CPUS],
    pub(super) node_stats: NodeStats,
    min_free_kbytes: AtomicU64,
    watermark_scale_factor: AtomicU32,
    percpu_pagelist_high_fraction: AtomicU32,
    pcp_enabled: AtomicBool,
}

// The kernel keeps one in a static (spin::Once) and calls it from every CPU.
const _: fn() = || {
    fn assert_sync_send<T: Sync + Send>() {}
    assert_sync_send::<PageAllocator<'static>>();
};

/// Linux `num_pages_contiguous`: how many leading entries are consecutive PFNs.
pub fn num_pages_contiguous(pages: &[u64]) -> usize {
    let Some(&first) = pages.first() else { return 0 };
    let mut n = 1;
    while n < pages.len() && pages[n] == first + n as u64 {
        n += 1;
    }
    n
}

/// Order of each chunk `free_prepared_contig_range` frees: the largest naturally aligned
/// power of two at `pfn` that fits in `nr_pages`, at most MAX_PAGE_ORDER.
#[inline]
pub fn contig_chunk_order(pfn: u64, nr_pages: u64) -> u32 {
    debug_assert!(nr_pages > 0);
    let order = if pfn != 0 { pfn.trailing_zeros() } else { MAX_PAGE_ORDER as u32 };
    order.min(63 - nr_pages.leading_zeros()).min(MAX_PAGE_ORDER as u32)
}

impl<'m> PageAllocator<'m> {
    /// Sets up the node: zones from `memblock` (memory = RAM, reserved = in use; the mem_map
    /// memory must already be reserved in it) and the arm64 zone limits, struct pages for PFNs
    /// `[min_pfn, min_pfn + mem_map.len())` (must cover all RAM), releases all free memory to
    /// the buddy (`memblock_free_all`), then watermarks and pcp sizes (`init_per_zone_wmark_min`).
    pub fn new(
        mem_map: &'m [Page],
        min_pfn: u64,
        memblock: &Memblock,
        cfg: &PageAllocConfig,
    ) -> Result<Self, InitError> {
        if cfg.nr_cpus == 0 || cfg.nr_cpus > NR_CPUS {
            return Err(InitError::BadCpuCount(cfg.nr_cpus));
        }
        if cfg.percpu_pagelist_high_fraction != 0
            && cfg.percpu_pagelist_high_fraction < crate::pcp::MIN_PERCPU_PAGELIST_HIGH_FRACTION
        {
            return Err(InitError::BadHighFraction(cfg.percpu_pagelist_high_fraction));
        }
        // get_pfn_range_for_nid.
        let regions = memblock.memory.regions();
        let node_start = regions.iter().map(|r| pfn_up(r.base)).min().ok_or(InitError::NoMemory)?;
        let node_end =
            regions.iter().map(|r| pfn_down(r.end())).max().ok_or(InitError::NoMemory)?;
        if node_end <= node_start {
            return Err(InitError::NoMemory);
        }
        let have_end = min_pfn + mem_map.len() as u64;
        if min_pfn > node_start || have_end < node_end {
            return Err(InitError::MemMapTooSmall {
                need_start: node_start,
                need_end: node_end,
                have_start: min_pfn,
                have_end,
            });
        }
        let mm = MemMap::new(mem_map, min_pfn);
        let limits =
            arch_zone_limits(memblock.start_of_dram(), memblock.end_of_dram(), cfg.zone_dma_limit);
        let spans = zone_spans(node_start, node_end, &limits);
        let mut zones: [Zone; MAX_NR_ZONES] = core::array::from_fn(Zone::new);
        for (z, &(s, e)) in zones.iter_mut().zip(spans.iter()) {
            z.zone_start_pfn = s;
            z.spanned_pages = e - s;
            z.present_pages = regions
                .iter()
                .map(|r| {
                    let (rs, re) = (pfn_up(r.base).max(s), pfn_down(r.end()).min(e));
                    re.saturating_sub(rs)
                })
                .sum();
        }
        // memmap_init: every struct page reserved, refcount 1, zone link set (holes too).
        for (i, page) in mem_map.iter().enumerate() {
            let pfn = min_pfn + i as u64;
            page.set_flags(PageFlags::PG_RESERVED);
            page.set_page_count(1);
            page.next.store(crate::page::NIL, Relaxed);
            page.prev.store(crate::page::NIL, Relaxed);
            page.set_order(0);
            page.set_private(0);
            let z = zones.iter().position(|z| z.zone_spans_pfn(pfn)).map_or(NO_ZONE, |i| i as u8);
            page.set_zone(z);
        }
        let mut zonelist = [0u8; MAX_NR_ZONES];
        let mut nr_zonelist = 0;
        for z in zones.iter().rev().filter(|z| z.populated()) {
            zonelist[nr_zonelist] = z.idx as u8;
            nr_zonelist += 1;
        }
        let pa = PageAllocator {
            mem_map: mm,
            zones,
            zonelist,
            nr_zonelist,
            nr_cpus: AtomicUsize::new(cfg.nr_cpus),
            hooks: cfg.hooks,
            pcpu_stats: core::array::from_fn(|_| PerCpuStats::new()),
            node_stats: NodeStats::new(),
            min_free_kbytes: AtomicU64::new(1024),
            watermark_scale_factor: AtomicU32::new(cfg.watermark_scale_factor),
            percpu_pagelist_high_fraction: AtomicU32::new(cfg.percpu_pagelist_high_fraction),
            pcp_enabled: AtomicBool::new(cfg.pcp_enabled),
        };
        pa.memblock_free_all(memblock);
        // init_per_zone_wmark_min: lowmem_kbytes = nr_free_buffer_pages() (managed minus the
        // still-zero high watermarks) in KiB.
        let lowmem_kbytes = pa.totalram_pages() << (PAGE_SHIFT - 10);
        let mfk = cfg.min_free_kbytes.unwrap_or_else(|| calculate_min_free_kbytes(lowmem_kbytes));
        pa.set_min_free_kbytes(mfk);
        Ok(pa)
    }

    /// Linux `setup_per_zone_wmarks` (+ lowmem reserves, pcp high/batch, stat thresholds),
    /// what writing `vm.min_free_kbytes` does.
    pub fn set_min_free_kbytes(&self, min_free_kbytes: u64) {
        self.min_free_kbytes.store(min_free_kbytes, Relaxed);
        setup_per_zone_wmarks(&self.zones, min_free_kbytes, self.watermark_scale_factor());
        setup_per_zone_lowmem_reserve(&self.zones);
        self.refresh_zone_stat_thresholds();
        self.zone_pcp_update(self.nr_cpus());
    }

    /// Linux `zone_pcp_update` for every zone: recompute pcp batch/high for `nr_cpus` CPUs
    /// (call when secondary CPUs come online).
    pub fn zone_pcp_update(&self, nr_cpus: usize) {
        let nr_cpus = nr_cpus.clamp(1, NR_CPUS);
        self.nr_cpus.store(nr_cpus, Relaxed);
        let frac = self.percpu_pagelist_high_fraction.load(Relaxed);
        for z in self.zones.iter() {
            self.zone_set_pageset_high_and_batch(z, nr_cpus, frac);
        }
        self.refresh_zone_stat_thresholds();
    }

    /// `vm.percpu_pagelist_high_fraction` (0 or >= 8).
    pub fn set_percpu_pagelist_high_fraction(&self, frac: u32) -> Result<(), InitError> {
        if frac != 0 && frac < crate::pcp::MIN_PERCPU_PAGELIST_HIGH_FRACTION {
            return Err(InitError::BadHighFraction(frac));
        }
        self.percpu_pagelist_high_fraction.store(frac, Relaxed);
        self.zone_pcp_update(self.nr_cpus());
        Ok(())
    }

    /// `mm.pcp=off` / on: off gives every pcp the boot pageset values (high 0, batch 1: each
    /// free is flushed to the buddy at once, each allocation refills one block) and drains them.
    pub fn set_pcp_enabled(&self, this_cpu: usize, enabled: bool) {
        self.pcp_enabled.store(enabled, Relaxed);
        self.zone_pcp_update(self.nr_cpus());
        if !enabled {
            self.drain_all_pages(this_cpu);
        }
    }

    /// Linux `refresh_zone_stat_thresholds` (node threshold = max over its zones).
    fn refresh_zone_stat_thresholds(&self) {
        let t = self
            .zones
            .iter()
            .filter(|z| z.populated())
            .map(|z| calculate_normal_threshold(z.managed_pages(), self.nr_cpus()))
            .max()
            .unwrap_or(0);
        self.node_stats.set_threshold(t as i32);
    }

    // ---- accessors ------------------------------------------------------------------------

    pub fn mem_map(&self) -> MemMap<'m> {
        self.mem_map
    }
    /// `pfn_to_page` (None outside mem_map).
    pub fn pfn_to_page(&self, pfn: u64) -> Option<&'m Page> {
        self.mem_map.pfn_to_page(pfn)
    }
    /// `page_to_pfn` (the page must be in mem_map).
    pub fn page_to_pfn(&self, page: &Page) -> u64 {
        self.mem_map.page_to_pfn(page)
    }
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }
    pub fn zone(&self, idx: usize) -> &Zone {
        &self.zones[idx]
    }
    pub fn nr_cpus(&self) -> usize {
        self.nr_cpus.load(Relaxed)
    }
    pub fn pcp_enabled(&self) -> bool {
        self.pcp_enabled.load(Relaxed)
    }
    pub fn min_free_kbytes(&self) -> u64 {
        self.min_free_kbytes.load(Relaxed)
    }
    pub fn watermark_scale_factor(&self) -> u32 {
        self.watermark_scale_factor.load(Relaxed)
    }
    /// `totalram_pages` (sum of managed pages).
    pub fn totalram_pages(&self) -> u64 {
        self.zones.iter().map(|z| z.managed_pages()).sum()
    }
    /// Sum of NR_FREE_PAGES (pcp-cached pages excluded, as in Linux).
    pub fn nr_free_pages_total(&self) -> u64 {
        self.zones.iter().map(|z| z.nr_free_pages().max(0) as u64).sum()
    }
    /// Pages currently on all pcp lists (takes every pcp lock).
    pub fn nr_pcp_pages(&self) -> u64 {
        let mut n = 0;
        for z in self.zones.iter() {
            for s in z.per_cpu_pageset.iter() {
                n += s.0.lock().count.max(0) as u64;
            }
        }
        n
    }

    /// Populated zones usable for `highest_zoneidx`, highest first.
    #[inline]
    fn zonelist(&self, highest_zoneidx: usize) -> impl Iterator<Item = &Zone> {
        self.zonelist[..self.nr_zonelist]
            .iter()
            .filter(move |&&z| (z as usize) <= highest_zoneidx)
            .map(move |&z| &self.zones[z as usize])
    }

    // ---- allocation ------------------------------------------------------------------------

    /// Linux `prep_new_page` + `set_page_refcounted`: the head page becomes an allocated block
    /// of `order` with refcount 1.
    #[inline]
    fn prep_new_page(&self, cpu: usize, pfn: u64, order: u32, gfp: GfpFlags) {
        let page = self.mem_map.page(pfn);
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

    // ---- freeing ---------------------------------------------------------------------------

    /// The cheap always-on checks of a free of `2^order` pages at `pfn` (Linux
    /// `free_page_is_bad` / `bad_page` on the head page plus the order bookkeeping).
    #[inline]
    fn free_pages_check(&self, pfn: u64, order: u32) -> Result<&'m Page, MmError> {
        let page = self.mem_map.pfn_to_page(pfn).ok_or(bad(pfn, BadPage::OutOfRange))?;
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
        let page = self.mem_map.pfn_to_page(pfn).ok_or(bad(pfn, BadPage::OutOfRange))?;
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
        let page = self.mem_map.pfn_to_page(pfn).ok_or(bad(pfn, BadPage::OutOfRange))?;
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
            let tail = self.mem_map.page(p);
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
    #[inline]
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

    // ---- consistency check -----------------------------------------------------------------

    /// Walks every free list and pcp list (takes each lock in turn, so only exact when the
    /// allocator is quiescent) and checks: free-list entries are PG_buddy heads of their order
    /// in their zone with refcount 0, aligned, inside the zone, not mergeable with their buddy;
    /// list counts match `nr_free`, NR_FREE_PAGES and `pcp->count`; pcp entries are PG_pcp
    /// with the list's order. Calls `f(pfn, order, on_pcp)` for every free block.
    pub fn verify(&self, mut f: impl FnMut(u64, u32, bool)) -> Result<VerifyReport, VerifyError> {
        let mm = &self.mem_map;
        let mut rep = VerifyReport::default();
        let err = |pfn, what| Err(VerifyError { pfn, what });
        for zone in self.zones.iter() {
            let zf = zone.lock.lock();
            let mut total = 0u64;
            for order in 0..NR_PAGE_ORDERS as u32 {
                let mut n = 0u64;
                let mut prev = crate::page::NIL;
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
                        let b = crate::buddy::find_buddy_pfn(pfn, order);
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

/// Result of `PageAllocator::verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// `free_area[order].nr_free` per zone.
    pub nr_free: [[u64; NR_PAGE_ORDERS]; MAX_NR_ZONES],
    /// Pages in the buddy per zone (= NR_FREE_PAGES).
    pub buddy_pages: [u64; MAX_NR_ZONES],
    /// Pages on pcp lists per zone.
    pub pcp_pages: [u64; MAX_NR_ZONES],
}

/// An inconsistency found by `PageAllocator::verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyError {
    pub pfn: u64,
    pub what: &'static str,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page_alloc verify: pfn {:#x}: {}", self.pfn, self.what)
    }
}
