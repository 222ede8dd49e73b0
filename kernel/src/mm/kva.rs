//! The kernel's instances of the KVA structures (Linux mm/vmalloc.c globals): the global free
//! tree under `free_vmap_area_lock`, and per vmap node a busy tree, a lazy tree and the
//! size-segregated pools, each under its own lock.
//!
//! All of them take their nodes from one cache (Linux: `vmap_area_cachep`), so an area's node
//! moves with it as a [`KVa`] (Linux: the `struct vmap_area` itself): pool -> busy tree -> lazy
//! tree -> pool or free tree, with no slab operation on the way. A node is allocated when an
//! area is carved from the free tree (and for a no-edge split of a free block) and freed when a
//! freed area merges with a free neighbour: freeing VA never needs memory.
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::mm::page_alloc;
use mm_kva::{
    BusyTree, KvaAllocator, KvaError, NodeCache, NodeSource, PageSource, SharedNodeSource,
    SlabStats, Va, VaNode, VaPool, MAX_VA_SIZE_PAGES,
};
use mm_types::gfp::GfpFlags;
use mm_types::NR_CPUS;
use mm_types::PAGE_SIZE;

/// Slab pages for the node cache, from the page allocator (GFP_NOWAIT: called under locks).
pub struct KPages;

// SAFETY: pages are whole 4 KiB pages of the linear map from the page allocator, owned by the
// node cache until free_page gives them back.
unsafe impl PageSource for KPages {
    fn alloc_page(&mut self) -> Option<*mut u8> {
        let p = page_alloc::alloc_page_va(GfpFlags::GFP_NOWAIT | GfpFlags::__GFP_NOWARN);
        (!p.is_null()).then_some(p)
    }
    unsafe fn free_page(&mut self, p: *mut u8) {
        page_alloc::free_page_va(p);
    }
}

/// The one node cache. Lock order: any KVA structure's lock, then this one (never the
/// reverse); KVA is not used from interrupt context.
static VA_CACHE: spin::Mutex<NodeCache<KPages>> = spin::Mutex::new(NodeCache::new(KPages));

/// A handle to [`VA_CACHE`] (Linux: `kmem_cache_alloc(vmap_area_cachep, ...)` /
/// `kmem_cache_free`).
#[derive(Default)]
pub struct KNodes;

// SAFETY: nodes come from VA_CACHE, valid until given back to it.
unsafe impl NodeSource for KNodes {
    #[inline]
    fn alloc_node(&mut self) -> Option<*mut VaNode> {
        VA_CACHE.lock().alloc_node()
    }
    #[inline]
    unsafe fn free_node(&mut self, n: *mut VaNode) {
        // SAFETY: every KNodes node comes from VA_CACHE (the type's one cache) and the caller
        // does not use it again (contract).
        unsafe { VA_CACHE.lock().free_node(n) };
    }
}

// SAFETY: every KNodes value allocates from and frees to VA_CACHE.
unsafe impl SharedNodeSource for KNodes {}

/// A vmap area with its node, between structures.
pub type KVa = Va<KNodes>;

pub const NO_NODE: usize = usize::MAX;

static FREE: spin::Mutex<KvaAllocator<KNodes>> = spin::Mutex::new(KvaAllocator::empty(KNodes));

struct VmapNode {
    busy: spin::Mutex<BusyTree<KNodes>>,
    lazy: spin::Mutex<BusyTree<KNodes>>,
    pool: spin::Mutex<VaPool<KNodes>>,
}

static NODES: [VmapNode; NR_CPUS] = [const {
    VmapNode {
        busy: spin::Mutex::new(BusyTree::new(KNodes)),
        lazy: spin::Mutex::new(BusyTree::new(KNodes)),
        pool: spin::Mutex::new(VaPool::new(KNodes)),
    }
}; NR_CPUS];

static NR_NODES: AtomicUsize = AtomicUsize::new(1);

pub fn init(vstart: u64, vend: u64, nr_nodes: usize) {
    FREE.lock().init(vstart, vend).expect("vmalloc range");
    NR_NODES.store(nr_nodes.clamp(1, NR_CPUS), Ordering::Release);
}

pub fn nr_vmap_nodes() -> usize {
    NR_NODES.load(Ordering::Relaxed)
}

/// Linux addr_to_node: busy areas are spread over the nodes by address, 16 pages per stripe.
#[inline]
fn addr_to_node(addr: u64) -> usize {
    ((addr / (16 * PAGE_SIZE as u64)) as usize) % nr_vmap_nodes()
}

// A busy/lazy value packs the caller's value (a kernel pointer with tag bits, or a small tag)
// with the vmap node the area was taken for (Linux keeps it in va->flags).
const PTR_BIT: u64 = 1 << 63;
const NODE_SHIFT: u32 = 48;
const LOW48: u64 = (1 << 48) - 1;

fn encode(val: u64, node: usize) -> u64 {
    let n = if node == NO_NODE { 0 } else { node as u64 + 1 };
    let ptr = if val >> 48 == 0xffff { PTR_BIT } else { 0 };
    ptr | (n << NODE_SHIFT) | (val & LOW48)
}

fn decode(v: u64) -> (u64, usize) {
    let n = ((v & !PTR_BIT) >> NODE_SHIFT) as usize;
    let val = if v & PTR_BIT != 0 { (v & LOW48) | (0xffff << 48) } else { v & LOW48 };
    (val, if n == 0 { NO_NODE } else { n - 1 })
}

/// Lowest-address first fit in the global free tree, as a new area (Linux: the vmap_area is
/// allocated first, then `__alloc_vmap_area` under the lock). `NoMemory` when no node could
/// be had, `NoSpace` when no range fits.
pub fn alloc(size: u64, align: u64, vstart: u64, vend: u64) -> Result<KVa, KvaError> {
    let mut va = KVa::new(0, 0, 0).ok_or(KvaError::NoMemory)?;
    let start = FREE.lock().alloc(size, align, vstart, vend)?;
    va.set(start, start + size, 0);
    Ok(va)
}

/// Highest-address fit (percpu chunks, Linux pcpu_get_vm_areas).
pub fn alloc_top_down(size: u64, align: u64, vstart: u64, vend: u64) -> Option<KVa> {
    let mut va = KVa::new(0, 0, 0)?;
    let start = FREE.lock().alloc_top_down(size, align, vstart, vend).ok()?;
    va.set(start, start + size, 0);
    Some(va)
}

/// Returns an area with no live mapping (never mapped, or unmapped and flushed) to the free
/// tree. Cannot fail: a merge frees the area's node, otherwise the node is linked. Only a bug
/// (a double free, a range outside vmalloc space) is refused, said, and the range dropped.
pub fn free_now(va: KVa) {
    if let Err((va, e)) = FREE.lock().free_va(va) {
        crate::println!(
            "vmalloc bug: freeing [{:#x}, {:#x}): {e:?} (range lost)",
            va.va_start(),
            va.va_end()
        );
    }
}

/// Links an area into its busy tree with `val` (Linux insert_vmap_area). Refused (and handed
/// back) only when it overlaps a busy area: a bug, said here.
#[inline(always)]
pub fn busy_insert(mut va: KVa, val: u64, node: usize) -> Result<(), KVa> {
    va.set_value(encode(val, node));
    match NODES[addr_to_node(va.va_start())].busy.lock().insert_va(va) {
        Ok(()) => Ok(()),
        Err((va, e)) => Err(insert_failed("busy", va, e)),
    }
}

/// A refused busy or lazy insert: a bug (the area overlaps one already there).
#[cold]
#[inline(never)]
fn insert_failed(tree: &str, va: KVa, e: KvaError) -> KVa {
    crate::println!("vmalloc bug: {tree} insert [{:#x}, {:#x}): {e:?}", va.va_start(), va.va_end());
    va
}

/// Unlinks the busy area starting at `start` (Linux find_unlink_vmap_area): the area, its
/// value and the vmap node it was taken for.
// Inline: on the path of every vmalloc/vfree (its call and return were two TB
// lookups per loop under TCG; README "Fifth round").
#[inline(always)]
pub fn busy_remove(start: u64) -> Option<(KVa, u64, usize)> {
    let va = NODES[addr_to_node(start)].busy.lock().remove_va(start)?;
    let (val, node) = decode(va.value());
    Some((va, val, node))
}

/// The busy area containing `addr`, looking at every node from addr_to_node(addr) on
/// (Linux find_vmap_area).
pub fn busy_find(addr: u64) -> Option<(u64, u64, u64, usize)> {
    let n = nr_vmap_nodes();
    let first = addr_to_node(addr);
    for i in 0..n {
        let node = (first + i) % n;
        if let Some(a) = NODES[node].busy.lock().find(addr) {
            let (val, vn) = decode(a.value);
            return Some((a.va_start, a.va_end, val, vn));
        }
    }
    None
}

/// Queues an unmapped area on the lazy tree of its node. Refused (handed back) only on a bug
/// (an overlap): the caller must flush and free the range at once.
#[inline(always)]
pub fn lazy_add(mut va: KVa, node: usize) -> Result<(), KVa> {
    let n = if node == NO_NODE { addr_to_node(va.va_start()) } else { node };
    va.set_value(encode(0, node));
    match NODES[n].lazy.lock().insert_va(va) {
        Ok(()) => Ok(()),
        Err((va, e)) => Err(insert_failed("lazy", va, e)),
    }
}

pub fn lazy_find(addr: u64) -> Option<(u64, u64)> {
    for node in NODES.iter().take(nr_vmap_nodes()) {
        if let Some(a) = node.lazy.lock().find(addr) {
            return Some((a.va_start, a.va_end));
        }
    }
    None
}

/// Every node's lazy tree, detached in one go (Linux: the purge list of __purge_vmap_area_lazy).
pub struct LazyBatch {
    trees: [Option<BusyTree<KNodes>>; NR_CPUS],
    empty: bool,
}

impl LazyBatch {
    /// Detaches all lazy areas and widens [start, end) to cover them.
    pub fn take_all(start: &mut u64, end: &mut u64) -> LazyBatch {
        let mut b = LazyBatch { trees: [const { None }; NR_CPUS], empty: true };
        for (i, node) in NODES.iter().enumerate().take(nr_vmap_nodes()) {
            let mut l = node.lazy.lock();
            if l.is_empty() {
                continue;
            }
            *start = (*start).min(l.first().unwrap().va_start);
            *end = (*end).max(l.last().unwrap().va_end);
            b.trees[i] = Some(core::mem::replace(&mut *l, BusyTree::new(KNodes)));
            b.empty = false;
        }
        b
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// After the TLB flush: areas taken for a node go to its pool when small enough, the rest
    /// back to the free tree (Linux purge_vmap_node: node_pool_add_va, else
    /// reclaim_list_global). Returns the pages released.
    pub fn release(&mut self) -> usize {
        let mut pages = 0usize;
        for t in self.trees.iter_mut() {
            if let Some(mut tree) = t.take() {
                tree.drain_va(|va| {
                    let (_, node) = decode(va.value());
                    let size = va.va_end() - va.va_start();
                    pages += (size / PAGE_SIZE as u64) as usize;
                    let rest = if node != NO_NODE && size <= (MAX_VA_SIZE_PAGES * PAGE_SIZE) as u64
                    {
                        NODES[node].pool.lock().put_va(va).err()
                    } else {
                        Some(va)
                    };
                    if let Some(va) = rest {
                        free_now(va);
                    }
                });
            }
        }
        pages
    }
}

/// Linux node_alloc: an area of exactly `size` from `node`'s pool.
#[inline]
pub fn pool_get(node: usize, size: u64, align: u64) -> Option<KVa> {
    NODES[node].pool.lock().get_va(size, align)
}

/// Linux decay_va_pool_node for every node: a quarter of each pool (all when `full`) back to
/// the free tree.
pub fn decay_pools(full: bool) {
    // Lock order: a node's pool lock, then free_vmap_area_lock (never the other way round).
    for node in NODES.iter().take(nr_vmap_nodes()) {
        let mut p = node.pool.lock();
        if p.nr_areas() == 0 {
            continue;
        }
        p.decay_va(full, free_now);
    }
}

/// Free VA in bytes: the free tree plus what the pools hold.
pub fn free_bytes() -> u64 {
    let pools: u64 = NODES.iter().take(nr_vmap_nodes()).map(|n| n.pool.lock().bytes()).sum();
    FREE.lock().free_bytes() + pools
}

/// Busy and lazily freed areas over all nodes: (busy count, busy bytes, lazy count, lazy
/// bytes), for the leak report.
pub fn usage() -> (usize, u64, usize, u64) {
    let mut u = (0, 0, 0, 0);
    for node in NODES.iter().take(nr_vmap_nodes()) {
        let b = node.busy.lock();
        u.0 += b.len();
        u.1 += b.bytes();
        drop(b);
        let l = node.lazy.lock();
        u.2 += l.len();
        u.3 += l.bytes();
    }
    u
}

/// The node cache's pages and nodes in use, for reports.
pub fn node_stats() -> SlabStats {
    VA_CACHE.lock().stats()
}

/// Returns the node cache's wholly free pages to the page allocator; returns how many.
pub fn shrink() -> usize {
    VA_CACHE.lock().shrink()
}
