//! kmalloc: power-of-two size classes (16 B .. 2 KiB) carved from order-0 pages, larger sizes
//! straight from the page allocator. The slab allocator vmalloc needs for its vm_struct and
//! pages arrays (Linux: kmalloc / kvmalloc; SLUB reduced to its essentials).
//!
//! Each slab is one page: a header (class, objects in use, free list) followed by objects. A
//! slab whose last object is freed stays cached (like SLUB's partial slabs) until
//! `kmalloc_shrink()` hands empty slabs back (Linux: kmem_cache_shrink), which the benchmark's
//! leak check calls before counting free pages.
use core::ptr::null_mut;

use crate::mm::page_alloc;
use mm_types::gfp::GfpFlags;
use mm_types::PAGE_SIZE;

const MIN_SHIFT: u32 = 4;
const MAX_SHIFT: u32 = 11;
const NR_CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
const HDR: usize = 64;

#[repr(C)]
struct Slab {
    class: u32,
    inuse: u32,
    free: *mut FreeObj,
    next: *mut Slab,
    prev: *mut Slab,
}

struct FreeObj {
    next: *mut FreeObj,
}

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
    // this call alone (not on any list yet); the header (32 bytes) and every object at
    // [first, PAGE_SIZE) in steps of osz (>= 16, so FreeObj-aligned) lie inside it.
    unsafe {
        (*s).class = class as u32;
        (*s).inuse = 0;
        (*s).free = null_mut();
        (*s).next = null_mut();
        (*s).prev = null_mut();
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

/// Allocates `size` bytes (zeroed with __GFP_ZERO). Null on failure. The fast path (an object
/// from a partial slab) is inlined into callers, as SLUB's `slab_alloc_node` fast path is; a
/// new slab and page-sized requests go out of line.
#[inline]
pub fn kmalloc(size: usize, gfp: GfpFlags) -> *mut u8 {
    let Some(class) = class_of(size) else {
        return kmalloc_large(size, gfp);
    };
    let mut c = CLASSES[class].lock();
    if c.partial.is_null() {
        drop(c);
        c = match new_slab(class, gfp) {
            Some(c) => c,
            None => return null_mut(),
        };
    }
    let s = c.partial;
    // SAFETY: the class lock is held; `s` is non-null (the list was non-empty or just got a new
    // slab) and every slab on the partial list is live with at least one free object (a slab
    // leaves the list when its last free object is taken), so `o` is a valid free object.
    let obj = unsafe {
        let o = (*s).free;
        (*s).free = (*o).next;
        (*s).inuse += 1;
        if (*s).free.is_null() {
            list_del(&mut c.partial, s);
        }
        o as *mut u8
    };
    drop(c);
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
    let mut c = CLASSES[class].lock();
    // SAFETY: per the contract, `ptr` is a live object of this class, so the page it lies in
    // is a live slab of this class (a slab with an object in use is never released by
    // kmalloc_shrink) whose header starts the page; the class lock is held, and the object is
    // no longer used by anyone, so it can hold the free-list link.
    unsafe {
        if (*s).class as usize != class {
            kfree_wrong_class(ptr, class, (*s).class);
        }
        let was_full = (*s).free.is_null();
        let o = ptr as *mut FreeObj;
        (*o).next = (*s).free;
        (*s).free = o;
        (*s).inuse -= 1;
        if was_full {
            list_add(&mut c.partial, s);
        }
    }
}

/// Page-sized and larger (kmalloc_large's counterpart).
#[cold]
#[inline(never)]
fn kfree_large(ptr: *mut u8, size: usize) {
    page_alloc::free_pages_va(ptr, large_order(size));
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

/// Returns every empty slab page to the page allocator. Returns the pages released.
pub fn kmalloc_shrink() -> usize {
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
