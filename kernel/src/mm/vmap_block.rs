//! vm_map_ram: per-CPU 4 MiB vmap blocks with a bump allocator (Linux mm/vmalloc.c's
//! vmap_block machinery), their purge when fragmented, and vm_unmap_aliases.
use core::ptr::null_mut;

use super::kmalloc;
use crate::arch::{VMALLOC_END, VMALLOC_START};
use crate::mm::kva;
use mm_types::gfp::GfpFlags;
use mm_types::{Pfn, PAGE_SHIFT, PAGE_SIZE};

use super::vmap_area::*;

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
    let (va, node) = alloc_vmap_area(
        VMAP_BLOCK_SIZE,
        VMAP_BLOCK_SIZE,
        VMALLOC_START,
        VMALLOC_END,
        GfpFlags::GFP_KERNEL,
    )?;
    let start = va.va_start();
    let vb =
        kmalloc::kmalloc(core::mem::size_of::<VmapBlock>(), GfpFlags::GFP_KERNEL) as *mut VmapBlock;
    if vb.is_null() {
        kva::free_now(va);
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
    if let Err(va) = kva::busy_insert(va, vb as u64 | VMAP_BLOCK, node) {
        // SAFETY: `vb` was kmalloc'ed above with this size; the insert failed, so it was never
        // published.
        unsafe { kmalloc::kfree(vb as *mut u8, core::mem::size_of::<VmapBlock>()) };
        kva::free_now(va);
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
    let va = kva::busy_remove(start).map(|(va, _, _)| va);
    // SAFETY: `vb` was kmalloc'ed with this size by vb_alloc and, per the contract, is not
    // reached again once its busy entry is gone.
    unsafe { kmalloc::kfree(vb as *mut u8, core::mem::size_of::<VmapBlock>()) };
    match va {
        Some(va) => free_vmap_area_noflush(va, node),
        None => warn_misuse(format_args!("vmalloc bug: vmap block at {start:#x} not busy")),
    }
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
        let Some((va, node)) = alloc_vmap_area(
            size,
            PAGE_SIZE as u64,
            VMALLOC_START,
            VMALLOC_END,
            GfpFlags::GFP_KERNEL,
        ) else {
            return null_mut();
        };
        let start = va.va_start();
        if let Err(va) = kva::busy_insert(va, VMAP_RAM, node) {
            kva::free_now(va);
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
    crate::smp::might_sleep();
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
    let Some((va, val, node)) = kva::busy_remove(addr) else {
        warn_misuse(format_args!("WARNING: vm_unmap_ram of {:#x}: no such area", addr));
        return;
    };
    if val != VMAP_RAM {
        let _ = kva::busy_insert(va, val, node);
        warn_misuse(format_args!("WARNING: vm_unmap_ram of {:#x}: not a vm_map_ram area", addr));
        return;
    }
    vunmap_range_noflush(va.va_start(), va.va_end() - va.va_start());
    free_vmap_area_noflush(va, node);
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
