//! The busy (and lazy) tree of a vmap node (Linux: `vn->busy` / `vn->lazy`, rbtree + list):
//! areas keyed by address with a user value.
//!
//! Node-level work is done by the tree ([`RawTree`]); the `unsafe` here is only handing the
//! tree back a node it just returned from a lookup.

use crate::slab::{
    node_cache_accessors, NodeCache, NodeSource, PageSource, SharedNodeSource, Va, VaNode,
};
use crate::tree::{InOrder, RawTree};
use crate::{BusyArea, KvaError};

/// A non-augmented balanced tree of disjoint areas keyed by `va_start`, each with a user value
/// (Linux: a vmap node's `busy` rbtree + list; the same shape serves as its `lazy` tree).
/// All operations are O(log n) except iteration/drain (O(n)).
pub struct BusyTree<N: NodeSource> {
    tree: RawTree<N, false>,
    nr: usize,
    bytes: u64,
}

impl<N: NodeSource> BusyTree<N> {
    /// An empty tree taking its nodes from `nodes` (a [`NodeCache`] of its own, or a shared
    /// source).
    pub const fn new(nodes: N) -> Self {
        BusyTree { tree: RawTree::new(nodes), nr: 0, bytes: 0 }
    }

    pub fn nodes(&self) -> &N {
        self.tree.nodes()
    }

    pub fn nodes_mut(&mut self) -> &mut N {
        self.tree.nodes_mut()
    }

    /// Linux `insert_vmap_area`: `Overlap` if it overlaps an area already in the tree,
    /// `Invalid` if empty, `NoMemory` if no node.
    pub fn insert(&mut self, va_start: u64, va_end: u64, value: u64) -> Result<(), KvaError> {
        if va_start >= va_end {
            return Err(KvaError::Invalid);
        }
        let (parent, as_left, _, _) = self.tree.find_links(va_start, va_end)?;
        let n = self.tree.alloc_node(va_start, va_end, value).ok_or(KvaError::NoMemory)?;
        // SAFETY: `n` is a fresh unlinked node of this tree; `(parent, as_left)` came from
        // `find_links` for its range and the tree has not changed since.
        unsafe { self.tree.link(n, parent, as_left) };
        self.nr += 1;
        self.bytes += va_end - va_start;
        Ok(())
    }

    /// The area containing `addr` (Linux `__find_vmap_area`).
    pub fn find(&self, addr: u64) -> Option<BusyArea> {
        let n = self.tree.find_containing(addr);
        if n.is_null() {
            None
        } else {
            // SAFETY: `n` is a node the lookup just returned from this tree.
            Some(unsafe { self.tree.area(n) })
        }
    }

    /// Replaces the value of the area containing `addr`; false if none.
    pub fn set_value(&mut self, addr: u64, value: u64) -> bool {
        let n = self.tree.find_containing(addr);
        if n.is_null() {
            return false;
        }
        // SAFETY: `n` is a node the lookup just returned from this tree.
        unsafe { self.tree.set_value(n, value) };
        true
    }

    /// Removes the area starting exactly at `va_start`.
    pub fn remove(&mut self, va_start: u64) -> Option<BusyArea> {
        let n = self.tree.find_start(va_start);
        // SAFETY: `n` is null or a node the lookup just returned from this tree.
        unsafe { self.unlink_free(n) }
    }

    /// Removes the area containing `addr` (Linux `find_unlink_vmap_area` for one node).
    pub fn remove_containing(&mut self, addr: u64) -> Option<BusyArea> {
        let n = self.tree.find_containing(addr);
        // SAFETY: `n` is null or a node the lookup just returned from this tree.
        unsafe { self.unlink_free(n) }
    }

    /// Removes and returns the lowest area.
    pub fn pop_first(&mut self) -> Option<BusyArea> {
        let n = self.tree.first();
        // SAFETY: `n` is null or this tree's first node.
        unsafe { self.unlink_free(n) }
    }

    /// # Safety
    /// `n` is null or a node of `self.tree`; it must not be used afterwards.
    unsafe fn unlink_free(&mut self, n: *mut VaNode) -> Option<BusyArea> {
        if n.is_null() {
            return None;
        }
        // SAFETY: `n` is a node of this tree (contract).
        let a = unsafe { self.tree.area(n) };
        // SAFETY: `n` is a node of this tree, not used after this (contract).
        unsafe { self.tree.remove(n) };
        self.nr -= 1;
        self.bytes -= a.va_end - a.va_start;
        Some(a)
    }

    /// The lowest area (e.g. the start of a purge span).
    pub fn first(&self) -> Option<BusyArea> {
        let n = self.tree.first();
        if n.is_null() {
            None
        } else {
            // SAFETY: `n` is this tree's first node.
            Some(unsafe { self.tree.area(n) })
        }
    }

    /// The highest area (e.g. the end of a purge span).
    pub fn last(&self) -> Option<BusyArea> {
        let n = self.tree.last();
        if n.is_null() {
            None
        } else {
            // SAFETY: `n` is this tree's last node.
            Some(unsafe { self.tree.area(n) })
        }
    }

    /// The areas in address order.
    pub fn iter(&self) -> BusyIter<'_> {
        BusyIter { inner: self.tree.iter() }
    }

    /// Removes every area, calling `f` on each in address order; returns how many. O(n): the
    /// tree is dismantled leftmost-first without rebalancing.
    pub fn drain(&mut self, f: impl FnMut(BusyArea)) -> usize {
        let count = self.tree.drain(f);
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

    /// Debug check of the tree invariants and counters. O(n).
    pub fn check(&self) -> Result<(), &'static str> {
        let (count, bytes) = self.tree.check()?;
        if count != self.nr || bytes != self.bytes {
            return Err("busy tree counters wrong");
        }
        if self.tree.nodes_in_use().is_some_and(|n| n != count) {
            return Err("slab objects in use != tree nodes");
        }
        Ok(())
    }
}

impl<P: PageSource> BusyTree<NodeCache<P>> {
    node_cache_accessors!();
}

/// Moving areas in and out with their nodes (Linux: `insert_vmap_area` / `unlink_va` of a
/// `struct vmap_area` that goes on to another tree or list).
impl<N: SharedNodeSource> BusyTree<N> {
    /// Links `va` (its range and value as set): `Overlap` if it overlaps an area already in
    /// the tree, `Invalid` if empty; the area is handed back with the error.
    // Inline: on the path of every vmalloc/vfree (its call and return were two TB
    // lookups per loop under TCG; README "Fifth round").
    #[inline(always)]
    pub fn insert_va(&mut self, va: Va<N>) -> Result<(), (Va<N>, KvaError)> {
        let (start, end) = (va.va_start(), va.va_end());
        if start >= end {
            return Err((va, KvaError::Invalid));
        }
        let (parent, as_left) = match self.tree.find_links(start, end) {
            Ok((p, l, _, _)) => (p, l),
            Err(e) => return Err((va, e)),
        };
        // SAFETY: the node is live and detached (Va), of this tree's shared source type;
        // `(parent, as_left)` came from `find_links` for its range and the tree has not
        // changed since.
        unsafe { self.tree.link(va.into_raw(), parent, as_left) };
        self.nr += 1;
        self.bytes += end - start;
        Ok(())
    }

    /// Unlinks the area starting exactly at `va_start` and hands it over.
    // Inline: on the path of every vmalloc/vfree (its call and return were two TB
    // lookups per loop under TCG; README "Fifth round").
    #[inline(always)]
    pub fn remove_va(&mut self, va_start: u64) -> Option<Va<N>> {
        let n = self.tree.find_start(va_start);
        if n.is_null() {
            return None;
        }
        // SAFETY: `n` is a node the lookup just returned from this tree.
        unsafe { self.tree.unlink(n) };
        // SAFETY: `n` is unlinked, live, from our shared source, and nothing else holds it.
        let va = unsafe { Va::from_raw(n) };
        self.nr -= 1;
        self.bytes -= va.va_end() - va.va_start();
        Some(va)
    }

    /// Removes every area, handing each to `f` in address order; returns how many. O(n).
    pub fn drain_va(&mut self, mut f: impl FnMut(Va<N>)) -> usize {
        let count = self.tree.dismantle(|_, n| {
            // SAFETY: `dismantle` hands over unlinked live nodes of our shared source.
            f(unsafe { Va::from_raw(n) })
        });
        self.nr = 0;
        self.bytes = 0;
        count
    }
}

/// In-order iterator over busy areas.
pub struct BusyIter<'a> {
    inner: InOrder<'a>,
}

impl Iterator for BusyIter<'_> {
    type Item = BusyArea;
    fn next(&mut self) -> Option<BusyArea> {
        self.inner.next()
    }
}
