//! The red-black tree of disjoint ranges, optionally augmented with `subtree_max_size` (Linux:
//! the augmented rbtree of free vmap areas, the plain rbtrees of busy and lazy ones). The
//! balancing is lib/rbtree.c's: `__rb_insert`, `__rb_erase_augmented` and `____rb_erase_color`
//! with the augment callbacks of mm/vmalloc.c's `free_vmap_area_rb_augment_cb` (propagate,
//! copy, rotate), case for case.
//!
//! A [`RawTree`] owns the [`NodeCache`] its nodes come from, so the whole life of a tree node
//! (allocated, linked, unlinked, freed) happens in this module. Nodes are handed out to the
//! structures above only as raw pointers: lookups are safe, and the operations that take a
//! node back (`link`, `remove`, `area`, `set_start`...) are `unsafe fn`s whose contract is
//! that the pointer is a node of this tree, i.e. it came from a lookup (or `alloc_node`) of
//! the same tree and has not been removed since. The free tree's size changes and searches are
//! in the child module `search`.
//!
//! "Tree node" in the contracts below: a node reachable from the root of a [`RawTree`], which
//! by the tree's invariant is live. Nodes are only accessed through raw pointers, never
//! references, and written only under `&mut RawTree`.

use core::marker::PhantomData;
use core::ptr::null_mut;

use crate::slab::{NodeSource, VaNode};
use crate::{BusyArea, KvaError};

mod rb;
mod search;

/// # Safety
/// `n` is a tree node.
#[inline]
unsafe fn va_size(n: *const VaNode) -> u64 {
    // SAFETY: `n` is a live tree node (contract).
    unsafe { (*n).va_end - (*n).va_start }
}

const RED: u32 = 0;
const BLACK: u32 = 1;

/// A null link counts as black (a leaf).
///
/// # Safety
/// `n` is null or a tree node.
#[inline]
unsafe fn is_red(n: *const VaNode) -> bool {
    // SAFETY: non-null, so a live tree node (contract).
    !n.is_null() && unsafe { (*n).color } == RED
}

/// Linux `get_subtree_max_size`.
///
/// # Safety
/// `n` is null or a tree node.
#[inline]
unsafe fn get_subtree_max_size(n: *const VaNode) -> u64 {
    if n.is_null() {
        0
    } else {
        // SAFETY: non-null, so a live tree node (contract).
        unsafe { (*n).subtree_max_size }
    }
}

/// Linux `compute_subtree_max_size`.
///
/// # Safety
/// `n` is a tree node.
#[inline]
unsafe fn compute_subtree_max_size(n: *const VaNode) -> u64 {
    // SAFETY: `n` is a tree node (contract); its children are null or tree nodes.
    unsafe { va_size(n).max(get_subtree_max_size((*n).left)).max(get_subtree_max_size((*n).right)) }
}

/// # Safety
/// `n` is null or a tree node.
unsafe fn leftmost(mut n: *mut VaNode) -> *mut VaNode {
    if n.is_null() {
        return n;
    }
    // SAFETY: `n` starts as a tree node (contract) and only moves to non-null left children,
    // which are tree nodes too.
    unsafe {
        while !(*n).left.is_null() {
            n = (*n).left;
        }
    }
    n
}

/// # Safety
/// `n` is null or a tree node.
unsafe fn rightmost(mut n: *mut VaNode) -> *mut VaNode {
    if n.is_null() {
        return n;
    }
    // SAFETY: `n` starts as a tree node (contract) and only moves to non-null right children,
    // which are tree nodes too.
    unsafe {
        while !(*n).right.is_null() {
            n = (*n).right;
        }
    }
    n
}

/// In-order successor.
///
/// # Safety
/// `n` is a tree node.
unsafe fn successor(mut n: *mut VaNode) -> *mut VaNode {
    // SAFETY: `n` is a tree node (contract), so its right child is null or a tree node.
    let r = unsafe { (*n).right };
    if !r.is_null() {
        // SAFETY: as just said, `r` is a tree node.
        return unsafe { leftmost(r) };
    }
    // SAFETY: `n` and each non-null parent reached from it are tree nodes.
    unsafe {
        let mut p = (*n).parent;
        while !p.is_null() && (*p).right == n {
            n = p;
            p = (*p).parent;
        }
        p
    }
}

/// The area a node holds.
///
/// # Safety
/// `n` is a tree node.
#[inline]
unsafe fn area(n: *const VaNode) -> BusyArea {
    // SAFETY: `n` is a live tree node (contract).
    unsafe { BusyArea { va_start: (*n).va_start, va_end: (*n).va_end, value: (*n).value } }
}

/// A red-black tree of disjoint ranges ordered by address, with the source its nodes come from.
/// `AUG` selects the `subtree_max_size` augmentation (free tree) or none (busy/lazy trees).
///
/// Invariant: `root` is null or the root of a binary tree whose nodes were all allocated from
/// `nodes` (or, for a shared source, from any value of its type) and not freed, each reachable once, with `parent` links matching (null at the root)
/// and ranges disjoint and in address order. Nodes leave the tree before they are freed
/// (`remove`, `drain`). Outside the methods the red-black rules (black root, no red node with a
/// red child, the same number of black nodes on every root-to-leaf path) and (with `AUG`)
/// `subtree_max_size` hold too. Memory safety rests on the links alone: every pointer the
/// rebalancing follows is checked non-null or non-null by those rules, and a wrong colour or size
/// never makes the code follow a null link (the rules only choose between cases).
pub(crate) struct RawTree<N: NodeSource, const AUG: bool> {
    root: *mut VaNode,
    nodes: N,
}

// SAFETY: the tree's raw pointers lead only to its own nodes (from `nodes`, owned by the tree
// while linked); moving the tree moves all of them together, and `N: Send` covers the source.
unsafe impl<N: NodeSource + Send, const AUG: bool> Send for RawTree<N, AUG> {}

impl<N: NodeSource, const AUG: bool> RawTree<N, AUG> {
    pub(crate) const fn new(nodes: N) -> Self {
        RawTree { root: null_mut(), nodes }
    }

    /// No node in the tree.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_null()
    }

    #[inline]
    pub(crate) fn nodes(&self) -> &N {
        &self.nodes
    }

    #[inline]
    pub(crate) fn nodes_mut(&mut self) -> &mut N {
        &mut self.nodes
    }

    /// Nodes allocated from the tree's source (linked or not), when the source is its own.
    #[inline]
    pub(crate) fn nodes_in_use(&self) -> Option<usize> {
        self.nodes.objects_in_use()
    }

    /// A new node from the tree's source holding `[va_start, va_end)` and `value`, not linked
    /// yet (pass it to [`RawTree::link`] or [`RawTree::link_before`]); `None` if the source
    /// needed a page and the page source had none.
    #[inline]
    pub(crate) fn alloc_node(
        &mut self,
        va_start: u64,
        va_end: u64,
        value: u64,
    ) -> Option<*mut VaNode> {
        let n = self.nodes.alloc_node()?;
        // SAFETY: `n` is a fresh node from our source, valid for writes and used by nothing
        // else.
        unsafe {
            (*n).va_start = va_start;
            (*n).va_end = va_end;
            (*n).value = value;
        }
        Some(n)
    }

    /// The lower part of splitting `at` at `va_end` (Linux NE_FIT_TYPE: `lva->va_start =
    /// va->va_start`): a new node holding `[at.va_start, va_end)` and value 0, not linked yet
    /// (pass it to [`RawTree::link_before`]); `None` if no node. `at`'s start is read after the
    /// allocation, as Linux does.
    ///
    /// # Safety
    /// `at` is a node of this tree.
    #[inline]
    pub(crate) unsafe fn alloc_split_low(
        &mut self,
        at: *const VaNode,
        va_end: u64,
    ) -> Option<*mut VaNode> {
        let n = self.nodes.alloc_node()?;
        // SAFETY: `n` is a fresh node from our source, valid for writes and used by nothing else;
        // `at` is a live node of this tree (contract), distinct from the fresh `n`.
        unsafe {
            (*n).va_start = (*at).va_start;
            (*n).va_end = va_end;
            (*n).value = 0;
        }
        Some(n)
    }

    /// The area of a node.
    ///
    /// # Safety
    /// `n` is a node of this tree.
    #[inline]
    pub(crate) unsafe fn area(&self, n: *const VaNode) -> BusyArea {
        // SAFETY: `n` is a node of this tree (contract).
        unsafe { area(n) }
    }

    /// Replaces a node's value (busy trees: the user value).
    ///
    /// # Safety
    /// `n` is a node of this tree.
    #[inline]
    pub(crate) unsafe fn set_value(&mut self, n: *mut VaNode, value: u64) {
        // SAFETY: `n` is a live node of this tree (contract); `&mut self` makes the write
        // exclusive.
        unsafe { (*n).value = value };
    }

    /// # Safety
    /// `parent` is null (then `old` is the root) or a tree node with child `old`; `new` is
    /// null or a node.
    #[inline]
    unsafe fn replace_child(&mut self, parent: *mut VaNode, old: *mut VaNode, new: *mut VaNode) {
        if parent.is_null() {
            self.root = new;
        } else {
            // SAFETY: `parent` is a non-null tree node (contract).
            unsafe {
                if (*parent).left == old {
                    (*parent).left = new;
                } else {
                    (*parent).right = new;
                }
            }
        }
    }

    /// Linux `augment_tree_propagate_from`: after `n`'s size changed (shrunk by a clip, grown by
    /// a merge), recompute subtree_max_size upwards until a node's value does not change.
    ///
    /// # Safety
    /// `n` is null or a tree node.
    #[inline]
    unsafe fn propagate_from(&mut self, n: *mut VaNode) {
        // SAFETY: `n` is null or a tree node (contract), its ancestors tree nodes up to the root.
        unsafe { Self::aug_propagate(n, null_mut()) }
    }

    /// Links a fresh node (range set) as the `left`/right child of `parent` (null: as root) and
    /// rebalances (Linux `link_va` + `rb_insert_augmented`, then, augmented,
    /// `augment_tree_propagate_from` from the new node with its maximum zeroed, as Linux's
    /// `insert_vmap_area_augment` does).
    ///
    /// # Safety
    /// `node` came from this tree's source ([`RawTree::alloc_node`], or a node of a shared
    /// source moved from another structure), is live and is not linked. Either `parent`
    /// is null and the tree is empty, or `(parent, as_left)` is what [`RawTree::find_links`]
    /// returned for `node`'s range with no change to the tree since.
    // Inline: on the path of every vmalloc/vfree (its call and return were two TB
    // lookups per loop under TCG; README "Fifth round").
    #[inline(always)]
    pub(crate) unsafe fn link(&mut self, node: *mut VaNode, parent: *mut VaNode, as_left: bool) {
        // SAFETY: `node` is a live, unlinked node (contract): its links are ours.
        unsafe {
            (*node).left = null_mut();
            (*node).right = null_mut();
            (*node).parent = parent;
            (*node).color = RED;
            (*node).subtree_max_size = if AUG { va_size(node) } else { 0 };
        }
        if parent.is_null() {
            self.root = node;
        } else {
            // SAFETY: `parent` is a tree node whose `as_left` child slot is empty and where the
            // range keeps the address order (contract: from `find_links`).
            unsafe {
                if as_left {
                    (*parent).left = node;
                } else {
                    (*parent).right = node;
                }
            }
        }
        // SAFETY: `node` is now a red leaf of a tree that was valid before (contract).
        unsafe { self.insert_color(node) };
        if AUG {
            // SAFETY: `node` is a tree node; its ancestors are tree nodes.
            unsafe {
                (*node).subtree_max_size = 0;
                Self::aug_propagate(node, null_mut());
            }
        }
    }

    /// Links `node` as the in-order predecessor of `at` (Linux: `insert_vmap_area_augment`
    /// with `from = &va->rb_node` in the NE_FIT_TYPE split).
    ///
    /// # Safety
    /// `node` came from [`RawTree::alloc_node`] of this tree and is not linked; `at` is a node
    /// of this tree, and `node`'s range lies between `at`'s predecessor and `at`.
    pub(crate) unsafe fn link_before(&mut self, node: *mut VaNode, at: *mut VaNode) {
        // SAFETY: `at` is a tree node (contract).
        let l = unsafe { (*at).left };
        if l.is_null() {
            // SAFETY: `at` has no left child, which is where its predecessor's range goes.
            unsafe { self.link(node, at, true) };
        } else {
            // SAFETY: `l` is a tree node; the rightmost node of `at`'s left subtree has no right
            // child and is `at`'s predecessor, so `node` goes there.
            unsafe {
                let p = rightmost(l);
                self.link(node, p, false);
            }
        }
    }

    /// Finds where `[start, end)` would be linked. Returns `(parent, as_left, prev, next)` with
    /// the would-be neighbours, or `Err(Overlap)` if it overlaps a node (Linux `find_va_links`
    /// + `get_va_next_sibling`).
    #[inline]
    pub(crate) fn find_links(
        &self,
        start: u64,
        end: u64,
    ) -> Result<(*mut VaNode, bool, *mut VaNode, *mut VaNode), KvaError> {
        let (mut prev, mut next) = (null_mut(), null_mut());
        let mut n = self.root;
        if n.is_null() {
            return Ok((null_mut(), false, prev, next));
        }
        // The side is not carried around the loop: it is recomputed once from the parent at
        // the end (Linux's `link = &(*link)->rb_left` descent has no flag either).
        let parent = loop {
            // SAFETY: `n` is the root or a child of a tree node, non-null: a tree node
            // (invariant); `&self` rules out changes.
            let c = unsafe {
                if end <= (*n).va_start {
                    next = n;
                    (*n).left
                } else if start >= (*n).va_end {
                    prev = n;
                    (*n).right
                } else {
                    return Err(KvaError::Overlap);
                }
            };
            if c.is_null() {
                break n;
            }
            n = c;
        };
        // SAFETY: `parent` is a tree node (the last one visited).
        let as_left = end <= unsafe { (*parent).va_start };
        Ok((parent, as_left, prev, next))
    }

    /// Unlinks `n` (Linux `unlink_va` / `rb_erase_augmented`: `__rb_erase_augmented`, then
    /// `____rb_erase_color` when a black node left the tree). The node is not freed.
    ///
    /// # Safety
    /// `n` is a tree node.
    unsafe fn erase(&mut self, n: *mut VaNode) {
        // SAFETY: lib/rbtree.c's `__rb_erase_augmented`: `n` is a tree node (contract), its
        // children, parent and the successor found under its right child are tree nodes where
        // non-null; each relinking keeps every node other than `n` reachable once.
        let rebalance = unsafe {
            let child = (*n).right;
            let mut tmp = (*n).left;
            let rebalance;
            if tmp.is_null() {
                // Case 1: at most one child (the right one).
                let (parent, color) = ((*n).parent, (*n).color);
                self.replace_child(parent, n, child);
                if !child.is_null() {
                    (*child).parent = parent;
                    (*child).color = color;
                    rebalance = null_mut();
                } else {
                    rebalance = if color == BLACK { parent } else { null_mut() };
                }
                tmp = parent;
            } else if child.is_null() {
                // Still case 1, the child is the left one.
                let (parent, color) = ((*n).parent, (*n).color);
                (*tmp).parent = parent;
                (*tmp).color = color;
                self.replace_child(parent, n, tmp);
                rebalance = null_mut();
                tmp = parent;
            } else {
                let mut successor = child;
                let mut parent;
                let child2;
                tmp = (*child).left;
                if tmp.is_null() {
                    // Case 2: the successor is n's right child.
                    parent = successor;
                    child2 = (*successor).right;
                    if AUG {
                        (*successor).subtree_max_size = (*n).subtree_max_size;
                    }
                } else {
                    // Case 3: the successor is the leftmost node under n's right child.
                    loop {
                        parent = successor;
                        successor = tmp;
                        tmp = (*tmp).left;
                        if tmp.is_null() {
                            break;
                        }
                    }
                    child2 = (*successor).right;
                    (*parent).left = child2;
                    (*successor).right = child;
                    (*child).parent = successor;
                    if AUG {
                        (*successor).subtree_max_size = (*n).subtree_max_size;
                    }
                    Self::aug_propagate(parent, successor);
                }
                tmp = (*n).left;
                (*successor).left = tmp;
                (*tmp).parent = successor;
                let (np, ncolor) = ((*n).parent, (*n).color);
                self.replace_child(np, n, successor);
                if !child2.is_null() {
                    (*child2).parent = parent;
                    (*child2).color = BLACK;
                    rebalance = null_mut();
                } else {
                    rebalance = if (*successor).color == BLACK { parent } else { null_mut() };
                }
                (*successor).parent = np;
                (*successor).color = ncolor;
                tmp = successor;
            }
            Self::aug_propagate(tmp, null_mut());
            rebalance
        };
        if !rebalance.is_null() {
            // SAFETY: `rebalance` is a tree node one black node short on the erased side.
            unsafe { self.erase_color(rebalance) };
        }
        // SAFETY: `n` is still live (unlinked, not freed).
        unsafe {
            (*n).left = null_mut();
            (*n).right = null_mut();
            (*n).parent = null_mut();
        }
    }

    /// Unlinks `n` and gives it back to the source (Linux `unlink_va` + `kmem_cache_free`).
    ///
    /// # Safety
    /// `n` is a node of this tree. It must not be used afterwards.
    pub(crate) unsafe fn remove(&mut self, n: *mut VaNode) {
        // SAFETY: `n` is a node of this tree (contract).
        unsafe { self.erase(n) };
        // SAFETY: `n` came from our source (invariant), is unlinked now and not used again
        // (contract).
        unsafe { self.nodes.free_node(n) };
    }

    /// Unlinks `n` and hands it to the caller (Linux `unlink_va` without the free: the area
    /// moves on to another tree or list).
    ///
    /// # Safety
    /// `n` is a node of this tree. Afterwards it belongs to the caller.
    #[inline]
    pub(crate) unsafe fn unlink(&mut self, n: *mut VaNode) {
        // SAFETY: `n` is a node of this tree (contract).
        unsafe { self.erase(n) };
    }

    /// The node containing `addr` (Linux `__find_vmap_area`), or null.
    pub(crate) fn find_containing(&self, addr: u64) -> *mut VaNode {
        let mut n = self.root;
        while !n.is_null() {
            // SAFETY: `n` is the root or a child of a tree node, non-null: a tree node
            // (invariant); `&self` rules out changes.
            unsafe {
                if addr < (*n).va_start {
                    n = (*n).left;
                } else if addr >= (*n).va_end {
                    n = (*n).right;
                } else {
                    return n;
                }
            }
        }
        null_mut()
    }

    /// The node starting exactly at `start`, or null.
    pub(crate) fn find_start(&self, start: u64) -> *mut VaNode {
        let mut n = self.root;
        while !n.is_null() {
            // SAFETY: as in `find_containing`.
            unsafe {
                if start < (*n).va_start {
                    n = (*n).left;
                } else if start > (*n).va_start {
                    n = (*n).right;
                } else {
                    return n;
                }
            }
        }
        null_mut()
    }

    /// The lowest node, or null.
    #[inline]
    pub(crate) fn first(&self) -> *mut VaNode {
        // SAFETY: the root is null or a tree node (invariant).
        unsafe { leftmost(self.root) }
    }

    /// The highest node, or null.
    #[inline]
    pub(crate) fn last(&self) -> *mut VaNode {
        // SAFETY: the root is null or a tree node (invariant).
        unsafe { rightmost(self.root) }
    }

    /// The areas in address order.
    #[inline]
    pub(crate) fn iter(&self) -> InOrder<'_> {
        InOrder { node: self.first(), _m: PhantomData }
    }

    /// Removes every node, calling `f` on each area in address order; returns how many. O(n):
    /// the tree is dismantled leftmost-first without rebalancing.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(BusyArea)) -> usize {
        self.dismantle(|nodes, n| {
            // SAFETY: `n` is a node of ours, unlinked by `dismantle` and handed over.
            let a = unsafe { area(n) };
            // SAFETY: as above; it came from our source and is not used again.
            unsafe { nodes.free_node(n) };
            f(a)
        })
    }

    /// Removes every node, handing each (unlinked, not freed) to `f` in address order with the
    /// tree's source; returns how many. O(n), as [`RawTree::drain`].
    pub(crate) fn dismantle(&mut self, mut f: impl FnMut(&mut N, *mut VaNode)) -> usize {
        let mut count = 0;
        let mut n = self.first();
        while !n.is_null() {
            // n has no left child and is its parent's left child (or the root).
            // SAFETY: `n` is a tree node: the leftmost one, and each step below splices it out
            // (its right subtree takes its place) before handing it over and moving to the new
            // leftmost node, so the tree stays a well-linked tree of live nodes throughout.
            let (r, p) = unsafe { ((*n).right, (*n).parent) };
            if !r.is_null() {
                // SAFETY: `r` is `n`'s right child, a tree node.
                unsafe { (*r).parent = p };
            }
            if p.is_null() {
                self.root = r;
            } else {
                // SAFETY: `p` is `n`'s parent, a tree node, and `n` is its left child.
                unsafe { (*p).left = r };
            }
            count += 1;
            // Read before `f`, which may free `n` or link it elsewhere.
            // SAFETY: `r` (non-null here) is a tree node.
            let next = if r.is_null() { p } else { unsafe { leftmost(r) } };
            f(&mut self.nodes, n);
            n = next;
        }
        self.root = null_mut();
        count
    }

    /// Debug check of the whole tree: parent links, order and disjointness, the red-black rules
    /// and (augmented) subtree_max_size. Returns (nodes, bytes).
    pub(crate) fn check(&self) -> Result<(usize, u64), &'static str> {
        // SAFETY: the root is null or a tree node (invariant).
        if !self.root.is_null() && unsafe { !(*self.root).parent.is_null() } {
            return Err("root has a parent");
        }
        // SAFETY: as above.
        if unsafe { is_red(self.root) } {
            return Err("red root");
        }
        // SAFETY: the root is null or a tree node (invariant).
        let (_, _, count, bytes) = unsafe { Self::check_node(self.root, null_mut(), 0, u64::MAX)? };
        Ok((count, bytes))
    }

    /// Returns (black height, subtree max, nodes, bytes) of the subtree at `n`.
    ///
    /// # Safety
    /// `n` is null or a tree node.
    unsafe fn check_node(
        n: *mut VaNode,
        parent: *mut VaNode,
        lo: u64,
        hi: u64,
    ) -> Result<(u32, u64, usize, u64), &'static str> {
        if n.is_null() {
            return Ok((1, 0, 0, 0));
        }
        // SAFETY: `n` is a non-null tree node (contract).
        let node = unsafe { &*n };
        let (np, start, end, l, r, color) =
            (node.parent, node.va_start, node.va_end, node.left, node.right, node.color);
        if np != parent {
            return Err("bad parent link");
        }
        if start >= end {
            return Err("empty or inverted range in tree");
        }
        if start < lo || end > hi {
            return Err("BST order / overlap violated");
        }
        if color != RED && color != BLACK {
            return Err("bad colour");
        }
        // SAFETY: the children of a tree node are null or tree nodes.
        if color == RED && unsafe { is_red(l) || is_red(r) } {
            return Err("red node with a red child");
        }
        // SAFETY: the children of a tree node are null or tree nodes.
        let (bl, ml, cl, yl) = unsafe { Self::check_node(l, n, lo, start)? };
        // SAFETY: as above.
        let (br, mr, cr, yr) = unsafe { Self::check_node(r, n, end, hi)? };
        if bl != br {
            return Err("black heights differ");
        }
        // SAFETY: `n` is a tree node (contract).
        let nm = unsafe { (*n).subtree_max_size };
        let m = (end - start).max(ml).max(mr);
        if AUG && m != nm {
            return Err("subtree_max_size wrong");
        }
        Ok((bl + u32::from(color == BLACK), m, cl + cr + 1, yl + yr + (end - start)))
    }
}

impl<N: NodeSource, const AUG: bool> Drop for RawTree<N, AUG> {
    /// Gives every node back to the source (a shared source outlives the tree).
    fn drop(&mut self) {
        self.drain(|_| {});
    }
}

/// In-order iterator over a tree's areas; borrows the tree, so no node can go away meanwhile.
pub(crate) struct InOrder<'a> {
    node: *mut VaNode,
    _m: PhantomData<&'a VaNode>,
}

impl Iterator for InOrder<'_> {
    type Item = BusyArea;
    #[inline]
    fn next(&mut self) -> Option<BusyArea> {
        if self.node.is_null() {
            return None;
        }
        let n = self.node;
        // SAFETY: `n` is a non-null node of the tree this iterator borrows (it started at the
        // tree's first node and moves by `successor`), live while the borrow lasts.
        unsafe {
            self.node = successor(n);
            Some(area(n))
        }
    }
}
