//! The kernel's instances of the KVA structures (Linux mm/vmalloc.c globals): the global free
//! tree under `free_vmap_area_lock`, and per vmap node a busy tree, a lazy tree and the
//! size-segregated pools, each under its own lock. Node nodes (tree nodes) come from slabs
//! backed by the page allocator.
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::mm::page_alloc;
use mm_kva::{
    BusyArea, BusyTree, KvaAllocator, KvaError, PageSource, VaPool, MAX_VA_SIZE_PAGES,
    OBJS_PER_PAGE,
};
use mm_types::gfp::GfpFlags;
use mm_types::NR_CPUS;
use mm_types::PAGE_SIZE;

/// Slab pages for tree nodes, from the page allocator (GFP_NOWAIT: called under locks).
///
/// Freeing VA must not fail. In Linux a `vmap_area` is itself the tree node and just moves
/// from the busy tree to the lazy and free trees, so the memory a free needs was paid for at
/// allocation. Our trees keep separate nodes, so a free may need a node page just when memory
/// has run out. Allocation pays in advance instead: every range taken from the free tree keeps
/// the reserve at one node page per OBJS_PER_PAGE live ranges (plus slack for the partly used
/// pages of each tree), topping it up or failing cleanly; node pages come from the buddy
/// allocator first and from the reserve only when that fails (a mempool).
pub struct KPages;

/// Pages beyond the per-range share: each tree's partly used slab page, and headroom.
const RESERVE_SLACK: usize = 32;

/// Reserve pages, linked through their first word.
struct Reserve {
    head: usize,
    nr: usize,
}

static RESERVE: spin::Mutex<Reserve> = spin::Mutex::new(Reserve { head: 0, nr: 0 });
/// Mirror of `RESERVE.nr` for the lock-free check on the allocation path.
static RESERVE_NR: AtomicUsize = AtomicUsize::new(0);
/// Ranges taken from the free tree and not yet given back (busy, lazy or pooled).
static LIVE_RANGES: AtomicUsize = AtomicUsize::new(0);

fn reserve_target() -> usize {
    LIVE_RANGES.load(Ordering::Relaxed).div_ceil(OBJS_PER_PAGE) + RESERVE_SLACK
}

impl Reserve {
    /// Adds page `p` to the reserve, linked through its first word.
    ///
    /// # Safety
    ///
    /// `p` must be a 4 KiB-aligned page of the linear map that nobody else uses from now on: it
    /// belongs to the reserve until `pop` hands it out.
    unsafe fn push(&mut self, p: *mut u8) {
        // SAFETY: per the contract, `p` is an aligned page owned by the reserve, so its first
        // word is ours to write.
        unsafe { (p as *mut usize).write(self.head) };
        self.head = p as usize;
        self.nr += 1;
        RESERVE_NR.store(self.nr, Ordering::Relaxed);
    }
    fn pop(&mut self) -> Option<*mut u8> {
        if self.nr == 0 {
            return None;
        }
        let p = self.head as *mut u8;
        // SAFETY: nr > 0, so `head` is the last page pushed: owned by the reserve (reached only
        // through the RESERVE lock, held as &mut self), its first word written by `push`.
        self.head = unsafe { (p as *const usize).read() };
        self.nr -= 1;
        RESERVE_NR.store(self.nr, Ordering::Relaxed);
        Some(p)
    }
}

// SAFETY: pages are whole 4 KiB pages of the linear map, from the page allocator or the
// reserve, owned by the node cache until free_page takes them back.
unsafe impl PageSource for KPages {
    fn alloc_page(&mut self) -> Option<*mut u8> {
        let p = page_alloc::alloc_page_va(GfpFlags::GFP_NOWAIT | GfpFlags::__GFP_NOWARN);
        if !p.is_null() {
            return Some(p);
        }
        RESERVE.lock().pop()
    }
    unsafe fn free_page(&mut self, p: *mut u8) {
        let mut r = RESERVE.lock();
        if r.nr < reserve_target() {
            // SAFETY: the node caches give back only pages they got from `alloc_page` (4 KiB,
            // aligned, linear map: the page allocator's or the reserve's) and no longer use.
            unsafe { r.push(p) };
            return;
        }
        drop(r);
        page_alloc::free_page_va(p);
    }
}

/// Brings the reserve to its target (true) or as close as the page allocator allows (false).
#[inline]
fn reserve_top_up() -> bool {
    RESERVE_NR.load(Ordering::Relaxed) >= reserve_target() || reserve_fill()
}

#[cold]
#[inline(never)]
fn reserve_fill() -> bool {
    let mut r = RESERVE.lock();
    while r.nr < reserve_target() {
        let p = page_alloc::alloc_page_va(GfpFlags::GFP_NOWAIT | GfpFlags::__GFP_NOWARN);
        if p.is_null() {
            return false;
        }
        // SAFETY: a fresh order-0 page from the page allocator, owned by no one else.
        unsafe { r.push(p) };
    }
    true
}

/// Gives reserve pages above the target back to the page allocator.
fn reserve_trim() {
    let mut r = RESERVE.lock();
    while r.nr > reserve_target() {
        let p = r.pop().unwrap();
        page_alloc::free_page_va(p);
    }
}

/// Counts one more live range and pays its share of the reserve; false (nothing counted) when
/// the page allocator cannot provide it.
fn range_get() -> bool {
    LIVE_RANGES.fetch_add(1, Ordering::Relaxed);
    if reserve_top_up() {
        return true;
    }
    LIVE_RANGES.fetch_sub(1, Ordering::Relaxed);
    false
}

fn range_put() {
    LIVE_RANGES.fetch_sub(1, Ordering::Relaxed);
}

/// (reserve pages, live ranges), for reports.
pub fn reserve_state() -> (usize, usize) {
    (RESERVE_NR.load(Ordering::Relaxed), LIVE_RANGES.load(Ordering::Relaxed))
}

pub const NO_NODE: usize = usize::MAX;

static FREE: spin::Mutex<KvaAllocator<KPages>> = spin::Mutex::new(KvaAllocator::empty(KPages));

struct VmapNode {
    busy: spin::Mutex<BusyTree<KPages>>,
    lazy: spin::Mutex<BusyTree<KPages>>,
    pool: spin::Mutex<VaPool<KPages>>,
}

static NODES: [VmapNode; NR_CPUS] = [const {
    VmapNode {
        busy: spin::Mutex::new(BusyTree::new(KPages)),
        lazy: spin::Mutex::new(BusyTree::new(KPages)),
        pool: spin::Mutex::new(VaPool::new(KPages)),
    }
}; NR_CPUS];

static NR_NODES: AtomicUsize = AtomicUsize::new(1);

pub fn init(vstart: u64, vend: u64, nr_nodes: usize) {
    reserve_top_up();
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

/// Lowest-address first fit in the global free tree. `NoMemory` when the node reserve could
/// not be paid (or a node was needed and none could be had), `NoSpace` when no range fits.
pub fn alloc(size: u64, align: u64, vstart: u64, vend: u64) -> Result<u64, KvaError> {
    if !range_get() {
        return Err(KvaError::NoMemory);
    }
    let r = FREE.lock().alloc(size, align, vstart, vend);
    if r.is_err() {
        range_put();
    }
    r
}

/// Highest-address fit (percpu chunks, Linux pcpu_get_vm_areas).
pub fn alloc_top_down(size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
    if !range_get() {
        return None;
    }
    let r = FREE.lock().alloc_top_down(size, align, vstart, vend).ok();
    if r.is_none() {
        range_put();
    }
    r
}

/// Returns a range with no live mapping (never mapped, or unmapped and flushed) to the free
/// tree. Cannot fail unless the reserve is exhausted too (then the range is lost and said so).
pub fn free_now(start: u64, end: u64) {
    if let Err(e) = FREE.lock().free(start, end) {
        crate::println!("vmalloc bug: freeing [{start:#x}, {end:#x}): {e:?} (range lost)");
    }
    range_put();
}

/// Links an area into its busy tree. False when no tree node could be allocated (the caller
/// fails the allocation and gives the range back).
#[must_use]
#[inline(always)]
pub fn busy_insert(start: u64, end: u64, val: u64, node: usize) -> bool {
    match NODES[addr_to_node(start)].busy.lock().insert(start, end, encode(val, node)) {
        Ok(()) => true,
        Err(e) => insert_failed("busy", start, end, e),
    }
}

/// A failed busy or lazy insert: `NoMemory` is the caller's to handle, anything else is a bug.
#[cold]
#[inline(never)]
fn insert_failed(tree: &str, start: u64, end: u64, e: KvaError) -> bool {
    if e != KvaError::NoMemory {
        crate::println!("vmalloc bug: {tree} insert [{start:#x}, {end:#x}): {e:?}");
    }
    false
}

/// Unlinks the busy area starting at `start` (Linux find_unlink_vmap_area).
pub fn busy_remove(start: u64) -> Option<(u64, u64, u64, usize)> {
    let a = NODES[addr_to_node(start)].busy.lock().remove(start)?;
    let (val, node) = decode(a.value);
    Some((a.va_start, a.va_end, val, node))
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

/// Queues an unmapped area on the lazy tree of its node. False when not even the reserve had a
/// node page: the caller must flush and free the range at once.
#[must_use]
#[inline(always)]
pub fn lazy_add(start: u64, end: u64, node: usize) -> bool {
    let n = if node == NO_NODE { addr_to_node(start) } else { node };
    match NODES[n].lazy.lock().insert(start, end, encode(0, node)) {
        Ok(()) => true,
        Err(e) => insert_failed("lazy", start, end, e),
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
    trees: [Option<BusyTree<KPages>>; NR_CPUS],
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
            b.trees[i] = Some(core::mem::replace(&mut *l, BusyTree::new(KPages)));
            b.empty = false;
        }
        b
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// After the TLB flush: areas taken for a node go to its pool when small enough, the rest
    /// back to the free tree. Returns the pages released.
    pub fn release(&mut self) -> usize {
        let mut pages = 0usize;
        for t in self.trees.iter_mut() {
            if let Some(mut tree) = t.take() {
                tree.drain(|a: BusyArea| {
                    let (_, node) = decode(a.value);
                    let size = a.va_end - a.va_start;
                    pages += (size / PAGE_SIZE as u64) as usize;
                    let pooled = node != NO_NODE
                        && size <= (MAX_VA_SIZE_PAGES * PAGE_SIZE) as u64
                        && NODES[node].pool.lock().pool_put(a.va_start, a.va_end);
                    if !pooled {
                        free_now(a.va_start, a.va_end);
                    }
                });
            }
        }
        pages
    }
}

/// Linux node_alloc: an area of exactly `size` from `node`'s pool.
#[inline]
pub fn pool_get(node: usize, size: u64, align: u64) -> Option<u64> {
    NODES[node].pool.lock().pool_get(size, align).map(|r| r.va_start)
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
        p.decay(full, |r| free_now(r.va_start, r.va_end));
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

/// Returns wholly free slab pages of every structure to the page allocator; the reserve ends
/// at exactly its target (when memory allows), so leak checks see the same figure each time.
pub fn shrink() -> usize {
    let mut n = FREE.lock().shrink();
    for node in NODES.iter() {
        n += node.busy.lock().shrink() + node.lazy.lock().shrink() + node.pool.lock().shrink();
    }
    reserve_trim();
    reserve_top_up();
    n
}
