//! vmalloc, as Linux's mm/vmalloc.c does it: a vm_struct and a pages array per area, VA from the
//! KVA allocator (per-node pools first, then the global free tree), pages from the buddy
//! allocator under the `mm.vmalloc_large_order` policy, mapping with the page-table code, and a
//! lazy unmap/purge (one TLB flush for many freed areas). vfree releases the pages one by one
//! (`mm.vfree=single`, the baseline) or through free_pages_bulk (`mm.vfree=bulk`, the seed
//! patch). vm_map_ram uses per-CPU 4 MiB vmap blocks with a bump allocator.
use core::mem::MaybeUninit;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering};

use super::{kmalloc, page_alloc};
use crate::arch::{self, VMALLOC_END, VMALLOC_START};
use crate::mm::kva::{self, KVa};
use crate::mm::pgtable::{kernel_pgtable, KernelPt};
use crate::smp;
use bootcfg::config::{self, VfreeMode};
use mm_types::gfp::GfpFlags;
use mm_types::{Pfn, CONT_PTE_SHIFT, MAX_PAGE_ORDER, PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT};

use super::vmap_area::*;
pub use super::vmap_area::{
    lazy_max_pages, nr_drains, nr_misuse_reports, nr_purges, purge_vmap_area_lazy, vmap_lazy_nr,
};
pub use super::vmap_block::{
    purge_fragmented_blocks, vm_map_ram, vm_unmap_aliases, vm_unmap_ram, VMAP_BBMAP_BITS,
    VMAP_MAX_ALLOC,
};

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

/// Linux vm_area_alloc_pages: fills `pages` (nr_pages entries) at granule `order`. The caller
/// adds __GFP_NOWARN (the failure is reported once, by the caller). cond_resched() after each
/// bulk call and each fallback block, where Linux has it; none in the large-order loop.
fn vm_area_alloc_pages(gfp: GfpFlags, order: u32, pages: &mut [Pfn]) -> usize {
    let nr_pages = pages.len();
    let mut nr_allocated = 0usize;
    let large_order = LARGE_ORDER.load(Ordering::Relaxed);
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
        // Only the slots a call asks for are written (a 1-page vmalloc wrote all 100 before:
        // 100 stores per call that Linux, filling the zeroed pages array in place, never makes).
        let mut slots = [const { MaybeUninit::<Option<Pfn>>::uninit() }; 100];
        while nr_allocated < nr_pages {
            let req = (nr_pages - nr_allocated).min(100);
            for s in slots[..req].iter_mut() {
                s.write(None);
            }
            let prefix = core::ptr::from_mut(&mut slots[..req]) as *mut [Option<Pfn>];
            // SAFETY: the first `req` slots were initialised just above; MaybeUninit<T> has
            // T's layout, so the prefix is a valid `[Option<Pfn>]` for this borrow.
            let slots = unsafe { &mut *prefix };
            let got = page_alloc::alloc_pages_bulk(bulk_gfp, req, slots);
            let mut n = 0;
            // Kept as `if let`: `.iter().flatten()` compiles this hot loop (inlined into
            // __vmalloc_node_range) to different code.
            #[allow(clippy::manual_flatten)]
            for s in slots.iter() {
                if let Some(pfn) = s {
                    pages[nr_allocated + n] = *pfn;
                    n += 1;
                }
            }
            debug_assert_eq!(n, got);
            // NR_VMALLOC: +1 per page, as Linux accounts bulk pages.
            page_alloc::mod_nr_vmalloc_each(1, n);
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
#[inline(always)]
fn vm_free_pages(vm: &VmStruct) {
    if vm.pages.is_null() || vm.nr_pages == 0 {
        return;
    }
    // SAFETY: by the VmStruct invariant a non-null `pages` is a kmalloc'ed array (aligned,
    // initialised: zeroed at allocation) holding at least nr_pages Pfns; nothing writes it while
    // the area is being freed.
    let pages = unsafe { core::slice::from_raw_parts(vm.pages, vm.nr_pages) };
    let account = vm.flags & VM_MAP_PUT_PAGES == 0;
    match if VFREE_BULK.load(Ordering::Relaxed) { VfreeMode::Bulk } else { VfreeMode::Single } {
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
                page_alloc::mod_nr_vmalloc_each(-1, pages.len());
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
#[inline(always)]
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
    let Some((va, node)) = alloc_vmap_area(va_size, align as u64, vstart, vend, gfp) else {
        // SAFETY: `vm` was kmalloc'ed just above with this size and never published.
        unsafe { kmalloc::kfree(vm as *mut u8, core::mem::size_of::<VmStruct>()) };
        return Err(());
    };
    let start = va.va_start();
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
    let fail = |vm: *mut VmStruct, va: KVa| {
        // SAFETY: `vm` is this call's unpublished vm_struct (see free_area_struct); its first
        // nr_pages entries are pages vm_area_alloc_pages got, which go back once.
        unsafe {
            if (*vm).nr_pages > 0 {
                vm_free_pages(&*vm);
            }
        }
        kva::free_now(va);
        free_area_struct(vm);
        Err(())
    };
    if pages.is_null() {
        return fail(vm, va);
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
        return fail(vm, va);
    }
    // After mapping (possibly in part): unmap, and the range goes the lazy way (its TLB entries
    // are flushed before reuse), as Linux's vfree of a half-built area does.
    let fail_mapped = |vm: *mut VmStruct, va: KVa| {
        vunmap_range_noflush(start, size_aligned as u64);
        free_vmap_area_noflush(va, node);
        // SAFETY: `vm` is this call's unpublished vm_struct holding all nr_pages pages, now
        // unmapped; they go back once.
        unsafe { vm_free_pages(&*vm) };
        free_area_struct(vm);
        Err(())
    };
    if !vmap_pages_range(start, slice, shift) {
        warn(format_args!("vmalloc error: size {}, failed to map pages", size));
        return fail_mapped(vm, va);
    }
    if let Err(va) = kva::busy_insert(va, vm as u64, node) {
        return fail_mapped(vm, va);
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
#[inline(always)]
fn remove_vm_area(addr: u64) -> Option<*mut VmStruct> {
    let (va, val, node) = kva::busy_remove(addr)?;
    if val & TAG_MASK != 0 || val == 0 {
        // Not a vmalloc area (vm_map_ram / block): put it back and refuse.
        let _ = kva::busy_insert(va, val, node);
        return None;
    }
    let start = va.va_start();
    let vm = val as *mut VmStruct;
    // Everything the area may map (Linux get_vm_area_size: the size without its guard page),
    // not nr_pages: a vmap() area owns no pages array.
    // SAFETY: a busy value with no tag bits is the vm_struct this area was inserted with, alive
    // until free_vm_struct.
    let (size, flags) = unsafe { ((*vm).size, (*vm).flags) };
    let mapped = size - if flags & VM_NO_GUARD != 0 { 0 } else { PAGE_SIZE as u64 };
    vunmap_range_noflush(start, mapped);
    free_vmap_area_noflush(va, node);
    Some(vm)
}

/// Frees memory from vmalloc (Linux vfree).
pub fn vfree(addr: *mut u8) {
    smp::might_sleep();
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
    smp::might_sleep();
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
    let Some((va, node)) =
        alloc_vmap_area(size, PAGE_SIZE as u64, VMALLOC_START, VMALLOC_END, GfpFlags::GFP_KERNEL)
    else {
        // SAFETY: `vm` was kmalloc'ed above with this size and never published.
        unsafe { kmalloc::kfree(vm as *mut u8, core::mem::size_of::<VmStruct>()) };
        return null_mut();
    };
    let start = va.va_start();
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
    let refused = if vmap_pages_range(start, pages, PAGE_SHIFT) {
        kva::busy_insert(va, vm as u64, node).err()
    } else {
        Some(va)
    };
    if let Some(va) = refused {
        vunmap_range_noflush(start, size - PAGE_SIZE as u64);
        free_vmap_area_noflush(va, node);
        // SAFETY: `vm` was kmalloc'ed above with this size and never published.
        unsafe { kmalloc::kfree(vm as *mut u8, core::mem::size_of::<VmStruct>()) };
        return null_mut();
    }
    start as *mut u8
}

/// vunmap(): removes a vmap() mapping; the pages stay with their owner.
pub fn vunmap(addr: *mut u8) {
    smp::might_sleep();
    if let Some(vm) = remove_vm_area(addr as u64) {
        // SAFETY: remove_vm_area unlinked the area, so its vm_struct (kmalloc'ed with this size)
        // is this call's alone and used by no one again. (A vmap() area has no pages array; a
        // vmalloc area passed here by mistake leaks its pages array and pages, as in Linux.)
        unsafe { kmalloc::kfree(vm as *mut u8, core::mem::size_of::<VmStruct>()) };
    }
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

/// The `mm.vfree` and `mm.vmalloc_large_order` switches, copied from the boot configuration
/// by vmalloc_init: one load on the hot path, as Linux reads a module parameter or static key
/// (the configuration's `Once` cost 16 instructions a read).
static VFREE_BULK: AtomicBool = AtomicBool::new(true);
static LARGE_ORDER: AtomicBool = AtomicBool::new(true);

pub fn vmalloc_init() {
    let cfg = config::get();
    VFREE_BULK.store(cfg.vfree == VfreeMode::Bulk, Ordering::Relaxed);
    LARGE_ORDER.store(cfg.vmalloc_large_order, Ordering::Relaxed);
    kva::init(VMALLOC_START, VMALLOC_END, mm_types::NR_CPUS.min(smp::num_online_cpus().max(1)));
    arch::exception::set_fault_describer(describe_fault);
}
