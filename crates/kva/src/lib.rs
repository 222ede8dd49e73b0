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
//! | [`NodeCache`], [`NodeSource`] | `vmap_area_cachep` (a `kmem_cache` of `struct vmap_area`) |
//! | [`Va`] | a `struct vmap_area` between `unlink_va` and the next insert |
//!
//! # Layout
//! From the bottom up (no module uses one above it):
//!
//! | module | holds | `unsafe` |
//! |---|---|---|
//! | `list` | the intrusive doubly linked list (`DList`, `DLinks`) | its link surgery, `unsafe fn`s with contracts |
//! | `slab` | the node (`VaNode`), [`NodeCache`], [`PageSource`], [`SlabStats`] | page carving and the freelists |
//! | `fit` | [`FitType`], [`classify_va_fit_type`], the fit arithmetic | none (`forbid`) |
//! | `tree`, `tree::search` | the red-black tree with the cache its nodes come from; the free-tree searches | all tree-node access |
//! | `free` | [`KvaAllocator`], [`FreeIter`] | only to hand the tree back a node it returned |
//! | `busy` | [`BusyTree`], [`BusyIter`] | as `free` |
//! | `pool` | [`VaPool`], [`MAX_VA_SIZE_PAGES`] | its size lists of nodes |
//! | [`vmap_lazy`] | lazy-purge accounting | none (`forbid`) |
//! | `model` | a BTreeMap model of the free tree (tests, feature `model`) | none (`forbid`) |
//!
//! Everything public is re-exported here; the modules themselves are private.
//!
//! # Trees
//! Linux's augmented red-black tree, as lib/rbtree.c balances it (`__rb_insert`,
//! `__rb_erase_augmented`, `____rb_erase_color`) with mm/vmalloc.c's augment callbacks: every
//! node carries its colour and, in the free tree, `subtree_max_size` = the largest
//! `va_end - va_start` in its subtree. Rotations hand the maximum over (`augment_rotate`), an
//! insertion and an erase propagate from the changed node towards the root and stop when
//! a node's value is unchanged, and pure size changes (clip, merge)
//! use `augment_tree_propagate_from`-style propagation that stops when
//! a node's value is unchanged, exactly like Linux. Address-ordered neighbour access (Linux keeps
//! `free_vmap_area_list` for it) comes from the descent itself: the last node where the search
//! went right is the predecessor, the last where it went left is the successor.
//!
//! # Node storage
//! Tree and list nodes are 64-byte objects from a [`NodeCache`]: a tiny slab over 4 KiB pages
//! obtained from a [`PageSource`] (kernel: the page allocator through the linear map). The first
//! 64-byte slot of each page is the page header (63 objects per page). Nothing here touches the
//! general heap. A structure ([`KvaAllocator`], [`BusyTree`], [`VaPool`]) takes its nodes from a
//! [`NodeSource`]: a [`NodeCache`] of its own (the host tests, the fuzz target), or a shared
//! source ([`SharedNodeSource`]: the kernel's one cache, Linux's `vmap_area_cachep`). With a
//! shared source an area moves between structures as a [`Va`], its node with it (Linux moves
//! the `struct vmap_area` itself): `remove_va`/`insert_va`, `get_va`/`put_va`, `drain_va`,
//! `decay_va`, and [`KvaAllocator::free_va`], which links the area's node or, when the range
//! merges, frees it, so freeing never needs a new node. The range-based calls (`insert`,
//! `remove`, `pool_put`, `free`...) allocate and free nodes as they go.
//!
//! # Errors
//! Node allocation can fail ([`KvaError::NoMemory`]) when the structure needs a new node and
//! the page source is empty: [`KvaAllocator::alloc`] only for a no-edge split (Linux's
//! `ne_fit_preload_node` case), [`KvaAllocator::free`] only when the range merges with neither
//! neighbour, the range-based inserts always. In every case the structure is left unchanged.
//! The `Va` calls never need a node; a refused `Va` (overlap, invalid range, unpooled size) is
//! handed back with the error.
//!
//! # Locking
//! None inside. All structures are `Send` (when the page source is) so they can sit in
//! `spin::Mutex` statics; `const fn` constructors ([`KvaAllocator::empty`], [`BusyTree::new`],
//! [`VaPool::new`]) allow that without lazy initialisation. A lazy list can be detached in O(1)
//! under its lock with `core::mem::swap` against an empty [`BusyTree`] (the nodes travel with the
//! tree) and drained outside the lock, like Linux's
//! `list_replace_init(&vn->lazy.head, &vn->purge_list)`.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod busy;
mod fit;
mod free;
mod list;
#[cfg(any(test, feature = "model"))]
pub mod model;
mod pool;
mod slab;
mod tree;
pub mod vmap_lazy;

#[cfg(test)]
mod tests;

pub use busy::{BusyIter, BusyTree};
pub use fit::{classify_va_fit_type, FitType};
pub use free::{FreeIter, KvaAllocator};
pub use pool::{VaPool, MAX_VA_SIZE_PAGES};
pub use slab::{
    NodeCache, NodeSource, PageSource, SharedNodeSource, SlabStats, Va, VaNode, OBJS_PER_PAGE,
    SLAB_PAGE_SIZE,
};

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
