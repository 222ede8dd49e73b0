//! Red-black balancing as lib/rbtree.c does it (`__rb_insert`, `____rb_erase_color`,
//! `__rb_rotate_set_parents`) with the augment callbacks of mm/vmalloc.c's
//! `free_vmap_area_rb_augment_cb` (`rotate`, `propagate`); `AUG = false` trees skip the augment.
//! A child of `tree`, so it works inside the tree's invariant (see [`RawTree`]); `erase` itself
//! (`__rb_erase_augmented`) stays in `tree` beside `link`. The left and right halves of each
//! function mirror each other, as in lib/rbtree.c: kept written out so that every case reads
//! against the reference line by line.

use core::ptr::null_mut;

use super::{compute_subtree_max_size, is_red, RawTree, BLACK, RED};
use crate::slab::{NodeSource, VaNode};

impl<N: NodeSource, const AUG: bool> RawTree<N, AUG> {
    /// Linux's augment `rotate` callback: `new` took `old`'s place as the subtree root, so it
    /// inherits `old`'s maximum, and `old` is recomputed from its new children.
    ///
    /// # Safety
    /// `old` and `new` are tree nodes; `old`'s children are null or tree nodes.
    #[inline]
    pub(super) unsafe fn aug_rotate(old: *mut VaNode, new: *mut VaNode) {
        if AUG {
            // SAFETY: both are tree nodes (contract).
            unsafe {
                (*new).subtree_max_size = (*old).subtree_max_size;
                (*old).subtree_max_size = compute_subtree_max_size(old);
            }
        }
    }

    /// Linux's augment `propagate(start, stop)`: recompute from `n` upwards until a value does
    /// not change or `stop` is reached.
    ///
    /// # Safety
    /// `n` is null or a tree node whose ancestors up to `stop` (null: the root) are tree nodes.
    #[inline]
    pub(super) unsafe fn aug_propagate(mut n: *mut VaNode, stop: *mut VaNode) {
        if !AUG {
            return;
        }
        while n != stop && !n.is_null() {
            // SAFETY: `n` is a tree node: the argument (contract), then non-null parents.
            unsafe {
                let m = compute_subtree_max_size(n);
                if m == (*n).subtree_max_size {
                    break;
                }
                (*n).subtree_max_size = m;
                n = (*n).parent;
            }
        }
    }

    /// Linux `__rb_rotate_set_parents`: `new` takes `old`'s parent link and colour, `old`
    /// becomes `new`'s child with `color`.
    ///
    /// # Safety
    /// `old` and `new` are tree nodes, `new` already linked as `old`'s parent's replacement in
    /// the caller's rotation (its child links set).
    #[inline]
    unsafe fn rotate_set_parents(&mut self, old: *mut VaNode, new: *mut VaNode, color: u32) {
        // SAFETY: `old` and `new` are tree nodes (contract); `old`'s parent is null or a tree
        // node with child `old`.
        unsafe {
            let parent = (*old).parent;
            (*new).parent = parent;
            (*new).color = (*old).color;
            (*old).parent = new;
            (*old).color = color;
            self.replace_child(parent, old, new);
        }
    }

    /// Linux `__rb_insert` for a node just linked red as a leaf.
    ///
    /// # Safety
    /// `node` is a tree node, linked red with null children; the tree was a valid red-black
    /// tree before it was linked.
    pub(super) unsafe fn insert_color(&mut self, mut node: *mut VaNode) {
        // SAFETY: every pointer followed is a tree node: `node` (contract), its parent when
        // non-null; a red parent is never the root (the root is black), so `gparent` is
        // non-null; the uncle and the children read are null-checked before use. The relinking
        // is lib/rbtree.c's, which keeps every node reachable once.
        unsafe {
            let mut parent = (*node).parent;
            loop {
                if parent.is_null() {
                    (*node).color = BLACK;
                    break;
                }
                if (*parent).color == BLACK {
                    break;
                }
                let gparent = (*parent).parent;
                let mut tmp = (*gparent).right;
                if parent != tmp {
                    // parent == gparent->left
                    if is_red(tmp) {
                        // Case 1: uncle red, colour flips.
                        (*tmp).color = BLACK;
                        (*parent).color = BLACK;
                        node = gparent;
                        parent = (*node).parent;
                        (*node).color = RED;
                        continue;
                    }
                    tmp = (*parent).right;
                    if node == tmp {
                        // Case 2: left rotate at parent.
                        tmp = (*node).left;
                        (*parent).right = tmp;
                        (*node).left = parent;
                        if !tmp.is_null() {
                            (*tmp).parent = parent;
                            (*tmp).color = BLACK;
                        }
                        (*parent).parent = node;
                        (*parent).color = RED;
                        Self::aug_rotate(parent, node);
                        parent = node;
                        tmp = (*node).right;
                    }
                    // Case 3: right rotate at gparent.
                    (*gparent).left = tmp;
                    (*parent).right = gparent;
                    if !tmp.is_null() {
                        (*tmp).parent = gparent;
                        (*tmp).color = BLACK;
                    }
                    self.rotate_set_parents(gparent, parent, RED);
                    Self::aug_rotate(gparent, parent);
                    break;
                } else {
                    tmp = (*gparent).left;
                    if is_red(tmp) {
                        // Case 1: uncle red, colour flips.
                        (*tmp).color = BLACK;
                        (*parent).color = BLACK;
                        node = gparent;
                        parent = (*node).parent;
                        (*node).color = RED;
                        continue;
                    }
                    tmp = (*parent).left;
                    if node == tmp {
                        // Case 2: right rotate at parent.
                        tmp = (*node).right;
                        (*parent).left = tmp;
                        (*node).right = parent;
                        if !tmp.is_null() {
                            (*tmp).parent = parent;
                            (*tmp).color = BLACK;
                        }
                        (*parent).parent = node;
                        (*parent).color = RED;
                        Self::aug_rotate(parent, node);
                        parent = node;
                        tmp = (*node).left;
                    }
                    // Case 3: left rotate at gparent.
                    (*gparent).right = tmp;
                    (*parent).left = gparent;
                    if !tmp.is_null() {
                        (*tmp).parent = gparent;
                        (*tmp).color = BLACK;
                    }
                    self.rotate_set_parents(gparent, parent, RED);
                    Self::aug_rotate(gparent, parent);
                    break;
                }
            }
        }
    }

    /// Linux `____rb_erase_color`: restores the black heights after a black node was removed
    /// below `parent` (its subtree on the removed side is one black node short).
    ///
    /// # Safety
    /// `parent` is a tree node and the tree is as `__rb_erase_augmented` leaves it.
    pub(super) unsafe fn erase_color(&mut self, mut parent: *mut VaNode) {
        let mut node: *mut VaNode = null_mut();
        // SAFETY: lib/rbtree.c's loop. Its invariants make every dereferenced pointer a tree
        // node: the short side's sibling has black height >= 1, so it is non-null; a red
        // sibling has two black non-null children; `tmp1`/`tmp2` are null-checked where they
        // may be null (the `!x || is_black(x)` tests) and non-null by colour where not.
        unsafe {
            loop {
                let mut sibling = (*parent).right;
                if node != sibling {
                    // node == parent->left
                    if is_red(sibling) {
                        // Case 1: left rotate at parent.
                        let tmp1 = (*sibling).left;
                        (*parent).right = tmp1;
                        (*sibling).left = parent;
                        (*tmp1).parent = parent;
                        (*tmp1).color = BLACK;
                        self.rotate_set_parents(parent, sibling, RED);
                        Self::aug_rotate(parent, sibling);
                        sibling = tmp1;
                    }
                    let mut tmp1 = (*sibling).right;
                    if !is_red(tmp1) {
                        let tmp2 = (*sibling).left;
                        if !is_red(tmp2) {
                            // Case 2: sibling colour flip.
                            (*sibling).color = RED;
                            if (*parent).color == RED {
                                (*parent).color = BLACK;
                            } else {
                                node = parent;
                                parent = (*node).parent;
                                if !parent.is_null() {
                                    continue;
                                }
                            }
                            break;
                        }
                        // Case 3: right rotate at sibling.
                        tmp1 = (*tmp2).right;
                        (*sibling).left = tmp1;
                        (*tmp2).right = sibling;
                        (*parent).right = tmp2;
                        if !tmp1.is_null() {
                            (*tmp1).parent = sibling;
                            (*tmp1).color = BLACK;
                        }
                        Self::aug_rotate(sibling, tmp2);
                        tmp1 = sibling;
                        sibling = tmp2;
                    }
                    // Case 4: left rotate at parent, colour flips.
                    let tmp2 = (*sibling).left;
                    (*parent).right = tmp2;
                    (*sibling).left = parent;
                    (*tmp1).parent = sibling;
                    (*tmp1).color = BLACK;
                    if !tmp2.is_null() {
                        (*tmp2).parent = parent;
                    }
                    self.rotate_set_parents(parent, sibling, BLACK);
                    Self::aug_rotate(parent, sibling);
                    break;
                } else {
                    sibling = (*parent).left;
                    if is_red(sibling) {
                        // Case 1: right rotate at parent.
                        let tmp1 = (*sibling).right;
                        (*parent).left = tmp1;
                        (*sibling).right = parent;
                        (*tmp1).parent = parent;
                        (*tmp1).color = BLACK;
                        self.rotate_set_parents(parent, sibling, RED);
                        Self::aug_rotate(parent, sibling);
                        sibling = tmp1;
                    }
                    let mut tmp1 = (*sibling).left;
                    if !is_red(tmp1) {
                        let tmp2 = (*sibling).right;
                        if !is_red(tmp2) {
                            // Case 2: sibling colour flip.
                            (*sibling).color = RED;
                            if (*parent).color == RED {
                                (*parent).color = BLACK;
                            } else {
                                node = parent;
                                parent = (*node).parent;
                                if !parent.is_null() {
                                    continue;
                                }
                            }
                            break;
                        }
                        // Case 3: left rotate at sibling.
                        tmp1 = (*tmp2).left;
                        (*sibling).right = tmp1;
                        (*tmp2).left = sibling;
                        (*parent).left = tmp2;
                        if !tmp1.is_null() {
                            (*tmp1).parent = sibling;
                            (*tmp1).color = BLACK;
                        }
                        Self::aug_rotate(sibling, tmp2);
                        tmp1 = sibling;
                        sibling = tmp2;
                    }
                    // Case 4: right rotate at parent, colour flips.
                    let tmp2 = (*sibling).right;
                    (*parent).left = tmp2;
                    (*sibling).right = parent;
                    (*tmp1).parent = sibling;
                    (*tmp1).color = BLACK;
                    if !tmp2.is_null() {
                        (*tmp2).parent = parent;
                    }
                    self.rotate_set_parents(parent, sibling, BLACK);
                    Self::aug_rotate(parent, sibling);
                    break;
                }
            }
        }
    }
}
