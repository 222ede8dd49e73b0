//! kmalloc: power-of-two size classes (16 B .. 2 KiB) carved from order-0 pages, larger sizes
//! straight from the page allocator. The slab allocator vmalloc needs for its vm_struct and
//! pages arrays (Linux: kmalloc / kvmalloc; SLUB reduced to its essentials).
//!
//! Each slab is one page: a header (class, objects in use, free list) followed by objects. A
//! slab whose last object is freed stays cached (like SLUB's partial slabs) until
//! `kmalloc_shrink()` hands empty slabs back (Linux: kmem_cache_shrink), which the benchmark's
//! leak check calls before counting free pages.
//!
//! As SLUB's, each CPU has a cpu slab per class (Linux `kmem_cache_cpu`: `freelist`, `slab`):
//! the slab is *frozen* (off the lists, owned by that CPU) and its free objects are on the CPU's
//! freelist, so kmalloc and a kfree of an object of that slab on the same CPU take no lock
//! (Linux: the `this_cpu_cmpxchg` fast path). Everything else (a free into another slab, the
//! refill when the CPU's freelist is empty, unfreezing) runs under the class lock (Linux: the
//! node's `list_lock` and the slab's freelist cmpxchg). The per-CPU state is touched only by its
//! own CPU in task context: this kernel is not preemptible, kmalloc is never called from an
//! interrupt handler, and `kmalloc_shrink` flushes the other CPUs' slabs through
//! `smp::on_each_cpu`, which runs at their quiescent points (Linux: `flush_all` with per-CPU
//! work). Nothing in the fast paths reaches a quiescent point; the refill allocates pages with
//! no lock held and re-reads the per-CPU state afterwards.
use core::ptr::null_mut;

use crate::mm::page_alloc;
use crate::percpu_defs::smp_processor_id;
use mm_types::gfp::GfpFlags;
use mm_types::PAGE_SIZE;

const MIN_SHIFT: u32 = 4;
const MAX_SHIFT: u32 = 11;
const NR_CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
const HDR: usize = 64;

/// A slab page's header. Unfrozen (`frozen == 0`): `inuse` counts the objects not on `free`,
/// and the slab is on its class's partial list exactly when `free` is non-empty. Frozen by CPU
/// k (`frozen == k + 1`): it is CPU k's cpu slab of its class, on no list; its free objects are
/// on CPU k's freelist, except those freed on other CPUs since, which are on `free`; `inuse` is
/// not kept (it is recomputed when the slab is unfrozen).
#[repr(C)]
struct Slab {
    class: u32,
    inuse: u32,
    free: *mut FreeObj,
    next: *mut Slab,
    prev: *mut Slab,
    frozen: u32,
}

struct FreeObj {
    next: *mut FreeObj,
}

const _: () = assert!(core::mem::size_of::<Slab>() <= HDR);

/// Per class: slabs with free objects (partial or empty), and full slabs are off-list.
struct Class {
    partial: *mut Slab,
    nr_slabs: usize,
}
// SAFETY: `partial` links slab pages that belong to the slab allocator, not to any CPU or
// thread; a Class is only reached through its CLASSES mutex, which serialises every access to the
// list and to the slab headers on it.
unsafe impl Send for Class {}

static CLASSES: [spin::Mutex<Class>; NR_CLASSES] =
    [const { spin::Mutex::new(Class { partial: null_mut(), nr_slabs: 0 }) }; NR_CLASSES];

/// A CPU's slab of one class (Linux `kmem_cache_cpu`): `slab` is null or a slab frozen by this
/// CPU, and `freelist` chains free objects of that slab only (empty when `slab` is null).
#[derive(Clone, Copy)]
struct CpuSlab {
    freelist: *mut FreeObj,
    slab: *mut Slab,
}

crate::define_per_cpu! {
    /// Every CPU's cpu slabs. Reached only through `this_cpu_ptr` by the CPU itself (see the
    /// module comment); empty in the template that setup_per_cpu_areas copies (no kmalloc
    /// runs before the page allocator, which comes after the per-CPU areas).
    static CPU_SLABS: [CpuSlab; NR_CLASSES] =
        [CpuSlab { freelist: null_mut(), slab: null_mut() }; NR_CLASSES];
}

/// This CPU's cpu slab of `class`.
///
/// # Safety
///
/// The caller is the kernel in task context on this CPU (not an interrupt handler) and keeps
/// the pointer only while it reaches no quiescent point: then nothing else accesses this CPU's
/// cpu slabs meanwhile.
#[inline(always)]
unsafe fn cpu_slab(class: usize) -> *mut CpuSlab {
    // SAFETY: `class < NR_CLASSES` (class_of's result), so the element lies inside this CPU's
    // array; per-CPU areas exist before any kmalloc (see CPU_SLABS).
    unsafe { (CPU_SLABS.this_cpu_ptr() as *mut CpuSlab).add(class) }
}

/// Objects per slab of `class`.
fn objects(class: usize) -> u32 {
    let osz = obj_size(class);
    let first = if osz < HDR { HDR } else { osz };
    ((PAGE_SIZE - first) / osz) as u32
}

fn class_of(size: usize) -> Option<usize> {
    let s = size.max(1 << MIN_SHIFT).next_power_of_two();
    let shift = s.trailing_zeros();
    if shift > MAX_SHIFT {
        None
    } else {
        Some((shift - MIN_SHIFT) as usize)
    }
}

fn obj_size(class: usize) -> usize {
    1 << (class as u32 + MIN_SHIFT)
}

/// Unlinks slab `s` from the list at `head`.
///
/// # Safety
///
/// `s` must point to the live header of a slab page that is on the list `head`, every slab on
/// that list must be live, and the caller must hold the class lock that owns `head`.
unsafe fn list_del(head: &mut *mut Slab, s: *mut Slab) {
    // SAFETY: per the contract, `s` and its neighbours (`prev`, `next`, non-null ones only) are
    // live slab headers on this list, which the held class lock lets us modify.
    unsafe {
        if !(*s).prev.is_null() {
            (*(*s).prev).next = (*s).next;
        } else {
            *head = (*s).next;
        }
        if !(*s).next.is_null() {
            (*(*s).next).prev = (*s).prev;
        }
        (*s).next = null_mut();
        (*s).prev = null_mut();
    }
}

/// Links slab `s` at the front of the list at `head`.
///
/// # Safety
///
/// `s` must point to the live header of a slab page that is on no list, every slab on the list
/// `head` must be live, and the caller must hold the class lock that owns `head`.
unsafe fn list_add(head: &mut *mut Slab, s: *mut Slab) {
    // SAFETY: per the contract, `s` and the current first slab (if any) are live slab headers
    // that the held class lock lets us modify.
    unsafe {
        (*s).prev = null_mut();
        (*s).next = *head;
        if !(*head).is_null() {
            (**head).prev = s;
        }
        *head = s;
    }
}

/// Page-sized and larger: whole pages, the order recorded by the page allocator.
#[cold]
#[inline(never)]
fn kmalloc_large(size: usize, gfp: GfpFlags) -> *mut u8 {
    page_alloc::alloc_pages_va(gfp, large_order(size))
}

/// The page order of a page-sized or larger kmalloc (both kmalloc_large and kfree_large).
fn large_order(size: usize) -> u32 {
    (size.div_ceil(PAGE_SIZE)).next_power_of_two().trailing_zeros()
}

/// Builds a slab for `class` from a fresh page and links it on the class's partial list;
/// returns the class lock held (None: no page).
#[cold]
#[inline(never)]
fn new_slab(class: usize, gfp: GfpFlags) -> Option<spin::MutexGuard<'static, Class>> {
    let page = page_alloc::alloc_pages_va(gfp - GfpFlags::__GFP_ZERO, 0);
    if page.is_null() {
        return None;
    }
    let s = page as *mut Slab;
    let osz = obj_size(class);
    let first = if osz < HDR { HDR } else { osz };
    // SAFETY: `page` is a fresh page-aligned PAGE_SIZE page from the page allocator, owned by
    // this call alone (not on any list yet); the header (40 bytes) and every object at
    // [first, PAGE_SIZE) in steps of osz (>= 16, so FreeObj-aligned) lie inside it.
    unsafe {
        (*s).class = class as u32;
        (*s).inuse = 0;
        (*s).free = null_mut();
        (*s).next = null_mut();
        (*s).prev = null_mut();
        (*s).frozen = 0;
        let mut off = PAGE_SIZE - osz;
        while off >= first {
            let o = page.add(off) as *mut FreeObj;
            (*o).next = (*s).free;
            (*s).free = o;
            off -= osz;
        }
    }
    let mut c = CLASSES[class].lock();
    // SAFETY: `s` is the slab just built (live, on no list); the class lock is held.
    unsafe { list_add(&mut c.partial, s) };
    c.nr_slabs += 1;
    Some(c)
}

/// kmalloc's slow path (Linux `___slab_alloc`): this CPU's freelist is empty. Takes the objects
/// other CPUs freed into the cpu slab, else unfreezes it and freezes a partial slab, else
/// builds a new slab (the page allocated with no lock held) and tries again.
#[cold]
#[inline(never)]
fn kmalloc_refill(class: usize, gfp: GfpFlags) -> *mut u8 {
    let obj = loop {
        {
            let mut c = CLASSES[class].lock();
            // SAFETY: task context, no quiescent point while `cs` is used (the lock is held).
            let cs = unsafe { cpu_slab(class) };
            // SAFETY: `cs` is this CPU's, ours alone; its slab is null or frozen by this CPU
            // (live, on no list); partial slabs are live with free objects; all slab headers
            // are changed under the class lock, held here.
            unsafe {
                // A kfree from an RCU callback during an earlier round's page allocation may
                // have refilled it.
                if (*cs).freelist.is_null() {
                    let s = (*cs).slab;
                    if !s.is_null() && !(*s).free.is_null() {
                        (*cs).freelist = (*s).free;
                        (*s).free = null_mut();
                    } else {
                        if !s.is_null() {
                            // Every object in use: unfrozen, it is full (on no list).
                            (*s).frozen = 0;
                            (*s).inuse = objects(class);
                            (*cs).slab = null_mut();
                        }
                        let p = c.partial;
                        if !p.is_null() {
                            list_del(&mut c.partial, p);
                            (*p).frozen = smp_processor_id() as u32 + 1;
                            (*cs).freelist = (*p).free;
                            (*cs).slab = p;
                            (*p).free = null_mut();
                        }
                    }
                }
                let o = (*cs).freelist;
                if !o.is_null() {
                    (*cs).freelist = (*o).next;
                    break o as *mut u8;
                }
            }
        }
        // No slab with a free object: a new one (its page allocated with no lock held: the
        // allocation may reach a quiescent point, where this CPU's slabs may be flushed or
        // objects freed into them; the next round reads them again).
        match new_slab(class, gfp) {
            Some(c) => drop(c),
            None => return null_mut(),
        }
    };
    if gfp.contains(GfpFlags::__GFP_ZERO) {
        // SAFETY: `obj` is an object of `class` just taken off a free list: the caller's alone.
        unsafe { zero_object(obj, class) };
    }
    obj
}

/// Allocates `size` bytes (zeroed with __GFP_ZERO). Null on failure. The fast path (an object
/// from a partial slab) is inlined into callers, as SLUB's `slab_alloc_node` fast path is; a
/// new slab and page-sized requests go out of line.
#[inline]
pub fn kmalloc(size: usize, gfp: GfpFlags) -> *mut u8 {
    let Some(class) = class_of(size) else {
        return kmalloc_large(size, gfp);
    };
    // SAFETY: task context, and nothing below reaches a quiescent point while `cs` is used.
    let cs = unsafe { cpu_slab(class) };
    // SAFETY: `cs` is this CPU's cpu slab, ours alone meanwhile; a non-null freelist head is a
    // free object of its frozen slab, holding the next link.
    let obj = unsafe {
        let o = (*cs).freelist;
        if o.is_null() {
            return kmalloc_refill(class, gfp);
        }
        (*cs).freelist = (*o).next;
        o as *mut u8
    };
    if gfp.contains(GfpFlags::__GFP_ZERO) {
        // SAFETY: `obj` is an object of `class` just taken off its slab's free list: it is
        // this caller's alone.
        unsafe { zero_object(obj, class) };
    }
    obj
}

/// Zeroes a whole object, as SLUB zeroes `object_size` bytes for __GFP_ZERO. The small classes
/// are written as aligned words of a constant count, a few inline stores instead of a memset
/// call (the target is strict-align: a byte pointer's memset is never inlined).
///
/// # Safety
///
/// `obj` must be an object of `class` (8-byte aligned: objects sit at multiples of their
/// power-of-two size, at least 16, in a page-aligned slab), valid for writes of
/// obj_size(class) bytes.
#[inline(always)]
unsafe fn zero_object(obj: *mut u8, class: usize) {
    // SAFETY: per the contract `obj` is 8-byte aligned and each arm writes exactly
    // obj_size(class) bytes at it.
    unsafe {
        match class {
            0 => (obj as *mut [u64; 2]).write([0; 2]),
            1 => (obj as *mut [u64; 4]).write([0; 4]),
            2 => (obj as *mut [u64; 8]).write([0; 8]),
            _ => core::ptr::write_bytes(obj, 0, obj_size(class)),
        }
    }
}

/// Frees what kmalloc returned (`size` = the size passed to kmalloc).
///
/// # Safety
///
/// `ptr` must be null or a pointer returned by [`kmalloc`] with a `size` of the same size class
/// (page-sized and larger: the same page order) and not freed since; the caller gives up the
/// object (no access to it afterwards).
#[inline(always)]
pub unsafe fn kfree(ptr: *mut u8, size: usize) {
    if ptr.is_null() {
        return;
    }
    let Some(class) = class_of(size) else {
        kfree_large(ptr, size);
        return;
    };
    let s = ((ptr as usize) & !(PAGE_SIZE - 1)) as *mut Slab;
    // SAFETY: per the contract `ptr` is a live object of this class, so its page is a live
    // slab (one with an object in use is never released) whose header starts the page; `class`
    // never changes while the slab lives.
    if unsafe { (*s).class } as usize != class {
        // SAFETY: as above.
        kfree_wrong_class(ptr, class, unsafe { (*s).class });
    }
    // SAFETY: task context, and nothing below reaches a quiescent point while `cs` is used.
    let cs = unsafe { cpu_slab(class) };
    // SAFETY: `cs` is this CPU's cpu slab, ours alone meanwhile.
    if unsafe { (*cs).slab } == s {
        let o = ptr as *mut FreeObj;
        // SAFETY: `cs` is this CPU's cpu slab, ours alone meanwhile.
        if unsafe { (*cs).freelist } == o {
            kfree_double_free(ptr, class);
        }
        // SAFETY: `ptr` is a free object of this CPU's frozen slab now (the caller gave it up),
        // so it can hold the freelist link; the freelist is ours alone.
        unsafe {
            (*o).next = (*cs).freelist;
            (*cs).freelist = o;
        }
        return;
    }
    kfree_slow(s, ptr, class);
}

/// kfree into a slab that is not this CPU's cpu slab (Linux `__slab_free`): onto the slab's
/// own free list under the class lock; an unfrozen slab that was full goes back on the partial
/// list. A slab frozen by another CPU keeps the object for that CPU's next refill.
#[inline(never)]
fn kfree_slow(s: *mut Slab, ptr: *mut u8, class: usize) {
    let mut c = CLASSES[class].lock();
    // SAFETY: `s` is the live slab of `ptr` (see kfree); slab headers and lists change only under
    // the class lock, held; the object is no longer used by anyone, so it can hold the link.
    unsafe {
        let o = ptr as *mut FreeObj;
        if (*s).free == o {
            drop(c);
            kfree_double_free(ptr, class);
        }
        let was_full = (*s).free.is_null();
        (*o).next = (*s).free;
        (*s).free = o;
        if (*s).frozen == 0 {
            (*s).inuse -= 1;
            if was_full {
                list_add(&mut c.partial, s);
            }
        }
    }
}

/// Page-sized and larger (kmalloc_large's counterpart).
#[cold]
#[inline(never)]
fn kfree_large(ptr: *mut u8, size: usize) {
    page_alloc::free_pages_va(ptr, large_order(size));
}

/// A kfree of the object that heads the freelist it would go on: SLUB's naive double-free
/// detection (`set_freepointer`'s `BUG_ON(object == fp)` under CONFIG_SLAB_FREELIST_HARDENED,
/// which Debian enables): an immediate second kfree of an object is caught, one after other
/// frees of the same slab is not (that needs slub_debug's object tracking).
#[cold]
#[inline(never)]
fn kfree_double_free(ptr: *mut u8, class: usize) -> ! {
    panic!(
        "kfree: double free of the {}-byte object at {:p} (it already heads the free list)",
        obj_size(class),
        ptr
    );
}

/// A kfree whose size names another class than the slab the object lies in.
#[cold]
#[inline(never)]
fn kfree_wrong_class(ptr: *mut u8, class: usize, slab_class: u32) -> ! {
    panic!(
        "kfree: object at {:p} is not a {}-byte object (its slab holds {}-byte objects)",
        ptr,
        obj_size(class),
        obj_size(slab_class as usize)
    );
}

/// Unfreezes this CPU's cpu slabs (Linux `flush_cpu_slab` / `deactivate_slab`): the CPU's
/// free objects go back onto their slab, which goes on the partial list (or, full, on none).
fn flush_cpu_slabs() {
    for (class, lock) in CLASSES.iter().enumerate() {
        let mut c = lock.lock();
        // SAFETY: run by this CPU in task context (directly or from its mailbox at a quiescent
        // point, never inside kmalloc/kfree), the lock held: nothing else uses `cs`.
        let cs = unsafe { cpu_slab(class) };
        // SAFETY: `cs` is ours; its slab is null or frozen by this CPU (live, on no list) and
        // its freelist objects are free objects of that slab; the class lock guards the header.
        unsafe {
            let s = (*cs).slab;
            if s.is_null() {
                continue;
            }
            let mut o = (*cs).freelist;
            while !o.is_null() {
                let next = (*o).next;
                (*o).next = (*s).free;
                (*s).free = o;
                o = next;
            }
            (*cs).freelist = null_mut();
            (*cs).slab = null_mut();
            let mut nr_free = 0;
            let mut o = (*s).free;
            while !o.is_null() {
                nr_free += 1;
                o = (*o).next;
            }
            (*s).frozen = 0;
            (*s).inuse = objects(class) - nr_free;
            if nr_free > 0 {
                list_add(&mut c.partial, s);
            }
        }
    }
}

/// Flushes every CPU's cpu slabs (Linux `flush_all`), then returns every empty slab page to the
/// page allocator. Returns the pages released.
pub fn kmalloc_shrink() -> usize {
    crate::smp::on_each_cpu(&flush_cpu_slabs);
    let mut freed = 0;
    for class in CLASSES.iter() {
        let mut c = class.lock();
        let mut s = c.partial;
        while !s.is_null() {
            // SAFETY: the class lock is held; every slab on the partial list is a live slab page.
            let next = unsafe { (*s).next };
            // SAFETY: as above.
            if unsafe { (*s).inuse } == 0 {
                // SAFETY: `s` is live and on this class's partial list; the class lock is held.
                unsafe { list_del(&mut c.partial, s) };
                c.nr_slabs -= 1;
                page_alloc::free_pages_va(s as *mut u8, 0);
                freed += 1;
            }
            s = next;
        }
    }
    freed
}

/// Slab pages held by all classes (cpu slabs included), for tests and reports.
pub fn kmalloc_nr_slabs() -> usize {
    CLASSES.iter().map(|c| c.lock().nr_slabs).sum()
}
