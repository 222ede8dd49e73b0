//! Kernel virtual address (KVA) space allocator: Linux's `vmap_area` machinery from
//! mm/vmalloc.c, re-implemented (not translated) for this kernel and tested on the host.
//!
//! | here | Linux (mm/vmalloc.c, v6.9+ / 2026 mm tree) |
//! |---|---|
//! | [`KvaAllocator`] | `free_vmap_area_root` + `free_vmap_area_list` under `free_vmap_area_lock` |
//! | [`KvaAllocator::alloc`] | `__alloc_vmap_area` → `find_vmap_lowest_match` + `va_alloc` → `va_clip` |
//! | [`KvaAllocator::alloc_top_down`] | the top-down search of `pcpu_get_vm_areas` (see its doc) |
//! | [`KvaAllocator::free`] | `merge_or_add_vmap_area_augment` (`__merge_or_add_vmap_area` + `augment_tree_propagate_from`) |
//! | [`KvaAllocator::reserve`] | `vmap_init_free_space` carving / `va_clip` of a fixed range |
//! | [`classify_va_fit_type`], [`FitType`] | `classify_va_fit_type`, `enum fit_type` |
//! | [`BusyTree`] | a vmap node's `busy` (or `lazy`) rbtree + list: `insert_vmap_area`, `__find_vmap_area`, `unlink_va` |
//! | [`VaPool`] | a vmap node's `pool[MAX_VA_SIZE_PAGES]`: `node_pool_add_va`, `node_pool_del_va`, `decay_va_pool_node` |
//! | [`NodeCache`] | `vmap_area_cachep` (a `kmem_cache` of `struct vmap_area`) |
//!
//! # Trees
//! Linux uses an augmented red-black tree; this module uses an augmented AVL tree (same
//! asymptotics, simpler deletion): every node carries `height` and, in the free tree,
//! `subtree_max_size` = the largest `va_end - va_start` in its subtree. Structural changes
//! (insert, erase, rotations) retrace from the changed node towards the root and stop as soon as
//! a subtree root's (height, subtree_max_size) pair is unchanged; pure size changes (clip, merge)
//! use `augment_tree_propagate_from`-style propagation that stops when
//! a node's value is unchanged, exactly like Linux. Address-ordered neighbour access (Linux keeps
//! `free_vmap_area_list` for it) comes from the descent itself: the last node where the search
//! went right is the predecessor, the last where it went left is the successor.
//!
//! # Node storage
//! Tree and list nodes are 64-byte objects from a [`NodeCache`]: a tiny slab over 4 KiB pages
//! obtained from a [`PageSource`] (kernel: the page allocator through the linear map). The first
//! 64-byte slot of each page is the page header (63 objects per page). Nothing here touches the
//! general heap. Every structure ([`KvaAllocator`], [`BusyTree`], [`VaPool`]) owns its own cache,
//! so each can live under its own lock without a shared slab lock (Linux's per-CPU slab
//! freelists play that role). The API is range-based: moving an area from one structure to
//! another frees a node in one cache and allocates one in the other.
//!
//! # Errors
//! Node allocation can fail ([`KvaError::NoMemory`]) when the structure needs a new node and
//! the page source is empty: [`KvaAllocator::alloc`] only for a no-edge split (Linux's
//! `ne_fit_preload_node` case), [`KvaAllocator::free`] only when the range merges with neither
//! neighbour. In both cases the structure is left unchanged.
//!
//! # Locking
//! None inside. All structures are `Send` (when the page source is) so they can sit in
//! `spin::Mutex` statics; `const fn` constructors ([`KvaAllocator::empty`], [`BusyTree::new`],
//! [`VaPool::new`]) allow that without lazy initialisation. A lazy list can be detached in O(1)
//! under its lock with `core::mem::swap` against an empty [`BusyTree`] (each tree owns its node
//! cache, so the nodes travel with it) and drained outside the lock, like Linux's
//! `list_replace_init(&vn->lazy.head, &vn->purge_list)`.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

#[cfg(any(test, feature = "model"))]
pub mod model;
pub mod vmap_lazy;

use core::marker::PhantomData;
use core::ptr::null_mut;
use mm_types::PAGE_SIZE;

/// Size-segregated pool lists per vmap node: areas of 1..=256 pages (Linux: MAX_VA_SIZE_PAGES).
pub const MAX_VA_SIZE_PAGES: usize = 256;
/// Size of the pages a [`NodeCache`] obtains from its [`PageSource`] (they must be aligned to it).
pub const SLAB_PAGE_SIZE: usize = 4096;

/// Failure of a KVA operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvaError {
    /// No free block satisfies size, alignment and window (Linux: -ENOENT from
    /// `find_vmap_lowest_match`, -ERANGE from `va_alloc`).
    NoSpace,
    /// Bad arguments: size 0, alignment not a power of two, empty or inverted window, a range
    /// outside the allocator's span, or `size + align - 1` overflowing.
    Invalid,
    /// The node cache needed a page and its [`PageSource`] had none (Linux: -ENOMEM from
    /// `kmem_cache_alloc(vmap_area_cachep, GFP_NOWAIT)`); nothing was changed.
    NoMemory,
    /// The range overlaps a range already in the structure: a double free (Linux: the
    /// "vmalloc bug: ... overlaps with ..." WARN in `find_va_links`); nothing was changed.
    Overlap,
}

/// Where a [`NodeCache`] gets its 4 KiB pages. Pages must be [`SLAB_PAGE_SIZE`]-aligned.
pub trait PageSource {
    fn alloc_page(&mut self) -> Option<*mut u8>;
    fn free_page(&mut self, p: *mut u8);
}

/// A free or pooled address range `[va_start, va_end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VaRange {
    pub va_start: u64,
    pub va_end: u64,
}

impl VaRange {
    pub const fn size(&self) -> u64 {
        self.va_end - self.va_start
    }
}

/// A busy (or lazily freed) area and the user value stored with it (Linux: `va->vm` / flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyArea {
    pub va_start: u64,
    pub va_end: u64,
    pub value: u64,
}

/// Slab statistics of one structure's node cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SlabStats {
    /// Pages currently held from the page source.
    pub pages: usize,
    /// Objects (nodes) handed out.
    pub objects_in_use: usize,
    /// Pages with no object in use (what [`NodeCache::shrink`] would return).
    pub empty_pages: usize,
}

/// Linux `enum fit_type`: how an allocation `[nva, nva + size)` sits inside a free block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitType {
    /// NOTHING_FIT: not inside the block.
    Nothing,
    /// FL_FIT_TYPE: the whole block; its node is removed and freed.
    Full,
    /// LE_FIT_TYPE: at the block's start; the block's start advances.
    LeftEdge,
    /// RE_FIT_TYPE: at the block's end; the block's end is lowered.
    RightEdge,
    /// NE_FIT_TYPE: strictly inside; the block is split in two (needs a second node).
    NoEdge,
}

/// Linux `classify_va_fit_type`.
pub fn classify_va_fit_type(va_start: u64, va_end: u64, nva_start: u64, size: u64) -> FitType {
    let nva_end = match nva_start.checked_add(size) {
        Some(e) => e,
        None => return FitType::Nothing,
    };
    if nva_start < va_start || nva_end > va_end {
        return FitType::Nothing;
    }
    if va_start == nva_start {
        if va_end == nva_end {
            FitType::Full
        } else {
            FitType::LeftEdge
        }
    } else if va_end == nva_end {
        FitType::RightEdge
    } else {
        FitType::NoEdge
    }
}

#[inline]
fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

// ------------------------------------------------------------------------------------------------
// Node and node cache (Linux: struct vmap_area, vmap_area_cachep)
// ------------------------------------------------------------------------------------------------

/// One `vmap_area`. In a tree `left/right/parent` are tree links; in a pool list `left` is the
/// next and `right` the previous element.
#[repr(C)]
struct VaNode {
    left: *mut VaNode,
    right: *mut VaNode,
    parent: *mut VaNode,
    va_start: u64,
    va_end: u64,
    /// Free tree only: the largest block size in this subtree.
    subtree_max_size: u64,
    /// Busy tree only: the user value.
    value: u64,
    height: u32,
    _pad: u32,
}

const OBJ_SIZE: usize = 64;
const _: () = assert!(core::mem::size_of::<VaNode>() == OBJ_SIZE);
/// Objects per slab page (slot 0 holds the page header).
pub const OBJS_PER_PAGE: usize = SLAB_PAGE_SIZE / OBJ_SIZE - 1;

#[repr(C)]
struct SlabPage {
    next: *mut SlabPage,
    prev: *mut SlabPage,
    freelist: *mut FreeObj,
    inuse: u32,
    /// Non-zero when on the full list.
    full: u32,
}
const _: () = assert!(core::mem::size_of::<SlabPage>() <= OBJ_SIZE);

#[repr(C)]
struct FreeObj {
    next: *mut FreeObj,
}

/// The two links an intrusive doubly linked list threads through its elements.
trait DLinks {
    unsafe fn next(p: *mut Self) -> *mut Self;
    unsafe fn prev(p: *mut Self) -> *mut Self;
    unsafe fn set_next(p: *mut Self, n: *mut Self);
    unsafe fn set_prev(p: *mut Self, n: *mut Self);
}

/// An intrusive doubly linked list (Linux `list_head` usage): slab pages on a cache's
/// partial/full lists, pooled areas on a pool's size lists.
struct DList<T> {
    head: *mut T,
    tail: *mut T,
    len: usize,
}

impl<T> Clone for DList<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DList<T> {}

impl<T: DLinks> DList<T> {
    const EMPTY: DList<T> = DList { head: null_mut(), tail: null_mut(), len: 0 };

    unsafe fn push_front(&mut self, p: *mut T) {
        T::set_prev(p, null_mut());
        T::set_next(p, self.head);
        if self.head.is_null() {
            self.tail = p;
        } else {
            T::set_prev(self.head, p);
        }
        self.head = p;
        self.len += 1;
    }

    unsafe fn push_back(&mut self, p: *mut T) {
        T::set_next(p, null_mut());
        T::set_prev(p, self.tail);
        if self.tail.is_null() {
            self.head = p;
        } else {
            T::set_next(self.tail, p);
        }
        self.tail = p;
        self.len += 1;
    }

    unsafe fn remove(&mut self, p: *mut T) {
        let (prev, next) = (T::prev(p), T::next(p));
        if prev.is_null() {
            self.head = next;
        } else {
            T::set_next(prev, next);
        }
        if next.is_null() {
            self.tail = prev;
        } else {
            T::set_prev(next, prev);
        }
        T::set_next(p, null_mut());
        T::set_prev(p, null_mut());
        self.len -= 1;
    }

    /// Unlinks and returns the head (null when empty).
    unsafe fn pop_front(&mut self) -> *mut T {
        let p = self.head;
        if !p.is_null() {
            self.remove(p);
        }
        p
    }
}

/// `impl DLinks for $t` over its fields `$next` and `$prev`.
macro_rules! dlinks {
    ($t:ty, $next:ident, $prev:ident) => {
        impl DLinks for $t {
            unsafe fn next(p: *mut Self) -> *mut Self {
                (*p).$next
            }
            unsafe fn prev(p: *mut Self) -> *mut Self {
                (*p).$prev
            }
            unsafe fn set_next(p: *mut Self, n: *mut Self) {
                (*p).$next = n;
            }
            unsafe fn set_prev(p: *mut Self, n: *mut Self) {
                (*p).$prev = n;
            }
        }
    };
}

dlinks!(SlabPage, next, prev);

type PageList = DList<SlabPage>;

/// The node-cache accessors every KVA structure has: `shrink` (wholly free node pages back to
/// the page source; returns how many), `slab_stats`, `page_source`, `page_source_mut`.
macro_rules! node_cache_accessors {
    () => {
        pub fn shrink(&mut self) -> usize {
            self.cache.shrink()
        }

        pub fn slab_stats(&self) -> SlabStats {
            self.cache.stats()
        }

        pub fn page_source(&self) -> &P {
            self.cache.page_source()
        }

        pub fn page_source_mut(&mut self) -> &mut P {
            self.cache.page_source_mut()
        }
    };
}

/// A fixed-size-object slab for tree/list nodes (Linux: `kmem_cache` `vmap_area_cachep`).
///
/// Pages with free objects sit on a `partial` list, pages with none on a `full` list. Allocation
/// takes the first object of the first partial page (O(1)); freeing pushes the object on its
/// page's freelist (O(1), the page is found by masking the object address). A page that becomes
/// wholly free moves to the tail of the partial list, so partly used pages are preferred and
/// wholly free pages form a suffix; [`NodeCache::shrink`] returns them to the page source.
pub struct NodeCache<P: PageSource> {
    src: P,
    partial: PageList,
    full: PageList,
    inuse: usize,
}

unsafe impl<P: PageSource + Send> Send for NodeCache<P> {}

impl<P: PageSource> NodeCache<P> {
    pub const fn new(src: P) -> Self {
        NodeCache { src, partial: PageList::EMPTY, full: PageList::EMPTY, inuse: 0 }
    }

    /// Allocates an uninitialised node; `None` if a page was needed and the source had none.
    fn alloc(&mut self) -> Option<*mut VaNode> {
        unsafe {
            let mut page = self.partial.head;
            if page.is_null() {
                page = self.grow()?;
            }
            let obj = (*page).freelist;
            (*page).freelist = (*obj).next;
            (*page).inuse += 1;
            if (*page).freelist.is_null() {
                self.partial.remove(page);
                (*page).full = 1;
                self.full.push_front(page);
            }
            self.inuse += 1;
            Some(obj as *mut VaNode)
        }
    }

    unsafe fn grow(&mut self) -> Option<*mut SlabPage> {
        let p = self.src.alloc_page()?;
        if p.is_null() {
            return None;
        }
        if (p as usize) & (SLAB_PAGE_SIZE - 1) != 0 {
            self.src.free_page(p);
            return None;
        }
        // Freelist in address order: slots 1..=OBJS_PER_PAGE.
        let mut head: *mut FreeObj = null_mut();
        for i in (1..=OBJS_PER_PAGE).rev() {
            let o = p.add(i * OBJ_SIZE) as *mut FreeObj;
            (*o).next = head;
            head = o;
        }
        let page = p as *mut SlabPage;
        page.write(SlabPage {
            next: null_mut(),
            prev: null_mut(),
            freelist: head,
            inuse: 0,
            full: 0,
        });
        self.partial.push_front(page);
        Some(page)
    }

    /// Returns a node to its page's freelist.
    unsafe fn free(&mut self, n: *mut VaNode) {
        let off = (n as usize) & (SLAB_PAGE_SIZE - 1);
        let page = (n as *mut u8).sub(off) as *mut SlabPage;
        let obj = n as *mut FreeObj;
        (*obj).next = (*page).freelist;
        (*page).freelist = obj;
        (*page).inuse -= 1;
        self.inuse -= 1;
        if (*page).full != 0 {
            self.full.remove(page);
            (*page).full = 0;
            if (*page).inuse == 0 {
                self.partial.push_back(page);
            } else {
                self.partial.push_front(page);
            }
        } else if (*page).inuse == 0 && self.partial.tail != page {
            self.partial.remove(page);
            self.partial.push_back(page);
        }
    }

    /// Returns every wholly free page to the page source; returns how many. O(partial pages).
    pub fn shrink(&mut self) -> usize {
        let mut freed = 0;
        unsafe {
            let mut p = self.partial.head;
            while !p.is_null() {
                let next = (*p).next;
                if (*p).inuse == 0 {
                    self.partial.remove(p);
                    self.src.free_page(p as *mut u8);
                    freed += 1;
                }
                p = next;
            }
        }
        freed
    }

    pub fn stats(&self) -> SlabStats {
        let mut empty = 0;
        unsafe {
            let mut p = self.partial.head;
            while !p.is_null() {
                if (*p).inuse == 0 {
                    empty += 1;
                }
                p = (*p).next;
            }
        }
        SlabStats {
            pages: self.partial.len + self.full.len,
            objects_in_use: self.inuse,
            empty_pages: empty,
        }
    }

    pub fn page_source(&self) -> &P {
        &self.src
    }

    pub fn page_source_mut(&mut self) -> &mut P {
        &mut self.src
    }
}

impl<P: PageSource> Drop for NodeCache<P> {
    /// Returns every page (nodes are plain data, nothing else to release).
    fn drop(&mut self) {
        unsafe {
            for list in [&mut self.partial as *mut PageList, &mut self.full as *mut PageList] {
                while !(*list).head.is_null() {
                    let p = (*list).head;
                    (*list).remove(p);
                    self.src.free_page(p as *mut u8);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Balanced (AVL) tree, optionally augmented with subtree_max_size
// ------------------------------------------------------------------------------------------------

#[inline]
unsafe fn va_size(n: *const VaNode) -> u64 {
    (*n).va_end - (*n).va_start
}

#[inline]
unsafe fn height(n: *const VaNode) -> u32 {
    if n.is_null() {
        0
    } else {
        (*n).height
    }
}

/// Linux `get_subtree_max_size`.
#[inline]
unsafe fn get_subtree_max_size(n: *const VaNode) -> u64 {
    if n.is_null() {
        0
    } else {
        (*n).subtree_max_size
    }
}

/// Linux `compute_subtree_max_size`.
#[inline]
unsafe fn compute_subtree_max_size(n: *const VaNode) -> u64 {
    va_size(n).max(get_subtree_max_size((*n).left)).max(get_subtree_max_size((*n).right))
}

unsafe fn leftmost(mut n: *mut VaNode) -> *mut VaNode {
    if n.is_null() {
        return n;
    }
    while !(*n).left.is_null() {
        n = (*n).left;
    }
    n
}

unsafe fn rightmost(mut n: *mut VaNode) -> *mut VaNode {
    if n.is_null() {
        return n;
    }
    while !(*n).right.is_null() {
        n = (*n).right;
    }
    n
}

/// In-order successor.
unsafe fn successor(mut n: *mut VaNode) -> *mut VaNode {
    if !(*n).right.is_null() {
        return leftmost((*n).right);
    }
    let mut p = (*n).parent;
    while !p.is_null() && (*p).right == n {
        n = p;
        p = (*p).parent;
    }
    p
}

/// An AVL tree of disjoint ranges ordered by address. `AUG` selects the `subtree_max_size`
/// augmentation (free tree) or none (busy/lazy trees).
struct RawTree<const AUG: bool> {
    root: *mut VaNode,
}

impl<const AUG: bool> RawTree<AUG> {
    const fn new() -> Self {
        RawTree { root: null_mut() }
    }

    #[inline]
    unsafe fn update(n: *mut VaNode) {
        (*n).height = 1 + height((*n).left).max(height((*n).right));
        if AUG {
            (*n).subtree_max_size = compute_subtree_max_size(n);
        }
    }

    #[inline]
    unsafe fn replace_child(&mut self, parent: *mut VaNode, old: *mut VaNode, new: *mut VaNode) {
        if parent.is_null() {
            self.root = new;
        } else if (*parent).left == old {
            (*parent).left = new;
        } else {
            (*parent).right = new;
        }
    }

    unsafe fn rotate_left(&mut self, x: *mut VaNode) -> *mut VaNode {
        let y = (*x).right;
        let b = (*y).left;
        (*x).right = b;
        if !b.is_null() {
            (*b).parent = x;
        }
        let p = (*x).parent;
        (*y).parent = p;
        self.replace_child(p, x, y);
        (*y).left = x;
        (*x).parent = y;
        Self::update(x);
        Self::update(y);
        y
    }

    unsafe fn rotate_right(&mut self, x: *mut VaNode) -> *mut VaNode {
        let y = (*x).left;
        let b = (*y).right;
        (*x).left = b;
        if !b.is_null() {
            (*b).parent = x;
        }
        let p = (*x).parent;
        (*y).parent = p;
        self.replace_child(p, x, y);
        (*y).right = x;
        (*x).parent = y;
        Self::update(x);
        Self::update(y);
        y
    }

    /// Restores the AVL balance at `n` (children already balanced and up to date) and updates
    /// height/augment; returns the subtree's new root.
    unsafe fn rebalance(&mut self, n: *mut VaNode) -> *mut VaNode {
        let (l, r) = ((*n).left, (*n).right);
        let (hl, hr) = (height(l), height(r));
        if hl > hr + 1 {
            if height((*l).left) < height((*l).right) {
                self.rotate_left(l);
            }
            self.rotate_right(n)
        } else if hr > hl + 1 {
            if height((*r).right) < height((*r).left) {
                self.rotate_right(r);
            }
            self.rotate_left(n)
        } else {
            Self::update(n);
            n
        }
    }

    /// Walks from `n` to the root rebalancing and recomputing height and subtree_max_size,
    /// stopping once a subtree root's (height, max) is what it was before. `force_through`, if
    /// non-null, is an ancestor that must be recomputed even if the walk would stop below it.
    unsafe fn retrace(&mut self, mut n: *mut VaNode, force_through: *mut VaNode) {
        let mut forced = !force_through.is_null();
        while !n.is_null() {
            let old_h = (*n).height;
            let old_m = (*n).subtree_max_size;
            if n == force_through {
                forced = false;
            }
            let top = self.rebalance(n);
            if !forced && (*top).height == old_h && (!AUG || (*top).subtree_max_size == old_m) {
                break;
            }
            n = (*top).parent;
        }
    }

    /// Linux `augment_tree_propagate_from`: after `n`'s size changed (shrunk by a clip, grown by
    /// a merge), recompute subtree_max_size upwards until a node's value does not change.
    unsafe fn propagate_from(&mut self, mut n: *mut VaNode) {
        while !n.is_null() {
            let m = compute_subtree_max_size(n);
            if m == (*n).subtree_max_size {
                break;
            }
            (*n).subtree_max_size = m;
            n = (*n).parent;
        }
    }

    /// Links a fresh node (range set) as the `left`/right child of `parent` (null: as root) and
    /// rebalances (Linux `link_va` + `rb_insert_augmented` + propagation).
    unsafe fn link(&mut self, node: *mut VaNode, parent: *mut VaNode, as_left: bool) {
        (*node).left = null_mut();
        (*node).right = null_mut();
        (*node).parent = parent;
        (*node).height = 1;
        (*node).subtree_max_size = if AUG { va_size(node) } else { 0 };
        if parent.is_null() {
            self.root = node;
        } else {
            if as_left {
                (*parent).left = node;
            } else {
                (*parent).right = node;
            }
            self.retrace(parent, null_mut());
        }
    }

    /// Links `node` as the in-order predecessor of `at` (Linux: `insert_vmap_area_augment`
    /// with `from = &va->rb_node` in the NE_FIT_TYPE split).
    unsafe fn link_before(&mut self, node: *mut VaNode, at: *mut VaNode) {
        if (*at).left.is_null() {
            self.link(node, at, true);
        } else {
            let p = rightmost((*at).left);
            self.link(node, p, false);
        }
    }

    /// Finds where `[start, end)` would be linked. Returns `(parent, as_left, prev, next)` with
    /// the would-be neighbours, or `Err(Overlap)` if it overlaps a node (Linux `find_va_links`
    /// + `get_va_next_sibling`).
    unsafe fn find_links(
        &self,
        start: u64,
        end: u64,
    ) -> Result<(*mut VaNode, bool, *mut VaNode, *mut VaNode), KvaError> {
        let (mut parent, mut as_left) = (null_mut(), false);
        let (mut prev, mut next) = (null_mut(), null_mut());
        let mut n = self.root;
        while !n.is_null() {
            parent = n;
            if end <= (*n).va_start {
                next = n;
                as_left = true;
                n = (*n).left;
            } else if start >= (*n).va_end {
                prev = n;
                as_left = false;
                n = (*n).right;
            } else {
                return Err(KvaError::Overlap);
            }
        }
        Ok((parent, as_left, prev, next))
    }

    /// Unlinks `n` (Linux `unlink_va` / `rb_erase_augmented`). The node is not freed.
    unsafe fn erase(&mut self, n: *mut VaNode) {
        let (l, r, p) = ((*n).left, (*n).right, (*n).parent);
        if l.is_null() || r.is_null() {
            let child = if l.is_null() { r } else { l };
            if !child.is_null() {
                (*child).parent = p;
            }
            self.replace_child(p, n, child);
            if !p.is_null() {
                self.retrace(p, null_mut());
            }
        } else {
            // Two children: the in-order successor takes n's place.
            let s = leftmost(r);
            // Like Linux's augment->copy: the successor inherits the values its new ancestors
            // were computed with, so the retrace below may stop early correctly.
            (*s).height = (*n).height;
            (*s).subtree_max_size = (*n).subtree_max_size;
            let from;
            if s == r {
                (*s).left = l;
                (*l).parent = s;
                from = s;
            } else {
                let sp = (*s).parent;
                let sr = (*s).right;
                (*sp).left = sr;
                if !sr.is_null() {
                    (*sr).parent = sp;
                }
                (*s).left = l;
                (*l).parent = s;
                (*s).right = r;
                (*r).parent = s;
                from = sp;
            }
            (*s).parent = p;
            self.replace_child(p, n, s);
            self.retrace(from, s);
        }
        (*n).left = null_mut();
        (*n).right = null_mut();
        (*n).parent = null_mut();
    }

    /// The node containing `addr` (Linux `__find_vmap_area`).
    unsafe fn find_containing(&self, addr: u64) -> *mut VaNode {
        let mut n = self.root;
        while !n.is_null() {
            if addr < (*n).va_start {
                n = (*n).left;
            } else if addr >= (*n).va_end {
                n = (*n).right;
            } else {
                return n;
            }
        }
        null_mut()
    }

    /// The node starting exactly at `start`.
    unsafe fn find_start(&self, start: u64) -> *mut VaNode {
        let mut n = self.root;
        while !n.is_null() {
            if start < (*n).va_start {
                n = (*n).left;
            } else if start > (*n).va_start {
                n = (*n).right;
            } else {
                return n;
            }
        }
        null_mut()
    }

    /// Debug check of the whole tree: parent links, order and disjointness, heights, AVL
    /// balance and (augmented) subtree_max_size. Returns (nodes, bytes).
    fn check(&self) -> Result<(usize, u64), &'static str> {
        unsafe {
            if !self.root.is_null() && !(*self.root).parent.is_null() {
                return Err("root has a parent");
            }
            let (_, _, count, bytes) = Self::check_node(self.root, null_mut(), 0, u64::MAX)?;
            Ok((count, bytes))
        }
    }

    unsafe fn check_node(
        n: *mut VaNode,
        parent: *mut VaNode,
        lo: u64,
        hi: u64,
    ) -> Result<(u32, u64, usize, u64), &'static str> {
        if n.is_null() {
            return Ok((0, 0, 0, 0));
        }
        if (*n).parent != parent {
            return Err("bad parent link");
        }
        if (*n).va_start >= (*n).va_end {
            return Err("empty or inverted range in tree");
        }
        if (*n).va_start < lo || (*n).va_end > hi {
            return Err("BST order / overlap violated");
        }
        let (hl, ml, cl, bl) = Self::check_node((*n).left, n, lo, (*n).va_start)?;
        let (hr, mr, cr, br) = Self::check_node((*n).right, n, (*n).va_end, hi)?;
        let h = 1 + hl.max(hr);
        if h != (*n).height {
            return Err("stored height wrong");
        }
        if hl > hr + 1 || hr > hl + 1 {
            return Err("AVL balance violated");
        }
        let m = va_size(n).max(ml).max(mr);
        if AUG && m != (*n).subtree_max_size {
            return Err("subtree_max_size wrong");
        }
        Ok((h, m, cl + cr + 1, bl + br + va_size(n)))
    }
}

// ------------------------------------------------------------------------------------------------
// Free-space allocator
// ------------------------------------------------------------------------------------------------

/// Linux `is_within_this_va`: the aligned start if `[nva, nva + size)` fits in the block at or
/// after `vstart` (overflow counts as not fitting).
#[inline]
unsafe fn is_within_this_va(va: *const VaNode, size: u64, align: u64, vstart: u64) -> Option<u64> {
    let base = if (*va).va_start > vstart { (*va).va_start } else { vstart };
    let nva = align_up(base, align)?;
    let end = nva.checked_add(size)?;
    if end <= (*va).va_end {
        Some(nva)
    } else {
        None
    }
}

/// Top-down counterpart: the highest aligned start with `[nva, nva + size)` inside the block and
/// inside `[vstart, vend)`.
#[inline]
unsafe fn fits_top(
    va: *const VaNode,
    size: u64,
    align: u64,
    vstart: u64,
    vend: u64,
) -> Option<u64> {
    let top = (*va).va_end.min(vend);
    if top < size {
        return None;
    }
    let nva = (top - size) & !(align - 1);
    if nva >= (*va).va_start && nva >= vstart {
        Some(nva)
    } else {
        None
    }
}

/// The global free vmap-area tree (Linux: `free_vmap_area_root`/`_list` under
/// `free_vmap_area_lock`).
pub struct KvaAllocator<P: PageSource> {
    tree: RawTree<true>,
    cache: NodeCache<P>,
    span_start: u64,
    span_end: u64,
    free_bytes: u64,
    nr_free: usize,
}

unsafe impl<P: PageSource + Send> Send for KvaAllocator<P> {}

impl<P: PageSource> KvaAllocator<P> {
    /// An allocator managing nothing yet (for statics); call [`KvaAllocator::init`].
    pub const fn empty(page_source: P) -> Self {
        KvaAllocator {
            tree: RawTree::new(),
            cache: NodeCache::new(page_source),
            span_start: 0,
            span_end: 0,
            free_bytes: 0,
            nr_free: 0,
        }
    }

    /// Makes `[vstart, vend)` one free block (Linux `vmap_init_free_space`, with nothing busy).
    /// `Invalid` if already initialised or the range is empty; `NoMemory` if no node page.
    pub fn init(&mut self, vstart: u64, vend: u64) -> Result<(), KvaError> {
        if vstart >= vend || self.span_start != self.span_end || !self.tree.root.is_null() {
            return Err(KvaError::Invalid);
        }
        let n = self.cache.alloc().ok_or(KvaError::NoMemory)?;
        unsafe {
            (*n).va_start = vstart;
            (*n).va_end = vend;
            (*n).value = 0;
            self.tree.link(n, null_mut(), false);
        }
        self.span_start = vstart;
        self.span_end = vend;
        self.free_bytes = vend - vstart;
        self.nr_free = 1;
        Ok(())
    }

    /// An allocator whose free tree is the single block `[vstart, vend)`.
    pub fn new(vstart: u64, vend: u64, page_source: P) -> Result<Self, KvaError> {
        let mut a = Self::empty(page_source);
        a.init(vstart, vend)?;
        Ok(a)
    }

    /// Lowest-address first fit (Linux `__alloc_vmap_area`): returns the start of a free,
    /// `align`-aligned `[start, start + size)` inside `[vstart, vend)`.
    ///
    /// The search (`find_vmap_lowest_match`) uses the length `size + align - 1` when
    /// `align > PAGE_SIZE` (worst-case alignment waste), except when `vend - vstart == size`;
    /// otherwise `size`. It descends left while the left subtree can hold the length and
    /// `vstart` is left of the node, returns the node if the request fits it, goes right if the
    /// right subtree can hold the length, else climbs back to the first ancestor that fits or
    /// whose right subtree can hold the length (moving `vstart` past that ancestor). The block
    /// found is carved by `va_clip` (the four [`FitType`]s). O(log n) typically.
    ///
    /// With the adjusted length the result is the lowest fitting block among those at least
    /// `size + align - 1` long, or a lower, smaller block that happened to lie on the search
    /// path — exactly Linux's behaviour.
    pub fn alloc(
        &mut self,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
    ) -> Result<u64, KvaError> {
        if size == 0 || !align.is_power_of_two() || vstart >= vend {
            return Err(KvaError::Invalid);
        }
        let adjust = align > PAGE_SIZE as u64 && vend - vstart != size;
        let length =
            if adjust { size.checked_add(align - 1).ok_or(KvaError::Invalid)? } else { size };
        unsafe {
            let va = self.find_vmap_lowest_match(size, align, vstart, length);
            if va.is_null() {
                return Err(KvaError::NoSpace);
            }
            // va_alloc
            let base = if (*va).va_start > vstart { (*va).va_start } else { vstart };
            let nva = align_up(base, align).ok_or(KvaError::NoSpace)?;
            match nva.checked_add(size) {
                Some(end) if end <= vend => {}
                _ => return Err(KvaError::NoSpace),
            }
            self.va_clip(va, nva, size)?;
            Ok(nva)
        }
    }

    /// Linux `find_vmap_lowest_match`.
    unsafe fn find_vmap_lowest_match(
        &self,
        size: u64,
        align: u64,
        mut vstart: u64,
        length: u64,
    ) -> *mut VaNode {
        let mut node = self.tree.root;
        while !node.is_null() {
            if get_subtree_max_size((*node).left) >= length && vstart < (*node).va_start {
                node = (*node).left;
            } else {
                if is_within_this_va(node, size, align, vstart).is_some() {
                    return node;
                }
                // No point going right unless the right subtree has a block of the length.
                if get_subtree_max_size((*node).right) >= length {
                    node = (*node).right;
                    continue;
                }
                // Roll back to the first ancestor that fits or whose right subtree may (needed
                // because of the vstart restriction or the alignment overhead).
                loop {
                    node = (*node).parent;
                    if node.is_null() {
                        return null_mut();
                    }
                    if is_within_this_va(node, size, align, vstart).is_some() {
                        return node;
                    }
                    if get_subtree_max_size((*node).right) >= length && vstart <= (*node).va_start {
                        // Past this node so its (already searched) left side is not re-entered.
                        vstart = (*node).va_start + 1;
                        node = (*node).right;
                        break;
                    }
                }
            }
        }
        null_mut()
    }

    /// Highest-address fit: the largest `align`-aligned start with `[start, start + size)` free
    /// and inside `[vstart, vend)` (the placement Linux's `pcpu_get_vm_areas` uses for percpu
    /// chunks so they stay away from normal vmalloc).
    ///
    /// Linux walks the free list backwards from `vend` (O(n)); this is instead the mirror image
    /// of `find_vmap_lowest_match` over the augmented tree with the exact length `size` (no
    /// alignment adjustment, so the result is always the true highest fit): descend right while
    /// the right subtree can hold `size` and `vend` lies right of the node, try the node, then
    /// the left subtree, climbing back (lowering the navigation bound below an ancestor) on
    /// failure. O(log n) typically; O(k log n) when k blocks are large enough but rejected by
    /// alignment or the window. The block is carved with `va_clip`.
    pub fn alloc_top_down(
        &mut self,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
    ) -> Result<u64, KvaError> {
        if size == 0 || !align.is_power_of_two() || vstart >= vend {
            return Err(KvaError::Invalid);
        }
        if size > vend - vstart {
            return Err(KvaError::NoSpace);
        }
        unsafe {
            let (va, nva) =
                self.find_vmap_highest_match(size, align, vstart, vend).ok_or(KvaError::NoSpace)?;
            self.va_clip(va, nva, size)?;
            Ok(nva)
        }
    }

    unsafe fn find_vmap_highest_match(
        &self,
        size: u64,
        align: u64,
        vstart: u64,
        mut vend: u64,
    ) -> Option<(*mut VaNode, u64)> {
        let mut node = self.tree.root;
        while !node.is_null() {
            if get_subtree_max_size((*node).right) >= size && vend > (*node).va_end {
                node = (*node).right;
            } else {
                if let Some(nva) = fits_top(node, size, align, vstart, vend) {
                    return Some((node, nva));
                }
                if get_subtree_max_size((*node).left) >= size && vstart < (*node).va_start {
                    node = (*node).left;
                    continue;
                }
                loop {
                    node = (*node).parent;
                    if node.is_null() {
                        return None;
                    }
                    if let Some(nva) = fits_top(node, size, align, vstart, vend) {
                        return Some((node, nva));
                    }
                    if get_subtree_max_size((*node).left) >= size
                        && vstart < (*node).va_start
                        && vend >= (*node).va_end
                    {
                        // Every block of the left subtree ends at or below va_start, so this
                        // only stops the search from re-entering the subtree it came from.
                        vend = (*node).va_end - 1;
                        node = (*node).left;
                        break;
                    }
                }
            }
        }
        None
    }

    /// Takes the fixed range `[va_start, va_end)` out of the free space (Linux: the carving of
    /// `vmap_init_free_space` around early busy areas). `NoSpace` unless it lies entirely in
    /// one free block.
    pub fn reserve(&mut self, va_start: u64, va_end: u64) -> Result<(), KvaError> {
        if va_start >= va_end || va_start < self.span_start || va_end > self.span_end {
            return Err(KvaError::Invalid);
        }
        unsafe {
            let n = self.tree.find_containing(va_start);
            if n.is_null() || va_end > (*n).va_end {
                return Err(KvaError::NoSpace);
            }
            self.va_clip(n, va_start, va_end - va_start)
        }
    }

    /// Linux `va_clip`: carves `[nva, nva + size)` out of the free block `va`.
    unsafe fn va_clip(&mut self, va: *mut VaNode, nva: u64, size: u64) -> Result<(), KvaError> {
        match classify_va_fit_type((*va).va_start, (*va).va_end, nva, size) {
            FitType::Nothing => return Err(KvaError::Invalid),
            FitType::Full => {
                //  |      NVA      |
                //  |---------------|
                self.tree.erase(va);
                self.cache.free(va);
                self.nr_free -= 1;
            }
            FitType::LeftEdge => {
                //  |  NVA  |   R   |
                (*va).va_start = nva + size;
                self.tree.propagate_from(va);
            }
            FitType::RightEdge => {
                //  |   L   |  NVA  |
                (*va).va_end = nva;
                self.tree.propagate_from(va);
            }
            FitType::NoEdge => {
                //  | L |  NVA  | R |
                // The second object first, so a failure leaves the tree untouched (Linux takes
                // the per-CPU preloaded ne_fit_preload_node, else a GFP_NOWAIT allocation).
                let lva = self.cache.alloc().ok_or(KvaError::NoMemory)?;
                (*lva).va_start = (*va).va_start;
                (*lva).va_end = nva;
                (*lva).value = 0;
                (*va).va_start = nva + size;
                self.tree.propagate_from(va);
                self.tree.link_before(lva, va);
                self.nr_free += 1;
            }
        }
        self.free_bytes -= size;
        Ok(())
    }

    /// Returns `[va_start, va_end)` to the free tree, merging with the previous and/or next free
    /// block (Linux `merge_or_add_vmap_area_augment`). `Overlap` (double free) if any part of
    /// the range is already free; `Invalid` if empty or outside the allocator's span.
    pub fn free(&mut self, va_start: u64, va_end: u64) -> Result<(), KvaError> {
        if va_start >= va_end || va_start < self.span_start || va_end > self.span_end {
            return Err(KvaError::Invalid);
        }
        unsafe {
            let (parent, as_left, prev, next) = self.tree.find_links(va_start, va_end)?;
            let merge_next = !next.is_null() && (*next).va_start == va_end;
            let merge_prev = !prev.is_null() && (*prev).va_end == va_start;
            match (merge_prev, merge_next) {
                (true, true) => {
                    // Unlink "next" first, then grow "prev" (Linux does the same so the
                    // augmented values stay consistent across the erase's rotations).
                    let end = (*next).va_end;
                    self.tree.erase(next);
                    self.cache.free(next);
                    (*prev).va_end = end;
                    self.tree.propagate_from(prev);
                    self.nr_free -= 1;
                }
                (false, true) => {
                    (*next).va_start = va_start;
                    self.tree.propagate_from(next);
                }
                (true, false) => {
                    (*prev).va_end = va_end;
                    self.tree.propagate_from(prev);
                }
                (false, false) => {
                    let n = self.cache.alloc().ok_or(KvaError::NoMemory)?;
                    (*n).va_start = va_start;
                    (*n).va_end = va_end;
                    (*n).value = 0;
                    self.tree.link(n, parent, as_left);
                    self.nr_free += 1;
                }
            }
        }
        self.free_bytes += va_end - va_start;
        Ok(())
    }

    /// Total free bytes in the tree.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// Number of free blocks (tree nodes).
    pub fn nr_free_ranges(&self) -> usize {
        self.nr_free
    }

    /// The largest free block (the root's subtree_max_size).
    pub fn largest_free(&self) -> u64 {
        unsafe { get_subtree_max_size(self.tree.root) }
    }

    /// The span given to `init`/`new`.
    pub fn span(&self) -> VaRange {
        VaRange { va_start: self.span_start, va_end: self.span_end }
    }

    /// The free blocks in address order.
    pub fn iter_free(&self) -> FreeIter<'_> {
        FreeIter { node: unsafe { leftmost(self.tree.root) }, _m: PhantomData }
    }

    node_cache_accessors!();

    /// Debug check: tree invariants (order, balance, heights, subtree_max_size), no two free
    /// blocks adjacent (they would have been merged), blocks inside the span, and the counters.
    /// O(n).
    pub fn check(&self) -> Result<(), &'static str> {
        let (count, bytes) = self.tree.check()?;
        if count != self.nr_free {
            return Err("nr_free_ranges counter wrong");
        }
        if bytes != self.free_bytes {
            return Err("free_bytes counter wrong");
        }
        if count != self.cache.inuse {
            return Err("slab objects in use != tree nodes");
        }
        let mut prev_end: Option<u64> = None;
        for r in self.iter_free() {
            if r.va_start < self.span_start || r.va_end > self.span_end {
                return Err("free block outside the span");
            }
            if let Some(pe) = prev_end {
                if pe >= r.va_start {
                    return Err("adjacent or overlapping free blocks");
                }
            }
            prev_end = Some(r.va_end);
        }
        Ok(())
    }
}

/// In-order iterator over free blocks.
pub struct FreeIter<'a> {
    node: *mut VaNode,
    _m: PhantomData<&'a VaNode>,
}

impl Iterator for FreeIter<'_> {
    type Item = VaRange;
    fn next(&mut self) -> Option<VaRange> {
        if self.node.is_null() {
            return None;
        }
        unsafe {
            let n = self.node;
            self.node = successor(n);
            Some(VaRange { va_start: (*n).va_start, va_end: (*n).va_end })
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Busy / lazy tree
// ------------------------------------------------------------------------------------------------

/// A non-augmented balanced tree of disjoint areas keyed by `va_start`, each with a user value
/// (Linux: a vmap node's `busy` rbtree + list; the same shape serves as its `lazy` tree).
/// All operations are O(log n) except iteration/drain (O(n)).
pub struct BusyTree<P: PageSource> {
    tree: RawTree<false>,
    cache: NodeCache<P>,
    nr: usize,
    bytes: u64,
}

unsafe impl<P: PageSource + Send> Send for BusyTree<P> {}

impl<P: PageSource> BusyTree<P> {
    pub const fn new(page_source: P) -> Self {
        BusyTree { tree: RawTree::new(), cache: NodeCache::new(page_source), nr: 0, bytes: 0 }
    }

    /// Linux `insert_vmap_area`: `Overlap` if it overlaps an area already in the tree,
    /// `Invalid` if empty, `NoMemory` if no node.
    pub fn insert(&mut self, va_start: u64, va_end: u64, value: u64) -> Result<(), KvaError> {
        if va_start >= va_end {
            return Err(KvaError::Invalid);
        }
        unsafe {
            let (parent, as_left, _, _) = self.tree.find_links(va_start, va_end)?;
            let n = self.cache.alloc().ok_or(KvaError::NoMemory)?;
            (*n).va_start = va_start;
            (*n).va_end = va_end;
            (*n).value = value;
            self.tree.link(n, parent, as_left);
        }
        self.nr += 1;
        self.bytes += va_end - va_start;
        Ok(())
    }

    /// The area containing `addr` (Linux `__find_vmap_area`).
    pub fn find(&self, addr: u64) -> Option<BusyArea> {
        unsafe {
            let n = self.tree.find_containing(addr);
            if n.is_null() {
                None
            } else {
                Some(area(n))
            }
        }
    }

    /// Replaces the value of the area containing `addr`; false if none.
    pub fn set_value(&mut self, addr: u64, value: u64) -> bool {
        unsafe {
            let n = self.tree.find_containing(addr);
            if n.is_null() {
                return false;
            }
            (*n).value = value;
            true
        }
    }

    /// Removes the area starting exactly at `va_start`.
    pub fn remove(&mut self, va_start: u64) -> Option<BusyArea> {
        unsafe {
            let n = self.tree.find_start(va_start);
            self.unlink_free(n)
        }
    }

    /// Removes the area containing `addr` (Linux `find_unlink_vmap_area` for one node).
    pub fn remove_containing(&mut self, addr: u64) -> Option<BusyArea> {
        unsafe {
            let n = self.tree.find_containing(addr);
            self.unlink_free(n)
        }
    }

    /// Removes and returns the lowest area.
    pub fn pop_first(&mut self) -> Option<BusyArea> {
        unsafe {
            let n = leftmost(self.tree.root);
            self.unlink_free(n)
        }
    }

    unsafe fn unlink_free(&mut self, n: *mut VaNode) -> Option<BusyArea> {
        if n.is_null() {
            return None;
        }
        let a = area(n);
        self.tree.erase(n);
        self.cache.free(n);
        self.nr -= 1;
        self.bytes -= a.va_end - a.va_start;
        Some(a)
    }

    /// The lowest area (e.g. the start of a purge span).
    pub fn first(&self) -> Option<BusyArea> {
        unsafe {
            let n = leftmost(self.tree.root);
            if n.is_null() {
                None
            } else {
                Some(area(n))
            }
        }
    }

    /// The highest area (e.g. the end of a purge span).
    pub fn last(&self) -> Option<BusyArea> {
        unsafe {
            let n = rightmost(self.tree.root);
            if n.is_null() {
                None
            } else {
                Some(area(n))
            }
        }
    }

    /// The areas in address order.
    pub fn iter(&self) -> BusyIter<'_> {
        BusyIter { node: unsafe { leftmost(self.tree.root) }, _m: PhantomData }
    }

    /// Removes every area, calling `f` on each in address order; returns how many. O(n): the
    /// tree is dismantled leftmost-first without rebalancing.
    pub fn drain(&mut self, mut f: impl FnMut(BusyArea)) -> usize {
        let mut count = 0;
        unsafe {
            let mut n = leftmost(self.tree.root);
            while !n.is_null() {
                // n has no left child and is its parent's left child (or the root).
                let (r, p) = ((*n).right, (*n).parent);
                let a = area(n);
                if !r.is_null() {
                    (*r).parent = p;
                }
                if p.is_null() {
                    self.tree.root = r;
                } else {
                    (*p).left = r;
                }
                self.cache.free(n);
                count += 1;
                f(a);
                n = if r.is_null() { p } else { leftmost(r) };
            }
        }
        self.tree.root = null_mut();
        self.nr = 0;
        self.bytes = 0;
        count
    }

    pub fn len(&self) -> usize {
        self.nr
    }

    pub fn is_empty(&self) -> bool {
        self.nr == 0
    }

    /// Total bytes of the areas.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    node_cache_accessors!();

    /// Debug check of the tree invariants and counters. O(n).
    pub fn check(&self) -> Result<(), &'static str> {
        let (count, bytes) = self.tree.check()?;
        if count != self.nr || bytes != self.bytes {
            return Err("busy tree counters wrong");
        }
        if count != self.cache.inuse {
            return Err("slab objects in use != tree nodes");
        }
        Ok(())
    }
}

#[inline]
unsafe fn area(n: *const VaNode) -> BusyArea {
    BusyArea { va_start: (*n).va_start, va_end: (*n).va_end, value: (*n).value }
}

/// In-order iterator over busy areas.
pub struct BusyIter<'a> {
    node: *mut VaNode,
    _m: PhantomData<&'a VaNode>,
}

impl Iterator for BusyIter<'_> {
    type Item = BusyArea;
    fn next(&mut self) -> Option<BusyArea> {
        if self.node.is_null() {
            return None;
        }
        unsafe {
            let n = self.node;
            self.node = successor(n);
            Some(area(n))
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Size-segregated pools (Linux: struct vmap_pool pool[MAX_VA_SIZE_PAGES] of a vmap node)
// ------------------------------------------------------------------------------------------------

// A pooled area's node links through its tree pointers: left = next, right = prev.
dlinks!(VaNode, left, right);

type PoolList = DList<VaNode>;

/// One vmap node's size-segregated pools: list `i` holds freed areas of exactly `i + 1` pages,
/// most recently added first. O(1) put/get; decay is O(areas returned + 256).
pub struct VaPool<P: PageSource> {
    lists: [PoolList; MAX_VA_SIZE_PAGES],
    cache: NodeCache<P>,
    nr_areas: usize,
    bytes: u64,
}

unsafe impl<P: PageSource + Send> Send for VaPool<P> {}

impl<P: PageSource> VaPool<P> {
    pub const fn new(page_source: P) -> Self {
        VaPool {
            lists: [PoolList::EMPTY; MAX_VA_SIZE_PAGES],
            cache: NodeCache::new(page_source),
            nr_areas: 0,
            bytes: 0,
        }
    }

    /// Linux `size_to_va_pool`: the list index for an area of `size` bytes, if pooled.
    fn index(size: u64) -> Option<usize> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE as u64) {
            return None;
        }
        let idx = (size - 1) / PAGE_SIZE as u64;
        if idx < MAX_VA_SIZE_PAGES as u64 {
            Some(idx as usize)
        } else {
            None
        }
    }

    /// Linux `node_pool_add_va`: adds the area at the head of its size list. False (nothing
    /// done; the caller returns it to the free tree) if it is not a whole number of pages, is
    /// larger than [`MAX_VA_SIZE_PAGES`] pages, or no node could be allocated.
    pub fn pool_put(&mut self, va_start: u64, va_end: u64) -> bool {
        if va_start >= va_end {
            return false;
        }
        let idx = match Self::index(va_end - va_start) {
            Some(i) => i,
            None => return false,
        };
        let n = match self.cache.alloc() {
            Some(n) => n,
            None => return false,
        };
        unsafe {
            (*n).va_start = va_start;
            (*n).va_end = va_end;
            (*n).parent = null_mut();
            (*n).value = 0;
            self.lists[idx].push_front(n);
        }
        self.nr_areas += 1;
        self.bytes += va_end - va_start;
        true
    }

    /// Linux `node_pool_del_va` (the `node_alloc` fast path): takes the first area of exactly
    /// `size` bytes if its start is `align`-aligned; if it is not, rotates it to the tail of its
    /// list and gives up (`None`). `None` also for an empty list or a size that is not pooled.
    pub fn pool_get(&mut self, size: u64, align: u64) -> Option<VaRange> {
        if !align.is_power_of_two() {
            return None;
        }
        let idx = Self::index(size)?;
        let list = &mut self.lists[idx];
        unsafe {
            let n = list.head;
            if n.is_null() {
                return None;
            }
            if (*n).va_start & (align - 1) != 0 {
                if list.len > 1 {
                    list.pop_front();
                    list.push_back(n);
                }
                return None;
            }
            list.pop_front();
            let r = VaRange { va_start: (*n).va_start, va_end: (*n).va_end };
            self.cache.free(n);
            self.nr_areas -= 1;
            self.bytes -= r.size();
            Some(r)
        }
    }

    /// Linux `decay_va_pool_node`: from every list, removes `len / 4` areas from the head (all
    /// of them when `full`), calling `f` on each (the caller merges them back into the free
    /// tree, Linux `reclaim_list_global`). Returns how many were removed. Lists with fewer than
    /// four areas are left alone by a partial decay, as in Linux.
    pub fn decay(&mut self, full: bool, mut f: impl FnMut(VaRange)) -> usize {
        let mut total = 0;
        for i in 0..MAX_VA_SIZE_PAGES {
            let len = self.lists[i].len;
            if len == 0 {
                continue;
            }
            let n_decay = if full { len } else { len >> 2 };
            for _ in 0..n_decay {
                unsafe {
                    let n = self.lists[i].pop_front();
                    let r = VaRange { va_start: (*n).va_start, va_end: (*n).va_end };
                    self.cache.free(n);
                    self.nr_areas -= 1;
                    self.bytes -= r.size();
                    total += 1;
                    f(r);
                }
            }
        }
        total
    }

    /// Areas held in all lists.
    pub fn nr_areas(&self) -> usize {
        self.nr_areas
    }

    /// Bytes held in all lists.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Areas held in the list for `size`-byte areas (0 if not a pooled size).
    pub fn len_of(&self, size: u64) -> usize {
        Self::index(size).map_or(0, |i| self.lists[i].len)
    }

    pub fn is_empty(&self) -> bool {
        self.nr_areas == 0
    }

    node_cache_accessors!();

    /// Debug check: list links, sizes per list, counters. O(areas).
    pub fn check(&self) -> Result<(), &'static str> {
        let (mut areas, mut bytes) = (0usize, 0u64);
        for (i, l) in self.lists.iter().enumerate() {
            let mut n = l.head;
            let mut prev: *mut VaNode = null_mut();
            let mut len = 0;
            unsafe {
                while !n.is_null() {
                    if (*n).right != prev {
                        return Err("pool list prev link wrong");
                    }
                    if va_size(n) != (i as u64 + 1) * PAGE_SIZE as u64 {
                        return Err("area in the wrong pool list");
                    }
                    bytes += va_size(n);
                    len += 1;
                    prev = n;
                    n = (*n).left;
                }
            }
            if prev != l.tail || len != l.len {
                return Err("pool list tail or length wrong");
            }
            areas += len;
        }
        if areas != self.nr_areas || bytes != self.bytes {
            return Err("pool counters wrong");
        }
        if areas != self.cache.inuse {
            return Err("slab objects in use != pooled areas");
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Host tests
// ------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc, dealloc, Layout};
    use std::collections::BTreeMap;
    use std::vec::Vec;

    const P: u64 = PAGE_SIZE as u64;
    const BASE: u64 = 0xffff_8000_0000_0000;
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    /// A page source over the host allocator counting outstanding pages, with an optional cap.
    pub(super) struct TestPages {
        pub live: usize,
        pub total: usize,
        pub limit: usize,
    }

    impl TestPages {
        pub fn new() -> Self {
            TestPages { live: 0, total: 0, limit: usize::MAX }
        }
        pub fn limited(limit: usize) -> Self {
            TestPages { live: 0, total: 0, limit }
        }
        fn layout() -> Layout {
            Layout::from_size_align(SLAB_PAGE_SIZE, SLAB_PAGE_SIZE).unwrap()
        }
    }

    impl PageSource for TestPages {
        fn alloc_page(&mut self) -> Option<*mut u8> {
            if self.live >= self.limit {
                return None;
            }
            let p = unsafe { alloc(Self::layout()) };
            if p.is_null() {
                return None;
            }
            self.live += 1;
            self.total += 1;
            Some(p)
        }
        fn free_page(&mut self, p: *mut u8) {
            assert_eq!(p as usize % SLAB_PAGE_SIZE, 0);
            unsafe { dealloc(p, Self::layout()) };
            self.live -= 1;
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    // ---- independent model (u128 arithmetic, BTreeMap of free ranges) -----------------------

    use crate::model::{model_fit, model_fit_top, FreeRanges as Model};

    struct Harness {
        kva: KvaAllocator<TestPages>,
        model: Model,
        live: Vec<(u64, u64)>,
        start: u64,
        end: u64,
        allocs_ok: usize,
        allocs_nospace: usize,
        path_hits: usize,
        max_free_ranges: usize,
    }

    impl Harness {
        fn new(start: u64, end: u64) -> Self {
            let kva = KvaAllocator::new(start, end, TestPages::new()).unwrap();
            let mut model = Model::default();
            model.free.insert(start, end);
            let h = Harness {
                kva,
                model,
                live: Vec::new(),
                start,
                end,
                allocs_ok: 0,
                allocs_nospace: 0,
                path_hits: 0,
                max_free_ranges: 1,
            };
            h.verify();
            h
        }

        fn verify(&self) {
            self.kva.check().unwrap();
            let tree: Vec<(u64, u64)> =
                self.kva.iter_free().map(|r| (r.va_start, r.va_end)).collect();
            let model: Vec<(u64, u64)> = self.model.free.iter().map(|(&s, &e)| (s, e)).collect();
            assert_eq!(tree, model, "free tree differs from model");
            assert_eq!(self.kva.nr_free_ranges(), model.len());
            assert_eq!(self.kva.free_bytes(), model.iter().map(|(s, e)| e - s).sum::<u64>());
            assert_eq!(
                self.kva.largest_free(),
                model.iter().map(|(s, e)| e - s).max().unwrap_or(0)
            );
            let st = self.kva.slab_stats();
            assert_eq!(st.objects_in_use, model.len());
            assert_eq!(st.pages, self.kva.page_source().live);
        }

        fn alloc(
            &mut self,
            size: u64,
            align: u64,
            vstart: u64,
            vend: u64,
        ) -> Result<u64, KvaError> {
            let got = self.kva.alloc(size, align, vstart, vend);
            let adjust = align > P && vend - vstart != size;
            let length: u128 = if adjust { size as u128 + align as u128 - 1 } else { size as u128 };
            // Lowest fitting block of at least `length`, and lowest fitting block at all.
            let mut strict: Option<(u64, u64, u64)> = None;
            let mut any: Option<(u64, u64, u64)> = None;
            for (&s, &e) in &self.model.free {
                if let Some(nva) = model_fit(s, e, size, align, vstart) {
                    if any.is_none() {
                        any = Some((s, e, nva));
                    }
                    if (e - s) as u128 >= length {
                        strict = Some((s, e, nva));
                        break;
                    }
                }
            }
            match got {
                Ok(nva) => {
                    assert_eq!(nva % align, 0, "misaligned");
                    assert!(
                        nva >= vstart && nva as u128 + size as u128 <= vend as u128,
                        "outside window"
                    );
                    let (bs, be) =
                        self.model.block_containing(nva).expect("returned range not free");
                    assert!(nva + size <= be, "returned range not free");
                    assert_eq!(
                        model_fit(bs, be, size, align, vstart),
                        Some(nva),
                        "not the block's first aligned fit"
                    );
                    if let Some((ss, _, _)) = strict {
                        assert!(bs <= ss, "higher than the lowest block of the search length");
                        if (be - bs) as u128 >= length {
                            assert_eq!(bs, ss, "not the lowest block of the search length");
                        }
                    }
                    if !adjust {
                        assert_eq!(Some(nva), any.map(|a| a.2), "not the lowest fit");
                    }
                    if ((be - bs) as u128) < length {
                        self.path_hits += 1;
                    }
                    self.model.carve(nva, nva + size);
                    self.live.push((nva, nva + size));
                    self.allocs_ok += 1;
                }
                Err(KvaError::NoSpace) => {
                    if let Some((_, _, nva)) = strict {
                        assert!(
                            nva as u128 + size as u128 > vend as u128,
                            "NoSpace but the model fits at {nva:#x}"
                        );
                    }
                    self.allocs_nospace += 1;
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
            self.verify();
            got
        }

        fn alloc_top(
            &mut self,
            size: u64,
            align: u64,
            vstart: u64,
            vend: u64,
        ) -> Result<u64, KvaError> {
            let got = self.kva.alloc_top_down(size, align, vstart, vend);
            let expect = self
                .model
                .free
                .iter()
                .rev()
                .find_map(|(&s, &e)| model_fit_top(s, e, size, align, vstart, vend));
            match (got, expect) {
                (Ok(a), Some(b)) => {
                    assert_eq!(a, b, "top-down not the highest fit");
                    self.model.carve(a, a + size);
                    self.live.push((a, a + size));
                    self.allocs_ok += 1;
                }
                (Err(KvaError::NoSpace), None) => self.allocs_nospace += 1,
                (g, e) => panic!("top-down got {g:x?} expected {e:x?}"),
            }
            self.verify();
            got
        }

        fn free_idx(&mut self, i: usize) {
            let (s, e) = self.live.swap_remove(i);
            self.kva.free(s, e).unwrap();
            self.model.release(s, e);
            self.verify();
        }

        fn double_free(&mut self, i: usize) {
            let (s, e) = self.live.swap_remove(i);
            self.kva.free(s, e).unwrap();
            self.model.release(s, e);
            assert_eq!(self.kva.free(s, e), Err(KvaError::Overlap));
            // Partly overlapping the free block that now contains it.
            let (bs, be) = self.model.block_containing(s).unwrap();
            if bs >= self.start + P {
                assert_eq!(self.kva.free(bs - P, bs + P), Err(KvaError::Overlap));
            }
            if be + P <= self.end {
                assert_eq!(self.kva.free(be - P, be + P), Err(KvaError::Overlap));
            }
            self.verify();
        }

        fn free_all(&mut self) {
            while !self.live.is_empty() {
                self.free_idx(self.live.len() - 1);
            }
            assert_eq!(
                self.kva.iter_free().collect::<Vec<_>>(),
                [VaRange { va_start: self.start, va_end: self.end }]
            );
            self.kva.shrink();
            assert_eq!(self.kva.page_source().live, 1, "only the page holding the last node stays");
            assert_eq!(
                self.kva.slab_stats(),
                SlabStats { pages: 1, objects_in_use: 1, empty_pages: 0 }
            );
        }
    }

    fn random_align(rng: &mut Rng) -> u64 {
        match rng.below(100) {
            0..=54 => P,
            55..=64 => 1 << rng.below(12), // <= PAGE_SIZE as u64
            65..=94 => 1 << (13 + rng.below(10)), // 8 KiB .. 4 MiB
            95..=98 => 1 << (23 + rng.below(8)), // 8 MiB .. 1 GiB
            _ => 1 << [40u64, 47, 48, 63][rng.below(4) as usize],
        }
    }

    fn random_size(rng: &mut Rng) -> u64 {
        match rng.below(100) {
            0..=89 => (1 + rng.below(1024)) * P,
            90..=98 => (1 + rng.below(16384)) * P, // up to 64 MiB
            _ => (1 + rng.below(4)) * GIB,
        }
    }

    fn random_window(rng: &mut Rng, h: &Harness, size: u64, align: u64) -> (u64, u64) {
        let span = h.end - h.start;
        match rng.below(100) {
            0..=74 => (h.start, h.end),
            75..=89 => {
                let a = h.start + rng.below(span / P) * P;
                let b = (a + size + rng.below(span / P / 2) * P).min(h.end);
                if a < b {
                    (a, b)
                } else {
                    (h.start, h.end)
                }
            }
            90..=94 => {
                // Window of exactly `size` (the "no adjustment" special case).
                let a = h.start + rng.below(span / P) * P;
                let a = a.div_ceil(align.max(1)).saturating_mul(align.max(1));
                match a.checked_add(size) {
                    Some(b) if a >= h.start && b <= h.end => (a, b),
                    _ => (h.start, h.end),
                }
            }
            _ => (h.start.saturating_sub(GIB), h.end.saturating_add(GIB).max(h.end)),
        }
    }

    fn run_random(seed: u64, ops: usize, start: u64, end: u64) -> Harness {
        let mut rng = Rng(seed);
        let mut h = Harness::new(start, end);
        for op in 0..ops {
            // Phases: grow, churn, shrink.
            let alloc_pct = match op * 3 / ops {
                0 => 70,
                1 => 50,
                _ => 35,
            };
            if h.live.is_empty() || rng.chance(alloc_pct) {
                let size = random_size(&mut rng);
                let align = random_align(&mut rng);
                let (vs, ve) = random_window(&mut rng, &h, size, align);
                if rng.chance(6) {
                    let _ = h.alloc_top(size, align, vs, ve);
                } else if rng.chance(3) && !h.model.free.is_empty() {
                    // Reserve a random sub-range of a random free block, and a busy one.
                    let k = rng.below(h.model.free.len() as u64) as usize;
                    let (&s, &e) = h.model.free.iter().nth(k).unwrap();
                    let pages = (e - s) / P;
                    let a = s + rng.below(pages) * P;
                    let b = a + (1 + rng.below(((e - a) / P).min(64))) * P;
                    h.kva.reserve(a, b).unwrap();
                    h.model.carve(a, b);
                    h.live.push((a, b));
                    h.verify();
                    if let Some(&(ls, le)) = h.live.first() {
                        assert_eq!(h.kva.reserve(ls, le), Err(KvaError::NoSpace));
                    }
                } else {
                    let _ = h.alloc(size, align, vs, ve);
                }
            } else if rng.chance(2) {
                let i = rng.below(h.live.len() as u64) as usize;
                h.double_free(i);
            } else {
                let i = rng.below(h.live.len() as u64) as usize;
                h.free_idx(i);
            }
            h.max_free_ranges = h.max_free_ranges.max(h.kva.nr_free_ranges());
        }
        h
    }

    #[test]
    fn kva_model_random_16g() {
        let mut total_ok = 0;
        let mut total_nospace = 0;
        let mut path_hits = 0;
        let mut max_free = 0;
        for seed in [
            0x1234_5678_9abc_def1u64,
            0xdead_beef_cafe_f00d,
            42,
            0x0bad_5eed,
            0x7777_aaaa_0000_0001,
        ] {
            let mut h = run_random(seed, 10_000, BASE, BASE + 16 * GIB);
            total_ok += h.allocs_ok;
            total_nospace += h.allocs_nospace;
            path_hits += h.path_hits;
            max_free = max_free.max(h.max_free_ranges);
            h.free_all();
        }
        assert!(total_ok > 20_000, "{total_ok}");
        assert!(total_nospace > 10, "{total_nospace}");
        assert!(max_free > 500, "tree never got big: {max_free}");
        std::println!("ok {total_ok} nospace {total_nospace} on-path smaller-than-length hits {path_hits} max free ranges {max_free}");
    }

    #[test]
    fn kva_model_random_small_range() {
        // 256 MiB: frequent NoSpace and fragmentation.
        for seed in [7u64, 99, 0x5eed] {
            let mut h = run_random(seed, 4000, BASE, BASE + 256 * MIB);
            assert!(h.allocs_nospace > 50);
            h.free_all();
        }
    }

    #[test]
    fn kva_invalid_arguments() {
        let mut a = KvaAllocator::new(BASE, BASE + 16 * GIB, TestPages::new()).unwrap();
        assert_eq!(a.alloc(0, P, BASE, BASE + GIB), Err(KvaError::Invalid));
        assert_eq!(a.alloc(P, 3 * P, BASE, BASE + GIB), Err(KvaError::Invalid));
        assert_eq!(a.alloc(P, 0, BASE, BASE + GIB), Err(KvaError::Invalid));
        assert_eq!(a.alloc(P, P, BASE + GIB, BASE + GIB), Err(KvaError::Invalid));
        assert_eq!(a.alloc(P, P, BASE + GIB, BASE), Err(KvaError::Invalid));
        assert_eq!(a.alloc(u64::MAX - 10, 1 << 63, 0, u64::MAX), Err(KvaError::Invalid));
        assert_eq!(a.alloc_top_down(0, P, BASE, BASE + GIB), Err(KvaError::Invalid));
        assert_eq!(a.free(BASE, BASE), Err(KvaError::Invalid));
        assert_eq!(a.free(BASE - P, BASE), Err(KvaError::Invalid));
        assert_eq!(a.free(BASE + 16 * GIB, BASE + 16 * GIB + P), Err(KvaError::Invalid));
        assert_eq!(a.reserve(BASE - P, BASE + P), Err(KvaError::Invalid));
        assert_eq!(a.init(0, P), Err(KvaError::Invalid), "double init");
        assert!(KvaAllocator::new(P, P, TestPages::new()).is_err());
        // Larger than the window or the whole range.
        assert_eq!(a.alloc(2 * P, P, BASE, BASE + P), Err(KvaError::NoSpace));
        assert_eq!(a.alloc(32 * GIB, P, BASE, BASE + 64 * GIB), Err(KvaError::NoSpace));
        a.check().unwrap();
        assert_eq!(a.nr_free_ranges(), 1);
    }

    #[test]
    fn kva_huge_alignment_no_overflow() {
        let end = BASE + 16 * GIB;
        let mut a = KvaAllocator::new(BASE, end, TestPages::new()).unwrap();
        // BASE = 2^64 - 2^47: aligning it up to 2^48 or more overflows u64.
        for shift in [48u32, 50, 56, 62, 63] {
            assert_eq!(
                a.alloc(P, 1 << shift, BASE, end),
                Err(KvaError::NoSpace),
                "align 2^{shift}"
            );
            assert_eq!(
                a.alloc_top_down(P, 1 << shift, BASE, end),
                Err(KvaError::NoSpace),
                "align 2^{shift}"
            );
            assert_eq!(
                a.alloc(P, 1 << shift, 0, u64::MAX),
                Err(KvaError::NoSpace),
                "align 2^{shift}"
            );
        }
        // Larger than the whole range but BASE itself is 2^47 (so 2^40) aligned: the first
        // succeeds at BASE, the next has no aligned spot.
        assert_eq!(a.alloc(P, 1 << 40, BASE, end), Ok(BASE));
        assert_eq!(a.alloc(P, 1 << 40, BASE, end), Err(KvaError::NoSpace));
        assert_eq!(a.alloc_top_down(P, 1 << 40, BASE, end), Err(KvaError::NoSpace));
        // A window starting near the top of the address space.
        assert_eq!(a.alloc(P, 1 << 20, u64::MAX - P, u64::MAX), Err(KvaError::NoSpace));
        a.check().unwrap();
        a.free(BASE, BASE + P).unwrap();
        assert_eq!(a.iter_free().collect::<Vec<_>>(), [VaRange { va_start: BASE, va_end: end }]);
    }

    fn ranges(a: &KvaAllocator<TestPages>) -> Vec<(u64, u64)> {
        a.iter_free().map(|r| (r.va_start, r.va_end)).collect()
    }

    #[test]
    fn kva_clip_cases() {
        assert_eq!(classify_va_fit_type(10, 20, 10, 10), FitType::Full);
        assert_eq!(classify_va_fit_type(10, 20, 10, 5), FitType::LeftEdge);
        assert_eq!(classify_va_fit_type(10, 20, 15, 5), FitType::RightEdge);
        assert_eq!(classify_va_fit_type(10, 20, 12, 5), FitType::NoEdge);
        assert_eq!(classify_va_fit_type(10, 20, 9, 5), FitType::Nothing);
        assert_eq!(classify_va_fit_type(10, 20, 16, 5), FitType::Nothing);
        assert_eq!(classify_va_fit_type(10, 20, u64::MAX, 5), FitType::Nothing);

        let (s, e) = (BASE, BASE + 16 * P);
        // FL: the whole block.
        let mut a = KvaAllocator::new(s, e, TestPages::new()).unwrap();
        assert_eq!(a.alloc(16 * P, P, s, e), Ok(s));
        assert_eq!(a.nr_free_ranges(), 0);
        assert_eq!(a.largest_free(), 0);
        assert_eq!(a.slab_stats().objects_in_use, 0);
        assert_eq!(a.alloc(P, P, s, e), Err(KvaError::NoSpace));
        a.check().unwrap();
        a.free(s, e).unwrap();
        assert_eq!(ranges(&a), [(s, e)]);
        // LE: lowest page.
        assert_eq!(a.alloc(P, P, s, e), Ok(s));
        assert_eq!(ranges(&a), [(s + P, e)]);
        // RE: window forces the top page.
        assert_eq!(a.alloc(P, P, e - P, e), Ok(e - P));
        assert_eq!(ranges(&a), [(s + P, e - P)]);
        // NE: a page in the middle needs a second node.
        assert_eq!(a.alloc(P, P, s + 4 * P, e), Ok(s + 4 * P));
        assert_eq!(ranges(&a), [(s + P, s + 4 * P), (s + 5 * P, e - P)]);
        assert_eq!(a.slab_stats().objects_in_use, 2);
        assert_eq!(a.free_bytes(), 13 * P);
        assert_eq!(a.largest_free(), 10 * P);
        a.check().unwrap();
        // NE through alignment.
        assert_eq!(a.alloc(P, 8 * P, s, e), Ok(s + 8 * P));
        assert_eq!(ranges(&a), [(s + P, s + 4 * P), (s + 5 * P, s + 8 * P), (s + 9 * P, e - P)]);
        // Merges: next only, prev only, both.
        a.free(s + 8 * P, s + 9 * P).unwrap(); // both sides
        assert_eq!(ranges(&a), [(s + P, s + 4 * P), (s + 5 * P, e - P)]);
        a.free(s, s + P).unwrap(); // next only
        assert_eq!(ranges(&a), [(s, s + 4 * P), (s + 5 * P, e - P)]);
        a.free(e - P, e).unwrap(); // prev only
        assert_eq!(ranges(&a), [(s, s + 4 * P), (s + 5 * P, e)]);
        a.free(s + 4 * P, s + 5 * P).unwrap();
        assert_eq!(ranges(&a), [(s, e)]);
        a.check().unwrap();
        // Insert without merge.
        a.reserve(s, e).unwrap();
        a.free(s + 2 * P, s + 3 * P).unwrap();
        a.free(s + 6 * P, s + 7 * P).unwrap();
        assert_eq!(ranges(&a), [(s + 2 * P, s + 3 * P), (s + 6 * P, s + 7 * P)]);
        a.check().unwrap();
    }

    #[test]
    fn kva_double_free_rejected() {
        let (s, e) = (BASE, BASE + GIB);
        let mut a = KvaAllocator::new(s, e, TestPages::new()).unwrap();
        let x = a.alloc(4 * P, P, s, e).unwrap();
        let y = a.alloc(4 * P, P, s, e).unwrap();
        a.free(x, x + 4 * P).unwrap();
        let before = ranges(&a);
        assert_eq!(a.free(x, x + 4 * P), Err(KvaError::Overlap));
        assert_eq!(a.free(x + P, x + 2 * P), Err(KvaError::Overlap));
        assert_eq!(a.free(x + 3 * P, y + P), Err(KvaError::Overlap));
        assert_eq!(a.free(y + 2 * P, y + 6 * P), Err(KvaError::Overlap)); // into the big block
        assert_eq!(a.free(s, e), Err(KvaError::Overlap));
        assert_eq!(ranges(&a), before);
        a.check().unwrap();
        a.free(y, y + 4 * P).unwrap();
        assert_eq!(ranges(&a), [(s, e)]);
    }

    #[test]
    fn kva_top_down() {
        let (s, e) = (BASE, BASE + GIB);
        let mut a = KvaAllocator::new(s, e, TestPages::new()).unwrap();
        assert_eq!(a.alloc_top_down(P, P, s, e), Ok(e - P));
        assert_eq!(a.alloc_top_down(3 * P, 2 * MIB, s, e), Ok(e - 2 * MIB));
        // The gap [e - 2M + 3P, e - P) is below the top but above the previous aligned spot.
        assert_eq!(a.alloc_top_down(2 * P, P, s, e), Ok(e - 3 * P));
        assert_eq!(a.alloc_top_down(P, P, s, e - 4 * MIB), Ok(e - 4 * MIB - P));
        assert_eq!(a.alloc_top_down(GIB, P, s, e), Err(KvaError::NoSpace));
        assert_eq!(a.alloc_top_down(P, 1 << 40, s, e), Ok(s), "BASE is 2^47 aligned");
        assert_eq!(a.alloc(P, P, s, e), Ok(s + P), "bottom-up is unaffected");
        a.check().unwrap();
        // Highest fit skips a high block that is too small.
        let (s2, e2) = (BASE, BASE + 64 * P);
        let mut b = KvaAllocator::new(s2, e2, TestPages::new()).unwrap();
        b.reserve(s2, e2).unwrap();
        b.free(s2 + 2 * P, s2 + 10 * P).unwrap();
        b.free(s2 + 20 * P, s2 + 22 * P).unwrap();
        b.free(s2 + 40 * P, s2 + 43 * P).unwrap();
        assert_eq!(b.alloc_top_down(4 * P, P, s2, e2), Ok(s2 + 6 * P));
        assert_eq!(b.alloc_top_down(2 * P, 2 * P, s2, e2), Ok(s2 + 40 * P));
        assert_eq!(b.alloc_top_down(P, P, s2, s2 + 22 * P), Ok(s2 + 21 * P));
        b.check().unwrap();
    }

    #[test]
    fn kva_search_length_rule() {
        // Blocks: [P, 4P) small but alignable, [16P, 40P) big. align 2P, size 2P:
        // adjusted length 2P + 2P - 1 = 4P-1 > 3P.
        let (s, e) = (BASE, BASE + 64 * P);
        let mut a = KvaAllocator::new(s, e, TestPages::new()).unwrap();
        a.reserve(s, e).unwrap();
        a.free(s + 16 * P, s + 40 * P).unwrap();
        a.free(s + P, s + 4 * P).unwrap();
        // The big block is the root and the small one its left child. The left subtree cannot
        // hold the length, so the search does not descend into it although s + 2P would fit:
        // the big block is taken (as in Linux).
        assert_eq!(a.alloc(2 * P, 2 * P, s, e), Ok(s + 16 * P));
        // With align <= PAGE_SIZE no adjustment: the lowest fit.
        assert_eq!(a.alloc(2 * P, P, s, e), Ok(s + P));
        // A window of exactly the size disables the adjustment.
        let mut b = KvaAllocator::new(s, e, TestPages::new()).unwrap();
        assert_eq!(b.alloc(8 * P, 8 * P, s + 8 * P, s + 16 * P), Ok(s + 8 * P));
        b.check().unwrap();
    }

    #[test]
    fn kva_no_memory_leaves_tree_intact() {
        let (s, e) = (BASE, BASE + GIB);
        let mut a = KvaAllocator::new(s, e, TestPages::limited(1)).unwrap();
        // Every other page busy: each alloc is an NE split needing one more node.
        let mut n = 0u64;
        loop {
            let at = s + (2 * n + 1) * P;
            let before = ranges(&a);
            match a.alloc(P, P, at, e) {
                Ok(x) => assert_eq!(x, at),
                Err(err) => {
                    assert_eq!(err, KvaError::NoMemory);
                    assert_eq!(ranges(&a), before, "failed NE split changed the tree");
                    break;
                }
            }
            n += 1;
        }
        assert_eq!(n as usize, OBJS_PER_PAGE - 1);
        assert_eq!(a.nr_free_ranges(), OBJS_PER_PAGE);
        a.check().unwrap();
        // RE and LE clips need no node.
        let tail = s + 2 * n * P;
        a.reserve(e - 3 * P, e).unwrap();
        a.reserve(tail, tail + P).unwrap();
        a.check().unwrap();
        // A free touching no free block needs a node: refused, nothing changed.
        let before = ranges(&a);
        assert_eq!(a.free(e - 2 * P, e - P), Err(KvaError::NoMemory));
        assert_eq!(ranges(&a), before);
        a.check().unwrap();
        // FL releases a node; then the same free succeeds.
        assert_eq!(a.alloc(P, P, s, e), Ok(s));
        a.free(e - 2 * P, e - P).unwrap();
        // Merging frees need none: both sides, prev only, next only.
        a.free(e - 3 * P, e - 2 * P).unwrap();
        a.free(e - P, e).unwrap();
        a.free(tail, tail + P).unwrap();
        assert_eq!(*ranges(&a).last().unwrap(), (tail, e));
        a.check().unwrap();
        assert_eq!(a.slab_stats().pages, 1);
        assert_eq!(a.page_source().live, 1);
    }

    #[test]
    fn kva_slab_shrink_and_const_static() {
        let (s, e) = (BASE, BASE + 16 * GIB);
        let mut a = KvaAllocator::empty(TestPages::new());
        assert_eq!(a.alloc(P, P, s, e), Err(KvaError::NoSpace));
        a.init(s, e).unwrap();
        let mut held = Vec::new();
        for i in 0..2000u64 {
            // Every other page: 2000 NE splits -> ~2000 nodes -> 32 pages.
            held.push(a.alloc(P, P, s + (2 * i + 1) * P, e).unwrap());
        }
        let st = a.slab_stats();
        assert_eq!(st.objects_in_use, 2001);
        assert_eq!(st.pages, 2001usize.div_ceil(OBJS_PER_PAGE));
        assert_eq!(a.page_source().live, st.pages);
        for x in held {
            a.free(x, x + P).unwrap();
        }
        assert_eq!(ranges(&a), [(s, e)]);
        let st = a.slab_stats();
        assert_eq!(st.objects_in_use, 1);
        assert_eq!(st.empty_pages, st.pages - 1);
        assert_eq!(a.shrink(), st.pages - 1);
        assert_eq!(a.page_source().live, 1);
        assert_eq!(a.shrink(), 0);
        drop(a);

        // Statics: const construction, Send.
        struct Null;
        impl PageSource for Null {
            fn alloc_page(&mut self) -> Option<*mut u8> {
                None
            }
            fn free_page(&mut self, _: *mut u8) {}
        }
        static KVA: spin::Mutex<KvaAllocator<Null>> = spin::Mutex::new(KvaAllocator::empty(Null));
        static BUSY: spin::Mutex<BusyTree<Null>> = spin::Mutex::new(BusyTree::new(Null));
        static POOL: spin::Mutex<VaPool<Null>> = spin::Mutex::new(VaPool::new(Null));
        assert_eq!(KVA.lock().init(s, e), Err(KvaError::NoMemory));
        assert_eq!(BUSY.lock().insert(s, e, 1), Err(KvaError::NoMemory));
        assert!(!POOL.lock().pool_put(s, s + P));
    }

    // ---- pools -------------------------------------------------------------------------------

    #[test]
    fn pool_put_get_by_size() {
        let mut p = VaPool::new(TestPages::new());
        assert!(p.pool_put(BASE, BASE + 2 * P));
        assert!(p.pool_put(BASE + 8 * P, BASE + 10 * P));
        assert!(p.pool_put(BASE + 16 * P, BASE + 17 * P));
        assert!(p.pool_put(BASE + 32 * P, BASE + (32 + 256) * P), "256 pages is the largest");
        assert!(!p.pool_put(BASE, BASE + 257 * P), "too big");
        assert!(!p.pool_put(BASE, BASE + P + 1), "not whole pages");
        assert!(!p.pool_put(BASE, BASE));
        assert_eq!(p.nr_areas(), 4);
        assert_eq!(p.bytes(), (2 + 2 + 1 + 256) * P);
        assert_eq!(p.len_of(2 * P), 2);
        p.check().unwrap();
        // LIFO within a size, exact size only.
        assert_eq!(p.pool_get(3 * P, P), None);
        assert_eq!(
            p.pool_get(2 * P, P),
            Some(VaRange { va_start: BASE + 8 * P, va_end: BASE + 10 * P })
        );
        assert_eq!(p.pool_get(2 * P, P), Some(VaRange { va_start: BASE, va_end: BASE + 2 * P }));
        assert_eq!(p.pool_get(2 * P, P), None);
        assert_eq!(p.pool_get(P, P).unwrap().va_start, BASE + 16 * P);
        assert_eq!(p.pool_get(256 * P, P).unwrap().size(), 256 * P);
        assert_eq!(p.pool_get(257 * P, P), None);
        assert_eq!(p.pool_get(P + 1, 1), None);
        assert_eq!(p.pool_get(0, P), None);
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
        p.check().unwrap();
        p.shrink();
        assert_eq!(p.page_source().live, 0);
    }

    #[test]
    fn pool_misaligned_head_rotates() {
        let mut p = VaPool::new(TestPages::new());
        let aligned = BASE + 64 * 1024;
        let misaligned = BASE + P;
        assert!(p.pool_put(aligned, aligned + 4 * P));
        assert!(p.pool_put(misaligned, misaligned + 4 * P)); // head
        assert_eq!(p.pool_get(4 * P, 64 * 1024), None, "misaligned head: rotated, give up");
        assert_eq!(p.len_of(4 * P), 2);
        assert_eq!(
            p.pool_get(4 * P, 64 * 1024),
            Some(VaRange { va_start: aligned, va_end: aligned + 4 * P })
        );
        assert_eq!(p.pool_get(4 * P, 64 * 1024), None, "only the misaligned one is left");
        assert_eq!(p.len_of(4 * P), 1);
        assert_eq!(
            p.pool_get(4 * P, P),
            Some(VaRange { va_start: misaligned, va_end: misaligned + 4 * P })
        );
        assert_eq!(p.pool_get(4 * P, 3), None, "align not a power of two");
        p.check().unwrap();
    }

    #[test]
    fn pool_decay_quarter_and_full() {
        let mut p = VaPool::new(TestPages::new());
        for i in 0..10 {
            assert!(p.pool_put(BASE + i * 16 * P, BASE + i * 16 * P + P));
        }
        for i in 0..3 {
            assert!(p.pool_put(BASE + GIB + i * 16 * P, BASE + GIB + i * 16 * P + 3 * P));
        }
        for i in 0..100 {
            assert!(
                p.pool_put(BASE + 2 * GIB + i * 512 * P, BASE + 2 * GIB + i * 512 * P + 256 * P)
            );
        }
        let mut out = Vec::new();
        assert_eq!(p.decay(false, |r| out.push(r)), 2 + 25, "10 >> 2 + 3 >> 2 (none) + 100 >> 2");
        // From the head: the most recently put.
        assert_eq!(out[0], VaRange { va_start: BASE + 9 * 16 * P, va_end: BASE + 9 * 16 * P + P });
        assert_eq!(p.len_of(P), 8);
        assert_eq!(p.len_of(3 * P), 3);
        assert_eq!(p.len_of(256 * P), 75);
        p.check().unwrap();
        out.clear();
        assert_eq!(p.decay(false, |r| out.push(r)), 2 + 18, "3-page list (3 areas) untouched");
        let n = p.nr_areas();
        out.clear();
        assert_eq!(p.decay(true, |r| out.push(r)), n);
        assert_eq!(out.len(), n);
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
        p.check().unwrap();
        p.shrink();
        assert_eq!(p.page_source().live, 0);
    }

    #[test]
    fn pool_roundtrip_merges_back_into_one_range() {
        let (s, e) = (BASE, BASE + 16 * GIB);
        let mut kva = KvaAllocator::new(s, e, TestPages::new()).unwrap();
        let mut pools = [VaPool::new(TestPages::new()), VaPool::new(TestPages::new())];
        let mut rng = Rng(0x9001);
        let mut live = Vec::new();
        for round in 0..30 {
            // vmalloc-like: pool first, then the tree; sizes include a guard page.
            for _ in 0..200 {
                let node = rng.below(2) as usize;
                let size = (2 + rng.below(300)) * P;
                let align = if rng.chance(20) { 16 * P } else { P };
                let r = match pools[node].pool_get(size, align) {
                    Some(r) => r,
                    None => {
                        let a = kva.alloc(size, align, s, e).unwrap();
                        VaRange { va_start: a, va_end: a + size }
                    }
                };
                assert_eq!(r.size(), size);
                assert_eq!(r.va_start % align, 0);
                live.push((node, r));
            }
            // "purge": decay the pools, then put freed areas in their node's pool or the tree.
            for p in pools.iter_mut() {
                p.decay(round % 7 == 6, |r| kva.free(r.va_start, r.va_end).unwrap());
            }
            let nfree = live.len() / 2 + rng.below(live.len() as u64 / 2) as usize;
            for _ in 0..nfree {
                let i = rng.below(live.len() as u64) as usize;
                let (node, r) = live.swap_remove(i);
                if !pools[node].pool_put(r.va_start, r.va_end) {
                    kva.free(r.va_start, r.va_end).unwrap();
                }
            }
            kva.check().unwrap();
            for p in &pools {
                p.check().unwrap();
            }
            // Nothing handed out twice: pool + tree + live cover disjoint ranges.
            let mut all: Vec<(u64, u64)> =
                live.iter().map(|(_, r)| (r.va_start, r.va_end)).collect();
            all.extend(kva.iter_free().map(|r| (r.va_start, r.va_end)));
            let pooled: u64 = pools.iter().map(|p| p.bytes()).sum();
            all.sort_unstable();
            for w in all.windows(2) {
                assert!(w[0].1 <= w[1].0, "overlap {w:x?}");
            }
            let covered: u64 = all.iter().map(|(a, b)| b - a).sum();
            assert_eq!(covered + pooled, e - s);
        }
        for (_, r) in live.drain(..) {
            kva.free(r.va_start, r.va_end).unwrap();
        }
        for p in pools.iter_mut() {
            p.decay(true, |r| kva.free(r.va_start, r.va_end).unwrap());
            assert!(p.is_empty());
            p.shrink();
            assert_eq!(p.page_source().live, 0);
        }
        assert_eq!(ranges(&kva), [(s, e)]);
        kva.check().unwrap();
        kva.shrink();
        assert_eq!(kva.page_source().live, 1);
    }

    // ---- busy tree ---------------------------------------------------------------------------

    #[test]
    fn busy_tree_model() {
        let mut t = BusyTree::new(TestPages::new());
        let mut model: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut rng = Rng(0xb05e);
        let slot = 16 * P;
        for op in 0..20000u64 {
            let k = rng.below(4096);
            let start = BASE + k * slot + rng.below(4) * P;
            let end = start + (1 + rng.below(12)) * P;
            match rng.below(10) {
                0..=4 => {
                    let overlaps =
                        model.range(..end).next_back().is_some_and(|(_, &(e, _))| e > start);
                    let r = t.insert(start, end, op);
                    if overlaps {
                        assert_eq!(r, Err(KvaError::Overlap));
                    } else {
                        r.unwrap();
                        model.insert(start, (end, op));
                    }
                }
                5..=6 => {
                    let exp = model.remove(&start).map(|(e, v)| BusyArea {
                        va_start: start,
                        va_end: e,
                        value: v,
                    });
                    assert_eq!(t.remove(start), exp);
                }
                7 => {
                    let addr = start + rng.below(8 * P);
                    let exp = model
                        .range(..=addr)
                        .next_back()
                        .filter(|(_, &(e, _))| addr < e)
                        .map(|(&s, &(e, v))| (s, e, v));
                    let got = t.remove_containing(addr);
                    assert_eq!(got.map(|a| (a.va_start, a.va_end, a.value)), exp);
                    if let Some((s, _, _)) = exp {
                        model.remove(&s);
                    }
                }
                _ => {
                    let addr = start + rng.below(8 * P);
                    let exp = model
                        .range(..=addr)
                        .next_back()
                        .filter(|(_, &(e, _))| addr < e)
                        .map(|(&s, &(e, v))| (s, e, v));
                    assert_eq!(t.find(addr).map(|a| (a.va_start, a.va_end, a.value)), exp);
                }
            }
            if op % 97 == 0 {
                t.check().unwrap();
                let got: Vec<(u64, u64, u64)> =
                    t.iter().map(|a| (a.va_start, a.va_end, a.value)).collect();
                let exp: Vec<(u64, u64, u64)> =
                    model.iter().map(|(&s, &(e, v))| (s, e, v)).collect();
                assert_eq!(got, exp);
                assert_eq!(t.first().map(|a| a.va_start), model.keys().next().copied());
                assert_eq!(t.last().map(|a| a.va_start), model.keys().next_back().copied());
            }
        }
        t.check().unwrap();
        assert_eq!(t.len(), model.len());
        assert!(t.set_value(*model.keys().next().unwrap(), 77));
        assert_eq!(t.first().unwrap().value, 77);
        model.values_mut().next().unwrap().1 = 77;
        // Drain in address order.
        let mut drained = Vec::new();
        let n = t.drain(|a| drained.push((a.va_start, a.va_end, a.value)));
        let exp: Vec<(u64, u64, u64)> = model.iter().map(|(&s, &(e, v))| (s, e, v)).collect();
        assert_eq!(n, exp.len());
        assert_eq!(drained, exp);
        assert!(t.is_empty());
        assert_eq!(t.bytes(), 0);
        t.check().unwrap();
        t.shrink();
        assert_eq!(t.page_source().live, 0);
    }

    #[test]
    fn busy_tree_pop_first_and_swap_detach() {
        let mut lazy = BusyTree::new(TestPages::new());
        let mut purge = BusyTree::new(TestPages::new());
        for i in (0..500u64).rev() {
            lazy.insert(BASE + i * 4 * P, BASE + i * 4 * P + 2 * P, i).unwrap();
        }
        assert_eq!(lazy.insert(BASE + P, BASE + 3 * P, 0), Err(KvaError::Overlap));
        assert_eq!(lazy.insert(BASE, BASE, 0), Err(KvaError::Invalid));
        // Detach in O(1) (Linux list_replace_init of the lazy list).
        core::mem::swap(&mut lazy, &mut purge);
        assert!(lazy.is_empty());
        assert_eq!(purge.len(), 500);
        assert_eq!(purge.first().unwrap().va_start, BASE);
        assert_eq!(purge.last().unwrap().va_end, BASE + 499 * 4 * P + 2 * P);
        lazy.insert(BASE, BASE + P, 9).unwrap();
        for i in 0..500u64 {
            let a = purge.pop_first().unwrap();
            assert_eq!(a.value, i);
            if i % 50 == 0 {
                purge.check().unwrap();
            }
        }
        assert_eq!(purge.pop_first(), None);
        lazy.check().unwrap();
    }

    // ---- proptest ----------------------------------------------------------------------------

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Alloc { pages: u64, align_shift: u32, window: u8, top: bool },
            Free { idx: usize },
            DoubleFree { idx: usize },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                5 => (1u64..=300, 0u32..=24, 0u8..8, proptest::bool::weighted(0.15))
                    .prop_map(|(pages, align_shift, window, top)| Op::Alloc { pages, align_shift, window, top }),
                3 => any::<usize>().prop_map(|idx| Op::Free { idx }),
                1 => any::<usize>().prop_map(|idx| Op::DoubleFree { idx }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
            #[test]
            fn kva_prop_agrees_with_model(ops in proptest::collection::vec(op(), 1..250)) {
                let (s, e) = (BASE, BASE + 64 * MIB);
                let mut h = Harness::new(s, e);
                for op in ops {
                    match op {
                        Op::Alloc { pages, align_shift, window, top } => {
                            let size = pages * P;
                            let align = 1u64 << align_shift;
                            let (vs, ve) = match window {
                                0..=4 => (s, e),
                                5 => (s + 8 * MIB, e - 8 * MIB),
                                6 => (s + 8 * MIB, s + 8 * MIB + size),
                                _ => (s + MIB + P, e),
                            };
                            if top {
                                let _ = h.alloc_top(size, align, vs, ve);
                            } else {
                                let _ = h.alloc(size, align, vs, ve);
                            }
                        }
                        Op::Free { idx } if !h.live.is_empty() => {
                            let i = idx % h.live.len();
                            h.free_idx(i);
                        }
                        Op::DoubleFree { idx } if !h.live.is_empty() => {
                            let i = idx % h.live.len();
                            h.double_free(i);
                        }
                        _ => {}
                    }
                }
                h.free_all();
            }
        }
    }
}
