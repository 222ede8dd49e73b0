//! Zones: Linux `struct zone` (include/linux/mmzone.h), arm64's zone limits
//! (arch/arm64/mm/init.c `dma_limits_init` + `arch_zone_limits_init`), the zone span
//! computation of mm/mm_init.c `free_area_init`, the zonelist (`build_zonerefs_node`), and the
//! sizing formulas of mm/page_alloc.c: `calculate_min_free_kbytes`, `__setup_per_zone_wmarks`,
//! `setup_per_zone_lowmem_reserve`, `zone_batchsize`, `zone_highsize`, and the watermark checks
//! `__zone_watermark_ok` / `zone_watermark_fast`.
//!
//! Not modelled: ZONE_MOVABLE/ZONE_DEVICE, watermark boosting (always 0), highatomic and CMA
//! reserves (always 0), NR_FREE_PAGES per-CPU deltas (we keep one exact atomic counter).
#![forbid(unsafe_code)]
use crate::page::{ListHead, MemMap};
use crate::pcp::PerCpuPageset;
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use mm_types::gfp::{
    AllocFlags, ALLOC_MIN_RESERVE, ALLOC_NON_BLOCK, ALLOC_OOM, ALLOC_RESERVES, MAX_NR_ZONES,
};
use mm_types::{MAX_PAGE_ORDER, PAGE_SHIFT};
use spin::mutex::SpinMutex;

pub use mm_types::gfp::{ZONE_DMA, ZONE_DMA32, ZONE_NORMAL};

/// Linux NR_PAGE_ORDERS.
pub const NR_PAGE_ORDERS: usize = MAX_PAGE_ORDER + 1;

/// Watermark indices (Linux `enum zone_watermarks`).
pub const WMARK_MIN: usize = 0;
pub const WMARK_LOW: usize = 1;
pub const WMARK_HIGH: usize = 2;
pub const WMARK_PROMO: usize = 3;
pub const NR_WMARK: usize = 4;

/// Linux zone_names[].
pub const ZONE_NAMES: [&str; MAX_NR_ZONES] = ["DMA", "DMA32", "Normal"];

/// Linux sysctl_lowmem_reserve_ratio defaults (DMA 256, DMA32 256, Normal 32).
pub const LOWMEM_RESERVE_RATIO: [u64; MAX_NR_ZONES] = [256, 256, 32];

/// Default `vm.watermark_scale_factor`.
pub const WATERMARK_SCALE_FACTOR: u32 = 10;

/// The zone free lists, protected by `zone->lock` (Linux `free_area[order].free_list`,
/// one migratetype). `nr_free` lives in `Zone::nr_free` so watermark checks can read it
/// without the lock, as Linux reads `area->nr_free`.
pub struct ZoneFreeLists {
    pub(super) free_list: [ListHead; NR_PAGE_ORDERS],
}

/// Linux `struct zone`.
pub struct Zone {
    pub name: &'static str,
    /// Zone index (ZONE_DMA, ZONE_DMA32, ZONE_NORMAL).
    pub idx: usize,
    pub zone_start_pfn: u64,
    pub spanned_pages: u64,
    /// RAM pages in the span (holes excluded, reservations included).
    pub present_pages: u64,
    /// Pages handed to the buddy allocator.
    pub(super) managed_pages: AtomicU64,
    pub(super) watermark: [AtomicU64; NR_WMARK],
    pub(super) lowmem_reserve: [AtomicU64; MAX_NR_ZONES],
    /// zone->lock.
    pub(super) lock: SpinMutex<ZoneFreeLists>,
    /// `free_area[order].nr_free`, written under `lock`.
    pub(super) nr_free: [AtomicU32; NR_PAGE_ORDERS],
    /// NR_FREE_PAGES, written under `lock` (pages on pcp lists are not counted, as in Linux).
    pub(super) nr_free_pages: AtomicI64,
    /// ZONE_BELOW_HIGH.
    pub(super) below_high: AtomicBool,
    /// Values last given to the pcps (Linux zone->pageset_{high_min,high_max,batch}).
    pub(super) pageset_high_min: AtomicU32,
    pub(super) pageset_high_max: AtomicU32,
    pub(super) pageset_batch: AtomicU32,
    /// zone->per_cpu_pageset.
    pub(super) per_cpu_pageset: PerCpuPageset,
}

/// A node's memory as the buddy allocator sees it: Linux `pg_data_t`'s `node_zones` and (FLATMEM)
/// `node_mem_map`. The buddy operations ([`crate::buddy`]) take it; `PageAllocator` holds one
/// next to the per-CPU state, counters and tunables.
///
/// Codegen note: the buddy functions reach the mem_map through `&Node`, a reference to atomics
/// (not `noalias`), exactly as they reached it through `&PageAllocator` before the modules were
/// layered; a `&MemMap` parameter would let LLVM keep the mem_map fields in registers across
/// the page stores and inline differently, which measurably changed the benchmark's instruction
/// counts. `zones` comes first so that the mem_map fields keep a large offset (no `ldp`
/// pairing), as in `PageAllocator`.
pub(crate) struct Node<'m> {
    pub(crate) zones: [Zone; MAX_NR_ZONES],
    pub(crate) mem_map: MemMap<'m>,
}

impl Zone {
    pub(super) fn new(idx: usize) -> Self {
        Zone {
            name: ZONE_NAMES[idx],
            idx,
            zone_start_pfn: 0,
            spanned_pages: 0,
            present_pages: 0,
            managed_pages: AtomicU64::new(0),
            watermark: core::array::from_fn(|_| AtomicU64::new(0)),
            lowmem_reserve: core::array::from_fn(|_| AtomicU64::new(0)),
            lock: SpinMutex::new(ZoneFreeLists { free_list: [ListHead::new(); NR_PAGE_ORDERS] }),
            nr_free: core::array::from_fn(|_| AtomicU32::new(0)),
            nr_free_pages: AtomicI64::new(0),
            below_high: AtomicBool::new(false),
            pageset_high_min: AtomicU32::new(0),
            pageset_high_max: AtomicU32::new(0),
            pageset_batch: AtomicU32::new(1),
            per_cpu_pageset: PerCpuPageset::new_boot(),
        }
    }

    /// One past the last PFN of the span (`zone_end_pfn`).
    #[inline]
    pub fn zone_end_pfn(&self) -> u64 {
        self.zone_start_pfn + self.spanned_pages
    }
    #[inline]
    pub fn zone_spans_pfn(&self, pfn: u64) -> bool {
        pfn >= self.zone_start_pfn && pfn < self.zone_end_pfn()
    }
    /// `populated_zone`.
    #[inline]
    pub fn populated(&self) -> bool {
        self.present_pages != 0
    }
    /// `zone_managed_pages`.
    #[inline]
    pub fn managed_pages(&self) -> u64 {
        self.managed_pages.load(Relaxed)
    }
    /// `zone_page_state(zone, NR_FREE_PAGES)`.
    #[inline]
    pub fn nr_free_pages(&self) -> i64 {
        self.nr_free_pages.load(Relaxed)
    }
    /// `free_area[order].nr_free`.
    #[inline]
    pub fn nr_free(&self, order: usize) -> u32 {
        self.nr_free[order].load(Relaxed)
    }
    /// `wmark_pages(zone, i)` (no boost).
    #[inline]
    pub fn wmark_pages(&self, i: usize) -> u64 {
        self.watermark[i].load(Relaxed)
    }
    pub fn min_wmark_pages(&self) -> u64 {
        self.wmark_pages(WMARK_MIN)
    }
    pub fn low_wmark_pages(&self) -> u64 {
        self.wmark_pages(WMARK_LOW)
    }
    pub fn high_wmark_pages(&self) -> u64 {
        self.wmark_pages(WMARK_HIGH)
    }
    pub fn lowmem_reserve(&self, j: usize) -> u64 {
        self.lowmem_reserve[j].load(Relaxed)
    }
    /// Batch/high_min/high_max currently given to this zone's pcps.
    pub fn pageset_batch(&self) -> u32 {
        self.pageset_batch.load(Relaxed)
    }
    pub fn pageset_high_min(&self) -> u32 {
        self.pageset_high_min.load(Relaxed)
    }
    pub fn pageset_high_max(&self) -> u32 {
        self.pageset_high_max.load(Relaxed)
    }
    #[inline]
    pub(super) fn is_below_high(&self) -> bool {
        self.below_high.load(Relaxed)
    }

    /// Linux `__zone_watermark_unusable_free`: no highatomic/CMA reserves here.
    #[inline]
    fn unusable_free(order: u32) -> i64 {
        (1i64 << order) - 1
    }

    /// Linux `__zone_watermark_ok`.
    pub fn __zone_watermark_ok(
        &self,
        order: u32,
        mark: u64,
        highest_zoneidx: usize,
        alloc_flags: AllocFlags,
        free_pages: i64,
    ) -> bool {
        let mut min = mark as i64;
        let free_pages = free_pages - Self::unusable_free(order);
        if alloc_flags & ALLOC_RESERVES != 0 {
            // __GFP_HIGH allows access to 50% of the min reserve, GFP_ATOMIC a further 25%.
            if alloc_flags & ALLOC_MIN_RESERVE != 0 {
                min -= min / 2;
                if alloc_flags & ALLOC_NON_BLOCK != 0 {
                    min -= min / 4;
                }
            }
            if alloc_flags & ALLOC_OOM != 0 {
                min -= min / 2;
            }
        }
        if free_pages <= min + self.lowmem_reserve(highest_zoneidx) as i64 {
            return false;
        }
        if order == 0 {
            return true;
        }
        // For a high-order request, check at least one suitable page is free.
        (order as usize..NR_PAGE_ORDERS).any(|o| self.nr_free(o) != 0)
    }

    /// Linux `zone_watermark_ok`.
    pub fn zone_watermark_ok(
        &self,
        order: u32,
        mark: u64,
        highest_zoneidx: usize,
        alloc_flags: AllocFlags,
    ) -> bool {
        self.__zone_watermark_ok(order, mark, highest_zoneidx, alloc_flags, self.nr_free_pages())
    }

    /// Linux `zone_watermark_fast` (the boost special case never applies: no boosting).
    /// Always inlined, as Linux's `static inline` one: get_page_from_freelist calls it twice.
    #[inline(always)]
    pub fn zone_watermark_fast(
        &self,
        order: u32,
        mark: u64,
        highest_zoneidx: usize,
        alloc_flags: AllocFlags,
    ) -> bool {
        let free_pages = self.nr_free_pages();
        if order == 0 {
            let reserved = Self::unusable_free(0);
            let usable = free_pages - free_pages.min(reserved);
            if usable > (mark + self.lowmem_reserve(highest_zoneidx)) as i64 {
                return true;
            }
        }
        self.__zone_watermark_ok(order, mark, highest_zoneidx, alloc_flags, free_pages)
    }
}

/// `PFN_DOWN`.
#[inline]
pub const fn pfn_down(addr: u64) -> u64 {
    addr >> PAGE_SHIFT
}
/// `PFN_UP`.
#[inline]
pub const fn pfn_up(addr: u64) -> u64 {
    (addr + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT
}

/// arm64 `max_zone_pfns[]` (arch/arm64/mm/init.c): `dma_limits_init` then
/// `arch_zone_limits_init`.
///
/// `zone_dma_limit` is the highest CPU address every DMA master can reach (Linux
/// `min(of_dma_get_max_cpu_address(), acpi_iort_dma_get_max_cpu_address())`, inclusive, e.g.
/// 0x3fff_ffff on a Raspberry Pi 4); `None` = no constraint (PHYS_ADDR_MAX). When DRAM starts
/// below 4 GiB the DMA limit is capped at 32 bits, so with no constraint ZONE_DMA covers all
/// RAM below 4 GiB and ZONE_DMA32 is empty; ZONE_NORMAL holds RAM above 4 GiB.
pub fn arch_zone_limits(
    dram_start: u64,
    dram_end: u64,
    zone_dma_limit: Option<u64>,
) -> [u64; MAX_NR_ZONES] {
    const U32_MAX: u64 = u32::MAX as u64;
    let max_zone_phys = |limit: u64| limit.min(dram_end.saturating_sub(1)) + 1;
    let mut dma_limit = zone_dma_limit.unwrap_or(u64::MAX);
    if dram_start < U32_MAX {
        dma_limit = dma_limit.min(U32_MAX);
    }
    let mut z = [0u64; MAX_NR_ZONES];
    z[ZONE_DMA] = pfn_down(max_zone_phys(dma_limit));
    z[ZONE_DMA32] = pfn_down(max_zone_phys(U32_MAX));
    z[ZONE_NORMAL] = pfn_down(dram_end);
    z
}

/// Zone spans from `max_zone_pfns` (mm/mm_init.c `free_area_init`: each zone starts where the
/// previous one ended, clamped to the node's `[start_pfn, end_pfn)`). Returns (start, end) pairs.
pub fn zone_spans(
    node_start_pfn: u64,
    node_end_pfn: u64,
    max_zone_pfn: &[u64; MAX_NR_ZONES],
) -> [(u64, u64); MAX_NR_ZONES] {
    let mut out = [(0, 0); MAX_NR_ZONES];
    let mut start = node_start_pfn;
    for (i, &m) in max_zone_pfn.iter().enumerate() {
        let end = m.max(start);
        let (s, e) =
            (start.clamp(node_start_pfn, node_end_pfn), end.clamp(node_start_pfn, node_end_pfn));
        out[i] = (s, e);
        start = end;
    }
    out
}

/// Linux `int_sqrt` (floor of the square root, bit by bit as lib/math/int_sqrt.c).
pub fn int_sqrt(mut x: u64) -> u64 {
    if x <= 1 {
        return x;
    }
    let mut m = 1u64 << ((63 - x.leading_zeros()) & !1);
    let mut y = 0u64;
    while m != 0 {
        let b = y + m;
        y >>= 1;
        if x >= b {
            x -= b;
            y += m;
        }
        m >>= 2;
    }
    y
}

/// Linux `rounddown_pow_of_two`.
#[inline]
pub fn rounddown_pow_of_two(n: u64) -> u64 {
    debug_assert!(n > 0);
    1u64 << (63 - n.leading_zeros())
}

/// Linux `fls` (1-based index of the highest set bit, 0 for 0).
#[inline]
pub fn fls(x: u64) -> u32 {
    64 - x.leading_zeros()
}

/// Linux `mult_frac(x, n, d)`.
#[inline]
pub fn mult_frac(x: u64, n: u64, d: u64) -> u64 {
    (x / d) * n + ((x % d) * n) / d
}

/// Linux `calculate_min_free_kbytes`: `min_free_kbytes = clamp(int_sqrt(lowmem_kbytes * 16),
/// 128, 262144)` where lowmem_kbytes is `nr_free_buffer_pages()` in KiB (managed pages minus the
/// high watermark of ZONE_DMA..ZONE_NORMAL; at boot the watermarks are still 0).
pub fn calculate_min_free_kbytes(lowmem_kbytes: u64) -> u64 {
    int_sqrt(lowmem_kbytes * 16).clamp(128, 262144)
}

/// Linux `__setup_per_zone_wmarks`: min = pages_min * managed / lowmem_pages;
/// low = min + max(min/4, managed * watermark_scale_factor / 10000); high = low + same;
/// promo = high + same.
pub fn setup_per_zone_wmarks(zones: &[Zone], min_free_kbytes: u64, watermark_scale_factor: u32) {
    let pages_min = min_free_kbytes >> (PAGE_SHIFT - 10);
    let lowmem_pages: u64 = zones.iter().map(|z| z.managed_pages()).sum();
    for z in zones {
        let managed = z.managed_pages();
        let mut tmp = (pages_min * managed).checked_div(lowmem_pages).unwrap_or(0);
        // No highmem/movable zones on arm64: every zone is lowmem.
        z.watermark[WMARK_MIN].store(tmp, Relaxed);
        tmp = (tmp >> 2).max(mult_frac(managed, watermark_scale_factor as u64, 10000));
        let low = z.min_wmark_pages() + tmp;
        let high = low + tmp;
        z.watermark[WMARK_LOW].store(low, Relaxed);
        z.watermark[WMARK_HIGH].store(high, Relaxed);
        z.watermark[WMARK_PROMO].store(high + tmp, Relaxed);
    }
}

/// Linux `setup_per_zone_lowmem_reserve`.
pub fn setup_per_zone_lowmem_reserve(zones: &[Zone]) {
    for i in 0..zones.len() {
        let ratio = LOWMEM_RESERVE_RATIO[i];
        let clear = ratio == 0 || zones[i].managed_pages() == 0;
        let mut managed = 0;
        for j in i + 1..zones.len() {
            managed += zones[j].managed_pages();
            zones[i].lowmem_reserve[j].store(if clear { 0 } else { managed / ratio }, Relaxed);
        }
    }
}

/// Linux `zone_batchsize`: ~0.025% of the zone or 256 KiB, whichever is smaller, clamped to a
/// 2^n - 1 value: `batch = min(managed >> 12, 64); batch <= 1 ? 1 : rounddown_pow_of_two(batch
/// + batch/2) - 1`. 63 for every zone larger than 1 GiB.
pub fn zone_batchsize(managed_pages: u64) -> u32 {
    let batch = (managed_pages >> 12).min((256 * 1024 / mm_types::PAGE_SIZE) as u64);
    if batch <= 1 {
        return 1;
    }
    (rounddown_pow_of_two(batch + batch / 2) - 1) as u32
}

/// Linux `zone_highsize`: `total / nr_split_cpus`, at least `batch * 4`, where total is the low
/// watermark (`high_fraction == 0`) or `managed / high_fraction`.
pub fn zone_highsize(
    low_wmark: u64,
    managed_pages: u64,
    batch: u32,
    nr_cpus: usize,
    high_fraction: u32,
) -> u32 {
    let total = if high_fraction == 0 { low_wmark } else { managed_pages / high_fraction as u64 };
    let nr_split_cpus = nr_cpus.max(1) as u64;
    let high = total / nr_split_cpus;
    high.max((batch as u64) << 2).min(i32::MAX as u64) as u32
}

/// Linux `calculate_normal_threshold` (mm/vmstat.c): per-CPU stat delta threshold.
pub fn calculate_normal_threshold(managed_pages: u64, nr_cpus: usize) -> u32 {
    let mem = managed_pages >> (27 - PAGE_SHIFT);
    let threshold = 2 * fls(nr_cpus as u64) * (1 + fls(mem));
    threshold.min(125)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_free_kbytes_table() {
        // The table in Linux's comment above calculate_min_free_kbytes.
        for (mb, kb) in
            [(16u64, 512u64), (64, 1024), (1024, 4096), (2048, 5792), (4096, 8192), (16384, 16384)]
        {
            assert_eq!(calculate_min_free_kbytes(mb * 1024), kb, "{} MB", mb);
        }
        assert_eq!(calculate_min_free_kbytes(1), 128);
        assert_eq!(calculate_min_free_kbytes(1 << 40), 262144);
    }

    #[test]
    fn batchsize() {
        // min(managed >> 12, 64) then rounddown_pow_of_two(b + b/2) - 1.
        assert_eq!(zone_batchsize(524288), 63); // 2 GiB: min(128, 64)=64 -> rdp2(96)-1 = 63
        assert_eq!(zone_batchsize(262144), 63); // 1 GiB: 64 -> 63
        assert_eq!(zone_batchsize(131072), 31); // 512 MiB: 32 -> rdp2(48)-1 = 31
        assert_eq!(zone_batchsize(65536), 15); // 256 MiB: 16 -> rdp2(24)-1 = 15
        assert_eq!(zone_batchsize(16384), 3); // 64 MiB: 4 -> rdp2(6)-1 = 3
        assert_eq!(zone_batchsize(8191), 1); // 1 -> 1
    }

    #[test]
    fn arm64_zone_limits() {
        // QEMU virt, 2 GiB at 1 GiB, no dma-ranges: ZONE_DMA = all RAM, DMA32 and Normal empty.
        let z = arch_zone_limits(0x4000_0000, 0xc000_0000, None);
        assert_eq!(z, [0xc0000, 0xc0000, 0xc0000]);
        let s = zone_spans(0x40000, 0xc0000, &z);
        assert_eq!(s, [(0x40000, 0xc0000), (0xc0000, 0xc0000), (0xc0000, 0xc0000)]);
        // Raspberry Pi 4, 8 GiB, 30-bit DMA: DMA < 1 GiB, DMA32 < 4 GiB, Normal above.
        let z = arch_zone_limits(0, 0x2_0000_0000, Some(0x3fff_ffff));
        assert_eq!(z, [0x40000, 0x100000, 0x200000]);
        let s = zone_spans(0, 0x200000, &z);
        assert_eq!(s, [(0, 0x40000), (0x40000, 0x100000), (0x100000, 0x200000)]);
        // 8 GiB at 1 GiB, no DMA limit: DMA = [1G, 4G), DMA32 empty, Normal the rest.
        let z = arch_zone_limits(0x4000_0000, 0x2_4000_0000, None);
        let s = zone_spans(0x40000, 0x240000, &z);
        assert_eq!(s, [(0x40000, 0x100000), (0x100000, 0x100000), (0x100000, 0x240000)]);
        // DRAM entirely above 4 GiB and no limit: ZONE_DMA covers everything.
        let z = arch_zone_limits(0x8_0000_0000, 0x8_8000_0000, None);
        let s = zone_spans(0x800000, 0x880000, &z);
        assert_eq!(s, [(0x800000, 0x880000), (0x880000, 0x880000), (0x880000, 0x880000)]);
    }

    #[test]
    fn helpers() {
        assert_eq!(int_sqrt(33554432), 5792);
        assert_eq!(int_sqrt(16), 4);
        assert_eq!(int_sqrt(15), 3);
        assert_eq!(mult_frac(524288, 10, 10000), 524);
        assert_eq!(fls(0), 0);
        assert_eq!(fls(1), 1);
        assert_eq!(fls(4), 3);
        assert_eq!(calculate_normal_threshold(524288, 4), 2 * 3 * (1 + 5));
        assert_eq!(calculate_normal_threshold(1 << 30, 64), 125);
    }
}
