//! The `kva` target: the KVA allocator's structures used the way vmalloc uses them — one free
//! tree ([`KvaAllocator`]) and per vmap node a busy tree, a lazy tree and size-segregated pools
//! ([`BusyTree`], [`VaPool`]) — driven by an operation sequence decoded from the input: alloc
//! (bottom-up with size/align/window, top-down, or from a pool), reserve, free to the lazy tree,
//! lazy purge (lazy areas into the pools or back to the free tree), pool decay, shrink, double
//! frees and overlapping inserts. An independent model (a BTreeMap of free ranges, maps of
//! busy/lazy areas, per-size pool lists) is compared after every step: the same free ranges,
//! no two areas overlapping, nothing lost (free + busy + lazy + pooled + pending = the span),
//! every counter and `check()` right. Node caches draw from a page source that can be limited,
//! so the `NoMemory` paths (which must change nothing) are exercised too.
use super::Input;
use mm_kva::model::{model_fit, model_fit_top, FreeRanges};
use mm_kva::{
    BusyArea, BusyTree, KvaAllocator, KvaError, NodeCache, PageSource, VaPool, VaRange,
    MAX_VA_SIZE_PAGES, SLAB_PAGE_SIZE,
};

/// The page size in the address arithmetic's type.
const P: u64 = mm_types::PAGE_SIZE as u64;
use alloc::alloc::{alloc, dealloc, Layout};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use super::{FULL_EVERY, MAX_OPS};
const NODES: usize = 2;
const BASE: u64 = 0xffff_8000_0000_0000;
const MIB: u64 = 1 << 20;

/// Host pages for the node caches, counted, with an optional cap on pages held at once.
struct Pages {
    live: usize,
    limit: usize,
}

impl Pages {
    fn new(limit: usize) -> Self {
        Pages { live: 0, limit }
    }
    fn layout() -> Layout {
        Layout::from_size_align(SLAB_PAGE_SIZE, SLAB_PAGE_SIZE).unwrap()
    }
}

// SAFETY: pages come from the global allocator with a 4 KiB-aligned 4 KiB layout, owned by
// the caller until free_page gives them back to dealloc.
unsafe impl PageSource for Pages {
    fn alloc_page(&mut self) -> Option<*mut u8> {
        if self.live >= self.limit {
            return None;
        }
        // SAFETY: Self::layout() has a non-zero size.
        let p = unsafe { alloc(Self::layout()) };
        if p.is_null() {
            return None;
        }
        self.live += 1;
        Some(p)
    }
    unsafe fn free_page(&mut self, p: *mut u8) {
        assert_eq!(p as usize % SLAB_PAGE_SIZE, 0, "page source got back a misaligned page");
        assert!(self.live > 0, "page source got back more pages than it gave");
        // SAFETY: `p` came from alloc(Self::layout()) above (checked aligned, and counted live).
        unsafe { dealloc(p, Self::layout()) };
        self.live -= 1;
    }
}

struct Node {
    busy: BusyTree<NodeCache<Pages>>,
    lazy: BusyTree<NodeCache<Pages>>,
    pool: VaPool<NodeCache<Pages>>,
}

/// The model: plain ordered maps and lists.
#[derive(Default)]
struct Model {
    free: FreeRanges,
    /// start -> (end, node, value), for busy and lazy areas.
    busy: BTreeMap<u64, (u64, usize, u64)>,
    lazy: [BTreeMap<u64, u64>; NODES],
    /// pool[node][pages - 1]: most recently added first.
    pool: [BTreeMap<usize, VecDeque<(u64, u64)>>; NODES],
    /// Ranges no structure could take (free tree out of node memory): retried by a purge.
    pending: Vec<(u64, u64)>,
}

struct Harness {
    kva: KvaAllocator<NodeCache<Pages>>,
    nodes: Vec<Node>,
    m: Model,
    start: u64,
    end: u64,
    next_value: u64,
    steps: usize,
}

#[derive(Debug)]
enum Op {
    Alloc { node: usize, pages: u64, align_shift: u32, window: u8, top: bool, pool_first: bool },
    Reserve { k: usize, off: u64, pages: u64 },
    Free { k: usize, by_inner: bool },
    Purge,
    Decay { node: usize, full: bool },
    Shrink,
    DoubleFree { k: usize, kind: u8 },
    Find { k: usize, off: u64 },
    FreeNow { k: usize },
}

fn decode(inp: &mut Input) -> Op {
    match inp.u8() % 16 {
        0..=5 => {
            let node = inp.u8() as usize % NODES;
            let pages = match inp.u8() {
                0..=199 => 1 + inp.u8() as u64 % 8,
                200..=239 => 1 + inp.u16() as u64 % 300,
                _ => 1 + inp.u16() as u64 % 8192, // up to 32 MiB
            };
            let align_shift = match inp.u8() {
                0..=149 => 12,
                150..=179 => inp.u8() as u32 % 12,
                180..=249 => 13 + inp.u8() as u32 % 10,
                b => [23, 26, 30, 40, 63][b as usize % 5],
            };
            let flags = inp.u8();
            Op::Alloc {
                node,
                pages,
                align_shift,
                window: inp.u8(),
                top: flags.is_multiple_of(8),
                pool_first: flags & 0x10 != 0,
            }
        }
        6 => Op::Reserve {
            k: inp.u16() as usize,
            off: inp.u16() as u64,
            pages: 1 + inp.u8() as u64 % 64,
        },
        7..=9 => Op::Free { k: inp.u16() as usize, by_inner: inp.u8() & 1 != 0 },
        10 => Op::Purge,
        11 => Op::Decay { node: inp.u8() as usize % NODES, full: inp.u8() & 1 != 0 },
        12 => Op::Shrink,
        13 => Op::DoubleFree { k: inp.u16() as usize, kind: inp.u8() % 4 },
        14 => Op::Find { k: inp.u16() as usize, off: inp.u32() as u64 },
        _ => Op::FreeNow { k: inp.u16() as usize },
    }
}

impl Harness {
    fn new(span: u64, limits: [usize; 4]) -> Self {
        let (start, end) = (BASE, BASE + span);
        let kva = KvaAllocator::new(start, end, NodeCache::new(Pages::new(limits[0].max(1))))
            .expect("init");
        let nodes = (0..NODES)
            .map(|_| Node {
                busy: BusyTree::new(NodeCache::new(Pages::new(usize::MAX))),
                lazy: BusyTree::new(NodeCache::new(Pages::new(limits[1]))),
                pool: VaPool::new(NodeCache::new(Pages::new(limits[2]))),
            })
            .collect();
        let mut m = Model::default();
        m.free.insert(start, end);
        Harness { kva, nodes, m, start, end, next_value: 1, steps: 0 }
    }

    /// After every step: the free tree's ranges and counters against the model, every
    /// structure's counters, and the byte total (nothing lost). Every [`FULL_EVERY`]th step and
    /// at the end: [`Harness::verify`].
    fn quick(&mut self, what: &dyn core::fmt::Debug) {
        self.steps += 1;
        if self.steps.is_multiple_of(FULL_EVERY) {
            return self.verify(what);
        }
        assert!(
            self.kva.iter_free().map(|r| (r.va_start, r.va_end)).eq(self
                .m
                .free
                .iter()
                .map(|(&s, &e)| (s, e))),
            "after {what:?}: free tree != model"
        );
        let free_bytes: u64 = self.m.free.iter().map(|(s, e)| e - s).sum();
        assert_eq!(
            (self.kva.free_bytes(), self.kva.nr_free_ranges()),
            (free_bytes, self.m.free.len()),
            "after {what:?}: free counters"
        );
        let mut total = free_bytes + self.m.pending.iter().map(|(s, e)| e - s).sum::<u64>();
        for (n, node) in self.nodes.iter().enumerate() {
            let busy = self.m.busy.iter().filter(|(_, &(_, nn, _))| nn == n);
            let busy_bytes: u64 = busy.clone().map(|(&s, &(e, _, _))| e - s).sum();
            assert_eq!(
                (node.busy.len(), node.busy.bytes()),
                (busy.count(), busy_bytes),
                "after {what:?}: node {n} busy counters"
            );
            let lazy_bytes: u64 = self.m.lazy[n].iter().map(|(s, e)| e - s).sum();
            assert_eq!(
                (node.lazy.len(), node.lazy.bytes()),
                (self.m.lazy[n].len(), lazy_bytes),
                "after {what:?}: node {n} lazy counters"
            );
            let pool_bytes: u64 =
                self.m.pool[n].iter().map(|(&i, l)| (i as u64 + 1) * P * l.len() as u64).sum();
            assert_eq!(node.pool.bytes(), pool_bytes, "after {what:?}: node {n} pool bytes");
            total += busy_bytes + lazy_bytes + pool_bytes;
        }
        assert_eq!(
            total,
            self.end - self.start,
            "after {what:?}: free + busy + lazy + pooled + pending != span (space lost)"
        );
    }

    /// Everything the model knows, compared with the structures.
    fn verify(&self, what: &dyn core::fmt::Debug) {
        let fail = |s: &str| -> ! { panic!("after {what:?}: {s}") };
        self.kva.check().unwrap_or_else(|e| fail(e));
        let tree: Vec<(u64, u64)> = self.kva.iter_free().map(|r| (r.va_start, r.va_end)).collect();
        let model: Vec<(u64, u64)> = self.m.free.iter().map(|(&s, &e)| (s, e)).collect();
        if tree != model {
            fail(&alloc::format!("free tree {tree:x?} != model {model:x?}"));
        }
        assert_eq!(self.kva.nr_free_ranges(), model.len(), "after {what:?}: nr_free_ranges");
        let free_bytes: u64 = model.iter().map(|(s, e)| e - s).sum();
        assert_eq!(self.kva.free_bytes(), free_bytes, "after {what:?}: free_bytes");
        assert_eq!(
            self.kva.largest_free(),
            model.iter().map(|(s, e)| e - s).max().unwrap_or(0),
            "after {what:?}: largest_free"
        );
        assert_eq!(
            self.kva.slab_stats().pages,
            self.kva.page_source().live,
            "after {what:?}: free-tree slab pages"
        );
        assert_eq!(
            self.kva.slab_stats().objects_in_use,
            model.len(),
            "after {what:?}: free-tree nodes"
        );

        let mut all: Vec<(u64, u64)> = model.clone();
        for (n, node) in self.nodes.iter().enumerate() {
            node.busy.check().unwrap_or_else(|e| fail(e));
            node.lazy.check().unwrap_or_else(|e| fail(e));
            node.pool.check().unwrap_or_else(|e| fail(e));
            let busy: Vec<BusyArea> = node.busy.iter().collect();
            let want: Vec<BusyArea> = self
                .m
                .busy
                .iter()
                .filter(|(_, &(_, nn, _))| nn == n)
                .map(|(&s, &(e, _, v))| BusyArea { va_start: s, va_end: e, value: v })
                .collect();
            assert_eq!(busy, want, "after {what:?}: node {n} busy tree");
            let lazy: Vec<(u64, u64)> = node.lazy.iter().map(|a| (a.va_start, a.va_end)).collect();
            let want: Vec<(u64, u64)> = self.m.lazy[n].iter().map(|(&s, &e)| (s, e)).collect();
            assert_eq!(lazy, want, "after {what:?}: node {n} lazy tree");
            let (mut areas, mut bytes) = (0, 0);
            for (&idx, list) in &self.m.pool[n] {
                let size = (idx as u64 + 1) * P;
                assert_eq!(
                    node.pool.len_of(size),
                    list.len(),
                    "after {what:?}: node {n} pool of {size:#x}"
                );
                areas += list.len();
                bytes += size * list.len() as u64;
                all.extend(list.iter().copied());
            }
            assert_eq!(
                (node.pool.nr_areas(), node.pool.bytes()),
                (areas, bytes),
                "after {what:?}: node {n} pool counters"
            );
            assert_eq!(
                node.busy.bytes(),
                busy.iter().map(|a| a.va_end - a.va_start).sum::<u64>(),
                "after {what:?}: busy bytes"
            );
            assert_eq!(
                node.lazy.bytes(),
                lazy.iter().map(|(s, e)| e - s).sum::<u64>(),
                "after {what:?}: lazy bytes"
            );
            assert_eq!(
                (node.busy.len(), node.lazy.len()),
                (busy.len(), lazy.len()),
                "after {what:?}: node {n} tree lengths"
            );
            all.extend(busy.iter().map(|a| (a.va_start, a.va_end)));
            all.extend(lazy);
            for (name, st, live) in [
                ("busy", node.busy.slab_stats(), node.busy.page_source().live),
                ("lazy", node.lazy.slab_stats(), node.lazy.page_source().live),
                ("pool", node.pool.slab_stats(), node.pool.page_source().live),
            ] {
                assert_eq!(
                    st.pages, live,
                    "after {what:?}: node {n} {name} slab pages vs page source"
                );
            }
        }
        all.extend(self.m.pending.iter().copied());
        all.sort();
        for w in all.windows(2) {
            assert!(w[0].1 <= w[1].0, "after {what:?}: {:x?} and {:x?} overlap", w[0], w[1]);
        }
        let total: u64 = all.iter().map(|(s, e)| e - s).sum();
        assert_eq!(
            total,
            self.end - self.start,
            "after {what:?}: free + busy + lazy + pooled + pending != span (space lost)"
        );
    }

    /// An area taken out of the free space becomes busy on `node` (busy inserts never fail:
    /// that tree's page source is unlimited, as the kernel preloads its node).
    fn make_busy(&mut self, node: usize, s: u64, e: u64) {
        let v = self.next_value;
        self.next_value += 1;
        assert_eq!(self.nodes[node].busy.insert(s, e, v), Ok(()), "busy insert [{s:#x}, {e:#x})");
        self.m.busy.insert(s, (e, node, v));
    }

    /// Returns [s, e) to the free tree, or to `pending` if the tree has no node for it.
    fn give_back(&mut self, s: u64, e: u64) {
        let needs = self.m.free.release_needs_node(s, e);
        match self.kva.free(s, e) {
            Ok(()) => self.m.free.release(s, e),
            Err(KvaError::NoMemory) => {
                assert!(needs, "free [{s:#x}, {e:#x}) failed for memory though it merges");
                self.m.pending.push((s, e));
            }
            Err(err) => panic!("free [{s:#x}, {e:#x}): {err:?}"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn alloc(
        &mut self,
        op: &Op,
        node: usize,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
        top: bool,
    ) {
        let got = if top {
            self.kva.alloc_top_down(size, align, vstart, vend)
        } else {
            self.kva.alloc(size, align, vstart, vend)
        };
        if vstart >= vend || !align.is_power_of_two() {
            assert_eq!(got, Err(KvaError::Invalid), "{op:?}");
            return;
        }
        if top {
            let expect = self
                .m
                .free
                .iter()
                .rev()
                .find_map(|(&s, &e)| model_fit_top(s, e, size, align, vstart, vend));
            match (got, expect) {
                (Ok(a), Some(b)) => assert_eq!(a, b, "{op:?}: top-down not the highest fit"),
                (Err(KvaError::NoSpace), None) => return,
                (Err(KvaError::NoMemory), Some(b)) => {
                    let (bs, be) = self.m.free.block_containing(b).unwrap();
                    assert!(bs < b && b + size < be, "{op:?}: NoMemory without a no-edge split");
                    return;
                }
                (g, e) => panic!("{op:?}: top-down got {g:x?}, model {e:x?}"),
            }
        }
        let adjust = align > P && vend - vstart != size;
        let length: u128 = if adjust { size as u128 + align as u128 - 1 } else { size as u128 };
        let mut strict = None; // lowest fitting block at least `length` long
        let mut any = None; // lowest fitting block at all
        for (&s, &e) in self.m.free.iter() {
            if let Some(nva) = model_fit(s, e, size, align, vstart) {
                any.get_or_insert((s, e, nva));
                if (e - s) as u128 >= length {
                    strict = Some((s, e, nva));
                    break;
                }
            }
        }
        match got {
            Ok(nva) => {
                assert_eq!(nva % align, 0, "{op:?}: misaligned {nva:#x}");
                assert!(
                    nva >= vstart && nva as u128 + size as u128 <= vend as u128,
                    "{op:?}: {nva:#x} outside the window"
                );
                let (bs, be) = self
                    .m
                    .free
                    .block_containing(nva)
                    .unwrap_or_else(|| panic!("{op:?}: {nva:#x} is not free"));
                assert!(
                    nva + size <= be,
                    "{op:?}: [{nva:#x}, +{size:#x}) not inside one free block"
                );
                if !top {
                    assert_eq!(
                        model_fit(bs, be, size, align, vstart),
                        Some(nva),
                        "{op:?}: not the block's first aligned fit"
                    );
                    if let Some((ss, _, _)) = strict {
                        assert!(
                            bs <= ss,
                            "{op:?}: higher than the lowest block of the search length"
                        );
                        if (be - bs) as u128 >= length {
                            assert_eq!(bs, ss, "{op:?}: not the lowest block of the search length");
                        }
                    }
                    if !adjust {
                        assert_eq!(Some(nva), any.map(|a| a.2), "{op:?}: not the lowest fit");
                    }
                }
                self.m.free.carve(nva, nva + size);
                self.make_busy(node, nva, nva + size);
            }
            Err(KvaError::NoSpace) => {
                if let Some((_, _, nva)) = strict {
                    assert!(
                        nva as u128 + size as u128 > vend as u128,
                        "{op:?}: NoSpace but the model fits at {nva:#x}"
                    );
                }
                if !adjust {
                    assert!(
                        any.is_none_or(|(_, _, nva)| nva as u128 + size as u128 > vend as u128),
                        "{op:?}: NoSpace but {any:x?} fits"
                    );
                }
            }
            Err(KvaError::NoMemory) => {
                // Only a no-edge split needs a node; the tree must be unchanged (verify checks).
                assert!(
                    self.kva.page_source().live >= self.kva.page_source().limit,
                    "{op:?}: NoMemory with pages left"
                );
            }
            Err(e) => {
                // Invalid only for an overflowing size + align - 1.
                assert!(
                    e == KvaError::Invalid && size.checked_add(align - 1).is_none(),
                    "{op:?}: unexpected {e:?}"
                );
            }
        }
    }

    fn step(&mut self, op: &Op) {
        let span = self.end - self.start;
        match *op {
            Op::Alloc { node, pages, align_shift, window, top, pool_first } => {
                let size = pages * P;
                let align = 1u64 << align_shift;
                if pool_first && pages as usize <= MAX_VA_SIZE_PAGES {
                    let got = self.nodes[node].pool.pool_get(size, align);
                    let list = self.m.pool[node].entry(pages as usize - 1).or_default();
                    let want = match list.front() {
                        Some(&(s, e)) if s % align == 0 => {
                            list.pop_front();
                            Some(VaRange { va_start: s, va_end: e })
                        }
                        Some(_) => {
                            list.rotate_left(1); // misaligned head goes to the tail
                            None
                        }
                        None => None,
                    };
                    assert_eq!(got, want, "{op:?}: pool_get");
                    if let Some(r) = got {
                        self.make_busy(node, r.va_start, r.va_end);
                        return;
                    }
                }
                let (vs, ve) = match window % 8 {
                    0..=3 => (self.start, self.end),
                    4 => (self.start + span / 8, self.end - span / 8),
                    5 => (self.start + span / 4, (self.start + span / 4).saturating_add(size)),
                    6 => (self.start + MIB + P, self.end),
                    _ => (self.start + (window as u64 * 7919 * P) % span, self.start + span / 2),
                };
                self.alloc(op, node, size, align, vs, ve, top);
            }
            Op::Reserve { k, off, pages } => {
                if self.m.free.is_empty() {
                    return;
                }
                let (&s, &e) = self.m.free.iter().nth(k % self.m.free.len()).unwrap();
                let a = s + (off % ((e - s) / P)) * P;
                let b = (a + pages * P).min(e);
                match self.kva.reserve(a, b) {
                    Ok(()) => {
                        self.m.free.carve(a, b);
                        self.make_busy(k % NODES, a, b);
                    }
                    Err(KvaError::NoMemory) => {
                        assert!(a > s && b < e, "{op:?}: NoMemory without a no-edge split")
                    }
                    Err(err) => panic!("{op:?}: reserve [{a:#x}, {b:#x}) of a free block: {err:?}"),
                }
                // A busy range can never be reserved again.
                if let Some((&bs, &(be, _, _))) = self.m.busy.iter().next() {
                    assert_eq!(
                        self.kva.reserve(bs, be),
                        Err(KvaError::NoSpace),
                        "{op:?}: reserving a busy range"
                    );
                }
            }
            Op::Free { k, by_inner } => {
                if self.m.busy.is_empty() {
                    return;
                }
                let (&s, &(e, node, v)) = self.m.busy.iter().nth(k % self.m.busy.len()).unwrap();
                let got = if by_inner {
                    self.nodes[node]
                        .busy
                        .remove_containing(s + (k as u64 % ((e - s) / P)) * P + (k as u64 % P))
                } else {
                    self.nodes[node].busy.remove(s)
                };
                assert_eq!(got, Some(BusyArea { va_start: s, va_end: e, value: v }), "{op:?}");
                self.m.busy.remove(&s);
                match self.nodes[node].lazy.insert(s, e, v) {
                    Ok(()) => {
                        self.m.lazy[node].insert(s, e);
                    }
                    Err(KvaError::NoMemory) => self.give_back(s, e), // no lazy node: free at once
                    Err(err) => panic!("{op:?}: lazy insert: {err:?}"),
                }
            }
            Op::FreeNow { k } => {
                if self.m.busy.is_empty() {
                    return;
                }
                let (&s, &(e, node, _)) = self.m.busy.iter().nth(k % self.m.busy.len()).unwrap();
                assert!(self.nodes[node].busy.remove(s).is_some());
                self.m.busy.remove(&s);
                self.give_back(s, e);
            }
            Op::Purge => {
                // Retry what had no node first, then drain every lazy tree (Linux: detach the
                // lazy list, then per area node_pool_add_va or merge into the free tree).
                for (s, e) in core::mem::take(&mut self.m.pending) {
                    self.give_back(s, e);
                }
                for n in 0..NODES {
                    // Detach in O(1) by swapping with an empty tree (its nodes travel with it);
                    // the new lazy tree keeps the node's page limit.
                    let limit = self.nodes[n].lazy.page_source().limit;
                    let mut detached = BusyTree::new(NodeCache::new(Pages::new(limit)));
                    core::mem::swap(&mut detached, &mut self.nodes[n].lazy);
                    assert!(self.nodes[n].lazy.is_empty());
                    let mut areas = Vec::new();
                    let count = detached.drain(|a| areas.push(a));
                    let want: Vec<(u64, u64)> =
                        core::mem::take(&mut self.m.lazy[n]).into_iter().collect();
                    assert_eq!(count, want.len(), "{op:?}: drained count");
                    assert_eq!(
                        areas.iter().map(|a| (a.va_start, a.va_end)).collect::<Vec<_>>(),
                        want,
                        "{op:?}: drain order"
                    );
                    assert!(
                        detached.is_empty() && detached.bytes() == 0,
                        "{op:?}: drained tree not empty"
                    );
                    detached.check().unwrap_or_else(|e| panic!("{op:?}: drained tree: {e}"));
                    detached.shrink();
                    assert_eq!(
                        detached.page_source().live,
                        0,
                        "{op:?}: a drained and shrunk tree kept pages"
                    );
                    for a in areas {
                        let pages = ((a.va_end - a.va_start) / P) as usize;
                        if self.nodes[n].pool.pool_put(a.va_start, a.va_end) {
                            assert!(pages <= MAX_VA_SIZE_PAGES, "{op:?}: pooled {pages} pages");
                            self.m.pool[n]
                                .entry(pages - 1)
                                .or_default()
                                .push_front((a.va_start, a.va_end));
                        } else {
                            self.give_back(a.va_start, a.va_end);
                        }
                    }
                }
            }
            Op::Decay { node, full } => {
                let mut out = Vec::new();
                let n = self.nodes[node].pool.decay(full, |r| out.push((r.va_start, r.va_end)));
                let mut want = Vec::new();
                for list in self.m.pool[node].values_mut() {
                    let k = if full { list.len() } else { list.len() >> 2 };
                    want.extend(list.drain(..k));
                }
                assert_eq!((n, &out), (want.len(), &want), "{op:?}: decayed areas");
                for (s, e) in out {
                    self.give_back(s, e);
                }
            }
            Op::Shrink => {
                self.kva.shrink();
                for node in &mut self.nodes {
                    node.busy.shrink();
                    node.lazy.shrink();
                    node.pool.shrink();
                    assert_eq!(node.pool.slab_stats().empty_pages, 0);
                }
                assert_eq!(
                    self.kva.slab_stats().empty_pages,
                    0,
                    "{op:?}: empty slab pages after shrink"
                );
            }
            Op::DoubleFree { k, kind } => {
                // Ranges that are free (or busy elsewhere) must be refused with Overlap and
                // change nothing.
                let pick = |m: &BTreeMap<u64, u64>| {
                    m.iter().nth(k % m.len().max(1)).map(|(&s, &e)| (s, e))
                };
                match kind {
                    0 => {
                        if let Some((s, e)) = pick(&self.m.free) {
                            let (a, b) = (s + (e - s) / P / 2 * P, e);
                            assert_eq!(
                                self.kva.free(a.min(b - P), b),
                                Err(KvaError::Overlap),
                                "{op:?}"
                            );
                            if e < self.end {
                                assert_eq!(
                                    self.kva.free(e - P, e + P),
                                    Err(KvaError::Overlap),
                                    "{op:?}"
                                );
                            }
                        }
                    }
                    1 => {
                        if let Some((&s, &(e, node, _))) =
                            self.m.busy.iter().nth(k % self.m.busy.len().max(1))
                        {
                            assert_eq!(
                                self.nodes[node].busy.insert(s, e, 0),
                                Err(KvaError::Overlap),
                                "{op:?}"
                            );
                            assert_eq!(
                                self.nodes[node].busy.insert(e - P, e + P, 0),
                                Err(KvaError::Overlap),
                                "{op:?}"
                            );
                        }
                    }
                    2 => {
                        assert_eq!(
                            self.kva.free(self.start.wrapping_sub(P), self.start + P),
                            Err(KvaError::Invalid)
                        );
                        assert_eq!(
                            self.kva.free(self.end - P, self.end.saturating_add(P)),
                            Err(KvaError::Invalid)
                        );
                        assert_eq!(
                            self.kva.free(self.start + P, self.start + P),
                            Err(KvaError::Invalid)
                        );
                        assert_eq!(
                            self.kva.alloc(0, P, self.start, self.end),
                            Err(KvaError::Invalid)
                        );
                        assert_eq!(
                            self.kva.alloc(P, 3 * P, self.start, self.end),
                            Err(KvaError::Invalid)
                        );
                    }
                    _ => {
                        // Reserve of a range that is not entirely free.
                        if let Some((&s, &(e, _, _))) =
                            self.m.busy.iter().nth(k % self.m.busy.len().max(1))
                        {
                            assert_eq!(self.kva.reserve(s, e), Err(KvaError::NoSpace), "{op:?}");
                        }
                    }
                }
            }
            Op::Find { k, off } => {
                let addr = self.start + off * P / 4 % span + k as u64 % P;
                let want =
                    self.m.busy.range(..=addr).next_back().filter(|(_, &(e, _, _))| addr < e);
                for (n, node) in self.nodes.iter().enumerate() {
                    let got = node.busy.find(addr).map(|a| (a.va_start, a.va_end, a.value));
                    let exp =
                        want.filter(|(_, &(_, nn, _))| nn == n).map(|(&s, &(e, _, v))| (s, e, v));
                    assert_eq!(got, exp, "{op:?}: find({addr:#x}) on node {n}");
                }
            }
        }
    }
}

/// Runs one input. Panics (with the step and what differed) on any disagreement.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let conf = inp.u8();
    let span = [64 * MIB, 16 * MIB, 1 << 30, 256 * MIB][conf as usize % 4];
    // Node-cache page limits: unlimited, or a few pages (63 nodes each) to reach NoMemory.
    let limits = if conf & 0x10 != 0 {
        [
            1 + (conf as usize >> 5) % 3,
            1 + inp.u8() as usize % 2,
            1 + inp.u8() as usize % 2,
            usize::MAX,
        ]
    } else {
        [usize::MAX; 4]
    };
    let mut h = Harness::new(span, limits);
    h.verify(&"init");
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let op = decode(&mut inp);
        h.step(&op);
        h.quick(&op);
    }
    // Tear down: everything back to the free tree (unlimited node memory for the last step).
    h.kva.page_source_mut().limit = usize::MAX;
    let busy: Vec<(u64, u64, usize)> = h.m.busy.iter().map(|(&s, &(e, n, _))| (s, e, n)).collect();
    for (s, e, n) in busy {
        assert!(h.nodes[n].busy.remove(s).is_some());
        h.m.busy.remove(&s);
        h.give_back(s, e);
    }
    for n in 0..NODES {
        h.nodes[n].lazy.page_source_mut().limit = usize::MAX;
    }
    h.step(&Op::Purge);
    for n in 0..NODES {
        h.step(&Op::Decay { node: n, full: true });
    }
    h.verify(&"teardown");
    assert!(h.m.pending.is_empty(), "ranges still pending after teardown");
    let free: Vec<VaRange> = h.kva.iter_free().collect();
    assert_eq!(
        free,
        [VaRange { va_start: h.start, va_end: h.end }],
        "free tree not whole again after teardown"
    );
    h.kva.shrink();
    assert_eq!(h.kva.page_source().live, 1, "only the page holding the last free node stays");
    for node in &mut h.nodes {
        node.busy.shrink();
        node.lazy.shrink();
        node.pool.shrink();
        assert!(node.busy.is_empty() && node.lazy.is_empty() && node.pool.is_empty());
        for live in [
            node.busy.page_source().live,
            node.lazy.page_source().live,
            node.pool.page_source().live,
        ] {
            assert_eq!(live, 0, "node cache pages left after shrink");
        }
    }
}
