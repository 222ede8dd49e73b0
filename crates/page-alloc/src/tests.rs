//! Host tests of the page allocator (memblock -> zones -> buddy -> pcp -> API), against
//! hand-computed Linux formulas and a model (proptest).
#![forbid(unsafe_code)]
use crate::memblock::Memblock;
use crate::page::Page;
use crate::page_alloc::{
    contig_chunk_order, num_pages_contiguous, BadPage, PageAllocConfig, PageAllocHooks,
    PageAllocator,
};
use crate::pcp::order_to_pindex;
use crate::stat::{NodeStatItem, VmEvent};
use crate::zone::WMARK_MIN;
use mm_types::gfp::{GfpFlags as G, ZONE_DMA, ZONE_DMA32, ZONE_NORMAL};
use mm_types::{MAX_PAGE_ORDER, NR_CPUS, PAGE_SHIFT};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::string::{String, ToString};
use std::sync::atomic::{AtomicU8, Ordering};
use std::vec;
use std::vec::Vec;

std::thread_local! {
    static ZEROED: RefCell<Vec<(u64, usize)>> = const { RefCell::new(Vec::new()) };
    static WARNINGS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn zero_hook(pfn: u64, nr: usize) {
    ZEROED.with(|z| z.borrow_mut().push((pfn, nr)));
}
fn warn_hook(args: core::fmt::Arguments<'_>) {
    WARNINGS.with(|w| w.borrow_mut().push(args.to_string()));
}
fn last_zeroed() -> Option<(u64, usize)> {
    ZEROED.with(|z| z.borrow().last().copied())
}
fn nr_warnings() -> usize {
    WARNINGS.with(|w| w.borrow().len())
}

const HOOKS: PageAllocHooks = PageAllocHooks {
    zero: zero_hook,
    warn: warn_hook,
    irq_save: irq_save_hook,
    irq_restore: irq_restore_hook,
};

std::thread_local! {
    /// Simulated DAIF.I of the test thread's "CPU", and how many times the zone lock masked it.
    static IRQS_OFF: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    static IRQ_SAVES: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}
fn irq_save_hook() -> usize {
    IRQ_SAVES.with(|c| c.set(c.get() + 1));
    IRQS_OFF.with(|f| f.replace(true)) as usize
}
fn irq_restore_hook(flags: usize) {
    IRQS_OFF.with(|f| f.set(flags != 0));
}

/// A simulated machine: memblock + a mem_map Vec covering all its PFNs.
struct Machine {
    pages: Vec<Page>,
    mb: Memblock,
    min_pfn: u64,
}

impl Machine {
    fn new(ram: &[(u64, u64)], reserved: &[(u64, u64)]) -> Self {
        let mut mb = Memblock::new();
        for &(b, s) in ram {
            mb.add(b, s).unwrap();
        }
        for &(b, s) in reserved {
            mb.reserve(b, s).unwrap();
        }
        let min_pfn = mb.start_of_dram() >> PAGE_SHIFT;
        let max_pfn = (mb.end_of_dram() + 4095) >> PAGE_SHIFT;
        let pages = (min_pfn..max_pfn).map(|_| Page::new()).collect();
        Machine { pages, mb, min_pfn }
    }

    fn pa(&self, cfg: PageAllocConfig) -> PageAllocator<'_> {
        PageAllocator::new(&self.pages, self.min_pfn, &self.mb, &cfg).unwrap()
    }
}

fn cfg(nr_cpus: usize, dma_limit: Option<u64>) -> PageAllocConfig {
    PageAllocConfig { nr_cpus, zone_dma_limit: dma_limit, hooks: HOOKS, ..Default::default() }
}

/// Machine "B": 16 MiB + 8 MiB with a 4 MiB hole, everything 4 MiB aligned, no reservations;
/// ZONE_DMA below 8 MiB (2048 pages), ZONE_DMA32 the rest (4096 pages present).
fn machine_b() -> Machine {
    Machine::new(&[(0x4000_0000, 16 << 20), (0x4140_0000, 8 << 20)], &[])
}
const B_DMA_LIMIT: Option<u64> = Some(0x407f_ffff);
const B_HOLE_PFN: u64 = 0x41100;

/// Machine "A": like B but with unaligned reservations (kernel image, a DTB, a firmware page).
fn machine_a() -> Machine {
    Machine::new(
        &[(0x4000_0000, 16 << 20), (0x4140_0000, 8 << 20)],
        &[
            (0x4000_0000, 0x2_3000),
            (0x4080_5000, 0x1000),
            (0x41bf_e000, 0x2000),
            (0x4123_0000, 0x10),
        ],
    )
}

/// Verifies the allocator and the conservation law `free + pcp + owned == managed`.
fn check(pa: &PageAllocator, owned_pages: u64) -> crate::page_alloc::VerifyReport {
    let rep = pa.verify(|_, _, _| {}).unwrap_or_else(|e| panic!("{}", e));
    let buddy: u64 = rep.buddy_pages.iter().sum();
    let pcp: u64 = rep.pcp_pages.iter().sum();
    assert_eq!(buddy, pa.nr_free_pages_total());
    assert_eq!(
        buddy + pcp + owned_pages,
        pa.totalram_pages(),
        "free {} + pcp {} + owned {}",
        buddy,
        pcp,
        owned_pages
    );
    rep
}

fn chunks(mut pfn: u64, mut n: u64) -> Vec<u32> {
    let mut v = Vec::new();
    while n != 0 {
        let o = contig_chunk_order(pfn, n);
        v.push(o);
        pfn += 1 << o;
        n -= 1 << o;
    }
    v
}

fn ev(pa: &PageAllocator, e: impl crate::stat::EventIndex + Copy) -> u64 {
    pa.sum_vm_event(e)
}

// ---- boot ------------------------------------------------------------------------------------

#[test]
fn boot_release_in_max_order_blocks() {
    let m = machine_b();
    let pa = m.pa(cfg(3, B_DMA_LIMIT));
    let z0 = pa.zone(ZONE_DMA);
    let z1 = pa.zone(ZONE_DMA32);
    assert_eq!((z0.zone_start_pfn, z0.spanned_pages, z0.present_pages), (0x40000, 2048, 2048));
    assert_eq!((z1.zone_start_pfn, z1.spanned_pages, z1.present_pages), (0x40800, 0x1400, 4096));
    assert!(!pa.zone(ZONE_NORMAL).populated());
    assert_eq!(z0.managed_pages(), 2048);
    assert_eq!(z1.managed_pages(), 4096);
    let rep = check(&pa, 0);
    assert_eq!(rep.nr_free[ZONE_DMA][MAX_PAGE_ORDER], 2);
    assert_eq!(rep.nr_free[ZONE_DMA32][MAX_PAGE_ORDER], 4);
    // Holes stay reserved with their initial reference.
    let hole = pa.pfn_to_page(B_HOLE_PFN).unwrap();
    assert!(hole.is_reserved() && hole.page_count() == 1);
    assert_eq!(hole.zone_idx(), ZONE_DMA32 as u8);
}

#[test]
fn boot_release_with_reservations() {
    let m = machine_a();
    let pa = m.pa(cfg(1, B_DMA_LIMIT));
    let expect_managed = (m.mb.free_ranges().map(|(s, e)| e - s).sum::<u64>()) >> PAGE_SHIFT;
    assert_eq!(pa.totalram_pages(), expect_managed);
    let rep = check(&pa, 0);
    // First free pfn 0x40023: blocks 0x40023 (o0), 0x40024 (o2), 0x40028 (o3), 0x40030 (o4),
    // 0x40040 (o6), 0x40080 (o7), 0x40100 (o8), 0x40200 (o9), then order 10 from 0x40400.
    let mut heads = BTreeMap::new();
    pa.verify(|pfn, order, _| {
        heads.insert(pfn, order);
    })
    .unwrap();
    for (pfn, o) in [
        (0x40023, 0),
        (0x40024, 2),
        (0x40028, 3),
        (0x40030, 4),
        (0x40040, 6),
        (0x40080, 7),
        (0x40100, 8),
        (0x40200, 9),
        (0x40400, 10),
    ] {
        assert_eq!(heads.get(&pfn), Some(&o), "pfn {:#x}", pfn);
    }
    assert!(rep.nr_free[ZONE_DMA32][MAX_PAGE_ORDER] >= 1);
    assert!(pa.pfn_to_page(0x40000).unwrap().is_reserved());
    assert!(pa.pfn_to_page(0x40805).unwrap().is_reserved());
    assert!(pa.pfn_to_page(0x41230).unwrap().is_reserved()); // 16 bytes reserve the page
}

#[test]
fn sizes() {
    std::println!(
        "struct page {} bytes, PageAllocator {} bytes, Zone {} bytes",
        core::mem::size_of::<Page>(),
        core::mem::size_of::<PageAllocator>(),
        core::mem::size_of::<crate::zone::Zone>()
    );
    assert_eq!(core::mem::size_of::<Page>(), 32);
}

#[test]
fn mem_map_must_cover_ram() {
    let m = machine_b();
    let r = PageAllocator::new(&m.pages[..100], m.min_pfn, &m.mb, &cfg(1, None));
    assert!(matches!(r, Err(crate::page_alloc::InitError::MemMapTooSmall { .. })));
    assert!(PageAllocator::new(&m.pages, m.min_pfn, &m.mb, &cfg(0, None)).is_err());
    assert!(PageAllocator::new(&m.pages, m.min_pfn, &m.mb, &cfg(NR_CPUS + 1, None)).is_err());
}

// ---- formulas ----------------------------------------------------------------------------------

#[test]
fn pcp_batch_high_2g_single_zone() {
    // QEMU virt, 2 GiB at 1 GiB, no dma-ranges: one ZONE_DMA of 524288 managed pages.
    let m = Machine::new(&[(0x4000_0000, 2 << 30)], &[]);
    for (cpus, high_min, high_max) in [(1usize, 1972u32, 65536u32), (4, 493, 16384)] {
        let pa = m.pa(cfg(cpus, None));
        let z = pa.zone(ZONE_DMA);
        assert_eq!(z.managed_pages(), 524288);
        // min_free_kbytes = int_sqrt(524288 * 4 KiB * 16) = int_sqrt(33554432) = 5792
        assert_eq!(pa.min_free_kbytes(), 5792);
        // min = 5792 >> 2 = 1448; delta = max(1448 / 4 = 362, mult_frac(524288, 10, 10000) = 524)
        assert_eq!(z.min_wmark_pages(), 1448);
        assert_eq!(z.low_wmark_pages(), 1448 + 524);
        assert_eq!(z.high_wmark_pages(), 1448 + 2 * 524);
        // batch = min(524288 >> 12 = 128, 64) = 64 -> rounddown_pow_of_two(96) - 1 = 63
        assert_eq!(z.pageset_batch(), 63);
        // high_min = low / cpus (>= 4 * batch); high_max = managed / 8 / cpus
        assert_eq!(z.pageset_high_min(), high_min, "cpus {}", cpus);
        assert_eq!(z.pageset_high_max(), high_max, "cpus {}", cpus);
        let p = pa.pcp_snapshot(cpus - 1, ZONE_DMA);
        assert_eq!((p.batch, p.high_min, p.high_max), (63, high_min as i32, high_max as i32));
        if cpus == 4 {
            let mut s = String::new();
            pa.show_mem(&mut s).unwrap();
            std::println!("{}", s);
        }
    }
}

#[test]
fn pcp_batch_high_two_zones_and_small_zones() {
    // 512 MiB straddling 4 GiB, no DMA limit: ZONE_DMA [3.75G, 4G) and ZONE_NORMAL [4G, 4.25G),
    // 65536 pages each, 2 CPUs.
    let m = Machine::new(&[(0xf000_0000, 512 << 20)], &[]);
    let pa = m.pa(cfg(2, None));
    let (dma, normal) = (pa.zone(ZONE_DMA), pa.zone(ZONE_NORMAL));
    assert_eq!((dma.managed_pages(), normal.managed_pages()), (65536, 65536));
    assert!(!pa.zone(ZONE_DMA32).populated());
    // int_sqrt(131072 * 4 * 16) = int_sqrt(8388608) = 2896 (Linux table: 512MB -> 2896k)
    assert_eq!(pa.min_free_kbytes(), 2896);
    for z in [dma, normal] {
        // pages_min 724 split by managed pages: 362 each; delta = max(90, 65) = 90
        assert_eq!(z.min_wmark_pages(), 362);
        assert_eq!(z.low_wmark_pages(), 452);
        assert_eq!(z.high_wmark_pages(), 542);
        // batch: min(16, 64) = 16 -> rounddown_pow_of_two(24) - 1 = 15
        assert_eq!(z.pageset_batch(), 15);
        assert_eq!(z.pageset_high_min(), 452 / 2);
        assert_eq!(z.pageset_high_max(), 65536 / 8 / 2);
    }
    // lowmem_reserve[DMA][NORMAL] = managed(DMA32 + NORMAL) / 256.
    assert_eq!(dma.lowmem_reserve(ZONE_NORMAL), 256);
    assert_eq!(dma.lowmem_reserve(ZONE_DMA32), 0);

    // 64 MiB, 8 CPUs: batch min(4, 64) -> rounddown_pow_of_two(6) - 1 = 3;
    // min_free_kbytes = int_sqrt(65536 * 16) = 1024 -> min 256, low 256 + max(64, 16) = 320.
    let m = Machine::new(&[(0x4000_0000, 64 << 20)], &[]);
    let pa = m.pa(cfg(8, None));
    let z = pa.zone(ZONE_DMA);
    assert_eq!((z.min_wmark_pages(), z.low_wmark_pages()), (256, 320));
    assert_eq!(z.pageset_batch(), 3);
    assert_eq!(z.pageset_high_min(), 320 / 8); // 40 >= 4 * 3
    assert_eq!(z.pageset_high_max(), 16384 / 8 / 8);
    // NR_VMALLOC threshold: 2 * fls(8) * (1 + fls(16384 >> 15 = 0)) = 8
    assert_eq!(pa.stat_threshold(), 8);

    // Tiny zone: batch 1, high at least 4 * batch.
    let m = machine_b();
    let pa = m.pa(cfg(3, B_DMA_LIMIT));
    assert_eq!(pa.zone(ZONE_DMA).pageset_batch(), 1);
    // min_free_kbytes = int_sqrt(6144 * 4 * 16) = 627 -> 156 pages: DMA gets 156*2048/6144 = 52
    assert_eq!(pa.min_free_kbytes(), 627);
    assert_eq!(pa.zone(ZONE_DMA).min_wmark_pages(), 52);
    assert_eq!(pa.zone(ZONE_DMA32).min_wmark_pages(), 104);
    assert_eq!(pa.zone(ZONE_DMA).low_wmark_pages(), 52 + 13);
    assert_eq!(pa.zone(ZONE_DMA).pageset_high_min(), 65 / 3);
}

#[test]
fn free_contig_range_chunking() {
    // The example in the patch: pfn 0x1003, 13 pages -> orders 0, 2, 3.
    assert_eq!(chunks(0x1003, 13), [0, 2, 3]);
    assert_eq!(chunks(0x1000, 16), [4]);
    assert_eq!(chunks(0x1000, 2048), [10, 10]);
    assert_eq!(chunks(0, 1025), [10, 0]);
    assert_eq!(chunks(0x200, 0x600), [9, 10]);
    assert_eq!(chunks(0x1001, 15), [0, 1, 2, 3]);
    assert_eq!(chunks(0x1001, 16), [0, 1, 2, 3, 0]);
    assert_eq!(chunks(5, 3), [0, 1]);
    assert_eq!(chunks(0x40001, 1), [0]);
    assert_eq!(chunks(0x40200, 513), [9, 0]);
    assert_eq!(num_pages_contiguous(&[5, 6, 7, 9, 10]), 3);
    assert_eq!(num_pages_contiguous(&[5]), 1);
    assert_eq!(num_pages_contiguous(&[]), 0);
    assert_eq!(num_pages_contiguous(&[7, 6]), 1);
}

#[test]
fn free_contig_range_frees_chunks_through_pcp_and_buddy() {
    let m = machine_b();
    let pa = m.pa(cfg(1, B_DMA_LIMIT));
    // An order-4 block, split; free its pages 3..16 (13 pages at base+3) in one call.
    let base = pa.alloc_pages(0, G::GFP_KERNEL, 4).unwrap();
    pa.split_page(base, 4).unwrap();
    let before: Vec<u64> =
        (0..=MAX_PAGE_ORDER as u32).map(|o| ev(&pa, VmEvent::pgfree_order(o))).collect();
    pa.__free_contig_range(0, base + 3, 13).unwrap();
    let after: Vec<u64> =
        (0..=MAX_PAGE_ORDER as u32).map(|o| ev(&pa, VmEvent::pgfree_order(o))).collect();
    let d: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(&d[..5], &[1, 0, 1, 1, 0]);
    // Order 2 and 3 chunks are on the pcp lists of their order.
    let mut o2 = Vec::new();
    pa.pcp_list_for_each(0, ZONE_DMA32, order_to_pindex(2), |p| o2.push(p));
    assert!(o2.contains(&(base + 4)));
    let mut o3 = Vec::new();
    pa.pcp_list_for_each(0, ZONE_DMA32, order_to_pindex(3), |p| o3.push(p));
    assert!(o3.contains(&(base + 8)));
    check(&pa, 3);
    // The rest one by one via the old path: three order-0 frees.
    pa.free_contig_range(0, base, 3).unwrap();
    assert_eq!(ev(&pa, VmEvent::pgfree_order(0)) - after[0], 3);
    check(&pa, 0);

    // A whole split order-9 block through free_pages_bulk: one order-9 free (pcp list 9).
    let b9 = pa.alloc_pages(0, G::GFP_KERNEL, 9).unwrap();
    pa.split_page(b9, 9).unwrap();
    let pages: Vec<u64> = (b9..b9 + 512).collect();
    let f9 = ev(&pa, VmEvent::pgfree_order(9));
    pa.free_pages_bulk(0, &pages, || {}).unwrap();
    assert_eq!(ev(&pa, VmEvent::pgfree_order(9)), f9 + 1);
    // A split order-6 block (not a pcp order): goes straight to the buddy under the zone lock.
    let b6 = pa.alloc_pages(0, G::GFP_KERNEL, 6).unwrap();
    pa.split_page(b6, 6).unwrap();
    let locks = ev(&pa, VmEvent::ZoneLock);
    pa.free_pages_bulk(0, &(b6..b6 + 64).collect::<Vec<_>>(), || {}).unwrap();
    assert_eq!(ev(&pa, VmEvent::ZoneLock), locks + 1);
    check(&pa, 0);
}

#[test]
fn vfree_old_vs_new_free_pattern() {
    // Old vfree: __free_page per page -> 16 order-0 pcp frees; new: one order-4 free.
    let m = machine_b();
    let pa = m.pa(cfg(1, B_DMA_LIMIT));
    let b = pa.alloc_pages(0, G::GFP_KERNEL, 4).unwrap();
    pa.split_page(b, 4).unwrap();
    let f0 = ev(&pa, VmEvent::pgfree_order(0));
    for p in b..b + 16 {
        pa.__free_page(0, p).unwrap();
    }
    assert_eq!(ev(&pa, VmEvent::pgfree_order(0)) - f0, 16);
    let b = pa.alloc_pages(0, G::GFP_KERNEL, 4).unwrap();
    pa.split_page(b, 4).unwrap();
    let f4 = ev(&pa, VmEvent::pgfree_order(4));
    pa.free_pages_bulk(0, &(b..b + 16).collect::<Vec<_>>(), || {}).unwrap();
    assert_eq!(ev(&pa, VmEvent::pgfree_order(4)) - f4, 1);
    // A page still referenced elsewhere is skipped (refcount drops to 1), cutting the run.
    let b = pa.alloc_pages(0, G::GFP_KERNEL, 3).unwrap();
    pa.split_page(b, 3).unwrap();
    pa.get_page(b + 5).unwrap();
    let (f0, f2) = (ev(&pa, VmEvent::pgfree_order(0)), ev(&pa, VmEvent::pgfree_order(2)));
    pa.__free_contig_range(0, b, 8).unwrap();
    // [b, b+5) -> orders 2, 0; b+5 kept; [b+6, b+8) -> order 1.
    assert_eq!(ev(&pa, VmEvent::pgfree_order(2)) - f2, 1);
    assert_eq!(ev(&pa, VmEvent::pgfree_order(0)) - f0, 1);
    assert_eq!(pa.pfn_to_page(b + 5).unwrap().page_count(), 1);
    check(&pa, 1);
    pa.put_page(0, b + 5).unwrap();
    check(&pa, 0);
}

// ---- pcp ---------------------------------------------------------------------------------------

#[test]
fn pcp_refill_takes_one_lock_per_batch() {
    let m = Machine::new(&[(0x4000_0000, 2 << 30)], &[]);
    let pa = m.pa(cfg(1, None));
    let (l0, r0) = (ev(&pa, VmEvent::ZoneLock), ev(&pa, VmEvent::PcpRefill));
    let first = pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap();
    // nr_pcp_alloc: high = clamp(0, 1972, 65536) = 1972, raised by batch to 2035;
    // max_nr_alloc = max(2035 - 0 - 63, 63) = 1972 >= 63 -> alloc_factor 1; refill 63.
    assert_eq!(ev(&pa, VmEvent::ZoneLock) - l0, 1);
    assert_eq!(ev(&pa, VmEvent::PcpRefill) - r0, 1);
    assert_eq!(ev(&pa, VmEvent::PcpRefillPages), 63);
    let p = pa.pcp_snapshot(0, ZONE_DMA);
    assert_eq!((p.count, p.high, p.alloc_factor), (62, 2035, 1));
    // The refill came in physical order: the next pages follow the first.
    let mut got = vec![first];
    for _ in 0..62 {
        got.push(pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap());
    }
    assert_eq!(ev(&pa, VmEvent::ZoneLock) - l0, 1, "62 more pages without the zone lock");
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
    // Second refill: batch 63 << 1 = 126 (high 2161, max_nr_alloc 2098): one lock again.
    pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap();
    assert_eq!(ev(&pa, VmEvent::ZoneLock) - l0, 2);
    assert_eq!(ev(&pa, VmEvent::PcpRefillPages), 63 + 126);
    let p = pa.pcp_snapshot(0, ZONE_DMA);
    assert_eq!((p.count, p.high, p.alloc_factor), (125, 2161, 2));
    // Higher pcp orders refill max(batch >> order, 2) blocks: 15 (order 2), 7 (order 3), 2 (order 9).
    for (order, blocks) in [(2u32, 15u64), (3, 7), (9, 2)] {
        let before = ev(&pa, VmEvent::PcpRefillPages);
        pa.alloc_pages(0, G::GFP_KERNEL, order).unwrap();
        assert_eq!(ev(&pa, VmEvent::PcpRefillPages) - before, blocks << order, "order {}", order);
    }
    // Orders 4..8 and 10 bypass the pcp: one zone lock, no refill.
    let (l, r) = (ev(&pa, VmEvent::ZoneLock), ev(&pa, VmEvent::PcpRefill));
    for order in [4, 5, 6, 7, 8, 10] {
        pa.alloc_pages(0, G::GFP_KERNEL, order).unwrap();
    }
    assert_eq!(ev(&pa, VmEvent::ZoneLock) - l, 6);
    assert_eq!(ev(&pa, VmEvent::PcpRefill) - r, 0);
}

#[test]
fn pcp_drain_above_high_frees_coldest_first() {
    // 64 MiB, 1 CPU, percpu_pagelist_high_fraction 128: high_min = high_max = 16384/128 = 128,
    // batch 3 (so nr_pcp_high returns the fixed high).
    let m = Machine::new(&[(0x4000_0000, 64 << 20)], &[]);
    let pa = m.pa(PageAllocConfig { percpu_pagelist_high_fraction: 128, ..cfg(1, None) });
    let p = pa.pcp_snapshot(0, ZONE_DMA);
    assert_eq!((p.batch, p.high_min, p.high_max), (3, 128, 128));
    let pages: Vec<u64> = (0..200).map(|_| pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap()).collect();
    pa.drain_all_pages(0);
    assert_eq!(pa.pcp_snapshot(0, ZONE_DMA).free_count, 0);
    let (d0, dp0) = (ev(&pa, VmEvent::PcpDrain), ev(&pa, VmEvent::PcpDrainPages));
    for &p in &pages[..127] {
        pa.__free_page(0, p).unwrap();
    }
    assert_eq!(ev(&pa, VmEvent::PcpDrain), d0);
    assert_eq!(pa.pcp_snapshot(0, ZONE_DMA).count, 127);
    // free_count is capped at batch << 5 = 96; the 128th free hits high and frees
    // nr_pcp_free = clamp(96, batch, high - batch) = 96 pages in 32 chunks of batch 3,
    // coldest (first freed, at the list tail) first.
    pa.__free_page(0, pages[127]).unwrap();
    assert_eq!(ev(&pa, VmEvent::PcpDrainPages) - dp0, 96);
    assert_eq!(ev(&pa, VmEvent::PcpDrain) - d0, 32);
    let mut left = Vec::new();
    pa.pcp_list_for_each(0, ZONE_DMA, 0, |p| left.push(p));
    let expect: Vec<u64> = pages[96..128].iter().rev().copied().collect();
    assert_eq!(left, expect, "hottest (last freed) at the head, the 96 coldest gone");
    check(&pa, 200 - 128);
    for &p in &pages[128..] {
        pa.__free_page(0, p).unwrap();
    }
    pa.drain_all_pages(0);
    let rep = check(&pa, 0);
    assert_eq!(rep.nr_free[0][MAX_PAGE_ORDER], 16);
}

#[test]
fn pcp_auto_high_grows_with_free_streak() {
    // Default tuning: a long free streak raises high towards high_max (nr_pcp_high).
    let m = Machine::new(&[(0x4000_0000, 2 << 30)], &[]);
    let pa = m.pa(cfg(1, None));
    let pages: Vec<u64> = (0..3000).map(|_| pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap()).collect();
    pa.drain_all_pages(0);
    for &p in &pages {
        pa.__free_page(0, p).unwrap();
    }
    let s = pa.pcp_snapshot(0, ZONE_DMA);
    assert!(s.high > 1972 && s.high <= 65536, "{:?}", s);
    assert!(s.count < s.high || s.count <= s.high_max);
    // decay_pcp_high brings it back down by 1/8 steps.
    let h0 = s.high;
    pa.decay_pcp_high(0);
    assert!(pa.pcp_snapshot(0, ZONE_DMA).high < h0);
    check(&pa, 0);
}

#[test]
fn zone_lock_masks_interrupts_and_restores_them() {
    // zone->lock is spin_lock_irqsave: interrupts are off while it is held, back to their
    // previous state after; a pcp hit (trylock, interrupts on) never touches them.
    let m = Machine::new(&[(0x4000_0000, 64 << 20)], &[]);
    let pa = m.pa(cfg(1, None));
    let saves = || IRQ_SAVES.with(|c| c.get());
    let s0 = saves();
    let p = pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap(); // pcp refill: takes the zone lock
    assert!(saves() > s0);
    assert!(!IRQS_OFF.with(|f| f.get()), "interrupts restored after the zone lock");
    pa.__free_page(0, p).unwrap();
    let s1 = saves();
    let q = pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap(); // pcp hit
    pa.__free_page(0, q).unwrap();
    assert_eq!(saves(), s1, "the pcp fast path does not mask interrupts");
    let off = pa.with_zone_locked(0, ZONE_DMA, || IRQS_OFF.with(|f| f.get()));
    assert!(off && !IRQS_OFF.with(|f| f.get()));
    // Interrupts already off stay off after a nested zone lock.
    IRQS_OFF.with(|f| f.set(true));
    pa.with_zone_locked(0, ZONE_DMA, || ());
    assert!(IRQS_OFF.with(|f| f.replace(false)));
    // A free that finds the pcp locked (an interrupt on the CPU that holds it) goes to the zone.
    let r = pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap();
    let fails = ev(&pa, VmEvent::PcpTrylockFail);
    let before = pa.nr_free_pages_total();
    pa.with_pcp_locked(0, ZONE_DMA, || pa.__free_page(0, r).unwrap());
    assert_eq!(ev(&pa, VmEvent::PcpTrylockFail), fails + 1);
    assert_eq!(pa.nr_free_pages_total(), before + 1, "freed straight to the buddy");
    check(&pa, 0);
}

#[test]
fn refresh_cpu_vm_stats_folds_and_decays() {
    let m = Machine::new(&[(0x4000_0000, 2 << 30)], &[]);
    let pa = m.pa(cfg(1, None));
    pa.mod_node_page_state(0, NodeStatItem::NrVmalloc, 3);
    assert_eq!(pa.node_page_state(NodeStatItem::NrVmalloc), 0, "below the fold threshold");
    let pages: Vec<u64> = (0..3000).map(|_| pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap()).collect();
    for &p in &pages {
        pa.__free_page(0, p).unwrap();
    }
    let h0 = pa.pcp_snapshot(0, ZONE_DMA).high;
    let (folded, more) = pa.refresh_cpu_vm_stats(0);
    assert_eq!(folded, 1);
    assert_eq!(pa.node_page_state(NodeStatItem::NrVmalloc), 3);
    assert!(more && pa.pcp_snapshot(0, ZONE_DMA).high < h0);
    // Repeated once a second, high reaches high_min and the work stops reporting more.
    let mut n = 0;
    while pa.refresh_cpu_vm_stats(0).1 {
        n += 1;
        assert!(n < 200);
    }
    let s = pa.pcp_snapshot(0, ZONE_DMA);
    assert_eq!(s.high, s.high_min);
    pa.mod_node_page_state(0, NodeStatItem::NrVmalloc, -3);
    pa.refresh_cpu_vm_stats(0);
    assert_eq!(pa.node_page_state(NodeStatItem::NrVmalloc), 0);
    check(&pa, 0);
}

#[test]
fn pcp_off_goes_through_the_zone_lock() {
    let m = machine_b();
    let pa = m.pa(PageAllocConfig { pcp_enabled: false, ..cfg(2, B_DMA_LIMIT) });
    let p = pa.pcp_snapshot(0, ZONE_DMA32);
    assert_eq!((p.high_min, p.high_max, p.batch), (0, 0, 1));
    let a = pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap();
    assert_eq!(pa.pcp_snapshot(0, ZONE_DMA32).count, 0);
    pa.__free_page(0, a).unwrap();
    assert_eq!(pa.pcp_snapshot(0, ZONE_DMA32).count, 0);
    check(&pa, 0);
    pa.set_pcp_enabled(0, true);
    assert!(pa.pcp_snapshot(0, ZONE_DMA32).high_min > 0);
}

// ---- allocation ----------------------------------------------------------------------------

#[test]
fn zones_gfp_and_fallback() {
    let m = machine_b();
    let pa = m.pa(cfg(1, B_DMA_LIMIT));
    let a = pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap();
    assert_eq!(
        pa.pfn_to_page(a).unwrap().zone_idx(),
        ZONE_DMA32 as u8,
        "GFP_KERNEL prefers the highest zone"
    );
    let d = pa.alloc_pages(0, G::GFP_KERNEL | G::GFP_DMA, 2).unwrap();
    assert_eq!(pa.pfn_to_page(d).unwrap().zone_idx(), ZONE_DMA as u8);
    assert!(d < 0x40800);
    // Exhaust DMA32 with order-10 allocations: the rest falls back to ZONE_DMA.
    let mut big = Vec::new();
    while let Some(p) = pa.alloc_pages(0, G::GFP_KERNEL | G::__GFP_NOWARN, 10) {
        big.push(p);
    }
    assert!(big.iter().any(|&p| p < 0x40800) || pa.zone(ZONE_DMA).nr_free(10) == 0);
    for p in big {
        pa.__free_pages(0, p, 10).unwrap();
    }
    pa.__free_pages(0, d, 2).unwrap();
    pa.__free_page(0, a).unwrap();
    check(&pa, 0);
}

#[test]
fn gfp_zero_and_comp() {
    let m = machine_b();
    let pa = m.pa(cfg(1, B_DMA_LIMIT));
    let p = pa.alloc_pages(0, G::GFP_KERNEL | G::__GFP_ZERO, 3).unwrap();
    assert_eq!(last_zeroed(), Some((p, 8)));
    let n = ZEROED.with(|z| z.borrow().len());
    let q = pa.alloc_pages(0, G::GFP_KERNEL, 3).unwrap();
    assert_eq!(ZEROED.with(|z| z.borrow().len()), n, "no zeroing without __GFP_ZERO");
    let c = pa.alloc_pages(0, G::GFP_KERNEL | G::__GFP_COMP, 2).unwrap();
    assert!(pa.pfn_to_page(c).unwrap().flags().contains(crate::page::PageFlags::PG_HEAD));
    assert_eq!(pa.split_page(c, 2).unwrap_err().what, BadPage::SplitCompound);
    pa.__free_pages(0, c, 2).unwrap();
    pa.__free_pages(0, p, 3).unwrap();
    pa.__free_pages(0, q, 3).unwrap();
    assert!(pa.alloc_pages(0, G::GFP_KERNEL | G::__GFP_NOWARN, 11).is_none());
    check(&pa, 0);
}

#[test]
fn alloc_pages_bulk_fills_empty_slots() {
    let m = Machine::new(&[(0x4000_0000, 2 << 30)], &[]);
    let pa = m.pa(cfg(1, None));
    let mut arr = vec![None; 100];
    arr[3] = Some(7);
    arr[50] = Some(9);
    let l0 = ev(&pa, VmEvent::ZoneLock);
    let n = pa.alloc_pages_bulk(0, G::GFP_KERNEL, 100, &mut arr);
    assert_eq!(n, 100);
    assert_eq!((arr[3], arr[50]), (Some(7), Some(9)));
    // 98 pages: refills of 63 then 126 -> two zone-lock acquisitions.
    assert_eq!(ev(&pa, VmEvent::ZoneLock) - l0, 2);
    let got: BTreeSet<u64> = arr
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 50)
        .map(|(_, p)| p.unwrap())
        .collect();
    assert_eq!(got.len(), 98);
    for &p in &got {
        let pg = pa.pfn_to_page(p).unwrap();
        assert_eq!((pg.page_count(), pg.order()), (1, 0));
    }
    // One missing page: the single-page path.
    let mut one = vec![Some(1), None];
    assert_eq!(pa.alloc_pages_bulk(0, G::GFP_KERNEL, 2, &mut one), 2);
    let mut all: Vec<u64> = got.into_iter().collect();
    all.push(one[1].unwrap());
    all.sort();
    pa.free_pages_bulk(0, &all, || {}).unwrap();
    pa.drain_all_pages(0);
    let rep = check(&pa, 0);
    assert_eq!(rep.nr_free[0][MAX_PAGE_ORDER], 512);
}

#[test]
fn allocate_until_oom_then_free_all() {
    let m = machine_a();
    let pa = m.pa(cfg(2, B_DMA_LIMIT));
    let start = check(&pa, 0);
    let start_free = pa.nr_free_pages_total();
    let warns = nr_warnings();
    let mut owned: Vec<(u64, u32)> = Vec::new();
    for order in [10u32, 9, 6, 3, 0] {
        let mut cpu = 0;
        while let Some(p) = pa.alloc_pages(cpu, G::GFP_KERNEL, order) {
            owned.push((p, order));
            cpu ^= 1;
        }
    }
    assert!(nr_warnings() > warns, "failures without __GFP_NOWARN warn");
    let w = WARNINGS.with(|w| w.borrow().last().cloned().unwrap());
    assert!(w.contains("page allocation failure: order:0"), "{}", w);
    let owned_pages: u64 = owned.iter().map(|&(_, o)| 1u64 << o).sum();
    check(&pa, owned_pages);
    // GFP_KERNEL stopped at the min watermark; GFP_ATOMIC may go further, __GFP_MEMALLOC to 0.
    for z in pa.zones().iter().filter(|z| z.populated()) {
        assert!(
            z.nr_free_pages() as u64
                <= z.wmark_pages(WMARK_MIN) + z.lowmem_reserve(ZONE_NORMAL) + 1
        );
    }
    let mut extra = Vec::new();
    while let Some(p) = pa.alloc_pages(0, G::GFP_ATOMIC | G::__GFP_NOWARN, 0) {
        extra.push(p);
    }
    assert!(!extra.is_empty(), "GFP_ATOMIC dips into the reserves");
    pa.drain_all_pages(0);
    while let Some(p) = pa.alloc_pages(0, G::GFP_ATOMIC | G::__GFP_MEMALLOC | G::__GFP_NOWARN, 0) {
        extra.push(p);
    }
    assert_eq!(
        pa.nr_free_pages_total() + pa.nr_pcp_pages(),
        0,
        "__GFP_MEMALLOC ignores watermarks"
    );
    assert!(pa.alloc_pages(1, G::GFP_KERNEL | G::__GFP_NOWARN, 0).is_none());
    owned.extend(extra.into_iter().map(|p| (p, 0)));
    for (i, &(p, o)) in owned.iter().enumerate() {
        pa.__free_pages(i % 2, p, o).unwrap();
    }
    pa.drain_all_pages(0);
    let end = check(&pa, 0);
    assert_eq!(pa.nr_free_pages_total(), start_free);
    assert_eq!(end, start);
}

// ---- misuse ----------------------------------------------------------------------------------

#[test]
fn misuse_is_detected_and_harmless() {
    let m = machine_a();
    let pa = m.pa(cfg(1, B_DMA_LIMIT));
    let mut owned = 0u64;
    // A block in the buddy with order 3 whose buddy is still allocated: split an order-4
    // block, free the lower 8 pages as one order-3 chunk, drain it to the buddy.
    let b = pa.alloc_pages(0, G::GFP_KERNEL, 4).unwrap();
    pa.split_page(b, 4).unwrap();
    pa.__free_contig_range(0, b, 8).unwrap();
    let e = pa.__free_page(0, b).unwrap_err();
    assert_eq!(e.what, BadPage::DoubleFreePcp { order: 3 });
    pa.drain_all_pages(0);
    owned += 8;
    let e = pa.__free_pages(0, b, 3).unwrap_err();
    assert_eq!(e.what, BadPage::DoubleFreeBuddy { order: 3 });
    assert_eq!(
        e.to_string(),
        std::format!("BUG: Bad page state: pfn {:#x}: double free (page is already free in the buddy, order 3)", b)
    );
    assert_eq!(pa.__free_page(0, b + 1).unwrap_err().what, BadPage::NotAllocated);
    check(&pa, owned);

    // Wrong order after split, misaligned, out of range, too big.
    let c = pa.alloc_pages(0, G::GFP_KERNEL, 2).unwrap();
    owned += 4;
    pa.split_page(c, 2).unwrap();
    assert_eq!(
        pa.__free_pages(0, c, 2).unwrap_err().what,
        BadPage::WrongOrder { freed: 2, allocated: 0 }
    );
    assert_eq!(pa.__free_pages(0, c + 1, 1).unwrap_err().what, BadPage::Misaligned { order: 1 });
    assert_eq!(pa.__free_page(0, 0x1).unwrap_err().what, BadPage::OutOfRange);
    assert_eq!(pa.__free_pages(0, c, 11).unwrap_err().what, BadPage::BadOrder { order: 11 });
    check(&pa, owned);

    // Tail page of an unsplit block; wrong order of an order-0 page.
    let t = pa.alloc_pages(0, G::GFP_KERNEL, 2).unwrap();
    owned += 4;
    assert_eq!(pa.__free_page(0, t + 2).unwrap_err().what, BadPage::NotAllocated);
    assert_eq!(
        pa.__free_pages(0, t, 1).unwrap_err().what,
        BadPage::WrongOrder { freed: 1, allocated: 2 }
    );
    assert_eq!(
        pa.split_page(t, 3).unwrap_err().what,
        BadPage::Misaligned { order: 3 }.min_if_aligned(t, 3)
    );

    // Reserved: a hole page and a memblock reservation.
    assert_eq!(pa.__free_page(0, B_HOLE_PFN).unwrap_err().what, BadPage::Reserved);
    assert_eq!(pa.__free_page(0, 0x40000).unwrap_err().what, BadPage::Reserved);
    assert_eq!(pa.put_page(0, 0x40000).unwrap_err().what, BadPage::Reserved);
    check(&pa, owned);

    // Double free of an order-0 page (pcp), then of an order-6 block (buddy, merged).
    let z = pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap();
    pa.__free_page(0, z).unwrap();
    assert_eq!(pa.__free_page(0, z).unwrap_err().what, BadPage::DoubleFreePcp { order: 0 });
    let s = pa.alloc_pages(0, G::GFP_KERNEL, 6).unwrap();
    pa.__free_pages(0, s, 6).unwrap();
    let e = pa.__free_pages(0, s, 6).unwrap_err().what;
    assert!(matches!(e, BadPage::DoubleFreeBuddy { .. } | BadPage::NotAllocated), "{:?}", e);
    // Refcounts: get/put; a put on a free page is refused.
    let r = pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap();
    pa.get_page(r).unwrap();
    pa.__free_page(0, r).unwrap(); // drops to 1, not freed
    assert_eq!(pa.pfn_to_page(r).unwrap().page_count(), 1);
    pa.put_page(0, r).unwrap(); // freed
    assert!(pa.put_page(0, r).is_err());
    assert!(pa.get_page(r).is_err());
    check(&pa, owned);

    // __free_contig_range over a run with bad pages frees the good ones and reports the first.
    let k = pa.alloc_pages(0, G::GFP_KERNEL, 3).unwrap();
    pa.split_page(k, 3).unwrap();
    pa.__free_page(0, k + 2).unwrap();
    owned += 8 - 1;
    let e = pa.__free_contig_range(0, k, 8).unwrap_err();
    assert_eq!(e.pfn, k + 2);
    owned -= 7;
    check(&pa, owned);

    // Clean up and make sure nothing leaked.
    pa.free_pages_bulk(0, &(b + 8..b + 16).collect::<Vec<_>>(), || {}).unwrap();
    pa.free_contig_range(0, c, 4).unwrap();
    pa.__free_pages(0, t, 2).unwrap();
    pa.drain_all_pages(0);
    check(&pa, 0);
}

trait MinIfAligned {
    fn min_if_aligned(self, pfn: u64, order: u32) -> BadPage;
}
impl MinIfAligned for BadPage {
    /// split_page(t, 3) of an order-2 block: Misaligned if t is not 8-aligned, else WrongOrder.
    fn min_if_aligned(self, pfn: u64, order: u32) -> BadPage {
        if pfn & ((1 << order) - 1) != 0 {
            self
        } else {
            BadPage::WrongOrder { freed: order, allocated: 2 }
        }
    }
}

// ---- stats -------------------------------------------------------------------------------------

#[test]
fn nr_vmalloc_each_is_n_single_updates() {
    // mod_node_page_state_irqsafe_each(n) must fold exactly where n single updates fold.
    let m = machine_b();
    let (a, b) = (m.pa(cfg(2, B_DMA_LIMIT)), m.pa(cfg(2, B_DMA_LIMIT)));
    let t = a.stat_threshold() as usize;
    for (delta, n) in [(1, 3 * t + 5), (-1, t + 1), (1, 1), (-1, 2 * t + 7)] {
        a.mod_node_page_state_irqsafe_each(1, NodeStatItem::NrVmalloc, delta, n);
        for _ in 0..n {
            b.mod_node_page_state_irqsafe(1, NodeStatItem::NrVmalloc, delta);
        }
        assert_eq!(
            a.node_page_state(NodeStatItem::NrVmalloc),
            b.node_page_state(NodeStatItem::NrVmalloc),
            "folded part after {delta} x {n}"
        );
        assert_eq!(
            a.node_page_state_snapshot(NodeStatItem::NrVmalloc),
            b.node_page_state_snapshot(NodeStatItem::NrVmalloc)
        );
    }
    // 3t + 5 - (t + 1) + 1 - (2t + 7)
    assert_eq!(a.node_page_state_snapshot(NodeStatItem::NrVmalloc), -2);
}

#[test]
fn nr_vmalloc_per_cpu_fold() {
    let m = machine_b();
    let pa = m.pa(cfg(4, B_DMA_LIMIT));
    let t = pa.stat_threshold();
    assert!(t > 0);
    for cpu in 0..4 {
        for _ in 0..100 {
            pa.mod_node_page_state(cpu, NodeStatItem::NrVmalloc, 1);
        }
    }
    assert_eq!(pa.node_page_state_snapshot(NodeStatItem::NrVmalloc), 400);
    assert!((400 - pa.node_page_state(NodeStatItem::NrVmalloc)).abs() <= 4 * t as i64);
    for cpu in 0..4 {
        pa.mod_node_page_state(cpu, NodeStatItem::NrVmalloc, -100);
    }
    assert_eq!(pa.node_page_state_snapshot(NodeStatItem::NrVmalloc), 0);
    let mut s = String::new();
    pa.show_mem(&mut s).unwrap();
    assert!(s.contains("Node 0, zone      DMA "), "{}", s);
    assert!(s.contains("struct pages x 32 bytes") || s.contains("struct pages x"), "{}", s);
}

// ---- model-based -------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Alloc { cpu: usize, order: u32, gfp: u8 },
    Free { k: usize },
    Split { k: usize },
    BulkAlloc { cpu: usize, n: usize, pre: u8 },
    FreeContig { cpu: usize, k: usize, len: usize, how: u8 },
    FreeBulkScattered { cpu: usize, k: usize, n: usize },
    Drain { cpu: usize, all: bool },
    Misuse { k: usize, kind: u8 },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let order = prop_oneof![8 => 0u32..=3, 2 => 4u32..=8, 1 => Just(9u32), 1 => Just(10u32)];
    prop_oneof![
        10 => (0usize..3, order, 0u8..4).prop_map(|(cpu, order, gfp)| Op::Alloc { cpu, order, gfp }),
        4 => any::<usize>().prop_map(|k| Op::Free { k }),
        4 => any::<usize>().prop_map(|k| Op::Split { k }),
        3 => (0usize..3, 1usize..80, any::<u8>()).prop_map(|(cpu, n, pre)| Op::BulkAlloc { cpu, n, pre }),
        5 => (0usize..3, any::<usize>(), 1usize..600, 0u8..3).prop_map(|(cpu, k, len, how)| Op::FreeContig { cpu, k, len, how }),
        2 => (0usize..3, any::<usize>(), 1usize..64).prop_map(|(cpu, k, n)| Op::FreeBulkScattered { cpu, k, n }),
        1 => (0usize..3, any::<bool>()).prop_map(|(cpu, all)| Op::Drain { cpu, all }),
        2 => (any::<usize>(), 0u8..6).prop_map(|(k, kind)| Op::Misuse { k, kind }),
    ]
}

struct Model {
    /// head pfn -> order (split blocks appear as order-0 entries).
    owned: BTreeMap<u64, u32>,
    owned_pages: u64,
    bitmap: Vec<bool>,
    min_pfn: u64,
}

impl Model {
    fn take(&mut self, pa: &PageAllocator, pfn: u64, order: u32) {
        for p in pfn..pfn + (1 << order) {
            let i = (p - self.min_pfn) as usize;
            assert!(!self.bitmap[i], "pfn {:#x} handed out twice", p);
            self.bitmap[i] = true;
        }
        let pg = pa.pfn_to_page(pfn).unwrap();
        assert_eq!((pg.page_count(), pg.order()), (1, order));
        assert_eq!(pfn & ((1 << order) - 1), 0);
        self.owned.insert(pfn, order);
        self.owned_pages += 1 << order;
    }
    fn release(&mut self, pfn: u64) -> u32 {
        let order = self.owned.remove(&pfn).expect("owned");
        for p in pfn..pfn + (1 << order) {
            self.bitmap[(p - self.min_pfn) as usize] = false;
        }
        self.owned_pages -= 1 << order;
        order
    }
    fn nth(&self, k: usize, pred: impl Fn(u64, u32) -> bool) -> Option<(u64, u32)> {
        let v: Vec<(u64, u32)> =
            self.owned.iter().map(|(&p, &o)| (p, o)).filter(|&(p, o)| pred(p, o)).collect();
        (!v.is_empty()).then(|| v[k % v.len()])
    }
    /// Maximal run of owned order-0 pages starting at `pfn`, at most `len`.
    fn run0(&self, pfn: u64, len: usize) -> Vec<u64> {
        let mut v = Vec::new();
        let mut p = pfn;
        while v.len() < len && self.owned.get(&p) == Some(&0) {
            v.push(p);
            p += 1;
        }
        v
    }
}

fn gfp_of(g: u8) -> G {
    let g = match g {
        0 => G::GFP_KERNEL,
        1 => G::GFP_ATOMIC,
        2 => G::GFP_KERNEL | G::GFP_DMA,
        _ => G::GFP_NOWAIT | G::__GFP_ZERO,
    };
    g | G::__GFP_NOWARN
}

fn run_model(aligned: bool, pcp_mode: u8, ops: &[Op]) -> Result<(), TestCaseError> {
    let m = if aligned { machine_b() } else { machine_a() };
    let mut c = cfg(3, B_DMA_LIMIT);
    match pcp_mode {
        1 => c.percpu_pagelist_high_fraction = 8,
        2 => c.pcp_enabled = false,
        _ => {}
    }
    let pa = m.pa(c);
    let initial = check(&pa, 0);
    let mut md = Model {
        owned: BTreeMap::new(),
        owned_pages: 0,
        bitmap: vec![false; m.pages.len()],
        min_pfn: m.min_pfn,
    };
    for op in ops {
        match *op {
            Op::Alloc { cpu, order, gfp } => {
                let g = gfp_of(gfp);
                if let Some(p) = pa.alloc_pages(cpu, g, order) {
                    md.take(&pa, p, order);
                    if g.contains(G::GFP_DMA) {
                        prop_assert_eq!(pa.pfn_to_page(p).unwrap().zone_idx(), ZONE_DMA as u8);
                    }
                    if g.contains(G::__GFP_ZERO) {
                        prop_assert_eq!(last_zeroed(), Some((p, 1usize << order)));
                    }
                }
            }
            Op::Free { k } => {
                if let Some((p, o)) = md.nth(k, |_, _| true) {
                    md.release(p);
                    prop_assert_eq!(pa.__free_pages(k % 3, p, o), Ok(()));
                }
            }
            Op::Split { k } => {
                if let Some((p, o)) = md.nth(k, |_, o| o > 0) {
                    prop_assert_eq!(pa.split_page(p, o), Ok(()));
                    md.release(p);
                    for q in p..p + (1 << o) {
                        md.take(&pa, q, 0);
                    }
                }
            }
            Op::BulkAlloc { cpu, n, pre } => {
                let mut arr = vec![None; n];
                let marks: Vec<usize> = (0..n)
                    .filter(|i| pre != 0 && (i * 7 + pre as usize).is_multiple_of(11))
                    .collect();
                for &i in &marks {
                    arr[i] = Some(u64::MAX - i as u64);
                }
                let got = pa.alloc_pages_bulk(cpu, G::GFP_KERNEL | G::__GFP_NOWARN, n, &mut arr);
                prop_assert!(got <= n);
                for (i, slot) in arr.iter().enumerate() {
                    if marks.contains(&i) {
                        prop_assert_eq!(*slot, Some(u64::MAX - i as u64));
                    } else if let Some(p) = *slot {
                        prop_assert!(
                            i < got,
                            "slot {} filled beyond the returned count {}",
                            i,
                            got
                        );
                        md.take(&pa, p, 0);
                    } else {
                        prop_assert!(i >= got);
                    }
                }
            }
            Op::FreeContig { cpu, k, len, how } => {
                if let Some((p, _)) = md.nth(k, |_, o| o == 0) {
                    let run = md.run0(p, len);
                    for &q in &run {
                        md.release(q);
                    }
                    let r = match how {
                        0 => pa.__free_contig_range(cpu, p, run.len() as u64),
                        1 => pa.free_contig_range(cpu, p, run.len() as u64),
                        _ => pa.free_pages_bulk(cpu, &run, || {}),
                    };
                    prop_assert_eq!(r, Ok(()));
                }
            }
            Op::FreeBulkScattered { cpu, k, n } => {
                let zeros: Vec<u64> =
                    md.owned.iter().filter(|(_, &o)| o == 0).map(|(&p, _)| p).collect();
                if !zeros.is_empty() {
                    let start = k % zeros.len();
                    let pick: Vec<u64> =
                        zeros[start..].iter().step_by(1 + k % 3).take(n).copied().collect();
                    for &q in &pick {
                        md.release(q);
                    }
                    prop_assert_eq!(pa.free_pages_bulk(cpu, &pick, || {}), Ok(()));
                }
            }
            Op::Drain { cpu, all } => {
                if all {
                    pa.drain_all_pages(cpu);
                } else {
                    pa.drain_local_pages(cpu);
                }
            }
            Op::Misuse { k, kind } => match kind {
                0 => {
                    if let Some((p, o)) = md.nth(k, |_, _| true) {
                        md.release(p);
                        prop_assert_eq!(pa.__free_pages(0, p, o), Ok(()));
                        let e = pa.__free_pages(1, p, o).unwrap_err();
                        prop_assert!(
                            matches!(
                                e.what,
                                BadPage::DoubleFreePcp { .. }
                                    | BadPage::DoubleFreeBuddy { .. }
                                    | BadPage::NotAllocated
                            ),
                            "{}",
                            e
                        );
                    }
                }
                1 => {
                    if let Some((p, o)) = md.nth(k, |_, _| true) {
                        let wrong = if o < 10 && p & ((2 << o) - 1) == 0 {
                            o + 1
                        } else if o > 0 {
                            o - 1
                        } else {
                            continue_marker()
                        };
                        if wrong != u32::MAX {
                            let e = pa.__free_pages(0, p, wrong).unwrap_err();
                            prop_assert_eq!(
                                e.what,
                                BadPage::WrongOrder { freed: wrong, allocated: o }
                            );
                        }
                    }
                }
                2 => {
                    if let Some((p, _)) = md.nth(k, |_, o| o > 0) {
                        prop_assert_eq!(
                            pa.__free_page(0, p + 1).unwrap_err().what,
                            BadPage::NotAllocated
                        );
                    }
                }
                3 => {
                    prop_assert_eq!(
                        pa.__free_page(0, B_HOLE_PFN + (k % 256) as u64).unwrap_err().what,
                        BadPage::Reserved
                    );
                }
                4 => {
                    if let Some((p, _)) = md.nth(k, |_, _| true) {
                        let q = p | 1;
                        prop_assert_eq!(
                            pa.__free_pages(0, q, 1).unwrap_err().what,
                            BadPage::Misaligned { order: 1 }
                        );
                    }
                }
                _ => {
                    // A maximal order-0 run plus the page after it (never a freeable page).
                    if let Some((p, _)) = md.nth(k, |_, o| o == 0) {
                        let run = md.run0(p, usize::MAX);
                        for &q in &run {
                            md.release(q);
                        }
                        let e = pa.__free_contig_range(0, p, run.len() as u64 + 1).unwrap_err();
                        prop_assert_eq!(e.pfn, p + run.len() as u64);
                    }
                }
            },
        }
        let rep = pa.verify(|pfn, order, _| {
            for q in pfn..pfn + (1 << order) {
                assert!(
                    !md.bitmap[(q - md.min_pfn) as usize],
                    "free block {:#x}/{} overlaps owned page {:#x}",
                    pfn,
                    order,
                    q
                );
            }
        });
        let rep = rep.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let free: u64 = rep.buddy_pages.iter().sum::<u64>() + rep.pcp_pages.iter().sum::<u64>();
        prop_assert_eq!(free + md.owned_pages, pa.totalram_pages());
    }
    // Free everything, drain every CPU: the buddy must be exactly as after boot.
    let all: Vec<(u64, u32)> = md.owned.iter().map(|(&p, &o)| (p, o)).collect();
    for (i, (p, o)) in all.into_iter().enumerate() {
        md.release(p);
        prop_assert_eq!(pa.__free_pages(i % 3, p, o), Ok(()));
    }
    for cpu in 0..3 {
        pa.drain_pages(0, cpu);
    }
    let end = check(&pa, 0);
    prop_assert_eq!(end.pcp_pages, [0, 0, 0]);
    prop_assert_eq!(&end.nr_free, &initial.nr_free);
    if aligned {
        for z in pa.zones().iter().filter(|z| z.populated()) {
            prop_assert_eq!(end.nr_free[z.idx][MAX_PAGE_ORDER] * 1024, z.managed_pages());
        }
    }
    Ok(())
}

fn continue_marker() -> u32 {
    u32::MAX
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn model_random_sequences(aligned in any::<bool>(), pcp_mode in 0u8..3, ops in proptest::collection::vec(op_strategy(), 1..160)) {
        run_model(aligned, pcp_mode, &ops)?;
    }
}

// ---- concurrency -------------------------------------------------------------------------------

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[test]
fn four_cpus_concurrently() {
    const THREADS: usize = 4;
    const ITERS: usize = 50_000;
    let m = Machine::new(&[(0x4000_0000, 256 << 20)], &[]);
    let pa = m.pa(cfg(THREADS, None));
    let owner: Vec<AtomicU8> = (0..m.pages.len()).map(|_| AtomicU8::new(0)).collect();
    let min_pfn = m.min_pfn;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (pa, owner) = (&pa, &owner);
            s.spawn(move || {
                let tag = t as u8 + 1;
                let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678_9abc));
                let mut mine: Vec<(u64, u32)> = Vec::new();
                let claim = |pfn: u64, order: u32| {
                    for p in pfn..pfn + (1 << order) {
                        let r = owner[(p - min_pfn) as usize].compare_exchange(
                            0,
                            tag,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                        assert!(
                            r.is_ok(),
                            "pfn {:#x} handed to cpu {} while owned by {:?}",
                            p,
                            t,
                            r
                        );
                    }
                };
                let unclaim = |pfn: u64, order: u32| {
                    for p in pfn..pfn + (1 << order) {
                        let r = owner[(p - min_pfn) as usize].compare_exchange(
                            tag,
                            0,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                        assert!(r.is_ok());
                    }
                };
                for it in 0..ITERS {
                    let r = rng.next();
                    if mine.len() < 32 && !r.is_multiple_of(3) {
                        let order = match (r >> 8) % 20 {
                            0..=13 => ((r >> 16) % 4) as u32,
                            14..=17 => 4 + ((r >> 16) % 5) as u32,
                            18 => 9,
                            _ => 10,
                        };
                        let gfp =
                            if (r >> 24).is_multiple_of(4) { G::GFP_ATOMIC } else { G::GFP_KERNEL };
                        let gfp = gfp | G::__GFP_NOWARN;
                        if let Some(p) = pa.alloc_pages(t, gfp, order) {
                            claim(p, order);
                            mine.push((p, order));
                        }
                    } else if (r >> 4).is_multiple_of(7) {
                        let mut arr = vec![None; 1 + (r >> 12) as usize % 40];
                        let n = arr.len();
                        let got =
                            pa.alloc_pages_bulk(t, G::GFP_KERNEL | G::__GFP_NOWARN, n, &mut arr);
                        for p in arr[..got].iter().flatten() {
                            claim(*p, 0);
                        }
                        let mut v: Vec<u64> = arr[..got].iter().flatten().copied().collect();
                        v.sort();
                        for &p in &v {
                            unclaim(p, 0);
                        }
                        pa.free_pages_bulk(t, &v, || {}).unwrap();
                    } else if !mine.is_empty() {
                        let i = (r >> 20) as usize % mine.len();
                        let (p, order) = mine.swap_remove(i);
                        unclaim(p, order);
                        match (r >> 32) % 4 {
                            0 => pa.__free_pages(t, p, order).unwrap(),
                            1 => {
                                pa.split_page(p, order).unwrap();
                                pa.free_pages_bulk(
                                    t,
                                    &(p..p + (1 << order)).collect::<Vec<_>>(),
                                    || {},
                                )
                                .unwrap();
                            }
                            2 => {
                                pa.split_page(p, order).unwrap();
                                pa.__free_contig_range(t, p, 1 << order).unwrap();
                            }
                            _ => {
                                pa.split_page(p, order).unwrap();
                                pa.free_contig_range(t, p, 1 << order).unwrap();
                            }
                        }
                    }
                    if t == 0 && it % 997 == 0 {
                        pa.drain_all_pages(t);
                    }
                    if it % 1999 == 1 {
                        pa.decay_pcp_high(t);
                    }
                }
                for (p, order) in mine {
                    unclaim(p, order);
                    pa.__free_pages(t, p, order).unwrap();
                }
            });
        }
    });
    assert!(owner.iter().all(|o| o.load(Ordering::Relaxed) == 0));
    pa.drain_all_pages(0);
    let rep = check(&pa, 0);
    assert_eq!(rep.nr_free[0][MAX_PAGE_ORDER] * 1024, pa.zone(0).managed_pages());
    let ev = pa.all_vm_events();
    assert!(ev[VmEvent::PcpRefill as usize] > 0 && ev[VmEvent::PcpDrain as usize] > 0);
}

#[test]
fn pcp_moves_from_boot_pagesets_into_per_cpu_areas() {
    // Linux setup_per_cpu_pageset, with the pcps already holding pages: four "per-CPU units"
    // 4 KiB apart in one buffer, the pcp at offset 256 of each (a percpu pointer is the unit-0
    // address minus a delta; CPU n's copy at ptr + offsets[n]).
    let m = Machine::new(&[(0x4000_0000, 64 << 20)], &[]);
    let mut pa = m.pa(cfg(4, None));
    let order = |i: usize| if i < 40 { 0 } else { (i % 3) as u32 };
    let pages: Vec<(usize, u64)> = (0..400)
        .map(|i| (i % 4, pa.alloc_pages(i % 4, G::GFP_KERNEL, order(i)).unwrap()))
        .collect();
    for &(cpu, p) in &pages[..40] {
        pa.__free_pages(cpu, p, 0).unwrap();
    }
    let before: Vec<_> = (0..4).map(|c| pa.pcp_snapshot(c, ZONE_DMA)).collect();
    assert!(
        before.iter().all(|s| s.count > 0),
        "every CPU's pcp holds pages before the move: {before:?}"
    );
    #[repr(C, align(4096))]
    struct Unit([u8; 4096]);
    let mut units: Vec<Unit> = (0..4).map(|_| Unit([0xa5; 4096])).collect();
    let base = units.as_mut_ptr() as usize;
    let delta = 0x1000_0000usize;
    let offsets: [usize; NR_CPUS] =
        core::array::from_fn(|c| if c < 4 { delta + c * 4096 } else { 0 });
    let mut next = 256usize;
    pa.setup_per_cpu_pageset(4, &offsets, |size, align| {
        let off = next.next_multiple_of(align);
        next = off + size;
        assert!(next <= 4096);
        Some((base + off).wrapping_sub(delta))
    })
    .unwrap();
    for (c, b) in before.iter().enumerate() {
        let a = pa.zone_pcp_slot_addr(ZONE_DMA, c);
        assert!(
            a >= base + c * 4096 && a < base + (c + 1) * 4096,
            "cpu {c}'s pcp at {a:#x} is outside its unit"
        );
        let s = pa.pcp_snapshot(c, ZONE_DMA);
        assert_eq!((s.count, s.high, s.batch), (b.count, b.high, b.batch));
    }
    check(&pa, (40..400).map(|i| 1u64 << order(i)).sum::<u64>());
    for (i, &(cpu, p)) in pages.iter().enumerate().skip(40) {
        pa.__free_pages(cpu, p, order(i)).unwrap();
    }
    for c in 0..4 {
        pa.drain_all_pages(c);
    }
    let rep = check(&pa, 0);
    assert_eq!(rep.nr_free[0][MAX_PAGE_ORDER], 16);
    drop(pa);
    drop(units);
}

#[test]
fn free_pages_bulk_calls_resched_after_each_contiguous_run() {
    // Linux's free_pages_bulk calls cond_resched() after every run it hands to
    // __free_contig_range: three runs (8 pages, 1 page, 4 pages) -> three calls.
    let m = machine_b();
    let pa = m.pa(cfg(1, B_DMA_LIMIT));
    let a = pa.alloc_pages(0, G::GFP_KERNEL, 3).unwrap();
    pa.split_page(a, 3).unwrap();
    let b = pa.alloc_pages(0, G::GFP_KERNEL, 0).unwrap();
    let c = pa.alloc_pages(0, G::GFP_KERNEL, 2).unwrap();
    pa.split_page(c, 2).unwrap();
    let mut pages: Vec<u64> = (a..a + 8).collect();
    pages.push(b);
    pages.extend(c..c + 4);
    // b is not adjacent to the end of a or the start of c in this order unless the allocator
    // happened to place it there: count the runs the array really has.
    let mut runs = 1;
    for w in pages.windows(2) {
        if w[1] != w[0] + 1 {
            runs += 1;
        }
    }
    let mut calls = 0;
    pa.free_pages_bulk(0, &pages, || calls += 1).unwrap();
    assert_eq!(calls, runs);
    assert!(runs >= 2);
    pa.drain_all_pages(0);
    pa.verify(|_, _, _| {}).unwrap();
}
