//! The kernel's page allocator instance: `PageAllocator` (pure logic, host-tested) called with
//! the running CPU's id, misuse reports, and linear-map addresses. Interrupts stay on, as in
//! Linux: the pcp lists are taken with a trylock (an interrupt handler that finds them held
//! goes to the zone), and zone->lock masks interrupts (the allocator's irq_save hook).
//! Linux's entry points keep their names: alloc_pages, __free_pages, alloc_pages_bulk, ...
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::arch::{self, PAGE_OFFSET};

/// The page allocator's `irq_save` hook: zone->lock is `spin_lock_irqsave`.
pub fn zone_irq_save() -> usize {
    arch::local_irq_save()
}
pub fn zone_irq_restore(flags: usize) {
    arch::local_irq_restore(flags)
}
use mm_page_alloc::page_alloc::{MmError, PageAllocator};
use mm_page_alloc::stat::NodeStatItem;
use mm_types::gfp::GfpFlags;
use mm_types::{Pfn, PAGE_SHIFT, PAGE_SIZE};

static PA: spin::Once<PageAllocator<'static>> = spin::Once::new();
/// Set once `PA` is initialised. Read Relaxed on every allocator call, where `PA.get()` was a
/// load-acquire (under MTTCG on an x86 host each one is a locked host instruction, about 25 ns,
/// five per 1-page vmalloc/vfree; Linux's page allocator state is a plain global).
static PA_READY: AtomicBool = AtomicBool::new(false);
static BAD_PAGE_REPORTS: AtomicU64 = AtomicU64::new(0);

pub fn init(pa: PageAllocator<'static>) {
    PA.call_once(|| pa);
    PA_READY.store(true, Ordering::Release);
}

#[inline(always)]
pub fn allocator() -> &'static PageAllocator<'static> {
    if !PA_READY.load(Ordering::Relaxed) {
        not_ready();
    }
    // Relaxed is enough: mm_init runs on the boot CPU before bring_up starts any other CPU, and
    // bring_up's release/acquire handshake orders it before everything a secondary runs; on the
    // boot CPU program order does.
    // SAFETY: PA_READY is set only after `PA.call_once` returned, so `PA` is initialised.
    unsafe { PA.get_unchecked() }
}

#[cold]
#[inline(never)]
fn not_ready() -> ! {
    panic!("page allocator used before mm_init");
}

pub fn ready() -> bool {
    PA_READY.load(Ordering::Relaxed)
}

#[inline(always)]
pub fn pfn_to_virt(pfn: Pfn) -> *mut u8 {
    (PAGE_OFFSET + (pfn << PAGE_SHIFT)) as *mut u8
}

#[inline(always)]
pub fn virt_to_pfn(va: *const u8) -> Pfn {
    (va as u64 - PAGE_OFFSET) >> PAGE_SHIFT
}

/// Prints a misuse report (double free, reserved page, wrong order, refcount underflow) and
/// counts it; the allocator left its state untouched.
fn report(r: Result<(), MmError>) {
    if let Err(e) = r {
        BAD_PAGE_REPORTS.fetch_add(1, Ordering::Relaxed);
        crate::println!("{e}");
    }
}

/// Misuse reports since boot.
pub fn bad_page_reports() -> u64 {
    BAD_PAGE_REPORTS.load(Ordering::Relaxed)
}

#[inline]
pub fn alloc_pages(gfp: GfpFlags, order: u32) -> Option<Pfn> {
    allocator().alloc_pages(crate::percpu_defs::smp_processor_id(), gfp, order)
}

#[inline]
pub fn __free_pages(pfn: Pfn, order: u32) {
    report(allocator().__free_pages(crate::percpu_defs::smp_processor_id(), pfn, order));
}

/// __free_pages returning the misuse report instead of printing it (tests).
pub fn try_free_pages(pfn: Pfn, order: u32) -> Result<(), MmError> {
    allocator().__free_pages(crate::percpu_defs::smp_processor_id(), pfn, order)
}

#[inline]
pub fn __free_page(pfn: Pfn) {
    __free_pages(pfn, 0)
}

pub fn split_page(pfn: Pfn, order: u32) {
    report(allocator().split_page(pfn, order));
}

pub fn alloc_pages_bulk(gfp: GfpFlags, nr: usize, array: &mut [Option<Pfn>]) -> usize {
    allocator().alloc_pages_bulk(crate::percpu_defs::smp_processor_id(), gfp, nr, array)
}

/// The old free_contig_range: one order-0 free per page.
pub fn free_contig_range(pfn: Pfn, nr: u64) {
    report(allocator().free_contig_range(crate::percpu_defs::smp_processor_id(), pfn, nr));
}

/// The patch's __free_contig_range: naturally aligned power-of-two chunks.
pub fn __free_contig_range(pfn: Pfn, nr: u64) {
    report(allocator().__free_contig_range(crate::percpu_defs::smp_processor_id(), pfn, nr));
}

/// The patch's free_pages_bulk: PFN-contiguous runs of `pages` through __free_contig_range,
/// with a cond_resched() between runs, as Linux's (none after the last run).
pub fn free_pages_bulk(pages: &[Pfn]) {
    let cpu = crate::percpu_defs::smp_processor_id();
    let pa = allocator();
    let mut rest = pages;
    while !rest.is_empty() {
        let (nr, r) = pa.free_pages_bulk_run(cpu, rest);
        report(r);
        rest = &rest[nr..];
        if !rest.is_empty() {
            crate::smp::cond_resched();
        }
    }
}

pub fn alloc_pages_va(gfp: GfpFlags, order: u32) -> *mut u8 {
    alloc_pages(gfp, order).map_or(core::ptr::null_mut(), pfn_to_virt)
}

pub fn free_pages_va(va: *mut u8, order: u32) {
    if !va.is_null() {
        __free_pages(virt_to_pfn(va), order);
    }
}

pub fn alloc_page_va(gfp: GfpFlags) -> *mut u8 {
    alloc_pages_va(gfp, 0)
}

pub fn free_page_va(va: *mut u8) {
    free_pages_va(va, 0)
}

/// Free pages in the buddy lists of every zone (NR_FREE_PAGES; pcp lists not included).
pub fn nr_free_pages() -> u64 {
    allocator().nr_free_pages_total()
}

/// Empties this CPU's pcp lists.
pub fn drain_local_pages() {
    allocator().drain_local_pages(crate::percpu_defs::smp_processor_id());
}

/// Linux refresh_cpu_vm_stats(true) for this CPU (its vmstat work, from the tick): folds its
/// counter differences and decays its pcp high. Returns (counters folded, decay work left).
pub fn refresh_cpu_vm_stats() -> (usize, bool) {
    allocator().refresh_cpu_vm_stats(crate::percpu_defs::smp_processor_id())
}

/// Empties every CPU's pcp lists, each on its own CPU (Linux: drain_all_pages).
pub fn drain_all_pages() {
    crate::smp::on_each_cpu(&drain_local_pages);
}

/// NR_VMALLOC += delta (Linux: mod_lruvec_page_state(page, NR_VMALLOC, delta), which on arm64
/// ends in mod_node_state: a this_cpu cmpxchg loop, no interrupt masking).
#[inline]
pub fn mod_nr_vmalloc(delta: i32) {
    allocator().mod_node_page_state_irqsafe(
        crate::percpu_defs::smp_processor_id(),
        NodeStatItem::NrVmalloc,
        delta,
    );
}

/// NR_VMALLOC `delta` once for each of `nr` pages (Linux: `mod_lruvec_page_state` per page):
/// `nr` separate updates, with the allocator and this CPU's counter looked up once.
pub fn mod_nr_vmalloc_each(delta: i32, nr: usize) {
    allocator().mod_node_page_state_irqsafe_each(
        crate::percpu_defs::smp_processor_id(),
        NodeStatItem::NrVmalloc,
        delta,
        nr,
    );
}

pub fn nr_vmalloc_pages() -> i64 {
    allocator().node_page_state(NodeStatItem::NrVmalloc)
}

/// `__GFP_ZERO` hook: zeroes through the linear map with `dc zva` (Linux arm64 clear_page),
/// one cache-line-sized block per instruction; a byte loop only if DCZID_EL0 prohibits it.
///
/// Only for the page allocator (its `PageAllocHooks::zero`, a safe `fn` type): it passes pages it
/// is handing out with `__GFP_ZERO`, which no one else uses yet.
pub fn zero_pages(pfn: u64, nr: usize) {
    let dczid: u64;
    // SAFETY: reading DCZID_EL0, an ID register: no memory access, no side effect.
    unsafe {
        core::arch::asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack, preserves_flags))
    };
    let va = pfn_to_virt(pfn);
    if dczid & (1 << 4) != 0 {
        // SAFETY: [pfn, pfn + nr) are RAM pages the page allocator is handing out (its only
        // caller, see above), mapped RW by the linear map and used by no one else yet.
        unsafe { core::ptr::write_bytes(va, 0, nr * PAGE_SIZE) };
        return;
    }
    let block = 4usize << (dczid & 0xf);
    let mut p = va as usize;
    let end = p + nr * PAGE_SIZE;
    if (nr * PAGE_SIZE).is_multiple_of(8 * block) {
        // Eight blocks per iteration: 2.25 instructions per block where Linux's clear_page loop
        // (dc, add, tst, b.ne) spends 4; the same stores.
        while p < end {
            // SAFETY: as below, for the eight blocks [p, p + 8 * block), which lie inside the
            // pages (the length is a multiple of 8 * block and p starts page aligned).
            unsafe {
                core::arch::asm!(
                    "dc zva, {p}", "add {p}, {p}, {b}", "dc zva, {p}", "add {p}, {p}, {b}",
                    "dc zva, {p}", "add {p}, {p}, {b}", "dc zva, {p}", "add {p}, {p}, {b}",
                    "dc zva, {p}", "add {p}, {p}, {b}", "dc zva, {p}", "add {p}, {p}, {b}",
                    "dc zva, {p}", "add {p}, {p}, {b}", "dc zva, {p}", "add {p}, {p}, {b}",
                    p = inout(reg) p, b = in(reg) block, options(nostack, preserves_flags)
                )
            };
        }
        return;
    }
    while p < end {
        // SAFETY: `dc zva` zeroes the block of `block` bytes at p (aligned: va is page aligned
        // and block, at most 2 KiB, divides PAGE_SIZE), which lies inside the pages above.
        unsafe { core::arch::asm!("dc zva, {}", in(reg) p, options(nostack, preserves_flags)) };
        p += block;
    }
}

/// Linux warn_alloc's `nopage_rs`: one allocation-failure warning per 10 s (timer time, so
/// deterministic under -icount), shared by the page allocator and vmalloc as in Linux.
static NOPAGE_RS: bootcfg::ratelimit::RateLimit =
    bootcfg::ratelimit::RateLimit::new(10 * 62_500_000, 1);

/// Reports allocation-failure warnings the rate limit swallowed and no later warning reported
/// (Linux's ratelimit_state_exit message); call at the end of a run.
pub fn warn_flush() {
    let n = NOPAGE_RS.exit();
    if n != 0 {
        crate::println!("warn_alloc: {} output lines suppressed due to ratelimiting", n);
    }
}

/// Allocation-failure warning (Linux: warn_alloc), rate limited. The interval is in counter
/// ticks at QEMU's 62.5 MHz; other counter rates scale it (a Pi 4's 54 MHz: 11.6 s).
pub fn warn(args: core::fmt::Arguments<'_>) {
    let v = NOPAGE_RS.check(arch::cycles());
    if v.suppressed != 0 {
        crate::println!("warn_alloc: {} callbacks suppressed", v.suppressed);
    }
    if v.allow {
        crate::println!("{}", args);
    }
}
