//! Size-segregated pools (Linux: `struct vmap_pool pool[MAX_VA_SIZE_PAGES]` of a vmap node):
//! freed areas kept per size for reuse without touching the global free tree.

use core::ptr::null_mut;

use mm_types::PAGE_SIZE;

use crate::list::{dlinks, DList};
use crate::slab::{
    node_cache_accessors, NodeCache, NodeSource, PageSource, SharedNodeSource, Va, VaNode,
};
use crate::VaRange;

/// Size-segregated pool lists per vmap node: areas of 1..=256 pages (Linux: MAX_VA_SIZE_PAGES).
pub const MAX_VA_SIZE_PAGES: usize = 256;

// A pooled area's node links through its tree pointers: left = next, right = prev.
dlinks!(VaNode, left, right);

type PoolList = DList<VaNode>;

/// One vmap node's size-segregated pools: list `i` holds freed areas of exactly `i + 1` pages,
/// most recently added first. O(1) put/get; decay is O(areas returned + 256).
///
/// Invariant: every node on the lists was allocated from `nodes` (or a value of its shared type), is live, is on exactly one
/// list and holds the area it was put with; `nr_areas`/`bytes` count them. Nodes are only
/// accessed through raw pointers, and written only under `&mut self`.
pub struct VaPool<N: NodeSource> {
    lists: [PoolList; MAX_VA_SIZE_PAGES],
    nodes: N,
    nr_areas: usize,
    bytes: u64,
}

// SAFETY: the lists' raw pointers lead only to the pool's own nodes (owned by it while on a
// list); moving the pool moves all of them together, and `N: Send` covers the source.
unsafe impl<N: NodeSource + Send> Send for VaPool<N> {}

impl<N: NodeSource> VaPool<N> {
    pub const fn new(nodes: N) -> Self {
        VaPool { lists: [PoolList::EMPTY; MAX_VA_SIZE_PAGES], nodes, nr_areas: 0, bytes: 0 }
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
        let Some(idx) = Self::index(va_end - va_start) else { return false };
        let Some(n) = self.nodes.alloc_node() else { return false };
        // SAFETY: `n` is a fresh node from our source, valid for writes and used by nothing else.
        unsafe {
            (*n).va_start = va_start;
            (*n).va_end = va_end;
        }
        // SAFETY: as above, `n` is live, ours and on no list.
        unsafe { self.push(n, idx) };
        true
    }

    /// Puts `n` (its range set, of list `idx`'s size) at the head of list `idx`.
    ///
    /// # Safety
    /// `n` is a live node of our source type, on no list and owned by nobody else.
    #[inline]
    unsafe fn push(&mut self, n: *mut VaNode, idx: usize) {
        // SAFETY: `n` is live and ours (contract).
        let bytes = unsafe {
            (*n).parent = null_mut();
            (*n).value = 0;
            (*n).va_end - (*n).va_start
        };
        // SAFETY: `n` is live and on no list; the list's nodes are live (invariant).
        unsafe { self.lists[idx].push_front(n) };
        self.nr_areas += 1;
        self.bytes += bytes;
    }

    /// Linux `node_pool_del_va` (the `node_alloc` fast path): takes the first area of exactly
    /// `size` bytes if its start is `align`-aligned; if it is not, rotates it to the tail of its
    /// list and gives up (`None`). `None` also for an empty list or a size that is not pooled.
    pub fn pool_get(&mut self, size: u64, align: u64) -> Option<VaRange> {
        let n = self.take(size, align)?;
        // SAFETY: `take` popped `n` off our lists: a live node of our source, on no list.
        let r = unsafe { VaRange { va_start: (*n).va_start, va_end: (*n).va_end } };
        // SAFETY: `n` came from our source and is not used again.
        unsafe { self.nodes.free_node(n) };
        Some(r)
    }

    /// The node `pool_get` takes, popped off its list with the counters updated (not freed).
    #[inline]
    fn take(&mut self, size: u64, align: u64) -> Option<*mut VaNode> {
        if !align.is_power_of_two() {
            return None;
        }
        let idx = Self::index(size)?;
        let list = &mut self.lists[idx];
        let n = list.head();
        if n.is_null() {
            return None;
        }
        // SAFETY: `n` heads one of our lists, so it is a live node (invariant).
        if unsafe { (*n).va_start } & (align - 1) != 0 {
            if list.len() > 1 {
                // SAFETY: the list's nodes are live (invariant); `n` is its head.
                unsafe { list.pop_front() };
                // SAFETY: `n` is live and, just popped, on no list.
                unsafe { list.push_back(n) };
            }
            return None;
        }
        // SAFETY: the list's nodes are live (invariant); this pops `n`.
        unsafe { list.pop_front() };
        // SAFETY: `n` is still live (popped, not freed).
        let bytes = unsafe { (*n).va_end - (*n).va_start };
        self.nr_areas -= 1;
        self.bytes -= bytes;
        Some(n)
    }

    /// Linux `decay_va_pool_node`: from every list, removes `len / 4` areas from the head (all
    /// of them when `full`), calling `f` on each (the caller merges them back into the free
    /// tree, Linux `reclaim_list_global`). Returns how many were removed. Lists with fewer than
    /// four areas are left alone by a partial decay, as in Linux.
    pub fn decay(&mut self, full: bool, mut f: impl FnMut(VaRange)) -> usize {
        self.decay_nodes(full, |nodes, n| {
            // SAFETY: `decay_nodes` hands over a node popped off our lists: live, on no list.
            let r = unsafe { VaRange { va_start: (*n).va_start, va_end: (*n).va_end } };
            // SAFETY: it came from our source and is not used again.
            unsafe { nodes.free_node(n) };
            f(r);
        })
    }

    /// The decay of [`VaPool::decay`], handing each node (popped, counted out, not freed) to
    /// `f` with the pool's source.
    fn decay_nodes(&mut self, full: bool, mut f: impl FnMut(&mut N, *mut VaNode)) -> usize {
        let mut total = 0;
        for i in 0..MAX_VA_SIZE_PAGES {
            let len = self.lists[i].len();
            if len == 0 {
                continue;
            }
            let n_decay = if full { len } else { len >> 2 };
            for _ in 0..n_decay {
                // SAFETY: the list's nodes are live (invariant); it has at least `n_decay`
                // nodes, so `n` is non-null.
                let n = unsafe { self.lists[i].pop_front() };
                // SAFETY: `n` is a live node (just popped).
                let bytes = unsafe { (*n).va_end - (*n).va_start };
                self.nr_areas -= 1;
                self.bytes -= bytes;
                total += 1;
                f(&mut self.nodes, n);
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
        Self::index(size).map_or(0, |i| self.lists[i].len())
    }

    pub fn is_empty(&self) -> bool {
        self.nr_areas == 0
    }

    pub fn nodes(&self) -> &N {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut N {
        &mut self.nodes
    }

    /// Debug check: list links, sizes per list, counters. O(areas).
    pub fn check(&self) -> Result<(), &'static str> {
        let (mut areas, mut bytes) = (0usize, 0u64);
        for (i, l) in self.lists.iter().enumerate() {
            let mut n = l.head();
            let mut prev: *mut VaNode = null_mut();
            let mut len = 0;
            while !n.is_null() {
                // SAFETY: `n` is the head of one of our lists or the `next` (left) link of one
                // of its nodes, non-null: a live node of our cache (invariant); `&self` rules
                // out changes.
                let node = unsafe { &*n };
                let (back, start, end, next) = (node.right, node.va_start, node.va_end, node.left);
                if back != prev {
                    return Err("pool list prev link wrong");
                }
                if end - start != (i as u64 + 1) * PAGE_SIZE as u64 {
                    return Err("area in the wrong pool list");
                }
                bytes += end - start;
                len += 1;
                prev = n;
                n = next;
            }
            if prev != l.tail() || len != l.len() {
                return Err("pool list tail or length wrong");
            }
            areas += len;
        }
        if areas != self.nr_areas || bytes != self.bytes {
            return Err("pool counters wrong");
        }
        if self.nodes.objects_in_use().is_some_and(|n| n != areas) {
            return Err("slab objects in use != pooled areas");
        }
        Ok(())
    }
}

impl<N: NodeSource> Drop for VaPool<N> {
    /// Gives every pooled node back to the source (a shared source outlives the pool).
    fn drop(&mut self) {
        self.decay(true, |_| {});
    }
}

impl<P: PageSource> VaPool<NodeCache<P>> {
    node_cache_accessors!();
}

/// Moving areas in and out with their nodes (Linux's pools list the `struct vmap_area`s
/// themselves).
impl<N: SharedNodeSource> VaPool<N> {
    /// [`VaPool::pool_put`] of an area with its node; handed back when its size is not pooled.
    pub fn put_va(&mut self, va: Va<N>) -> Result<(), Va<N>> {
        let (start, end) = (va.va_start(), va.va_end());
        if start >= end {
            return Err(va);
        }
        let Some(idx) = Self::index(end - start) else { return Err(va) };
        // SAFETY: the node was a Va: live, detached, of our shared source type, ours now.
        unsafe { self.push(va.into_raw(), idx) };
        Ok(())
    }

    /// [`VaPool::pool_get`] handing over the area's node.
    pub fn get_va(&mut self, size: u64, align: u64) -> Option<Va<N>> {
        let n = self.take(size, align)?;
        // SAFETY: `take` popped `n` off our lists: live, on no list, ours alone.
        Some(unsafe { Va::from_raw(n) })
    }

    /// [`VaPool::decay`] handing over the areas' nodes.
    pub fn decay_va(&mut self, full: bool, mut f: impl FnMut(Va<N>)) -> usize {
        self.decay_nodes(full, |_, n| {
            // SAFETY: `decay_nodes` hands over nodes popped off our lists: live, ours alone.
            f(unsafe { Va::from_raw(n) })
        })
    }
}
