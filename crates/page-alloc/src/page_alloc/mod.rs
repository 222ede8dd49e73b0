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
//!
//! This file holds the node (`PageAllocator`), its configuration, the public error and report
//! types and the accessors; the code is split by path, each submodule an
//! `impl PageAllocator` block over the layers below ([`crate::zone`], [`crate::buddy`],
//! [`crate::pcp`], [`crate::stat`]):
//!
//! | submodule | what |
//! |---|---|
//! | `init` | `new` (free_area_init, memmap_init, memblock_free_all) and the sysctl-style tuning |
//! | `alloc` | `alloc_pages` .. `rmqueue`, `rmqueue_buddy`, `alloc_pages_bulk` |
//! | `free` | `__free_pages`, `put_page`, `split_page`, `__free_frozen_pages`, `free_one_page`, the contig/bulk frees |
//! | `pcp_ops` | the per-CPU list paths that take a zone: `rmqueue_bulk`, `free_pcppages_bulk`, drains, pageset setup |
//! | `vmstat` | event and node counter accessors, `show_mem` |
//! | `verify` | the consistency check |
//!
//! The submodules use this file's items; this file uses none of theirs (no module cycle).
#![forbid(unsafe_code)]
use crate::page::{MemMap, Page};
use crate::stat::{NodeStats, PerCpuStats, VmEvent};
use crate::zone::{Node, Zone, ZoneFreeLists, NR_PAGE_ORDERS, WATERMARK_SCALE_FACTOR};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use mm_types::gfp::MAX_NR_ZONES;
use mm_types::{MAX_PAGE_ORDER, NR_CPUS};
use spin::mutex::SpinMutexGuard;

mod alloc;
mod free;
mod init;
mod pcp_ops;
mod verify;
mod vmstat;

// fpi_t lives with `__free_one_page`, its only reader; re-exported at its old path.
pub use crate::buddy::{FPI_NONE, FPI_PREPARED, FPI_TO_TAIL};

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
    /// `local_irq_save` / `local_irq_restore` around zone->lock, the allocator's only
    /// `spin_lock_irqsave` site (the pcp lock is a trylock with interrupts on, as Linux's
    /// `pcp_spin_trylock`: an interrupt that finds it held falls back to the zone).
    pub irq_save: fn() -> usize,
    pub irq_restore: fn(usize),
}

fn no_zero(_pfn: u64, _nr: usize) {}
fn no_warn(_args: fmt::Arguments<'_>) {}
fn no_irq_save() -> usize {
    0
}
fn no_irq_restore(_flags: usize) {}

impl PageAllocHooks {
    pub const NONE: PageAllocHooks = PageAllocHooks {
        zero: no_zero,
        warn: no_warn,
        irq_save: no_irq_save,
        irq_restore: no_irq_restore,
    };
}

/// A held zone->lock with interrupts saved (`spin_lock_irqsave`). Fields drop in declaration
/// order, so the lock is released before the interrupt state is restored, as
/// `spin_unlock_irqrestore` does.
pub(crate) struct ZoneGuard<'a> {
    guard: SpinMutexGuard<'a, ZoneFreeLists>,
    _irq: IrqRestore,
}

/// Restores the interrupt state saved by `PageAllocHooks::irq_save` when dropped.
struct IrqRestore {
    flags: usize,
    restore: fn(usize),
}

impl Drop for IrqRestore {
    #[inline(always)]
    fn drop(&mut self) {
        (self.restore)(self.flags);
    }
}

impl core::ops::Deref for ZoneGuard<'_> {
    type Target = ZoneFreeLists;
    #[inline(always)]
    fn deref(&self) -> &ZoneFreeLists {
        &self.guard
    }
}
impl core::ops::DerefMut for ZoneGuard<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut ZoneFreeLists {
        &mut self.guard
    }
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
    /// The zones and the mem_map (what the buddy operations work on).
    node: Node<'m>,
    /// Populated zones, highest first (Linux node_zonelists[ZONELIST_FALLBACK]).
    zonelist: [u8; MAX_NR_ZONES],
    nr_zonelist: usize,
    nr_cpus: AtomicUsize,
    hooks: PageAllocHooks,
    pcpu_stats: [PerCpuStats; NR_CPUS],
    node_stats: NodeStats,
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
    /// `spin_lock_irqsave(&zone->lock)`, counted.
    #[inline]
    fn zone_lock<'a>(&self, cpu: usize, zone: &'a Zone) -> ZoneGuard<'a> {
        let flags = (self.hooks.irq_save)();
        self.events(cpu).count(VmEvent::ZoneLock, 1);
        let irq = IrqRestore { flags, restore: self.hooks.irq_restore };
        ZoneGuard { guard: zone.lock.lock(), _irq: irq }
    }

    // ---- accessors ------------------------------------------------------------------------

    pub fn mem_map(&self) -> MemMap<'m> {
        self.node.mem_map
    }
    /// `pfn_to_page` (None outside mem_map).
    pub fn pfn_to_page(&self, pfn: u64) -> Option<&'m Page> {
        self.node.mem_map.pfn_to_page(pfn)
    }
    /// `page_to_pfn` (the page must be in mem_map).
    pub fn page_to_pfn(&self, page: &Page) -> u64 {
        self.node.mem_map.page_to_pfn(page)
    }
    pub fn zones(&self) -> &[Zone] {
        &self.node.zones
    }
    pub fn zone(&self, idx: usize) -> &Zone {
        &self.node.zones[idx]
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
    #[inline]
    pub fn totalram_pages(&self) -> u64 {
        self.node.zones.iter().map(|z| z.managed_pages()).sum()
    }
    /// Sum of NR_FREE_PAGES (pcp-cached pages excluded, as in Linux).
    pub fn nr_free_pages_total(&self) -> u64 {
        self.node.zones.iter().map(|z| z.nr_free_pages().max(0) as u64).sum()
    }
    /// Pages currently on all pcp lists (takes every pcp lock).
    pub fn nr_pcp_pages(&self) -> u64 {
        let mut n = 0;
        for z in self.node.zones.iter() {
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
            .map(move |&z| &self.node.zones[z as usize])
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
