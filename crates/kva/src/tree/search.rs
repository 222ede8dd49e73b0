//! The free tree's own operations (`RawTree<_, true>`): size changes that propagate
//! `subtree_max_size`, and the lowest-first and top-down searches over it. A child of `tree`,
//! so it works inside the tree's invariant (see [`RawTree`]).

use core::ptr::null_mut;

use super::{get_subtree_max_size, RawTree};
use crate::fit::{fits_top, is_within_this_va};
use crate::slab::{NodeSource, VaNode};

/// The free-tree (augmented) operations.
impl<N: NodeSource> RawTree<N, true> {
    /// Moves a node's start (a clip from the left or a merge) and propagates the size change.
    ///
    /// # Safety
    /// `n` is a node of this tree and `[va_start, n.va_end)` keeps the address order.
    #[inline]
    pub(crate) unsafe fn set_start(&mut self, n: *mut VaNode, va_start: u64) {
        // SAFETY: `n` is a node of this tree (contract); `&mut self` makes the write exclusive.
        unsafe { (*n).va_start = va_start };
        // SAFETY: `n` is a tree node.
        unsafe { self.propagate_from(n) };
    }

    /// Moves a node's end (a clip from the right or a merge) and propagates the size change.
    ///
    /// # Safety
    /// `n` is a node of this tree and `[n.va_start, va_end)` keeps the address order.
    #[inline]
    pub(crate) unsafe fn set_end(&mut self, n: *mut VaNode, va_end: u64) {
        // SAFETY: `n` is a node of this tree (contract); `&mut self` makes the write exclusive.
        unsafe { (*n).va_end = va_end };
        // SAFETY: `n` is a tree node.
        unsafe { self.propagate_from(n) };
    }

    /// The largest block (the root's subtree_max_size).
    #[inline]
    pub(crate) fn largest(&self) -> u64 {
        // SAFETY: the root is null or a tree node (invariant).
        unsafe { get_subtree_max_size(self.root) }
    }

    /// Linux `find_vmap_lowest_match` (see `KvaAllocator::alloc`), or null.
    pub(crate) fn find_vmap_lowest_match(
        &self,
        size: u64,
        align: u64,
        mut vstart: u64,
        length: u64,
    ) -> *mut VaNode {
        let mut node = self.root;
        // SAFETY: `node` is only ever the root, a child or the parent of a tree node, and is
        // checked non-null before each use, so every node read is a tree node (invariant);
        // `&self` rules out changes.
        unsafe {
            while !node.is_null() {
                if get_subtree_max_size((*node).left) >= length && vstart < (*node).va_start {
                    node = (*node).left;
                } else {
                    if is_within_this_va((*node).va_start, (*node).va_end, size, align, vstart)
                        .is_some()
                    {
                        return node;
                    }
                    // No point going right unless the right subtree has a block of the length.
                    if get_subtree_max_size((*node).right) >= length {
                        node = (*node).right;
                        continue;
                    }
                    // Roll back to the first ancestor that fits or whose right subtree may
                    // (needed because of the vstart restriction or the alignment overhead).
                    loop {
                        node = (*node).parent;
                        if node.is_null() {
                            return null_mut();
                        }
                        if is_within_this_va((*node).va_start, (*node).va_end, size, align, vstart)
                            .is_some()
                        {
                            return node;
                        }
                        if get_subtree_max_size((*node).right) >= length
                            && vstart <= (*node).va_start
                        {
                            // Past this node so its (already searched) left side is not
                            // re-entered.
                            vstart = (*node).va_start + 1;
                            node = (*node).right;
                            break;
                        }
                    }
                }
            }
        }
        null_mut()
    }

    /// The top-down search of `KvaAllocator::alloc_top_down`: the node and the start found.
    pub(crate) fn find_vmap_highest_match(
        &self,
        size: u64,
        align: u64,
        vstart: u64,
        mut vend: u64,
    ) -> Option<(*mut VaNode, u64)> {
        let mut node = self.root;
        // SAFETY: as in `find_vmap_lowest_match`: only tree nodes checked non-null are read.
        unsafe {
            while !node.is_null() {
                if get_subtree_max_size((*node).right) >= size && vend > (*node).va_end {
                    node = (*node).right;
                } else {
                    if let Some(nva) =
                        fits_top((*node).va_start, (*node).va_end, size, align, vstart, vend)
                    {
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
                        if let Some(nva) =
                            fits_top((*node).va_start, (*node).va_end, size, align, vstart, vend)
                        {
                            return Some((node, nva));
                        }
                        if get_subtree_max_size((*node).left) >= size
                            && vstart < (*node).va_start
                            && vend >= (*node).va_end
                        {
                            // Every block of the left subtree ends at or below va_start, so
                            // this only stops the search from re-entering the subtree it came
                            // from.
                            vend = (*node).va_end - 1;
                            node = (*node).left;
                            break;
                        }
                    }
                }
            }
        }
        None
    }
}
