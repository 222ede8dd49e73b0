//! The tree/list node and its slab (Linux: `struct vmap_area`, `vmap_area_cachep`).
//!
//! A [`NodeCache`] carves 4 KiB pages from a [`PageSource`] into 64-byte [`VaNode`]s. It is the
//! only owner of node memory: [`NodeCache::alloc`] hands out a node, [`NodeCache::free`] (an
//! `unsafe fn`: the caller promises the node is no longer used) takes it back, and dropping the
//! cache returns every page. What the nodes are linked into is the business of the structures
//! above (the trees of `tree`, the pool lists of `pool`).

use core::marker::PhantomData;
use core::ptr::{null_mut, NonNull};

use crate::list::{dlinks, DList};

/// Size of the pages a [`NodeCache`] obtains from its [`PageSource`] (they must be aligned to it).
pub const SLAB_PAGE_SIZE: usize = mm_types::PAGE_SIZE;

/// Where a [`NodeCache`] gets its 4 KiB pages. Pages must be [`SLAB_PAGE_SIZE`]-aligned.
///
/// # Safety
/// The node cache writes into the pages: a non-null page returned by `alloc_page` must be
/// valid for reads and writes of [`SLAB_PAGE_SIZE`] bytes and belong to the caller alone until
/// it is handed back to `free_page`. A null or misaligned page is handed straight back and
/// counts as a failed allocation.
pub unsafe trait PageSource {
    fn alloc_page(&mut self) -> Option<*mut u8>;
    /// Takes back a page.
    ///
    /// # Safety
    /// `p` was returned by this source's `alloc_page` and is no longer used by the caller.
    unsafe fn free_page(&mut self, p: *mut u8);
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

/// One `vmap_area`. In a tree `left/right/parent` are tree links; in a pool list `left` is the
/// next and `right` the previous element. Opaque outside this crate: a [`NodeSource`] hands
/// out pointers to it and takes them back, [`Va`] owns one.
#[repr(C)]
pub struct VaNode {
    pub(crate) left: *mut VaNode,
    pub(crate) right: *mut VaNode,
    pub(crate) parent: *mut VaNode,
    pub(crate) va_start: u64,
    pub(crate) va_end: u64,
    /// Free tree only: the largest block size in this subtree.
    pub(crate) subtree_max_size: u64,
    /// Busy tree only: the user value.
    pub(crate) value: u64,
    /// Red-black colour (tree.rs: RED 0, BLACK 1).
    pub(crate) color: u32,
    _pad: u32,
}

/// Where a KVA structure gets its nodes and gives them back (Linux: `vmap_area_cachep`).
/// [`NodeCache`] is one (a structure owning its own cache); the kernel shares one cache among
/// all its structures so that an area's node moves between them ([`SharedNodeSource`], [`Va`]).
///
/// # Safety
/// A non-null node from `alloc_node` is valid for reads and writes of a [`VaNode`] and used by
/// nobody else until it is handed to `free_node`.
pub unsafe trait NodeSource {
    fn alloc_node(&mut self) -> Option<*mut VaNode>;
    /// Takes a node back.
    ///
    /// # Safety
    /// `n` came from `alloc_node` of this source (for a [`SharedNodeSource`]: of any value of
    /// its type), is not freed yet, and is not used afterwards.
    unsafe fn free_node(&mut self, n: *mut VaNode);
    /// Nodes handed out and not returned, when this source serves one structure only (its
    /// `check` compares them with its own count); `None` for a shared source.
    fn objects_in_use(&self) -> Option<usize> {
        None
    }
}

// SAFETY: `alloc` hands out free slots of the cache's pages, valid until `free` (see NodeCache).
unsafe impl<P: PageSource> NodeSource for NodeCache<P> {
    #[inline]
    fn alloc_node(&mut self) -> Option<*mut VaNode> {
        self.alloc()
    }
    #[inline]
    unsafe fn free_node(&mut self, n: *mut VaNode) {
        // SAFETY: `n` came from this cache's alloc and is not used again (contract).
        unsafe { self.free(n) }
    }
    fn objects_in_use(&self) -> Option<usize> {
        Some(self.inuse)
    }
}

/// A [`NodeSource`] whose values all stand for one and the same pool of nodes (the kernel's:
/// a zero-sized handle to its one locked cache), so a node allocated through one value may be
/// freed through another, and a [`Va`] may move between structures using it.
///
/// # Safety
/// `free_node` of any value of the type accepts every node `alloc_node` of any value of the
/// type returned.
pub unsafe trait SharedNodeSource: NodeSource + Default {}

/// One area's node, detached from every structure (Linux: a `struct vmap_area` between
/// `unlink_va` and the next `insert_vmap_area`). Moving it from one structure to another keeps
/// the node: no slab operation. Dropping it frees the node.
pub struct Va<N: SharedNodeSource> {
    node: NonNull<VaNode>,
    _n: PhantomData<N>,
}

// SAFETY: a Va owns its node exclusively (nothing else points to it while detached), and any
// value of N frees it (SharedNodeSource), so it may be dropped or inserted on another thread.
unsafe impl<N: SharedNodeSource + Send> Send for Va<N> {}

impl<N: SharedNodeSource> Va<N> {
    /// A new node holding `[va_start, va_end)` and `value`; `None` when the source has none.
    #[inline]
    pub fn new(va_start: u64, va_end: u64, value: u64) -> Option<Self> {
        let n = NonNull::new(N::default().alloc_node()?)?;
        // SAFETY: a fresh node, valid for writes and ours alone (NodeSource contract).
        unsafe {
            let p = n.as_ptr();
            (*p).va_start = va_start;
            (*p).va_end = va_end;
            (*p).value = value;
        }
        Some(Va { node: n, _n: PhantomData })
    }

    /// Takes ownership of a detached node.
    ///
    /// # Safety
    /// `n` is a node from a source of type `N`, not freed, linked nowhere and owned by nobody
    /// else from now on.
    #[inline]
    pub(crate) unsafe fn from_raw(n: *mut VaNode) -> Self {
        // SAFETY: non-null by the contract (a live node).
        Va { node: unsafe { NonNull::new_unchecked(n) }, _n: PhantomData }
    }

    /// Gives up ownership: the caller links the node somewhere (or frees it).
    #[inline]
    pub(crate) fn into_raw(self) -> *mut VaNode {
        let n = self.node.as_ptr();
        core::mem::forget(self);
        n
    }

    #[inline]
    pub fn va_start(&self) -> u64 {
        // SAFETY: the node is live and ours (type invariant).
        unsafe { (*self.node.as_ptr()).va_start }
    }

    #[inline]
    pub fn va_end(&self) -> u64 {
        // SAFETY: as in `va_start`.
        unsafe { (*self.node.as_ptr()).va_end }
    }

    #[inline]
    pub fn value(&self) -> u64 {
        // SAFETY: as in `va_start`.
        unsafe { (*self.node.as_ptr()).value }
    }

    #[inline]
    pub fn set(&mut self, va_start: u64, va_end: u64, value: u64) {
        // SAFETY: the node is live and ours alone (type invariant); `&mut self`.
        unsafe {
            let p = self.node.as_ptr();
            (*p).va_start = va_start;
            (*p).va_end = va_end;
            (*p).value = value;
        }
    }

    #[inline]
    pub fn set_value(&mut self, value: u64) {
        // SAFETY: as in `set`.
        unsafe { (*self.node.as_ptr()).value = value };
    }
}

impl<N: SharedNodeSource> Drop for Va<N> {
    fn drop(&mut self) {
        // SAFETY: the node came from a source of type N (type invariant), which any value of N
        // takes back (SharedNodeSource); it is not used after this.
        unsafe { N::default().free_node(self.node.as_ptr()) };
    }
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

dlinks!(SlabPage, next, prev);

type PageList = DList<SlabPage>;

/// The node-cache accessors of a KVA structure that owns its [`NodeCache`] (`N =
/// NodeCache<P>`): `shrink` (wholly free node pages back to the page source; returns how many),
/// `slab_stats`, `page_source`, `page_source_mut`, through the structure's `nodes()` /
/// `nodes_mut()`.
macro_rules! node_cache_accessors {
    () => {
        pub fn shrink(&mut self) -> usize {
            self.nodes_mut().shrink()
        }

        pub fn slab_stats(&self) -> $crate::SlabStats {
            self.nodes().stats()
        }

        pub fn page_source(&self) -> &P {
            self.nodes().page_source()
        }

        pub fn page_source_mut(&mut self) -> &mut P {
            self.nodes_mut().page_source_mut()
        }
    };
}
pub(crate) use node_cache_accessors;

/// A fixed-size-object slab for tree/list nodes (Linux: `kmem_cache` `vmap_area_cachep`).
///
/// Pages with free objects sit on a `partial` list, pages with none on a `full` list. Allocation
/// takes the first object of the first partial page (O(1)); freeing pushes the object on its
/// page's freelist (O(1), the page is found by masking the object address). A page that becomes
/// wholly free moves to the tail of the partial list, so partly used pages are preferred and
/// wholly free pages form a suffix; [`NodeCache::shrink`] returns them to the page source.
///
/// Invariant: every page on `partial` or `full` is a [`SLAB_PAGE_SIZE`]-aligned page from
/// `src` not yet returned to it, with an initialised `SlabPage` header in slot 0; its
/// `freelist` chains exactly its free slots (each starting with an initialised `FreeObj`),
/// `inuse` counts the others, and it is on `full` (with `full != 0`) exactly when the freelist
/// is empty. `self.inuse` is the sum of the pages' `inuse`. Pages are only accessed through
/// raw pointers.
pub struct NodeCache<P: PageSource> {
    src: P,
    partial: PageList,
    full: PageList,
    inuse: usize,
}

// SAFETY: the cache's raw pointers lead only to pages it owns (taken from `src`, returned to it),
// so moving the cache to another thread moves that ownership with it; `P: Send` covers `src`.
unsafe impl<P: PageSource + Send> Send for NodeCache<P> {}

impl<P: PageSource> NodeCache<P> {
    pub const fn new(src: P) -> Self {
        NodeCache { src, partial: PageList::EMPTY, full: PageList::EMPTY, inuse: 0 }
    }

    /// Allocates an uninitialised node; `None` if a page was needed and the source had none.
    /// The node stays valid until it is given back to [`NodeCache::free`] or the cache is
    /// dropped.
    #[inline]
    pub(crate) fn alloc(&mut self) -> Option<*mut VaNode> {
        let mut page = self.partial.head();
        if page.is_null() {
            page = self.grow()?;
        }
        // SAFETY: `page` heads the partial list (or was just put there by `grow`), so it is a
        // live slab page of this cache with at least one free slot (invariant); its first free
        // slot `obj` holds an initialised FreeObj.
        let obj = unsafe {
            let obj = (*page).freelist;
            (*page).freelist = (*obj).next;
            (*page).inuse += 1;
            obj
        };
        // SAFETY: `page` is a live page of this cache (as above).
        if unsafe { (*page).freelist.is_null() } {
            // SAFETY: `page` is on the partial list, whose pages are all live (invariant).
            unsafe { self.partial.remove(page) };
            // SAFETY: `page` is live (as above) and now off every list.
            unsafe { (*page).full = 1 };
            // SAFETY: `page` is live and on no list; the full list's pages are live.
            unsafe { self.full.push_front(page) };
        }
        self.inuse += 1;
        Some(obj as *mut VaNode)
    }

    /// Takes a page from the source and puts it, carved into free objects, on the partial list.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) -> Option<*mut SlabPage> {
        let p = self.src.alloc_page()?;
        if p.is_null() {
            return None;
        }
        if (p as usize) & (SLAB_PAGE_SIZE - 1) != 0 {
            // SAFETY: `p` came from this source's alloc_page just now and was never used.
            unsafe { self.src.free_page(p) };
            return None;
        }
        // Freelist in address order: slots 1..=OBJS_PER_PAGE.
        let mut head: *mut FreeObj = null_mut();
        for i in (1..=OBJS_PER_PAGE).rev() {
            // SAFETY: `i * OBJ_SIZE < SLAB_PAGE_SIZE`, so the slot lies inside the page.
            let o = unsafe { p.add(i * OBJ_SIZE) } as *mut FreeObj;
            // SAFETY: `p` is a page of SLAB_PAGE_SIZE bytes, aligned to it, that the source
            // handed to us for reads and writes (PageSource contract); `o` is a 64-byte aligned
            // slot inside it.
            unsafe { (*o).next = head };
            head = o;
        }
        let page = p as *mut SlabPage;
        // SAFETY: slot 0 of the page (as above) holds the header; nothing else uses it.
        unsafe {
            page.write(SlabPage {
                next: null_mut(),
                prev: null_mut(),
                freelist: head,
                inuse: 0,
                full: 0,
            })
        };
        // SAFETY: `page` is live with an initialised header and on no list; the partial list's
        // pages are live (invariant).
        unsafe { self.partial.push_front(page) };
        Some(page)
    }

    /// Returns a node to its page's freelist.
    ///
    /// # Safety
    /// `n` was returned by [`NodeCache::alloc`] of this cache and not freed since, and it is no
    /// longer linked anywhere nor used afterwards (its memory becomes a free slot).
    #[inline]
    pub(crate) unsafe fn free(&mut self, n: *mut VaNode) {
        let off = (n as usize) & (SLAB_PAGE_SIZE - 1);
        // SAFETY: `n` is a slot of one of this cache's pages (contract), which are aligned to
        // SLAB_PAGE_SIZE, so going back `off` bytes stays in that page and reaches its start.
        let page = unsafe { (n as *mut u8).sub(off) } as *mut SlabPage;
        let obj = n as *mut FreeObj;
        // SAFETY: `page` is a live page of this cache with an initialised header (invariant);
        // `obj` is its slot handed out by `alloc`, now unused (contract), so it may hold a
        // FreeObj again.
        unsafe {
            (*obj).next = (*page).freelist;
            (*page).freelist = obj;
            (*page).inuse -= 1;
        }
        self.inuse -= 1;
        // SAFETY: `page` is live (as above).
        if unsafe { (*page).full } != 0 {
            // SAFETY: a page with `full != 0` is on the full list, whose pages are live.
            unsafe { self.full.remove(page) };
            // SAFETY: `page` is live and now on no list.
            unsafe { (*page).full = 0 };
            // SAFETY: `page` is live.
            if unsafe { (*page).inuse } == 0 {
                // SAFETY: `page` is live and on no list; the partial list's pages are live.
                unsafe { self.partial.push_back(page) };
            } else {
                // SAFETY: as above.
                unsafe { self.partial.push_front(page) };
            }
        } else {
            // SAFETY: `page` is live.
            let empty = unsafe { (*page).inuse } == 0;
            if empty && self.partial.tail() != page {
                // SAFETY: a page with `full == 0` is on the partial list, whose pages are live.
                unsafe { self.partial.remove(page) };
                // SAFETY: `page` is live and now on no list.
                unsafe { self.partial.push_back(page) };
            }
        }
    }

    /// Returns every wholly free page to the page source; returns how many. O(partial pages).
    pub fn shrink(&mut self) -> usize {
        let mut freed = 0;
        let mut p = self.partial.head();
        while !p.is_null() {
            // SAFETY: `p` is on the partial list (the walk reads `next` before unlinking), so it
            // is a live page of this cache (invariant).
            let (next, inuse) = unsafe { ((*p).next, (*p).inuse) };
            if inuse == 0 {
                // SAFETY: `p` is on the partial list, whose pages are live.
                unsafe { self.partial.remove(p) };
                // SAFETY: no object of `p` is in use and it is off every list: a page of this
                // source that the cache no longer uses goes back.
                unsafe { self.src.free_page(p as *mut u8) };
                freed += 1;
            }
            p = next;
        }
        freed
    }

    pub fn stats(&self) -> SlabStats {
        let mut empty = 0;
        let mut p = self.partial.head();
        while !p.is_null() {
            // SAFETY: `p` is on the partial list, so a live page of this cache (invariant);
            // `&self` excludes concurrent changes.
            unsafe {
                if (*p).inuse == 0 {
                    empty += 1;
                }
                p = (*p).next;
            }
        }
        SlabStats {
            pages: self.partial.len() + self.full.len(),
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
        for list in [&mut self.partial as *mut PageList, &mut self.full as *mut PageList] {
            loop {
                // SAFETY: `list` points to `self.partial` or `self.full`, fields apart from
                // `self.src`, alive for the whole loop; no reference to them exists meanwhile.
                let p = unsafe { (*list).head() };
                if p.is_null() {
                    break;
                }
                // SAFETY: `p` is on that list, whose pages are all live (invariant); `list` as
                // above.
                unsafe { (*list).remove(p) };
                // SAFETY: `p` is a page of this source (every cache page is) that is now off
                // every list; the cache is being emptied, so nothing uses it.
                unsafe { self.src.free_page(p as *mut u8) };
            }
        }
    }
}
