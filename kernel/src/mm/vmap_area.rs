//! The vmap areas under every vmalloc-family mapping (Linux mm/vmalloc.c's vmap_area layer):
//! taking VA from the KVA allocator, mapping and unmapping page ranges, the lazy free with its
//! single drain and the purge (one TLB flush for many freed areas), and the misuse warnings.
use core::sync::atomic::{AtomicU64, Ordering};

use super::page_alloc;
use crate::arch::HwTlb;
use crate::arch::{VMALLOC_END, VMALLOC_START};
use crate::mm::kva::{self, KVa};
use crate::mm::pgtable::{kernel_pgtable, LinearPt};
use crate::smp;
use mm_kva::KvaError;
use mm_pgtable::{flush_tlb_kernel_range, MapFlags, PageProt};
use mm_types::gfp::GfpFlags;
use mm_types::{Pfn, PAGE_SHIFT, PAGE_SIZE};

/// Busy-area values carry the vm_struct pointer or a vmap block pointer, tagged in the low bits.
pub(crate) const VMAP_RAM: u64 = 1;
pub(crate) const VMAP_BLOCK: u64 = 2;
pub(crate) const TAG_MASK: u64 = 7;

/// Pages lazily unmapped but not yet purged (Linux: vmap_lazy_nr).
pub(crate) static VMAP_LAZY: mm_kva::vmap_lazy::VmapLazy = mm_kva::vmap_lazy::VmapLazy::new();
pub(crate) static PURGE_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Purges since boot, and the last purge's flushed span (tests and stats).
pub(crate) static NR_PURGES: AtomicU64 = AtomicU64::new(0);

/// Linux lazy_max_pages(): fls(num_online_cpus) x 32 MiB worth of pages.
pub fn lazy_max_pages() -> usize {
    let cpus = smp::num_online_cpus().max(1);
    let fls = usize::BITS - cpus.leading_zeros();
    fls as usize * ((32 << 20) / PAGE_SIZE)
}

/// Pages lazily unmapped and not yet purged (tests).
pub fn vmap_lazy_nr() -> usize {
    VMAP_LAZY.nr()
}

pub fn nr_purges() -> u64 {
    NR_PURGES.load(Ordering::Relaxed)
}

/// Allocation-failure warnings go through warn_alloc's rate limit, as in Linux.
pub(crate) fn warn(args: core::fmt::Arguments) {
    page_alloc::warn(args);
}

/// Misuse and internal-error reports since boot (tests).
pub(crate) static NR_MISUSE: AtomicU64 = AtomicU64::new(0);

pub fn nr_misuse_reports() -> u64 {
    NR_MISUSE.load(Ordering::Relaxed)
}

/// Misuse and internal errors (Linux: WARN / pr_err): always printed, and counted.
pub(crate) fn warn_misuse(args: core::fmt::Arguments) {
    NR_MISUSE.fetch_add(1, Ordering::Relaxed);
    crate::println!("{}", args);
}

/// Reserves VA for an area (Linux: alloc_vmap_area). The node fast path (per-node size pools)
/// is used for the default vmalloc range when there is more than one node. On failure, purges
/// the lazily freed areas once and retries; then warns (unless __GFP_NOWARN) and fails.
// Inline: on the path of every vmalloc/vfree (its call and return were two TB
// lookups per loop under TCG; README "Fifth round").
#[inline(always)]
pub(crate) fn alloc_vmap_area(
    size: u64,
    align: u64,
    vstart: u64,
    vend: u64,
    gfp: GfpFlags,
) -> Option<(KVa, usize)> {
    // Linux 6.12 has might_sleep() here; since vmalloc takes non-blocking gfp (2025) it is
    // might_sleep() only for a gfp that may block, which is might_alloc().
    smp::might_alloc(gfp);
    let mut node = kva::NO_NODE;
    if kva::nr_vmap_nodes() > 1 && vstart == VMALLOC_START && vend == VMALLOC_END {
        node = crate::percpu_defs::smp_processor_id() % kva::nr_vmap_nodes();
        if let Some(va) = kva::pool_get(node, size, align) {
            return Some((va, node));
        }
    }
    let mut purged = false;
    loop {
        match kva::alloc(size, align, vstart, vend) {
            Ok(va) => return Some((va, node)),
            Err(KvaError::NoMemory) => {
                // Linux: alloc_vmap_area's -ENOMEM (no vmap_area), reported by its caller.
                if !gfp.contains(GfpFlags::__GFP_NOWARN) {
                    warn(format_args!("vmalloc error: size {}, vm_struct allocation failed", size));
                }
                return None;
            }
            Err(_) if !purged => {
                purge_vmap_area_lazy();
                purged = true;
            }
            Err(_) => {
                if !gfp.contains(GfpFlags::__GFP_NOWARN) {
                    warn(format_args!("vmalloc_node_range for size {} failed: Address range restricted to {:#x} - {:#x}", size, vstart, vend));
                }
                return None;
            }
        }
    }
}

/// Unmaps nothing: queues an already unmapped area for the next purge (Linux:
/// free_vmap_area_noflush). Purges when more than lazy_max_pages are pending.
#[inline(always)]
pub(crate) fn free_vmap_area_noflush(va: KVa, node: usize) {
    let pages = ((va.va_end() - va.va_start()) >> PAGE_SHIFT) as usize;
    // Counted before the area is visible in the lazy tree (Linux does the same): a purge on
    // another CPU that takes the area then never subtracts pages that were not added.
    let nr = VMAP_LAZY.add(pages);
    if let Err(va) = kva::lazy_add(va, node) {
        // Refused (a bug, reported): flush this range now and free it at once.
        VMAP_LAZY.undo_add(pages);
        flush_tlb_kernel_range(&mut HwTlb::new(), va.va_start(), va.va_end());
        kva::free_now(va);
        return;
    }
    if nr > lazy_max_pages() {
        schedule_drain_vmap_work();
    }
}

/// Linux `schedule_work(&drain_vmap_work)`: one drain however many CPUs cross the limit. There
/// is no workqueue: the CPU that queues the work runs it at once; CPUs crossing meanwhile find
/// it queued and go on.
pub(crate) fn schedule_drain_vmap_work() {
    if !VMAP_LAZY.queue_drain() {
        return;
    }
    // drain_vmap_area_work: the purge, unless a purge already got below the limit.
    if VMAP_LAZY.nr() > lazy_max_pages() {
        purge_vmap_area_lazy();
    }
    VMAP_LAZY.drain_done();
}

/// Drains queued or run since boot (tests).
pub fn nr_drains() -> u64 {
    NR_PURGES.load(Ordering::Relaxed)
}

/// Linux `mutex_lock(&vmap_purge_lock)`: a sleeping lock in Linux, whose waiters are off the
/// CPU and so in a quiescent state. Here a waiter spins through cond_resched(), which reports
/// the quiescent state a grace period asks of this CPU (as pcpu_alloc_mutex_lock does).
fn purge_lock() -> spin::MutexGuard<'static, ()> {
    loop {
        if let Some(g) = PURGE_LOCK.try_lock() {
            return g;
        }
        while PURGE_LOCK.is_locked() {
            smp::cond_resched();
            core::hint::spin_loop();
        }
    }
}

/// Linux __purge_vmap_area_lazy: decay the node pools, collect every lazily freed area, one
/// TLB flush for the whole span, then return the areas to the pools or the free tree.
pub fn purge_vmap_area_lazy() {
    purge_vmap_area_lazy_range(u64::MAX, 0);
}

/// `__purge_vmap_area_lazy(start, end)`: the flushed span also covers [start, end) (dirty
/// vmap-block ranges from vm_unmap_aliases), flushed even when nothing lazy is pending.
pub(crate) fn purge_vmap_area_lazy_range(mut start: u64, mut end: u64) {
    let _g = purge_lock();
    let mut batch = kva::LazyBatch::take_all(&mut start, &mut end);
    kva::decay_pools(false);
    if start < end {
        let mut tlb = HwTlb::new();
        flush_tlb_kernel_range(&mut tlb, start, end);
    }
    if !batch.is_empty() {
        let pages = batch.release();
        if let Err(prev) = VMAP_LAZY.purged(pages) {
            warn_misuse(format_args!(
                "vmalloc bug: vmap_lazy_nr underflow ({prev} < {pages} purged)"
            ));
        }
        NR_PURGES.fetch_add(1, Ordering::Relaxed);
    }
}

/// Maps `nr` pages at `va` with granule `page_shift` (Linux: vmap_pages_range).
/// No lock: the area's VA is this caller's alone, and new tables are linked under the
/// populate lock inside the page-table code (Linux: init_mm.page_table_lock).
pub(crate) fn vmap_pages_range(va: u64, pages: &[Pfn], page_shift: u32) -> bool {
    let mut tlb = HwTlb::new();
    kernel_pgtable()
        .map_pages(
            &mut LinearPt,
            &mut tlb,
            va,
            pages.len(),
            |i| pages[i] << PAGE_SHIFT,
            PageProt::PAGE_KERNEL,
            page_shift,
            MapFlags::empty(),
        )
        .is_ok()
}

/// Clears the mappings of [va, va + size) without flushing the TLB (vunmap_range_noflush).
// Inline: on the path of every vmalloc/vfree (its call and return were two TB
// lookups per loop under TCG; README "Fifth round").
#[inline(always)]
pub(crate) fn vunmap_range_noflush(va: u64, size: u64) {
    let r = kernel_pgtable().unmap_range(&mut LinearPt, va, size);
    if let Err(e) = r {
        warn_misuse(format_args!("vunmap [{:#x}, {:#x}): {:?}", va, va + size, e));
    }
}
