//! vmalloc, as Linux's mm/vmalloc.c does it: a vm_struct and a pages array per area, VA from the
//! KVA allocator (per-node pools first, then the global free tree), pages from the buddy
//! allocator under the `mm.vmalloc_large_order` policy, mapping with the page-table code, and a
//! lazy unmap/purge (one TLB flush for many freed areas). vfree releases the pages one by one
//! (`mm.vfree=single`, the baseline) or through free_pages_bulk (`mm.vfree=bulk`, the seed
//! patch). vm_map_ram uses per-CPU 4 MiB vmap blocks with a bump allocator.
use core::ptr::null_mut;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{kmalloc, page_alloc};
use crate::arch::HwTlb;
use crate::arch::{self, VMALLOC_END, VMALLOC_START};
use crate::mm::kva;
use crate::mm::pgtable::{kernel_pgtable, KernelPt};
use crate::smp;
use bootcfg::config::{self, VfreeMode};
use mm_kva::KvaError;
use mm_pgtable::{flush_tlb_kernel_range, MapFlags, PageProt};
use mm_types::gfp::GfpFlags;
use mm_types::{Pfn, MAX_PAGE_ORDER, PAGE_SHIFT, PAGE_SIZE};

pub const PMD_SHIFT: u32 = 21;
pub const CONT_PTE_SHIFT: u32 = 16;

/// vm_struct flags (Linux include/linux/vmalloc.h).
pub const VM_ALLOC: u32 = 0x2;
pub const VM_MAP: u32 = 0x4;
pub const VM_NO_GUARD: u32 = 0x40;
pub const VM_ALLOW_HUGE_VMAP: u32 = 0x400;
pub const VM_MAP_PUT_PAGES: u32 = 0x200;

/// Linux's struct vm_struct.
///
/// Invariant of every vm_struct this file creates (kmalloc'ed, owned by its area until
/// free_vm_struct): `pages` is null or a kmalloc'ed array of `nr_pages * 8` bytes (the full count
/// once the area is published) whose first `nr_pages` entries are the area's pages.
#[repr(C)]
pub struct VmStruct {
    pub addr: u64,
    /// Including the guard page.
    pub size: u64,
    pub flags: u32,
    /// Mapping granule: page_shift - PAGE_SHIFT (0, 4 for 64 KiB cont-PTE, 9 for a PMD block).
    pub page_order: u32,
    pub nr_pages: usize,
    pub pages: *mut Pfn,
    pub requested_size: usize,
}

/// Busy-area values carry the vm_struct pointer or a vmap block pointer, tagged in the low bits.
const VMAP_RAM: u64 = 1;
const VMAP_BLOCK: u64 = 2;
const TAG_MASK: u64 = 7;

/// Pages lazily unmapped but not yet purged (Linux: vmap_lazy_nr).
static VMAP_LAZY: mm_kva::vmap_lazy::VmapLazy = mm_kva::vmap_lazy::VmapLazy::new();
static PURGE_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Purges since boot, and the last purge's flushed span (tests and stats).
static NR_PURGES: AtomicU64 = AtomicU64::new(0);

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
fn warn(args: core::fmt::Arguments) {
    page_alloc::warn(args);
}

/// Misuse and internal-error reports since boot (tests).
static NR_MISUSE: AtomicU64 = AtomicU64::new(0);

pub fn nr_misuse_reports() -> u64 {
    NR_MISUSE.load(Ordering::Relaxed)
}

/// Misuse and internal errors (Linux: WARN / pr_err): always printed, and counted.
fn warn_misuse(args: core::fmt::Arguments) {
    NR_MISUSE.fetch_add(1, Ordering::Relaxed);
    crate::println!("{}", args);
}

/// Reserves VA for an area (Linux: alloc_vmap_area). The node fast path (per-node size pools)
/// is used for the default vmalloc range when there is more than one node. On failure, purges
/// the lazily freed areas once and retries; then warns (unless __GFP_NOWARN) and fails.
fn alloc_vmap_area(
    size: u64,
    align: u64,
    vstart: u64,
    vend: u64,
    gfp: GfpFlags,
) -> Option<(u64, usize)> {
    let mut node = kva::NO_NODE;
    if kva::nr_vmap_nodes() > 1 && vstart == VMALLOC_START && vend == VMALLOC_END {
        node = crate::percpu_defs::smp_processor_id() % kva::nr_vmap_nodes();
        if let Some(start) = kva::pool_get(node, size, align) {
            return Some((start, node));
        }
    }
    let mut purged = false;
    loop {
        match kva::alloc(size, align, vstart, vend) {
            Ok(start) => return Some((start, node)),
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
fn free_vmap_area_noflush(start: u64, end: u64, node: usize) {
    let pages = ((end - start) >> PAGE_SHIFT) as usize;
    // Counted before the area is visible in the lazy tree (Linux does the same): a purge on
    // another CPU that takes the area then never subtracts pages that were not added.
    let nr = VMAP_LAZY.add(pages);
    if !kva::lazy_add(start, end, node) {
        // No memory for the lazy tree: flush this range now and free it at once.
        VMAP_LAZY.undo_add(pages);
        flush_tlb_kernel_range(&mut HwTlb::new(), start, end);
        kva::free_now(start, end);
        return;
    }
    if nr > lazy_max_pages() {
        schedule_drain_vmap_work();
    }
}

/// Linux `schedule_work(&drain_vmap_work)`: one drain however many CPUs cross the limit. There
/// is no workqueue: the CPU that queues the work runs it at once; CPUs crossing meanwhile find
/// it queued and go on.
fn schedule_drain_vmap_work() {
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

/// Linux __purge_vmap_area_lazy: decay the node pools, collect every lazily freed area, one
/// TLB flush for the whole span, then return the areas to the pools or the free tree.
pub fn purge_vmap_area_lazy() {
    purge_vmap_area_lazy_range(u64::MAX, 0);
}

/// `__purge_vmap_area_lazy(start, end)`: the flushed span also covers [start, end) (dirty
/// vmap-block ranges from vm_unmap_aliases), flushed even when nothing lazy is pending.
fn purge_vmap_area_lazy_range(mut start: u64, mut end: u64) {
    let _g = PURGE_LOCK.lock();
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
fn vmap_pages_range(va: u64, pages: &[Pfn], page_shift: u32) -> bool {
    let mut tlb = HwTlb::new();
    kernel_pgtable()
        .map_pages(
            &mut KernelPt,
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
fn vunmap_range_noflush(va: u64, size: u64) {
    let r = kernel_pgtable().unmap_range(&mut KernelPt, va, size);
    if let Err(e) = r {
        warn_misuse(format_args!("vunmap [{:#x}, {:#x}): {:?}", va, va + size, e));
    }
}

/// Linux vm_area_alloc_pages: fills `pages` (nr_pages entries) at granule `order`. The caller
/// adds __GFP_NOWARN (the failure is reported once, by the caller). cond_resched() after each
/// bulk call and each fallback block, where Linux has it; none in the large-order loop.
fn vm_area_alloc_pages(gfp: GfpFlags, order: u32, pages: &mut [Pfn]) -> usize {
    let nr_pages = pages.len();
    let mut nr_allocated = 0usize;
    let large_order = config::get().vmalloc_large_order;
    if large_order {
        // a06157804399: largest orders first, without direct reclaim or warnings, split.
        let large_gfp = (gfp | GfpFlags::__GFP_NOWARN)
            - (GfpFlags::__GFP_NOFAIL | GfpFlags::__GFP_DIRECT_RECLAIM | GfpFlags::__GFP_COMP);
        let mut max_attempt = MAX_PAGE_ORDER as u32;
        while nr_allocated < nr_pages {
            let remaining = nr_pages - nr_allocated;
            let large = (usize::BITS - 1 - remaining.leading_zeros()).min(max_attempt);
            if large <= order {
                break;
            }
            match page_alloc::alloc_pages(large_gfp, large) {
                None => {
                    max_attempt = large - 1;
                }
                Some(pfn) => {
                    page_alloc::mod_nr_vmalloc(1 << large);
                    page_alloc::split_page(pfn, large);
                    for i in 0..(1usize << large) {
                        pages[nr_allocated + i] = pfn + i as u64;
                    }
                    nr_allocated += 1 << large;
                }
            }
        }
    }
    if order == 0 {
        // Order-0 pages through the bulk allocator, at most 100 per call.
        let bulk_gfp = gfp - GfpFlags::__GFP_NOFAIL;
        let mut slots = [None; 100];
        while nr_allocated < nr_pages {
            let req = (nr_pages - nr_allocated).min(100);
            for s in slots[..req].iter_mut() {
                *s = None;
            }
            let got = page_alloc::alloc_pages_bulk(bulk_gfp, req, &mut slots[..req]);
            let mut n = 0;
            // Kept as `if let`: `.iter().flatten()` compiles this hot loop (inlined into
            // __vmalloc_node_range) to different code.
            #[allow(clippy::manual_flatten)]
            for s in slots[..req].iter() {
                if let Some(pfn) = s {
                    pages[nr_allocated + n] = *pfn;
                    n += 1;
                }
            }
            debug_assert_eq!(n, got);
            // NR_VMALLOC: +1 per page, as Linux accounts bulk pages.
            for _ in 0..n {
                page_alloc::mod_nr_vmalloc(1);
            }
            nr_allocated += n;
            smp::cond_resched();
            if n != req {
                break;
            }
        }
    }
    // The fallback: one block of the mapping granule at a time, with the caller's gfp.
    while nr_allocated < nr_pages {
        let Some(pfn) = page_alloc::alloc_pages(gfp, order) else { break };
        page_alloc::mod_nr_vmalloc(1 << order);
        if order > 0 {
            page_alloc::split_page(pfn, order);
        }
        for i in 0..(1usize << order) {
            pages[nr_allocated + i] = pfn + i as u64;
        }
        smp::cond_resched();
        nr_allocated += 1 << order;
    }
    nr_allocated
}

/// Frees the pages of an area as the `mm.vfree` switch says. Returns nothing: misuse is
/// reported by the page allocator.
fn vm_free_pages(vm: &VmStruct) {
    if vm.pages.is_null() || vm.nr_pages == 0 {
        return;
    }
    // SAFETY: by the VmStruct invariant a non-null `pages` is a kmalloc'ed array (aligned,
    // initialised: zeroed at allocation) holding at least nr_pages Pfns; nothing writes it while
    // the area is being freed.
    let pages = unsafe { core::slice::from_raw_parts(vm.pages, vm.nr_pages) };
    let account = vm.flags & VM_MAP_PUT_PAGES == 0;
    match config::get().vfree {
        VfreeMode::Single => {
            // Before the patch: one __free_page per page, each to the order-0 pcp list.
            for &pfn in pages {
                if account {
                    page_alloc::mod_nr_vmalloc(-1);
                }
                page_alloc::__free_page(pfn);
                smp::cond_resched();
            }
        }
        VfreeMode::Bulk => {
            // The patch: stats in a separate pass, then free_pages_bulk over PFN runs.
            if account {
                for _ in pages {
                    page_alloc::mod_nr_vmalloc(-1);
                }
            }
            page_alloc::free_pages_bulk(pages);
        }
    }
}

/// Frees a vm_struct and its pages array (not the pages).
///
/// # Safety
///
/// `vm` must be a vm_struct kmalloc'ed by this file, reachable by no one else (never published,
/// or unlinked from its busy tree by this caller), with `nr_pages` the count its pages array
/// was allocated for whenever `pages` is non-null. `vm` is dangling afterwards.
unsafe fn free_vm_struct(vm: *mut VmStruct) {
    // SAFETY: per the contract `vm` is live and ours; its pages array (if any) was kmalloc'ed
    // with nr_pages * 8 bytes and `vm` itself with size_of::<VmStruct>(), and neither is used
    // again.
    unsafe {
        if !(*vm).pages.is_null() {
            kmalloc::kfree((*vm).pages as *mut u8, (*vm).nr_pages * 8);
        }
        kmalloc::kfree(vm as *mut u8, core::mem::size_of::<VmStruct>());
    }
}

/// Linux __vmalloc_node_range_noprof (start/end = the vmalloc range, PAGE_KERNEL).
pub fn __vmalloc_node_range(
    size: usize,
    align: usize,
    vstart: u64,
    vend: u64,
    gfp: GfpFlags,
    vm_flags: u32,
) -> *mut u8 {
    if size == 0 || (size >> PAGE_SHIFT) as u64 > page_alloc::allocator().totalram_pages() {
        if !gfp.contains(GfpFlags::__GFP_NOWARN) {
            warn(format_args!("vmalloc error: size {}, exceeds total pages", size));
        }
        return null_mut();
    }
    let orig_align = align.max(1);
    let mut align = orig_align;
    let mut shift = PAGE_SHIFT;
    if vm_flags & VM_ALLOW_HUGE_VMAP != 0 {
        shift = if size >= 1 << PMD_SHIFT {
            PMD_SHIFT
        } else if size >= 1 << CONT_PTE_SHIFT {
            CONT_PTE_SHIFT
        } else {
            PAGE_SHIFT
        };
        align = align.max(1 << shift);
    }
    loop {
        match vmalloc_once(size, align, shift, vstart, vend, gfp, vm_flags) {
            Ok(p) => return p,
            Err(()) if shift > PAGE_SHIFT => {
                // Retry with small pages (Linux: "goto again" with shift = PAGE_SHIFT).
                shift = PAGE_SHIFT;
                align = orig_align;
            }
            Err(()) => return null_mut(),
        }
    }
}

fn vmalloc_once(
    size: usize,
    align: usize,
    shift: u32,
    vstart: u64,
    vend: u64,
    gfp: GfpFlags,
    vm_flags: u32,
) -> Result<*mut u8, ()> {
    let size_aligned = size.next_multiple_of(1 << shift);
    let va_size =
        size_aligned as u64 + if vm_flags & VM_NO_GUARD != 0 { 0 } else { PAGE_SIZE as u64 };
    if !align.is_power_of_two() {
        return Err(());
    }
    let vm = kmalloc::kmalloc(core::mem::size_of::<VmStruct>(), gfp | GfpFlags::__GFP_ZERO)
        as *mut VmStruct;
    if vm.is_null() {
        return Err(());
    }
    let Some((start, node)) = alloc_vmap_area(va_size, align as u64, vstart, vend, gfp) else {
        // SAFETY: `vm` was kmalloc'ed just above with this size and never published.
        unsafe { kmalloc::kfree(vm as *mut u8, core::mem::size_of::<VmStruct>()) };
        return Err(());
    };
    let nr_pages = size_aligned >> PAGE_SHIFT;
    // Linux: nested_gfp = (gfp & GFP_RECLAIM_MASK) | __GFP_ZERO: the pages array is zeroed.
    let nested_gfp = (gfp
        & (GfpFlags::__GFP_RECLAIM
            | GfpFlags::__GFP_IO
            | GfpFlags::__GFP_FS
            | GfpFlags::__GFP_NOWARN
            | GfpFlags::__GFP_RETRY_MAYFAIL
            | GfpFlags::__GFP_NOFAIL
            | GfpFlags::__GFP_NORETRY
            | GfpFlags::__GFP_MEMALLOC
            | GfpFlags::__GFP_NOMEMALLOC))
        | GfpFlags::__GFP_ZERO;
    let pages = kmalloc::kmalloc(nr_pages * 8, nested_gfp) as *mut Pfn;
    // SAFETY: `vm` is a non-null kmalloc object of size_of::<VmStruct>() bytes (size-class
    // aligned, so aligned for VmStruct), not published yet: this call's alone.
    unsafe {
        *vm = VmStruct {
            addr: start,
            size: va_size,
            flags: VM_ALLOC | vm_flags,
            page_order: shift - PAGE_SHIFT,
            nr_pages: 0,
            pages,
            requested_size: size,
        };
    }
    // Before anything was mapped: pages (if any) back, the range straight to the free tree.
    // The pages array was sized for nr_pages; nr_pages in the vm_struct says how many were got.
    // SAFETY: called only with this call's `vm`, never published (busy_insert is the last
    // step), so live and this call's alone; its pages array was kmalloc'ed with nr_pages * 8
    // bytes, and with `pages` nulled free_vm_struct frees only the struct.
    let free_area_struct = |vm: *mut VmStruct| unsafe {
        if !(*vm).pages.is_null() {
            kmalloc::kfree((*vm).pages as *mut u8, nr_pages * 8);
            (*vm).pages = null_mut();
        }
        free_vm_struct(vm);
    };
    let fail = |vm: *mut VmStruct| {
        // SAFETY: `vm` is this call's unpublished vm_struct (see free_area_struct); its first
        // nr_pages entries are pages vm_area_alloc_pages got, which go back once.
        unsafe {
            if (*vm).nr_pages > 0 {
                vm_free_pages(&*vm);
            }
        }
        kva::free_now(start, start + va_size);
        free_area_struct(vm);
        Err(())
    };
    if pages.is_null() {
        return fail(vm);
    }
    // SAFETY: `pages` is a non-null kmalloc'ed array of nr_pages Pfns (aligned, zeroed by
    // __GFP_ZERO), reachable only through this call's unpublished `vm`, which is not used to
    // read or write the array while the slice is in use.
    let slice = unsafe { core::slice::from_raw_parts_mut(pages, nr_pages) };
    // Linux __vmalloc_area_node: (page_order ? gfp & ~__GFP_NOFAIL : gfp) | __GFP_NOWARN.
    let page_gfp = if shift > PAGE_SHIFT { gfp - GfpFlags::__GFP_NOFAIL } else { gfp }
        | GfpFlags::__GFP_NOWARN;
    let got = vm_area_alloc_pages(page_gfp, shift - PAGE_SHIFT, slice);
    // SAFETY: `vm` is live and this call's alone (unpublished).
    unsafe { (*vm).nr_pages = got };
    if got != nr_pages {
        if !gfp.contains(GfpFlags::__GFP_NOWARN) {
            warn(format_args!(
                "vmalloc error: size {}, failed to allocate pages (got {} of {})",
                size, got, nr_pages
            ));
        }
        return fail(vm);
    }
    // After mapping (possibly in part): unmap, and the range goes the lazy way (its TLB entries
    // are flushed before reuse), as Linux's vfree of a half-built area does.
    let fail_mapped = |vm: *mut VmStruct| {
        vunmap_range_noflush(start, size_aligned as u64);
        free_vmap_area_noflush(start, start + va_size, node);
        // SAFETY: `vm` is this call's unpublished vm_struct holding all nr_pages pages, now
        // unmapped; they go back once.
        unsafe { vm_free_pages(&*vm) };
        free_area_struct(vm);
        Err(())
    };
    if !vmap_pages_range(start, slice, shift) {
        warn(format_args!("vmalloc error: size {}, failed to map pages", size));
        return fail_mapped(vm);
    }
    if !kva::busy_insert(start, start + va_size, vm as u64, node) {
        warn(format_args!("vmalloc error: size {}, no memory for the vmap area", size));
        return fail_mapped(vm);
    }
    Ok(start as *mut u8)
}

pub fn vmalloc(size: usize) -> *mut u8 {
    __vmalloc_node_range(size, 1, VMALLOC_START, VMALLOC_END, GfpFlags::GFP_KERNEL, 0)
}

pub fn vzalloc(size: usize) -> *mut u8 {
    __vmalloc_node_range(
        size,
        1,
        VMALLOC_START,
        VMALLOC_END,
        GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO,
        0,
    )
}

pub fn __vmalloc(size: usize, gfp: GfpFlags) -> *mut u8 {
    __vmalloc_node_range(size, 1, VMALLOC_START, VMALLOC_END, gfp, 0)
}

pub fn __vmalloc_node(size: usize, align: usize, gfp: GfpFlags) -> *mut u8 {
    __vmalloc_node_range(size, align, VMALLOC_START, VMALLOC_END, gfp, 0)
}

pub fn vmalloc_huge(size: usize, gfp: GfpFlags) -> *mut u8 {
    __vmalloc_node_range(size, 1, VMALLOC_START, VMALLOC_END, gfp, VM_ALLOW_HUGE_VMAP)
}

/// Unlinks the area at `addr` from its busy tree, unmaps it lazily (Linux remove_vm_area +
/// free_unmap_vmap_area). Returns the vm_struct.
fn remove_vm_area(addr: u64) -> Option<*mut VmStruct> {
    let (start, end, val, node) = kva::busy_remove(addr)?;
    if val & TAG_MASK != 0 || val == 0 {
        // Not a vmalloc area (vm_map_ram / block): put it back (its node was just freed, so
        // the insert finds one) and refuse.
        let _ = kva::busy_insert(start, end, val, node);
        return None;
    }
    let vm = val as *mut VmStruct;
    // Everything the area may map (Linux get_vm_area_size: the size without its guard page),
    // not nr_pages: a vmap() area owns no pages array.
    // SAFETY: a busy value with no tag bits is the vm_struct this area was inserted with, alive
    // until free_vm_struct.
    let mapped =
        unsafe { (*vm).size - if (*vm).flags & VM_NO_GUARD != 0 { 0 } else { PAGE_SIZE as u64 } };
    vunmap_range_noflush(start, mapped);
    free_vmap_area_noflush(start, end, node);
    Some(vm)
}

/// Frees memory from vmalloc (Linux vfree).
pub fn vfree(addr: *mut u8) {
    if addr.is_null() {
        return;
    }
    let Some(vm) = remove_vm_area(addr as u64 & !(PAGE_SIZE as u64 - 1)) else {
        warn_misuse(format_args!("WARNING: Trying to vfree() nonexistent vm area ({:p})", addr));
        return;
    };
    // SAFETY: remove_vm_area unlinked the area from its busy tree, so this call alone owns its
    // vm_struct (a live one: tag-free busy values are vm_structs alive until free_vm_struct);
    // its pages array, if any (a vmap() area has none), holds nr_pages pages: the full count,
    // as only complete areas are published.
    unsafe { vm_free_pages(&*vm) };
    // SAFETY: as above; the area is unmapped and its pages freed, so nothing uses `vm` again.
    unsafe { free_vm_struct(vm) };
}

/// Linux vrealloc: in place when the area already has room, else allocate, copy, free.
///
/// # Safety
///
/// `p` must be null or the start of a live area returned by the vmalloc family
/// ([`__vmalloc_node_range`] and its wrappers, or `vrealloc`), owned by the caller: no other
/// CPU frees, reallocates or accesses it during the call. When the area moves, `p` is freed
/// (dangling afterwards); when it shrinks in place, the bytes from `size` on are zeroed.
pub unsafe fn vrealloc(p: *mut u8, size: usize, gfp: GfpFlags) -> *mut u8 {
    if p.is_null() {
        return __vmalloc(size, gfp);
    }
    if size == 0 {
        vfree(p);
        return null_mut();
    }
    let Some((_, _, val, _)) = kva::busy_find(p as u64) else {
        warn_misuse(format_args!("WARNING: Trying to vrealloc() nonexistent vm area ({:p})", p));
        return null_mut();
    };
    if val & TAG_MASK != 0 {
        return null_mut();
    }
    let vm = val as *mut VmStruct;
    // SAFETY: a tag-free busy value is the area's live vm_struct; the caller owns the area, so
    // no vfree can free it during this call.
    let (old_size, alloced) = unsafe { ((*vm).requested_size, (*vm).nr_pages << PAGE_SHIFT) };
    if size <= alloced {
        if size < old_size {
            // Shrinking: the tail reads as zero if it grows back (Linux zeroes it).
            // SAFETY: `p` is the area's start (contract) and [p + size, p + old_size) lies in
            // its first old_size <= alloced bytes, mapped and owned by the caller.
            unsafe { core::ptr::write_bytes(p.add(size), 0, old_size - size) };
        }
        // SAFETY: as above; the caller's ownership of the area makes this write exclusive.
        unsafe { (*vm).requested_size = size };
        return p;
    }
    let n = __vmalloc(size, gfp);
    if n.is_null() {
        return null_mut();
    }
    // SAFETY: `p` is the start of the caller's area, mapped for old_size bytes; `n` is a fresh
    // area of at least size bytes, distinct from it (both busy), so the ranges do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(p, n, old_size.min(size)) };
    vfree(p);
    n
}

/// vmap(): maps existing pages (one PTE each) into a new vmalloc area (VM_MAP).
pub fn vmap(pages: &[Pfn]) -> *mut u8 {
    let size = (pages.len() << PAGE_SHIFT) as u64 + PAGE_SIZE as u64;
    let vm = kmalloc::kmalloc(
        core::mem::size_of::<VmStruct>(),
        GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO,
    ) as *mut VmStruct;
    if vm.is_null() || pages.is_empty() {
        // SAFETY: `vm` is null or was kmalloc'ed just above with this size, never published.
        unsafe { kmalloc::kfree(vm as *mut u8, core::mem::size_of::<VmStruct>()) };
        return null_mut();
    }
    let Some((start, node)) =
        alloc_vmap_area(size, PAGE_SIZE as u64, VMALLOC_START, VMALLOC_END, GfpFlags::GFP_KERNEL)
    else {
        // SAFETY: `vm` was kmalloc'ed above with this size and never published.
        unsafe { kmalloc::kfree(vm as *mut u8, core::mem::size_of::<VmStruct>()) };
        return null_mut();
    };
    // SAFETY: `vm` is a non-null kmalloc object of size_of::<VmStruct>() bytes, not published
    // yet: this call's alone.
    unsafe {
        // No pages array and nr_pages 0: the pages stay their owner's (Linux records them only
        // with VM_MAP_PUT_PAGES), so a vfree() of this area unmaps it and frees no page.
        *vm = VmStruct {
            addr: start,
            size,
            flags: VM_MAP,
            page_order: 0,
            nr_pages: 0,
            pages: null_mut(),
            requested_size: pages.len() << PAGE_SHIFT,
        };
    }
    if !vmap_pages_range(start, pages, PAGE_SHIFT)
        || !kva::busy_insert(start, start + size, vm as u64, node)
    {
        vunmap_range_noflush(start, size - PAGE_SIZE as u64);
        free_vmap_area_noflush(start, start + size, node);
        // SAFETY: `vm` was kmalloc'ed above with this size and never published.
        unsafe { kmalloc::kfree(vm as *mut u8, core::mem::size_of::<VmStruct>()) };
        return null_mut();
    }
    start as *mut u8
}

/// vunmap(): removes a vmap() mapping; the pages stay with their owner.
pub fn vunmap(addr: *mut u8) {
    if let Some(vm) = remove_vm_area(addr as u64) {
        // SAFETY: remove_vm_area unlinked the area, so its vm_struct (kmalloc'ed with this size)
        // is this call's alone and used by no one again. (A vmap() area has no pages array; a
        // vmalloc area passed here by mistake leaks its pages array and pages, as in Linux.)
        unsafe { kmalloc::kfree(vm as *mut u8, core::mem::size_of::<VmStruct>()) };
    }
}

// ------------------------------------------------------------------------------------------------
// vm_map_ram: per-CPU vmap blocks
// ------------------------------------------------------------------------------------------------

/// Linux VMAP_MAX_ALLOC (BITS_PER_LONG pages): larger requests get their own area.
pub const VMAP_MAX_ALLOC: usize = 64;
/// Linux VMAP_BBMAP_BITS: pages per vmap block (4 MiB).
pub const VMAP_BBMAP_BITS: usize = 1024;
const VMAP_BLOCK_SIZE: u64 = (VMAP_BBMAP_BITS * PAGE_SIZE) as u64;

/// Linux struct vmap_block (bump allocation: offsets are never reused within a block).
struct VmapBlock {
    va_start: u64,
    node: usize,
    free: usize,
    dirty: usize,
    dirty_min: usize,
    dirty_max: usize,
    next: *mut VmapBlock,
    on_free_list: bool,
}

struct VbqList {
    head: *mut VmapBlock,
}
// SAFETY: the list links kmalloc'ed vmap blocks, which belong to no CPU or thread. A block's
// `free`, `next` and `on_free_list` are accessed only under the lock of the queue holding it (or
// by its creator before it is listed), its dirty fields under VB_LOCK, and `va_start`/`node`
// never change after creation; so the list may be locked from any CPU.
unsafe impl Send for VbqList {}
crate::define_per_cpu! {
    /// Per-CPU lists of blocks with free space (Linux: vmap_block_queue).
    static VBQ: spin::Mutex<VbqList> = spin::Mutex::new(VbqList { head: null_mut() });
}
/// All blocks, for the fragmented-block purge (protected by its own lock).
static VB_LOCK: spin::Mutex<()> = spin::Mutex::new(());

fn get_order(pages: usize) -> u32 {
    pages.next_power_of_two().trailing_zeros()
}

fn vb_alloc(count: usize) -> Option<u64> {
    let order = get_order(count);
    let need = 1usize << order;
    let mut q = VBQ.this_cpu().lock();
    let mut prev: *mut VmapBlock = null_mut();
    let mut b = q.head;
    while !b.is_null() {
        // SAFETY: this CPU's queue lock is held; every block on a free list is live (a block
        // leaves the list, under this lock, before it can be freed: when vb_alloc fills it or
        // purge_fragmented_blocks takes it), and its free-list fields are guarded by this lock.
        unsafe {
            if (*b).free >= need {
                let off = VMAP_BBMAP_BITS - (*b).free;
                (*b).free -= need;
                if (*b).free == 0 {
                    // Full: off the free list.
                    if prev.is_null() {
                        q.head = (*b).next
                    } else {
                        (*prev).next = (*b).next
                    }
                    (*b).next = null_mut();
                    (*b).on_free_list = false;
                }
                return Some((*b).va_start + (off * PAGE_SIZE) as u64);
            }
            prev = b;
            b = (*b).next;
        }
    }
    drop(q);
    // new_vmap_block: a block-sized, block-aligned area.
    let (start, node) = alloc_vmap_area(
        VMAP_BLOCK_SIZE,
        VMAP_BLOCK_SIZE,
        VMALLOC_START,
        VMALLOC_END,
        GfpFlags::GFP_KERNEL,
    )?;
    let vb =
        kmalloc::kmalloc(core::mem::size_of::<VmapBlock>(), GfpFlags::GFP_KERNEL) as *mut VmapBlock;
    if vb.is_null() {
        kva::free_now(start, start + VMAP_BLOCK_SIZE);
        return None;
    }
    // SAFETY: `vb` is a non-null kmalloc object of size_of::<VmapBlock>() bytes (size-class
    // aligned), not published yet: this call's alone.
    unsafe {
        *vb = VmapBlock {
            va_start: start,
            node,
            free: VMAP_BBMAP_BITS - need,
            dirty: 0,
            dirty_min: VMAP_BBMAP_BITS,
            dirty_max: 0,
            next: null_mut(),
            on_free_list: false,
        };
    }
    if !kva::busy_insert(start, start + VMAP_BLOCK_SIZE, vb as u64 | VMAP_BLOCK, node) {
        // SAFETY: `vb` was kmalloc'ed above with this size; the insert failed, so it was never
        // published.
        unsafe { kmalloc::kfree(vb as *mut u8, core::mem::size_of::<VmapBlock>()) };
        kva::free_now(start, start + VMAP_BLOCK_SIZE);
        return None;
    }
    let mut q = VBQ.this_cpu().lock();
    // SAFETY: `vb` is live: it has a live slot (the one returned below, not handed out yet), so
    // no vb_free can make it all dirty, and it is on no list for purge_fragmented_blocks to find;
    // its free-list fields are written under this CPU's queue lock, which it joins now.
    unsafe {
        (*vb).next = q.head;
        (*vb).on_free_list = true;
    }
    q.head = vb;
    Some(start)
}

/// Unlinks a vmap block's area, queues it for the lazy purge and frees the block.
///
/// # Safety
///
/// `vb` must be a live vmap block that holds no live mapping, is on no free list and that no
/// one else will reach again (its last slot was just freed, or purge_fragmented_blocks took it).
unsafe fn free_vmap_block(vb: *mut VmapBlock) {
    // SAFETY: `vb` is live (contract); va_start and node never change after creation.
    let (start, node) = unsafe { ((*vb).va_start, (*vb).node) };
    kva::busy_remove(start);
    // SAFETY: `vb` was kmalloc'ed with this size by vb_alloc and, per the contract, is not
    // reached again once its busy entry is gone.
    unsafe { kmalloc::kfree(vb as *mut u8, core::mem::size_of::<VmapBlock>()) };
    free_vmap_area_noflush(start, start + VMAP_BLOCK_SIZE, node);
}

/// Frees `count` pages at `addr` back to their vmap block; false when `addr` is in no block.
///
/// # Safety
///
/// If `addr` lies in a vmap block, `(addr, count)` must be a live slot returned by
/// vm_map_ram(count pages) and not freed since (see [`vm_unmap_ram`]).
unsafe fn vb_free(addr: u64, count: usize) -> bool {
    let order = get_order(count);
    let Some((start, _end, val, _)) = kva::busy_find(addr) else { return false };
    if val & TAG_MASK != VMAP_BLOCK {
        return false;
    }
    let vb = (val & !TAG_MASK) as *mut VmapBlock;
    vunmap_range_noflush(addr, (count * PAGE_SIZE) as u64);
    let _g = VB_LOCK.lock();
    let off = ((addr - start) >> PAGE_SHIFT) as usize;
    // SAFETY: the block holds the caller's live slot (contract), so it is live: it cannot have
    // become all dirty, and purge_fragmented_blocks only takes blocks without live slots. Its
    // dirty fields are guarded by VB_LOCK, held.
    let all_dirty = unsafe {
        (*vb).dirty += 1 << order;
        (*vb).dirty_min = (*vb).dirty_min.min(off);
        (*vb).dirty_max = (*vb).dirty_max.max(off + (1 << order));
        (*vb).dirty == VMAP_BBMAP_BITS
    };
    if all_dirty {
        // SAFETY: all dirty means free == 0 (dirty never exceeds what was handed out), so the
        // block is off every free list, and this was its last live slot: no one reaches it again.
        unsafe { free_vmap_block(vb) };
    }
    true
}

/// Maps `pages` at a new address (Linux vm_map_ram): small counts from the CPU's vmap block.
pub fn vm_map_ram(pages: &[Pfn]) -> *mut u8 {
    let count = pages.len();
    if count == 0 {
        return null_mut();
    }
    let addr = if count <= VMAP_MAX_ALLOC {
        match vb_alloc(count) {
            Some(a) => a,
            None => return null_mut(),
        }
    } else {
        let size = (count * PAGE_SIZE) as u64;
        let Some((start, node)) = alloc_vmap_area(
            size,
            PAGE_SIZE as u64,
            VMALLOC_START,
            VMALLOC_END,
            GfpFlags::GFP_KERNEL,
        ) else {
            return null_mut();
        };
        if !kva::busy_insert(start, start + size, VMAP_RAM, node) {
            kva::free_now(start, start + size);
            return null_mut();
        }
        start
    };
    if !vmap_pages_range(addr, pages, PAGE_SHIFT) {
        // SAFETY: `addr` is the slot or area of `count` pages reserved above, freed only here.
        unsafe { vm_unmap_ram(addr as *mut u8, count) };
        return null_mut();
    }
    addr as *mut u8
}

/// Unmaps what vm_map_ram mapped; the TLB flush is deferred to the lazy purge.
///
/// Other addresses (vmalloc areas, addresses in no area) are reported and left alone.
///
/// # Safety
///
/// When `count <= VMAP_MAX_ALLOC` and `mem` lies in a vmap block, `(mem, count)` must be what a
/// vm_map_ram of `count` pages returned, not unmapped since: a vmap block's dirty accounting
/// cannot tell a double or bogus unmap, which would free the block under its live slots (and
/// under its free list).
pub unsafe fn vm_unmap_ram(mem: *mut u8, count: usize) {
    let addr = mem as u64;
    if count <= VMAP_MAX_ALLOC {
        // SAFETY: the caller's contract is vb_free's.
        if !unsafe { vb_free(addr, count) } {
            warn_misuse(format_args!(
                "WARNING: vm_unmap_ram of {:#x}: not a vmap block address",
                addr
            ));
        }
        return;
    }
    let Some((start, end, val, node)) = kva::busy_remove(addr) else {
        warn_misuse(format_args!("WARNING: vm_unmap_ram of {:#x}: no such area", addr));
        return;
    };
    if val != VMAP_RAM {
        let _ = kva::busy_insert(start, end, val, node);
        warn_misuse(format_args!("WARNING: vm_unmap_ram of {:#x}: not a vm_map_ram area", addr));
        return;
    }
    vunmap_range_noflush(start, end - start);
    free_vmap_area_noflush(start, end, node);
}

/// Releases vmap blocks that hold no live mapping (all their space dirty or unused): Linux's
/// purge_fragmented_blocks_allcpus, part of vm_unmap_aliases.
///
/// A block is chosen, marked full and dirty (free = 0, dirty = all) and unlinked from its
/// CPU's free list while both its queue lock (which guards `free`: vb_alloc bumps it under
/// that lock) and VB_LOCK (which guards the dirty fields) are held, as Linux's
/// purge_fragmented_block does under vb->lock and vbq->lock. From then on nothing can
/// allocate from it and, with no live mapping left, nothing can free into it, so freeing it
/// after the locks are dropped is safe.
pub fn purge_fragmented_blocks() {
    let mut victims = [null_mut::<VmapBlock>(); 64];
    loop {
        let mut n = 0;
        for q in VBQ.iter() {
            let mut q = q.lock();
            let _d = VB_LOCK.lock();
            let mut prev: *mut VmapBlock = null_mut();
            let mut b = q.head;
            while !b.is_null() && n < victims.len() {
                // SAFETY: this queue's lock and VB_LOCK are held, which guard every field of the
                // blocks on the list; listed blocks are live (see vb_alloc).
                unsafe {
                    let next = (*b).next;
                    if (*b).free + (*b).dirty == VMAP_BBMAP_BITS && (*b).dirty != VMAP_BBMAP_BITS {
                        (*b).free = 0;
                        (*b).dirty = VMAP_BBMAP_BITS;
                        (*b).dirty_min = 0;
                        (*b).dirty_max = VMAP_BBMAP_BITS;
                        if prev.is_null() {
                            q.head = next
                        } else {
                            (*prev).next = next
                        }
                        (*b).next = null_mut();
                        (*b).on_free_list = false;
                        victims[n] = b;
                        n += 1;
                    } else {
                        prev = b;
                    }
                    b = next;
                }
            }
        }
        if n == 0 {
            return;
        }
        for &vb in &victims[..n] {
            // SAFETY: each victim was unlinked and marked full and all dirty under both locks
            // while it had no live slot (see above): nothing allocates from or frees into it.
            unsafe { free_vmap_block(vb) };
        }
    }
}

/// Linux vm_unmap_aliases: flush the dirty ranges of live vmap blocks (their unmapped slots
/// may still sit in TLBs), free fragmented blocks and purge everything lazily unmapped, all
/// with one TLB flush over the union (Linux `_vm_unmap_aliases`).
pub fn vm_unmap_aliases() {
    let (mut start, mut end) = (u64::MAX, 0u64);
    for q in VBQ.iter() {
        let q = q.lock();
        let _d = VB_LOCK.lock();
        let mut b = q.head;
        while !b.is_null() {
            // SAFETY: blocks on a free list stay allocated while listed; their queue lock and
            // VB_LOCK are held.
            unsafe {
                if (*b).dirty_max != 0 && (*b).dirty != VMAP_BBMAP_BITS {
                    let va = (*b).va_start;
                    start = start.min(va + ((*b).dirty_min * PAGE_SIZE) as u64);
                    end = end.max(va + ((*b).dirty_max * PAGE_SIZE) as u64);
                    (*b).dirty_min = VMAP_BBMAP_BITS;
                    (*b).dirty_max = 0;
                }
                b = (*b).next;
            }
        }
    }
    purge_fragmented_blocks();
    purge_vmap_area_lazy_range(start, end);
}

/// The vmap-node shrinker (Linux vmap_node_shrink_scan): every pooled area back to the free
/// tree, so their tree-node slabs can be released.
pub fn vmap_node_shrink() {
    let _g = PURGE_LOCK.lock();
    kva::decay_pools(true);
}

/// Free vmalloc address space in bytes (free tree + pools), for the leak line.
pub fn free_vmalloc_bytes() -> u64 {
    kva::free_bytes()
}

/// Names what a faulting address in the vmalloc range hit, for the exception report.
pub fn describe_fault(addr: u64, w: &mut dyn core::fmt::Write) {
    if !(VMALLOC_START..VMALLOC_END).contains(&addr) {
        let _ = write!(w, "address outside the vmalloc range");
        return;
    }
    match kva::busy_find(addr) {
        Some((start, end, val, _)) => {
            let kind = match val & TAG_MASK {
                VMAP_BLOCK => "vmap block",
                VMAP_RAM => "vm_map_ram area",
                _ => "vmalloc area",
            };
            if val & TAG_MASK == 0 && val != 0 && addr >= end - PAGE_SIZE as u64 {
                let _ = write!(
                    w,
                    "vmalloc guard page of {kind} [{start:#x}-{end:#x}) ({} bytes)",
                    end - start - PAGE_SIZE as u64
                );
            } else {
                let _ = write!(w, "inside {kind} [{start:#x}-{end:#x}) but not mapped");
            }
        }
        None => match kva::lazy_find(addr) {
            Some((start, end)) => {
                let _ = write!(w, "use after vfree: vmalloc area [{start:#x}-{end:#x}) was freed (lazily unmapped)");
            }
            None => {
                let _ =
                    write!(w, "vmalloc range, no area at this address (freed or never allocated)");
            }
        },
    }
}

/// Walks the kernel page tables for `va` (tests: huge mappings).
pub fn walk(va: u64) -> Option<mm_pgtable::Translation> {
    kernel_pgtable().walk(&KernelPt, va)
}

pub fn vmalloc_init() {
    kva::init(VMALLOC_START, VMALLOC_END, mm_types::NR_CPUS.min(smp::num_online_cpus().max(1)));
    arch::exception::set_fault_describer(describe_fault);
}
