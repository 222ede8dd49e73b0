//! Initialisation and tuning (mm/mm_init.c, mm/memblock.c, mm/page_alloc.c): `PageAllocator::new`
//! (`free_area_init` zone spans, `memmap_init`, `memblock_free_all` -> `__free_pages_memory` ->
//! `__free_pages_core`, largest naturally aligned blocks placed at the list tails), then
//! `init_per_zone_wmark_min` and the sysctl writers (`min_free_kbytes`,
//! `percpu_pagelist_high_fraction`, `mm.pcp`) with `zone_pcp_update`.
#![forbid(unsafe_code)]
use super::{InitError, PageAllocConfig, PageAllocator};
use crate::buddy::FPI_TO_TAIL;
use crate::memblock::Memblock;
use crate::page::{MemMap, Page, PageFlags, NIL, NO_ZONE};
use crate::pcp::MIN_PERCPU_PAGELIST_HIGH_FRACTION;
use crate::stat::{NodeStats, PerCpuStats};
use crate::zone::{
    arch_zone_limits, calculate_min_free_kbytes, calculate_normal_threshold, pfn_down, pfn_up,
    setup_per_zone_lowmem_reserve, setup_per_zone_wmarks, zone_spans, Node, Zone,
};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use mm_types::gfp::MAX_NR_ZONES;
use mm_types::{MAX_PAGE_ORDER, NR_CPUS, PAGE_SHIFT};

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
            && cfg.percpu_pagelist_high_fraction < MIN_PERCPU_PAGELIST_HIGH_FRACTION
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
        // memmap_init: every struct page reserved, refcount 1, zone link set (holes too), one
        // pass per zone span as Linux's memmap_init_range (no per-page zone search).
        let init = |pages: &[Page], z: u8| {
            for page in pages {
                page.set_flags(PageFlags::PG_RESERVED);
                page.set_page_count(1);
                page.next.store(NIL, Relaxed);
                page.prev.store(NIL, Relaxed);
                page.set_order(0);
                page.set_private(0);
                page.set_zone(z);
            }
        };
        let mut next = min_pfn;
        for z in zones.iter().filter(|z| z.spanned_pages != 0) {
            let (s, e) = (z.zone_start_pfn.max(next), z.zone_end_pfn().min(have_end));
            if s >= e {
                continue;
            }
            init(&mem_map[(next - min_pfn) as usize..(s - min_pfn) as usize], NO_ZONE);
            init(&mem_map[(s - min_pfn) as usize..(e - min_pfn) as usize], z.idx as u8);
            next = e;
        }
        init(&mem_map[(next - min_pfn) as usize..], NO_ZONE);
        let mut zonelist = [0u8; MAX_NR_ZONES];
        let mut nr_zonelist = 0;
        for z in zones.iter().rev().filter(|z| z.populated()) {
            zonelist[nr_zonelist] = z.idx as u8;
            nr_zonelist += 1;
        }
        let pa = PageAllocator {
            node: Node { mem_map: mm, zones },
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
        setup_per_zone_wmarks(&self.node.zones, min_free_kbytes, self.watermark_scale_factor());
        setup_per_zone_lowmem_reserve(&self.node.zones);
        self.refresh_zone_stat_thresholds();
        self.zone_pcp_update(self.nr_cpus());
    }

    /// Linux `zone_pcp_update` for every zone: recompute pcp batch/high for `nr_cpus` CPUs
    /// (call when secondary CPUs come online).
    pub fn zone_pcp_update(&self, nr_cpus: usize) {
        let nr_cpus = nr_cpus.clamp(1, NR_CPUS);
        self.nr_cpus.store(nr_cpus, Relaxed);
        let frac = self.percpu_pagelist_high_fraction.load(Relaxed);
        for z in self.node.zones.iter() {
            self.zone_set_pageset_high_and_batch(z, nr_cpus, frac);
        }
        self.refresh_zone_stat_thresholds();
    }

    /// `vm.percpu_pagelist_high_fraction` (0 or >= 8).
    pub fn set_percpu_pagelist_high_fraction(&self, frac: u32) -> Result<(), InitError> {
        if frac != 0 && frac < MIN_PERCPU_PAGELIST_HIGH_FRACTION {
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
            .node
            .zones
            .iter()
            .filter(|z| z.populated())
            .map(|z| calculate_normal_threshold(z.managed_pages(), self.nr_cpus()))
            .max()
            .unwrap_or(0);
        self.node_stats.set_threshold(t as i32);
    }

    // ---- memblock_free_all (mm/memblock.c, mm/mm_init.c) -----------------------------------

    /// Linux `__free_pages_core` (MEMINIT_EARLY): hand a reserved block to the buddy:
    /// clear PG_reserved, refcount 0, managed_pages += 2^order, free to the list tail.
    fn __free_pages_core(&self, zone: &Zone, pfn: u64, order: u32) {
        let nr = 1u64 << order;
        for p in pfn..pfn + nr {
            let page = self.node.mem_map.page(p);
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
    fn memblock_free_all(&self, memblock: &Memblock) -> u64 {
        let mut total = 0;
        for (s, e) in memblock.free_ranges() {
            let (spfn, epfn) = (s >> PAGE_SHIFT, e >> PAGE_SHIFT);
            for zone in self.node.zones.iter().filter(|z| z.spanned_pages != 0) {
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
