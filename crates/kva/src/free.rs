//! The free-space allocator: the global free vmap-area tree (Linux: `free_vmap_area_root` +
//! `free_vmap_area_list` under `free_vmap_area_lock`), its lowest-first and top-down searches
//! carved by `va_clip`, and the merging free.
//!
//! Node-level work is done by the tree ([`RawTree`]); the `unsafe` here is only handing the
//! tree back a node it just returned from a lookup.

use core::ptr::null_mut;

use mm_types::PAGE_SIZE;

use crate::fit::{align_up, classify_va_fit_type, FitType};
use crate::slab::{
    node_cache_accessors, NodeCache, NodeSource, PageSource, SharedNodeSource, Va, VaNode,
};
use crate::tree::{InOrder, RawTree};
use crate::{KvaError, VaRange};

/// The global free vmap-area tree (Linux: `free_vmap_area_root`/`_list` under
/// `free_vmap_area_lock`).
pub struct KvaAllocator<N: NodeSource> {
    tree: RawTree<N, true>,
    span_start: u64,
    span_end: u64,
    free_bytes: u64,
    nr_free: usize,
}

impl<N: NodeSource> KvaAllocator<N> {
    /// An allocator managing nothing yet (for statics); call [`KvaAllocator::init`].
    pub const fn empty(nodes: N) -> Self {
        KvaAllocator {
            tree: RawTree::new(nodes),
            span_start: 0,
            span_end: 0,
            free_bytes: 0,
            nr_free: 0,
        }
    }

    /// Makes `[vstart, vend)` one free block (Linux `vmap_init_free_space`, with nothing busy).
    /// `Invalid` if already initialised or the range is empty; `NoMemory` if no node page.
    pub fn init(&mut self, vstart: u64, vend: u64) -> Result<(), KvaError> {
        if vstart >= vend || self.span_start != self.span_end || !self.tree.is_empty() {
            return Err(KvaError::Invalid);
        }
        let n = self.tree.alloc_node(vstart, vend, 0).ok_or(KvaError::NoMemory)?;
        // SAFETY: `n` is a fresh node of this tree and the tree is empty, so it becomes the root.
        unsafe { self.tree.link(n, null_mut(), false) };
        self.span_start = vstart;
        self.span_end = vend;
        self.free_bytes = vend - vstart;
        self.nr_free = 1;
        Ok(())
    }

    /// An allocator whose free tree is the single block `[vstart, vend)`.
    pub fn new(vstart: u64, vend: u64, nodes: N) -> Result<Self, KvaError> {
        let mut a = Self::empty(nodes);
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
        let va = self.tree.find_vmap_lowest_match(size, align, vstart, length);
        if va.is_null() {
            return Err(KvaError::NoSpace);
        }
        // va_alloc
        // SAFETY: `va` is a node the search just returned from this tree, unchanged since.
        let va_start = unsafe { self.tree.area(va) }.va_start;
        let base = if va_start > vstart { va_start } else { vstart };
        let nva = align_up(base, align).ok_or(KvaError::NoSpace)?;
        match nva.checked_add(size) {
            Some(end) if end <= vend => {}
            _ => return Err(KvaError::NoSpace),
        }
        // SAFETY: as above, `va` is a node of this tree.
        unsafe { self.va_clip(va, nva, size) }?;
        Ok(nva)
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
        let (va, nva) = self
            .tree
            .find_vmap_highest_match(size, align, vstart, vend)
            .ok_or(KvaError::NoSpace)?;
        // SAFETY: `va` is a node the search just returned from this tree, unchanged since.
        unsafe { self.va_clip(va, nva, size) }?;
        Ok(nva)
    }

    /// Takes the fixed range `[va_start, va_end)` out of the free space (Linux: the carving of
    /// `vmap_init_free_space` around early busy areas). `NoSpace` unless it lies entirely in
    /// one free block.
    pub fn reserve(&mut self, va_start: u64, va_end: u64) -> Result<(), KvaError> {
        if va_start >= va_end || va_start < self.span_start || va_end > self.span_end {
            return Err(KvaError::Invalid);
        }
        let n = self.tree.find_containing(va_start);
        // SAFETY: a non-null `n` is a node the lookup just returned from this tree.
        if n.is_null() || va_end > unsafe { self.tree.area(n) }.va_end {
            return Err(KvaError::NoSpace);
        }
        // SAFETY: as above, `n` is a node of this tree, unchanged since the lookup.
        unsafe { self.va_clip(n, va_start, va_end - va_start) }
    }

    /// Linux `va_clip`: carves `[nva, nva + size)` out of the free block `va`.
    ///
    /// # Safety
    /// `va` is a node of `self.tree`.
    unsafe fn va_clip(&mut self, va: *mut VaNode, nva: u64, size: u64) -> Result<(), KvaError> {
        // SAFETY: `va` is a node of this tree (contract).
        let block = unsafe { self.tree.area(va) };
        match classify_va_fit_type(block.va_start, block.va_end, nva, size) {
            FitType::Nothing => return Err(KvaError::Invalid),
            FitType::Full => {
                //  |      NVA      |
                //  |---------------|
                // SAFETY: `va` is a node of this tree (contract), not used after this.
                unsafe { self.tree.remove(va) };
                self.nr_free -= 1;
            }
            FitType::LeftEdge => {
                //  |  NVA  |   R   |
                // SAFETY: `va` is a node of this tree; its start only grows within its block.
                unsafe { self.tree.set_start(va, nva + size) };
            }
            FitType::RightEdge => {
                //  |   L   |  NVA  |
                // SAFETY: `va` is a node of this tree; its end only shrinks within its block.
                unsafe { self.tree.set_end(va, nva) };
            }
            FitType::NoEdge => {
                //  | L |  NVA  | R |
                // The second object first, so a failure leaves the tree untouched (Linux takes
                // the per-CPU preloaded ne_fit_preload_node, else a GFP_NOWAIT allocation).
                // SAFETY: `va` is a node of this tree (contract).
                let lva = unsafe { self.tree.alloc_split_low(va, nva) };
                let lva = lva.ok_or(KvaError::NoMemory)?;
                // SAFETY: `va` is a node of this tree (allocating `lva` did not change the
                // tree); its start only grows within its block.
                unsafe { self.tree.set_start(va, nva + size) };
                // SAFETY: `lva` is a fresh unlinked node of this tree holding the part of the
                // block below `va`'s new start and above `va`'s predecessor.
                unsafe { self.tree.link_before(lva, va) };
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
        // SAFETY: no node is passed.
        unsafe { self.merge_or_add(va_start, va_end, null_mut()) }
    }

    /// [`KvaAllocator::free`] with `spare` as the node when the range merges with neither
    /// neighbour (Linux: the freed `struct vmap_area` itself is linked); a merge frees it.
    ///
    /// # Safety
    /// `spare` is null or a live node from this allocator's source type, linked nowhere and
    /// owned by the caller. On `Ok` it is consumed (linked or freed); on `Err` it is untouched.
    unsafe fn merge_or_add(
        &mut self,
        va_start: u64,
        va_end: u64,
        spare: *mut VaNode,
    ) -> Result<(), KvaError> {
        if va_start >= va_end || va_start < self.span_start || va_end > self.span_end {
            return Err(KvaError::Invalid);
        }
        let (parent, as_left, prev, next) = self.tree.find_links(va_start, va_end)?;
        // SAFETY: a non-null `next`/`prev` is a node `find_links` just returned from this tree.
        let merge_next = !next.is_null() && unsafe { self.tree.area(next) }.va_start == va_end;
        // SAFETY: as above.
        let merge_prev = !prev.is_null() && unsafe { self.tree.area(prev) }.va_end == va_start;
        if !(merge_prev || merge_next) {
            let n = if spare.is_null() {
                self.tree.alloc_node(va_start, va_end, 0).ok_or(KvaError::NoMemory)?
            } else {
                // SAFETY: `spare` is a live node owned by the caller (contract), now ours.
                unsafe {
                    (*spare).va_start = va_start;
                    (*spare).va_end = va_end;
                    (*spare).value = 0;
                }
                spare
            };
            // SAFETY: `n` is a live unlinked node of this tree's source; `(parent, as_left)`
            // came from `find_links` for its range and the tree has not changed since.
            unsafe { self.tree.link(n, parent, as_left) };
            self.nr_free += 1;
            self.free_bytes += va_end - va_start;
            return Ok(());
        }
        match (merge_prev, merge_next) {
            (true, true) => {
                // Unlink "next" first, then grow "prev" (Linux does the same so the
                // augmented values stay consistent across the erase's rotations).
                // SAFETY: `next` is a node of this tree (as above).
                let end = unsafe { self.tree.area(next) }.va_end;
                // SAFETY: `next` is a node of this tree, not used after this.
                unsafe { self.tree.remove(next) };
                // SAFETY: `prev` is still a node of this tree (removing `next` freed only
                // `next`); it grows over the freed range and `next`'s, which were adjacent.
                unsafe { self.tree.set_end(prev, end) };
                self.nr_free -= 1;
            }
            (false, true) => {
                // SAFETY: `next` is a node of this tree; it grows down over the adjacent range.
                unsafe { self.tree.set_start(next, va_start) };
            }
            _ => {
                // SAFETY: `prev` is a node of this tree; it grows up over the adjacent range.
                unsafe { self.tree.set_end(prev, va_end) };
            }
        }
        if !spare.is_null() {
            // SAFETY: `spare` is a live node of this source type owned by the caller
            // (contract), unused by the merge: it goes back (Linux: kmem_cache_free of the va).
            unsafe { self.tree.nodes_mut().free_node(spare) };
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
        self.tree.largest()
    }

    /// The span given to `init`/`new`.
    pub fn span(&self) -> VaRange {
        VaRange { va_start: self.span_start, va_end: self.span_end }
    }

    /// The free blocks in address order.
    pub fn iter_free(&self) -> FreeIter<'_> {
        FreeIter { inner: self.tree.iter() }
    }

    pub fn nodes(&self) -> &N {
        self.tree.nodes()
    }

    pub fn nodes_mut(&mut self) -> &mut N {
        self.tree.nodes_mut()
    }

    /// Debug check: tree invariants (order, red-black rules, subtree_max_size), no two free
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
        if self.tree.nodes_in_use().is_some_and(|n| n != count) {
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

impl<P: PageSource> KvaAllocator<NodeCache<P>> {
    node_cache_accessors!();
}

/// Freeing an area with its node (Linux `merge_or_add_vmap_area` of the `struct vmap_area`).
impl<N: SharedNodeSource> KvaAllocator<N> {
    /// [`KvaAllocator::free`] of `va`'s range, linking its node when the range merges with
    /// neither neighbour and freeing it otherwise: never needs a new node. On error the area
    /// is handed back.
    pub fn free_va(&mut self, va: Va<N>) -> Result<(), (Va<N>, KvaError)> {
        let (start, end) = (va.va_start(), va.va_end());
        let n = va.into_raw();
        // SAFETY: `n` was a Va: live, detached, of our shared source type, ours to give.
        match unsafe { self.merge_or_add(start, end, n) } {
            Ok(()) => Ok(()),
            // SAFETY: on error `n` is untouched and still ours.
            Err(e) => Err((unsafe { Va::from_raw(n) }, e)),
        }
    }
}

/// In-order iterator over free blocks.
pub struct FreeIter<'a> {
    inner: InOrder<'a>,
}

impl Iterator for FreeIter<'_> {
    type Item = VaRange;
    fn next(&mut self) -> Option<VaRange> {
        let a = self.inner.next()?;
        Some(VaRange { va_start: a.va_start, va_end: a.va_end })
    }
}
