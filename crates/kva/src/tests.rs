//! Host tests: the free tree against an independent model (random runs and proptest), the
//! pools, the busy tree, slab accounting and `NoMemory` paths.

use super::*;
use mm_types::PAGE_SIZE;
use std::alloc::{alloc, dealloc, Layout};
use std::collections::BTreeMap;
use std::vec::Vec;

const P: u64 = PAGE_SIZE as u64;
const BASE: u64 = 0xffff_8000_0000_0000;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A page source over the host allocator counting outstanding pages, with an optional cap.
pub(super) struct TestPages {
    pub live: usize,
    pub total: usize,
    pub limit: usize,
}

impl TestPages {
    pub fn new() -> Self {
        TestPages { live: 0, total: 0, limit: usize::MAX }
    }
    pub fn limited(limit: usize) -> Self {
        TestPages { live: 0, total: 0, limit }
    }
    fn layout() -> Layout {
        Layout::from_size_align(SLAB_PAGE_SIZE, SLAB_PAGE_SIZE).unwrap()
    }
}

// SAFETY: pages come from the global allocator with a 4 KiB-aligned 4 KiB layout, owned by
// the caller until free_page gives them back to dealloc.
unsafe impl PageSource for TestPages {
    fn alloc_page(&mut self) -> Option<*mut u8> {
        if self.live >= self.limit {
            return None;
        }
        // SAFETY: the layout has a non-zero size (one slab page).
        let p = unsafe { alloc(Self::layout()) };
        if p.is_null() {
            return None;
        }
        self.live += 1;
        self.total += 1;
        Some(p)
    }
    unsafe fn free_page(&mut self, p: *mut u8) {
        assert_eq!(p as usize % SLAB_PAGE_SIZE, 0);
        // SAFETY: the node caches hand back only pages this source allocated (with this
        // layout) and still holds, each once.
        unsafe { dealloc(p, Self::layout()) };
        self.live -= 1;
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---- independent model (u128 arithmetic, BTreeMap of free ranges) -----------------------

use crate::model::{model_fit, model_fit_top, FreeRanges as Model};

struct Harness {
    kva: KvaAllocator<NodeCache<TestPages>>,
    model: Model,
    live: Vec<(u64, u64)>,
    start: u64,
    end: u64,
    allocs_ok: usize,
    allocs_nospace: usize,
    path_hits: usize,
    max_free_ranges: usize,
}

impl Harness {
    fn new(start: u64, end: u64) -> Self {
        let kva = KvaAllocator::new(start, end, NodeCache::new(TestPages::new())).unwrap();
        let mut model = Model::default();
        model.free.insert(start, end);
        let h = Harness {
            kva,
            model,
            live: Vec::new(),
            start,
            end,
            allocs_ok: 0,
            allocs_nospace: 0,
            path_hits: 0,
            max_free_ranges: 1,
        };
        h.verify();
        h
    }

    fn verify(&self) {
        self.kva.check().unwrap();
        let tree: Vec<(u64, u64)> = self.kva.iter_free().map(|r| (r.va_start, r.va_end)).collect();
        let model: Vec<(u64, u64)> = self.model.free.iter().map(|(&s, &e)| (s, e)).collect();
        assert_eq!(tree, model, "free tree differs from model");
        assert_eq!(self.kva.nr_free_ranges(), model.len());
        assert_eq!(self.kva.free_bytes(), model.iter().map(|(s, e)| e - s).sum::<u64>());
        assert_eq!(self.kva.largest_free(), model.iter().map(|(s, e)| e - s).max().unwrap_or(0));
        let st = self.kva.slab_stats();
        assert_eq!(st.objects_in_use, model.len());
        assert_eq!(st.pages, self.kva.page_source().live);
    }

    fn alloc(&mut self, size: u64, align: u64, vstart: u64, vend: u64) -> Result<u64, KvaError> {
        let got = self.kva.alloc(size, align, vstart, vend);
        let adjust = align > P && vend - vstart != size;
        let length: u128 = if adjust { size as u128 + align as u128 - 1 } else { size as u128 };
        // Lowest fitting block of at least `length`, and lowest fitting block at all.
        let mut strict: Option<(u64, u64, u64)> = None;
        let mut any: Option<(u64, u64, u64)> = None;
        for (&s, &e) in &self.model.free {
            if let Some(nva) = model_fit(s, e, size, align, vstart) {
                if any.is_none() {
                    any = Some((s, e, nva));
                }
                if (e - s) as u128 >= length {
                    strict = Some((s, e, nva));
                    break;
                }
            }
        }
        match got {
            Ok(nva) => {
                assert_eq!(nva % align, 0, "misaligned");
                assert!(
                    nva >= vstart && nva as u128 + size as u128 <= vend as u128,
                    "outside window"
                );
                let (bs, be) = self.model.block_containing(nva).expect("returned range not free");
                assert!(nva + size <= be, "returned range not free");
                assert_eq!(
                    model_fit(bs, be, size, align, vstart),
                    Some(nva),
                    "not the block's first aligned fit"
                );
                if let Some((ss, _, _)) = strict {
                    assert!(bs <= ss, "higher than the lowest block of the search length");
                    if (be - bs) as u128 >= length {
                        assert_eq!(bs, ss, "not the lowest block of the search length");
                    }
                }
                if !adjust {
                    assert_eq!(Some(nva), any.map(|a| a.2), "not the lowest fit");
                }
                if ((be - bs) as u128) < length {
                    self.path_hits += 1;
                }
                self.model.carve(nva, nva + size);
                self.live.push((nva, nva + size));
                self.allocs_ok += 1;
            }
            Err(KvaError::NoSpace) => {
                if let Some((_, _, nva)) = strict {
                    assert!(
                        nva as u128 + size as u128 > vend as u128,
                        "NoSpace but the model fits at {nva:#x}"
                    );
                }
                self.allocs_nospace += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
        self.verify();
        got
    }

    fn alloc_top(
        &mut self,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
    ) -> Result<u64, KvaError> {
        let got = self.kva.alloc_top_down(size, align, vstart, vend);
        let expect = self
            .model
            .free
            .iter()
            .rev()
            .find_map(|(&s, &e)| model_fit_top(s, e, size, align, vstart, vend));
        match (got, expect) {
            (Ok(a), Some(b)) => {
                assert_eq!(a, b, "top-down not the highest fit");
                self.model.carve(a, a + size);
                self.live.push((a, a + size));
                self.allocs_ok += 1;
            }
            (Err(KvaError::NoSpace), None) => self.allocs_nospace += 1,
            (g, e) => panic!("top-down got {g:x?} expected {e:x?}"),
        }
        self.verify();
        got
    }

    fn free_idx(&mut self, i: usize) {
        let (s, e) = self.live.swap_remove(i);
        self.kva.free(s, e).unwrap();
        self.model.release(s, e);
        self.verify();
    }

    fn double_free(&mut self, i: usize) {
        let (s, e) = self.live.swap_remove(i);
        self.kva.free(s, e).unwrap();
        self.model.release(s, e);
        assert_eq!(self.kva.free(s, e), Err(KvaError::Overlap));
        // Partly overlapping the free block that now contains it.
        let (bs, be) = self.model.block_containing(s).unwrap();
        if bs >= self.start + P {
            assert_eq!(self.kva.free(bs - P, bs + P), Err(KvaError::Overlap));
        }
        if be + P <= self.end {
            assert_eq!(self.kva.free(be - P, be + P), Err(KvaError::Overlap));
        }
        self.verify();
    }

    fn free_all(&mut self) {
        while !self.live.is_empty() {
            self.free_idx(self.live.len() - 1);
        }
        assert_eq!(
            self.kva.iter_free().collect::<Vec<_>>(),
            [VaRange { va_start: self.start, va_end: self.end }]
        );
        self.kva.shrink();
        assert_eq!(self.kva.page_source().live, 1, "only the page holding the last node stays");
        assert_eq!(
            self.kva.slab_stats(),
            SlabStats { pages: 1, objects_in_use: 1, empty_pages: 0 }
        );
    }
}

fn random_align(rng: &mut Rng) -> u64 {
    match rng.below(100) {
        0..=54 => P,
        55..=64 => 1 << rng.below(12),        // <= PAGE_SIZE as u64
        65..=94 => 1 << (13 + rng.below(10)), // 8 KiB .. 4 MiB
        95..=98 => 1 << (23 + rng.below(8)),  // 8 MiB .. 1 GiB
        _ => 1 << [40u64, 47, 48, 63][rng.below(4) as usize],
    }
}

fn random_size(rng: &mut Rng) -> u64 {
    match rng.below(100) {
        0..=89 => (1 + rng.below(1024)) * P,
        90..=98 => (1 + rng.below(16384)) * P, // up to 64 MiB
        _ => (1 + rng.below(4)) * GIB,
    }
}

fn random_window(rng: &mut Rng, h: &Harness, size: u64, align: u64) -> (u64, u64) {
    let span = h.end - h.start;
    match rng.below(100) {
        0..=74 => (h.start, h.end),
        75..=89 => {
            let a = h.start + rng.below(span / P) * P;
            let b = (a + size + rng.below(span / P / 2) * P).min(h.end);
            if a < b {
                (a, b)
            } else {
                (h.start, h.end)
            }
        }
        90..=94 => {
            // Window of exactly `size` (the "no adjustment" special case).
            let a = h.start + rng.below(span / P) * P;
            let a = a.div_ceil(align.max(1)).saturating_mul(align.max(1));
            match a.checked_add(size) {
                Some(b) if a >= h.start && b <= h.end => (a, b),
                _ => (h.start, h.end),
            }
        }
        _ => (h.start.saturating_sub(GIB), h.end.saturating_add(GIB).max(h.end)),
    }
}

fn run_random(seed: u64, ops: usize, start: u64, end: u64) -> Harness {
    let mut rng = Rng(seed);
    let mut h = Harness::new(start, end);
    for op in 0..ops {
        // Phases: grow, churn, shrink.
        let alloc_pct = match op * 3 / ops {
            0 => 70,
            1 => 50,
            _ => 35,
        };
        if h.live.is_empty() || rng.chance(alloc_pct) {
            let size = random_size(&mut rng);
            let align = random_align(&mut rng);
            let (vs, ve) = random_window(&mut rng, &h, size, align);
            if rng.chance(6) {
                let _ = h.alloc_top(size, align, vs, ve);
            } else if rng.chance(3) && !h.model.free.is_empty() {
                // Reserve a random sub-range of a random free block, and a busy one.
                let k = rng.below(h.model.free.len() as u64) as usize;
                let (&s, &e) = h.model.free.iter().nth(k).unwrap();
                let pages = (e - s) / P;
                let a = s + rng.below(pages) * P;
                let b = a + (1 + rng.below(((e - a) / P).min(64))) * P;
                h.kva.reserve(a, b).unwrap();
                h.model.carve(a, b);
                h.live.push((a, b));
                h.verify();
                if let Some(&(ls, le)) = h.live.first() {
                    assert_eq!(h.kva.reserve(ls, le), Err(KvaError::NoSpace));
                }
            } else {
                let _ = h.alloc(size, align, vs, ve);
            }
        } else if rng.chance(2) {
            let i = rng.below(h.live.len() as u64) as usize;
            h.double_free(i);
        } else {
            let i = rng.below(h.live.len() as u64) as usize;
            h.free_idx(i);
        }
        h.max_free_ranges = h.max_free_ranges.max(h.kva.nr_free_ranges());
    }
    h
}

#[test]
fn kva_model_random_16g() {
    let mut total_ok = 0;
    let mut total_nospace = 0;
    let mut path_hits = 0;
    let mut max_free = 0;
    for seed in
        [0x1234_5678_9abc_def1u64, 0xdead_beef_cafe_f00d, 42, 0x0bad_5eed, 0x7777_aaaa_0000_0001]
    {
        let mut h = run_random(seed, 10_000, BASE, BASE + 16 * GIB);
        total_ok += h.allocs_ok;
        total_nospace += h.allocs_nospace;
        path_hits += h.path_hits;
        max_free = max_free.max(h.max_free_ranges);
        h.free_all();
    }
    assert!(total_ok > 20_000, "{total_ok}");
    assert!(total_nospace > 10, "{total_nospace}");
    assert!(max_free > 500, "tree never got big: {max_free}");
    std::println!("ok {total_ok} nospace {total_nospace} on-path smaller-than-length hits {path_hits} max free ranges {max_free}");
}

#[test]
fn kva_model_random_small_range() {
    // 256 MiB: frequent NoSpace and fragmentation.
    for seed in [7u64, 99, 0x5eed] {
        let mut h = run_random(seed, 4000, BASE, BASE + 256 * MIB);
        assert!(h.allocs_nospace > 50);
        h.free_all();
    }
}

#[test]
fn kva_invalid_arguments() {
    let mut a = KvaAllocator::new(BASE, BASE + 16 * GIB, NodeCache::new(TestPages::new())).unwrap();
    assert_eq!(a.alloc(0, P, BASE, BASE + GIB), Err(KvaError::Invalid));
    assert_eq!(a.alloc(P, 3 * P, BASE, BASE + GIB), Err(KvaError::Invalid));
    assert_eq!(a.alloc(P, 0, BASE, BASE + GIB), Err(KvaError::Invalid));
    assert_eq!(a.alloc(P, P, BASE + GIB, BASE + GIB), Err(KvaError::Invalid));
    assert_eq!(a.alloc(P, P, BASE + GIB, BASE), Err(KvaError::Invalid));
    assert_eq!(a.alloc(u64::MAX - 10, 1 << 63, 0, u64::MAX), Err(KvaError::Invalid));
    assert_eq!(a.alloc_top_down(0, P, BASE, BASE + GIB), Err(KvaError::Invalid));
    assert_eq!(a.free(BASE, BASE), Err(KvaError::Invalid));
    assert_eq!(a.free(BASE - P, BASE), Err(KvaError::Invalid));
    assert_eq!(a.free(BASE + 16 * GIB, BASE + 16 * GIB + P), Err(KvaError::Invalid));
    assert_eq!(a.reserve(BASE - P, BASE + P), Err(KvaError::Invalid));
    assert_eq!(a.init(0, P), Err(KvaError::Invalid), "double init");
    assert!(KvaAllocator::new(P, P, NodeCache::new(TestPages::new())).is_err());
    // Larger than the window or the whole range.
    assert_eq!(a.alloc(2 * P, P, BASE, BASE + P), Err(KvaError::NoSpace));
    assert_eq!(a.alloc(32 * GIB, P, BASE, BASE + 64 * GIB), Err(KvaError::NoSpace));
    a.check().unwrap();
    assert_eq!(a.nr_free_ranges(), 1);
}

#[test]
fn kva_huge_alignment_no_overflow() {
    let end = BASE + 16 * GIB;
    let mut a = KvaAllocator::new(BASE, end, NodeCache::new(TestPages::new())).unwrap();
    // BASE = 2^64 - 2^47: aligning it up to 2^48 or more overflows u64.
    for shift in [48u32, 50, 56, 62, 63] {
        assert_eq!(a.alloc(P, 1 << shift, BASE, end), Err(KvaError::NoSpace), "align 2^{shift}");
        assert_eq!(
            a.alloc_top_down(P, 1 << shift, BASE, end),
            Err(KvaError::NoSpace),
            "align 2^{shift}"
        );
        assert_eq!(a.alloc(P, 1 << shift, 0, u64::MAX), Err(KvaError::NoSpace), "align 2^{shift}");
    }
    // Larger than the whole range but BASE itself is 2^47 (so 2^40) aligned: the first
    // succeeds at BASE, the next has no aligned spot.
    assert_eq!(a.alloc(P, 1 << 40, BASE, end), Ok(BASE));
    assert_eq!(a.alloc(P, 1 << 40, BASE, end), Err(KvaError::NoSpace));
    assert_eq!(a.alloc_top_down(P, 1 << 40, BASE, end), Err(KvaError::NoSpace));
    // A window starting near the top of the address space.
    assert_eq!(a.alloc(P, 1 << 20, u64::MAX - P, u64::MAX), Err(KvaError::NoSpace));
    a.check().unwrap();
    a.free(BASE, BASE + P).unwrap();
    assert_eq!(a.iter_free().collect::<Vec<_>>(), [VaRange { va_start: BASE, va_end: end }]);
}

fn ranges(a: &KvaAllocator<NodeCache<TestPages>>) -> Vec<(u64, u64)> {
    a.iter_free().map(|r| (r.va_start, r.va_end)).collect()
}

#[test]
fn kva_clip_cases() {
    assert_eq!(classify_va_fit_type(10, 20, 10, 10), FitType::Full);
    assert_eq!(classify_va_fit_type(10, 20, 10, 5), FitType::LeftEdge);
    assert_eq!(classify_va_fit_type(10, 20, 15, 5), FitType::RightEdge);
    assert_eq!(classify_va_fit_type(10, 20, 12, 5), FitType::NoEdge);
    assert_eq!(classify_va_fit_type(10, 20, 9, 5), FitType::Nothing);
    assert_eq!(classify_va_fit_type(10, 20, 16, 5), FitType::Nothing);
    assert_eq!(classify_va_fit_type(10, 20, u64::MAX, 5), FitType::Nothing);

    let (s, e) = (BASE, BASE + 16 * P);
    // FL: the whole block.
    let mut a = KvaAllocator::new(s, e, NodeCache::new(TestPages::new())).unwrap();
    assert_eq!(a.alloc(16 * P, P, s, e), Ok(s));
    assert_eq!(a.nr_free_ranges(), 0);
    assert_eq!(a.largest_free(), 0);
    assert_eq!(a.slab_stats().objects_in_use, 0);
    assert_eq!(a.alloc(P, P, s, e), Err(KvaError::NoSpace));
    a.check().unwrap();
    a.free(s, e).unwrap();
    assert_eq!(ranges(&a), [(s, e)]);
    // LE: lowest page.
    assert_eq!(a.alloc(P, P, s, e), Ok(s));
    assert_eq!(ranges(&a), [(s + P, e)]);
    // RE: window forces the top page.
    assert_eq!(a.alloc(P, P, e - P, e), Ok(e - P));
    assert_eq!(ranges(&a), [(s + P, e - P)]);
    // NE: a page in the middle needs a second node.
    assert_eq!(a.alloc(P, P, s + 4 * P, e), Ok(s + 4 * P));
    assert_eq!(ranges(&a), [(s + P, s + 4 * P), (s + 5 * P, e - P)]);
    assert_eq!(a.slab_stats().objects_in_use, 2);
    assert_eq!(a.free_bytes(), 13 * P);
    assert_eq!(a.largest_free(), 10 * P);
    a.check().unwrap();
    // NE through alignment.
    assert_eq!(a.alloc(P, 8 * P, s, e), Ok(s + 8 * P));
    assert_eq!(ranges(&a), [(s + P, s + 4 * P), (s + 5 * P, s + 8 * P), (s + 9 * P, e - P)]);
    // Merges: next only, prev only, both.
    a.free(s + 8 * P, s + 9 * P).unwrap(); // both sides
    assert_eq!(ranges(&a), [(s + P, s + 4 * P), (s + 5 * P, e - P)]);
    a.free(s, s + P).unwrap(); // next only
    assert_eq!(ranges(&a), [(s, s + 4 * P), (s + 5 * P, e - P)]);
    a.free(e - P, e).unwrap(); // prev only
    assert_eq!(ranges(&a), [(s, s + 4 * P), (s + 5 * P, e)]);
    a.free(s + 4 * P, s + 5 * P).unwrap();
    assert_eq!(ranges(&a), [(s, e)]);
    a.check().unwrap();
    // Insert without merge.
    a.reserve(s, e).unwrap();
    a.free(s + 2 * P, s + 3 * P).unwrap();
    a.free(s + 6 * P, s + 7 * P).unwrap();
    assert_eq!(ranges(&a), [(s + 2 * P, s + 3 * P), (s + 6 * P, s + 7 * P)]);
    a.check().unwrap();
}

#[test]
fn kva_double_free_rejected() {
    let (s, e) = (BASE, BASE + GIB);
    let mut a = KvaAllocator::new(s, e, NodeCache::new(TestPages::new())).unwrap();
    let x = a.alloc(4 * P, P, s, e).unwrap();
    let y = a.alloc(4 * P, P, s, e).unwrap();
    a.free(x, x + 4 * P).unwrap();
    let before = ranges(&a);
    assert_eq!(a.free(x, x + 4 * P), Err(KvaError::Overlap));
    assert_eq!(a.free(x + P, x + 2 * P), Err(KvaError::Overlap));
    assert_eq!(a.free(x + 3 * P, y + P), Err(KvaError::Overlap));
    assert_eq!(a.free(y + 2 * P, y + 6 * P), Err(KvaError::Overlap)); // into the big block
    assert_eq!(a.free(s, e), Err(KvaError::Overlap));
    assert_eq!(ranges(&a), before);
    a.check().unwrap();
    a.free(y, y + 4 * P).unwrap();
    assert_eq!(ranges(&a), [(s, e)]);
}

#[test]
fn kva_top_down() {
    let (s, e) = (BASE, BASE + GIB);
    let mut a = KvaAllocator::new(s, e, NodeCache::new(TestPages::new())).unwrap();
    assert_eq!(a.alloc_top_down(P, P, s, e), Ok(e - P));
    assert_eq!(a.alloc_top_down(3 * P, 2 * MIB, s, e), Ok(e - 2 * MIB));
    // The gap [e - 2M + 3P, e - P) is below the top but above the previous aligned spot.
    assert_eq!(a.alloc_top_down(2 * P, P, s, e), Ok(e - 3 * P));
    assert_eq!(a.alloc_top_down(P, P, s, e - 4 * MIB), Ok(e - 4 * MIB - P));
    assert_eq!(a.alloc_top_down(GIB, P, s, e), Err(KvaError::NoSpace));
    assert_eq!(a.alloc_top_down(P, 1 << 40, s, e), Ok(s), "BASE is 2^47 aligned");
    assert_eq!(a.alloc(P, P, s, e), Ok(s + P), "bottom-up is unaffected");
    a.check().unwrap();
    // Highest fit skips a high block that is too small.
    let (s2, e2) = (BASE, BASE + 64 * P);
    let mut b = KvaAllocator::new(s2, e2, NodeCache::new(TestPages::new())).unwrap();
    b.reserve(s2, e2).unwrap();
    b.free(s2 + 2 * P, s2 + 10 * P).unwrap();
    b.free(s2 + 20 * P, s2 + 22 * P).unwrap();
    b.free(s2 + 40 * P, s2 + 43 * P).unwrap();
    assert_eq!(b.alloc_top_down(4 * P, P, s2, e2), Ok(s2 + 6 * P));
    assert_eq!(b.alloc_top_down(2 * P, 2 * P, s2, e2), Ok(s2 + 40 * P));
    assert_eq!(b.alloc_top_down(P, P, s2, s2 + 22 * P), Ok(s2 + 21 * P));
    b.check().unwrap();
}

#[test]
fn kva_search_length_rule() {
    // Blocks: [P, 4P) small but alignable, [16P, 40P) big. align 2P, size 2P:
    // adjusted length 2P + 2P - 1 = 4P-1 > 3P.
    let (s, e) = (BASE, BASE + 64 * P);
    let mut a = KvaAllocator::new(s, e, NodeCache::new(TestPages::new())).unwrap();
    a.reserve(s, e).unwrap();
    a.free(s + 16 * P, s + 40 * P).unwrap();
    a.free(s + P, s + 4 * P).unwrap();
    // The big block is the root and the small one its left child. The left subtree cannot
    // hold the length, so the search does not descend into it although s + 2P would fit:
    // the big block is taken (as in Linux).
    assert_eq!(a.alloc(2 * P, 2 * P, s, e), Ok(s + 16 * P));
    // With align <= PAGE_SIZE no adjustment: the lowest fit.
    assert_eq!(a.alloc(2 * P, P, s, e), Ok(s + P));
    // A window of exactly the size disables the adjustment.
    let mut b = KvaAllocator::new(s, e, NodeCache::new(TestPages::new())).unwrap();
    assert_eq!(b.alloc(8 * P, 8 * P, s + 8 * P, s + 16 * P), Ok(s + 8 * P));
    b.check().unwrap();
}

#[test]
fn kva_no_memory_leaves_tree_intact() {
    let (s, e) = (BASE, BASE + GIB);
    let mut a = KvaAllocator::new(s, e, NodeCache::new(TestPages::limited(1))).unwrap();
    // Every other page busy: each alloc is an NE split needing one more node.
    let mut n = 0u64;
    loop {
        let at = s + (2 * n + 1) * P;
        let before = ranges(&a);
        match a.alloc(P, P, at, e) {
            Ok(x) => assert_eq!(x, at),
            Err(err) => {
                assert_eq!(err, KvaError::NoMemory);
                assert_eq!(ranges(&a), before, "failed NE split changed the tree");
                break;
            }
        }
        n += 1;
    }
    assert_eq!(n as usize, OBJS_PER_PAGE - 1);
    assert_eq!(a.nr_free_ranges(), OBJS_PER_PAGE);
    a.check().unwrap();
    // RE and LE clips need no node.
    let tail = s + 2 * n * P;
    a.reserve(e - 3 * P, e).unwrap();
    a.reserve(tail, tail + P).unwrap();
    a.check().unwrap();
    // A free touching no free block needs a node: refused, nothing changed.
    let before = ranges(&a);
    assert_eq!(a.free(e - 2 * P, e - P), Err(KvaError::NoMemory));
    assert_eq!(ranges(&a), before);
    a.check().unwrap();
    // FL releases a node; then the same free succeeds.
    assert_eq!(a.alloc(P, P, s, e), Ok(s));
    a.free(e - 2 * P, e - P).unwrap();
    // Merging frees need none: both sides, prev only, next only.
    a.free(e - 3 * P, e - 2 * P).unwrap();
    a.free(e - P, e).unwrap();
    a.free(tail, tail + P).unwrap();
    assert_eq!(*ranges(&a).last().unwrap(), (tail, e));
    a.check().unwrap();
    assert_eq!(a.slab_stats().pages, 1);
    assert_eq!(a.page_source().live, 1);
}

#[test]
fn kva_slab_shrink_and_const_static() {
    let (s, e) = (BASE, BASE + 16 * GIB);
    let mut a = KvaAllocator::empty(NodeCache::new(TestPages::new()));
    assert_eq!(a.alloc(P, P, s, e), Err(KvaError::NoSpace));
    a.init(s, e).unwrap();
    let mut held = Vec::new();
    for i in 0..2000u64 {
        // Every other page: 2000 NE splits -> ~2000 nodes -> 32 pages.
        held.push(a.alloc(P, P, s + (2 * i + 1) * P, e).unwrap());
    }
    let st = a.slab_stats();
    assert_eq!(st.objects_in_use, 2001);
    assert_eq!(st.pages, 2001usize.div_ceil(OBJS_PER_PAGE));
    assert_eq!(a.page_source().live, st.pages);
    for x in held {
        a.free(x, x + P).unwrap();
    }
    assert_eq!(ranges(&a), [(s, e)]);
    let st = a.slab_stats();
    assert_eq!(st.objects_in_use, 1);
    assert_eq!(st.empty_pages, st.pages - 1);
    assert_eq!(a.shrink(), st.pages - 1);
    assert_eq!(a.page_source().live, 1);
    assert_eq!(a.shrink(), 0);
    drop(a);

    // Statics: const construction, Send.
    struct Null;
    // SAFETY: hands out no pages.
    unsafe impl PageSource for Null {
        fn alloc_page(&mut self) -> Option<*mut u8> {
            None
        }
        unsafe fn free_page(&mut self, _: *mut u8) {}
    }
    static KVA: spin::Mutex<KvaAllocator<NodeCache<Null>>> =
        spin::Mutex::new(KvaAllocator::empty(NodeCache::new(Null)));
    static BUSY: spin::Mutex<BusyTree<NodeCache<Null>>> =
        spin::Mutex::new(BusyTree::new(NodeCache::new(Null)));
    static POOL: spin::Mutex<VaPool<NodeCache<Null>>> =
        spin::Mutex::new(VaPool::new(NodeCache::new(Null)));
    assert_eq!(KVA.lock().init(s, e), Err(KvaError::NoMemory));
    assert_eq!(BUSY.lock().insert(s, e, 1), Err(KvaError::NoMemory));
    assert!(!POOL.lock().pool_put(s, s + P));
}

// ---- pools -------------------------------------------------------------------------------

#[test]
fn pool_put_get_by_size() {
    let mut p = VaPool::new(NodeCache::new(TestPages::new()));
    assert!(p.pool_put(BASE, BASE + 2 * P));
    assert!(p.pool_put(BASE + 8 * P, BASE + 10 * P));
    assert!(p.pool_put(BASE + 16 * P, BASE + 17 * P));
    assert!(p.pool_put(BASE + 32 * P, BASE + (32 + 256) * P), "256 pages is the largest");
    assert!(!p.pool_put(BASE, BASE + 257 * P), "too big");
    assert!(!p.pool_put(BASE, BASE + P + 1), "not whole pages");
    assert!(!p.pool_put(BASE, BASE));
    assert_eq!(p.nr_areas(), 4);
    assert_eq!(p.bytes(), (2 + 2 + 1 + 256) * P);
    assert_eq!(p.len_of(2 * P), 2);
    p.check().unwrap();
    // LIFO within a size, exact size only.
    assert_eq!(p.pool_get(3 * P, P), None);
    assert_eq!(
        p.pool_get(2 * P, P),
        Some(VaRange { va_start: BASE + 8 * P, va_end: BASE + 10 * P })
    );
    assert_eq!(p.pool_get(2 * P, P), Some(VaRange { va_start: BASE, va_end: BASE + 2 * P }));
    assert_eq!(p.pool_get(2 * P, P), None);
    assert_eq!(p.pool_get(P, P).unwrap().va_start, BASE + 16 * P);
    assert_eq!(p.pool_get(256 * P, P).unwrap().size(), 256 * P);
    assert_eq!(p.pool_get(257 * P, P), None);
    assert_eq!(p.pool_get(P + 1, 1), None);
    assert_eq!(p.pool_get(0, P), None);
    assert!(p.is_empty());
    assert_eq!(p.bytes(), 0);
    p.check().unwrap();
    p.shrink();
    assert_eq!(p.page_source().live, 0);
}

#[test]
fn pool_misaligned_head_rotates() {
    let mut p = VaPool::new(NodeCache::new(TestPages::new()));
    let aligned = BASE + 64 * 1024;
    let misaligned = BASE + P;
    assert!(p.pool_put(aligned, aligned + 4 * P));
    assert!(p.pool_put(misaligned, misaligned + 4 * P)); // head
    assert_eq!(p.pool_get(4 * P, 64 * 1024), None, "misaligned head: rotated, give up");
    assert_eq!(p.len_of(4 * P), 2);
    assert_eq!(
        p.pool_get(4 * P, 64 * 1024),
        Some(VaRange { va_start: aligned, va_end: aligned + 4 * P })
    );
    assert_eq!(p.pool_get(4 * P, 64 * 1024), None, "only the misaligned one is left");
    assert_eq!(p.len_of(4 * P), 1);
    assert_eq!(
        p.pool_get(4 * P, P),
        Some(VaRange { va_start: misaligned, va_end: misaligned + 4 * P })
    );
    assert_eq!(p.pool_get(4 * P, 3), None, "align not a power of two");
    p.check().unwrap();
}

#[test]
fn pool_decay_quarter_and_full() {
    let mut p = VaPool::new(NodeCache::new(TestPages::new()));
    for i in 0..10 {
        assert!(p.pool_put(BASE + i * 16 * P, BASE + i * 16 * P + P));
    }
    for i in 0..3 {
        assert!(p.pool_put(BASE + GIB + i * 16 * P, BASE + GIB + i * 16 * P + 3 * P));
    }
    for i in 0..100 {
        assert!(p.pool_put(BASE + 2 * GIB + i * 512 * P, BASE + 2 * GIB + i * 512 * P + 256 * P));
    }
    let mut out = Vec::new();
    assert_eq!(p.decay(false, |r| out.push(r)), 2 + 25, "10 >> 2 + 3 >> 2 (none) + 100 >> 2");
    // From the head: the most recently put.
    assert_eq!(out[0], VaRange { va_start: BASE + 9 * 16 * P, va_end: BASE + 9 * 16 * P + P });
    assert_eq!(p.len_of(P), 8);
    assert_eq!(p.len_of(3 * P), 3);
    assert_eq!(p.len_of(256 * P), 75);
    p.check().unwrap();
    out.clear();
    assert_eq!(p.decay(false, |r| out.push(r)), 2 + 18, "3-page list (3 areas) untouched");
    let n = p.nr_areas();
    out.clear();
    assert_eq!(p.decay(true, |r| out.push(r)), n);
    assert_eq!(out.len(), n);
    assert!(p.is_empty());
    assert_eq!(p.bytes(), 0);
    p.check().unwrap();
    p.shrink();
    assert_eq!(p.page_source().live, 0);
}

#[test]
fn pool_roundtrip_merges_back_into_one_range() {
    let (s, e) = (BASE, BASE + 16 * GIB);
    let mut kva = KvaAllocator::new(s, e, NodeCache::new(TestPages::new())).unwrap();
    let mut pools = [
        VaPool::new(NodeCache::new(TestPages::new())),
        VaPool::new(NodeCache::new(TestPages::new())),
    ];
    let mut rng = Rng(0x9001);
    let mut live = Vec::new();
    for round in 0..30 {
        // vmalloc-like: pool first, then the tree; sizes include a guard page.
        for _ in 0..200 {
            let node = rng.below(2) as usize;
            let size = (2 + rng.below(300)) * P;
            let align = if rng.chance(20) { 16 * P } else { P };
            let r = match pools[node].pool_get(size, align) {
                Some(r) => r,
                None => {
                    let a = kva.alloc(size, align, s, e).unwrap();
                    VaRange { va_start: a, va_end: a + size }
                }
            };
            assert_eq!(r.size(), size);
            assert_eq!(r.va_start % align, 0);
            live.push((node, r));
        }
        // "purge": decay the pools, then put freed areas in their node's pool or the tree.
        for p in pools.iter_mut() {
            p.decay(round % 7 == 6, |r| kva.free(r.va_start, r.va_end).unwrap());
        }
        let nfree = live.len() / 2 + rng.below(live.len() as u64 / 2) as usize;
        for _ in 0..nfree {
            let i = rng.below(live.len() as u64) as usize;
            let (node, r) = live.swap_remove(i);
            if !pools[node].pool_put(r.va_start, r.va_end) {
                kva.free(r.va_start, r.va_end).unwrap();
            }
        }
        kva.check().unwrap();
        for p in &pools {
            p.check().unwrap();
        }
        // Nothing handed out twice: pool + tree + live cover disjoint ranges.
        let mut all: Vec<(u64, u64)> = live.iter().map(|(_, r)| (r.va_start, r.va_end)).collect();
        all.extend(kva.iter_free().map(|r| (r.va_start, r.va_end)));
        let pooled: u64 = pools.iter().map(|p| p.bytes()).sum();
        all.sort_unstable();
        for w in all.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap {w:x?}");
        }
        let covered: u64 = all.iter().map(|(a, b)| b - a).sum();
        assert_eq!(covered + pooled, e - s);
    }
    for (_, r) in live.drain(..) {
        kva.free(r.va_start, r.va_end).unwrap();
    }
    for p in pools.iter_mut() {
        p.decay(true, |r| kva.free(r.va_start, r.va_end).unwrap());
        assert!(p.is_empty());
        p.shrink();
        assert_eq!(p.page_source().live, 0);
    }
    assert_eq!(ranges(&kva), [(s, e)]);
    kva.check().unwrap();
    kva.shrink();
    assert_eq!(kva.page_source().live, 1);
}

// ---- busy tree ---------------------------------------------------------------------------

#[test]
fn busy_tree_model() {
    let mut t = BusyTree::new(NodeCache::new(TestPages::new()));
    let mut model: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut rng = Rng(0xb05e);
    let slot = 16 * P;
    for op in 0..20000u64 {
        let k = rng.below(4096);
        let start = BASE + k * slot + rng.below(4) * P;
        let end = start + (1 + rng.below(12)) * P;
        match rng.below(10) {
            0..=4 => {
                let overlaps = model.range(..end).next_back().is_some_and(|(_, &(e, _))| e > start);
                let r = t.insert(start, end, op);
                if overlaps {
                    assert_eq!(r, Err(KvaError::Overlap));
                } else {
                    r.unwrap();
                    model.insert(start, (end, op));
                }
            }
            5..=6 => {
                let exp = model.remove(&start).map(|(e, v)| BusyArea {
                    va_start: start,
                    va_end: e,
                    value: v,
                });
                assert_eq!(t.remove(start), exp);
            }
            7 => {
                let addr = start + rng.below(8 * P);
                let exp = model
                    .range(..=addr)
                    .next_back()
                    .filter(|(_, &(e, _))| addr < e)
                    .map(|(&s, &(e, v))| (s, e, v));
                let got = t.remove_containing(addr);
                assert_eq!(got.map(|a| (a.va_start, a.va_end, a.value)), exp);
                if let Some((s, _, _)) = exp {
                    model.remove(&s);
                }
            }
            _ => {
                let addr = start + rng.below(8 * P);
                let exp = model
                    .range(..=addr)
                    .next_back()
                    .filter(|(_, &(e, _))| addr < e)
                    .map(|(&s, &(e, v))| (s, e, v));
                assert_eq!(t.find(addr).map(|a| (a.va_start, a.va_end, a.value)), exp);
            }
        }
        if op % 97 == 0 {
            t.check().unwrap();
            let got: Vec<(u64, u64, u64)> =
                t.iter().map(|a| (a.va_start, a.va_end, a.value)).collect();
            let exp: Vec<(u64, u64, u64)> = model.iter().map(|(&s, &(e, v))| (s, e, v)).collect();
            assert_eq!(got, exp);
            assert_eq!(t.first().map(|a| a.va_start), model.keys().next().copied());
            assert_eq!(t.last().map(|a| a.va_start), model.keys().next_back().copied());
        }
    }
    t.check().unwrap();
    assert_eq!(t.len(), model.len());
    assert!(t.set_value(*model.keys().next().unwrap(), 77));
    assert_eq!(t.first().unwrap().value, 77);
    model.values_mut().next().unwrap().1 = 77;
    // Drain in address order.
    let mut drained = Vec::new();
    let n = t.drain(|a| drained.push((a.va_start, a.va_end, a.value)));
    let exp: Vec<(u64, u64, u64)> = model.iter().map(|(&s, &(e, v))| (s, e, v)).collect();
    assert_eq!(n, exp.len());
    assert_eq!(drained, exp);
    assert!(t.is_empty());
    assert_eq!(t.bytes(), 0);
    t.check().unwrap();
    t.shrink();
    assert_eq!(t.page_source().live, 0);
}

#[test]
fn busy_tree_pop_first_and_swap_detach() {
    let mut lazy = BusyTree::new(NodeCache::new(TestPages::new()));
    let mut purge = BusyTree::new(NodeCache::new(TestPages::new()));
    for i in (0..500u64).rev() {
        lazy.insert(BASE + i * 4 * P, BASE + i * 4 * P + 2 * P, i).unwrap();
    }
    assert_eq!(lazy.insert(BASE + P, BASE + 3 * P, 0), Err(KvaError::Overlap));
    assert_eq!(lazy.insert(BASE, BASE, 0), Err(KvaError::Invalid));
    // Detach in O(1) (Linux list_replace_init of the lazy list).
    core::mem::swap(&mut lazy, &mut purge);
    assert!(lazy.is_empty());
    assert_eq!(purge.len(), 500);
    assert_eq!(purge.first().unwrap().va_start, BASE);
    assert_eq!(purge.last().unwrap().va_end, BASE + 499 * 4 * P + 2 * P);
    lazy.insert(BASE, BASE + P, 9).unwrap();
    for i in 0..500u64 {
        let a = purge.pop_first().unwrap();
        assert_eq!(a.value, i);
        if i % 50 == 0 {
            purge.check().unwrap();
        }
    }
    assert_eq!(purge.pop_first(), None);
    lazy.check().unwrap();
}

// ---- proptest ----------------------------------------------------------------------------

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Alloc { pages: u64, align_shift: u32, window: u8, top: bool },
        Free { idx: usize },
        DoubleFree { idx: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (1u64..=300, 0u32..=24, 0u8..8, proptest::bool::weighted(0.15))
                .prop_map(|(pages, align_shift, window, top)| Op::Alloc { pages, align_shift, window, top }),
            3 => any::<usize>().prop_map(|idx| Op::Free { idx }),
            1 => any::<usize>().prop_map(|idx| Op::DoubleFree { idx }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn kva_prop_agrees_with_model(ops in proptest::collection::vec(op(), 1..250)) {
            let (s, e) = (BASE, BASE + 64 * MIB);
            let mut h = Harness::new(s, e);
            for op in ops {
                match op {
                    Op::Alloc { pages, align_shift, window, top } => {
                        let size = pages * P;
                        let align = 1u64 << align_shift;
                        let (vs, ve) = match window {
                            0..=4 => (s, e),
                            5 => (s + 8 * MIB, e - 8 * MIB),
                            6 => (s + 8 * MIB, s + 8 * MIB + size),
                            _ => (s + MIB + P, e),
                        };
                        if top {
                            let _ = h.alloc_top(size, align, vs, ve);
                        } else {
                            let _ = h.alloc(size, align, vs, ve);
                        }
                    }
                    Op::Free { idx } if !h.live.is_empty() => {
                        let i = idx % h.live.len();
                        h.free_idx(i);
                    }
                    Op::DoubleFree { idx } if !h.live.is_empty() => {
                        let i = idx % h.live.len();
                        h.double_free(i);
                    }
                    _ => {}
                }
            }
            h.free_all();
        }
    }
}

// ---- areas that move with their node (a shared node source) ----------------------------

std::thread_local! {
    /// The one node cache behind [`Shared`] on this test thread.
    static SHARED: std::cell::RefCell<NodeCache<TestPages>> =
        std::cell::RefCell::new(NodeCache::new(TestPages::new()));
}

/// A zero-sized handle to this thread's node cache, as the kernel's KNodes is to its one.
#[derive(Default)]
struct Shared;

// SAFETY: every value forwards to this thread's one cache, whose nodes are valid until freed.
unsafe impl NodeSource for Shared {
    fn alloc_node(&mut self) -> Option<*mut VaNode> {
        SHARED.with(|c| c.borrow_mut().alloc_node())
    }
    unsafe fn free_node(&mut self, n: *mut VaNode) {
        // SAFETY: `n` came from this thread's cache (the type's only one) and is not used again.
        SHARED.with(|c| unsafe { c.borrow_mut().free_node(n) })
    }
}
// SAFETY: all values stand for the same (per-thread) cache; a Shared Va never leaves its thread
// in these tests.
unsafe impl SharedNodeSource for Shared {}

fn shared_in_use() -> usize {
    SHARED.with(|c| c.borrow().stats().objects_in_use)
}

// pool -> busy -> lazy -> pool and lazy -> free tree, as vmalloc/vfree/purge move an area:
// no node is allocated or freed on the way, except by merges in the free tree.
#[test]
fn areas_move_between_structures_with_their_node() {
    let (s, e) = (BASE, BASE + GIB);
    let mut kva = KvaAllocator::new(s, e, Shared).unwrap();
    let mut busy = BusyTree::new(Shared);
    let mut lazy = BusyTree::new(Shared);
    let mut pool = VaPool::new(Shared);
    assert_eq!(shared_in_use(), 1, "the free tree's one block");
    // Three 1-page areas from the free tree, each with a fresh node (Linux: kmem_cache_alloc).
    for _ in 0..3 {
        let start = kva.alloc(P, P, s, e).unwrap();
        let va = Va::<Shared>::new(start, start + P, 7).unwrap();
        busy.insert_va(va).map_err(|(_, e)| e).unwrap();
    }
    assert_eq!(shared_in_use(), 4);
    // vfree: busy -> lazy.
    for i in 0..3 {
        let va = busy.remove_va(s + i * P).unwrap();
        assert_eq!((va.va_start(), va.va_end(), va.value()), (s + i * P, s + (i + 1) * P, 7));
        lazy.insert_va(va).map_err(|(_, e)| e).unwrap();
    }
    assert!(busy.is_empty());
    assert_eq!((lazy.len(), lazy.bytes()), (3, 3 * P));
    assert_eq!(shared_in_use(), 4, "moves allocate and free nothing");
    // Purge: the first two to the pool, the third back to the free tree (merges: node freed).
    let mut k = 0;
    lazy.drain_va(|va| {
        if k < 2 {
            pool.put_va(va).map_err(|_| ()).unwrap();
        } else {
            kva.free_va(va).map_err(|(_, e)| e).unwrap();
        }
        k += 1;
    });
    assert!(lazy.is_empty());
    assert_eq!((pool.nr_areas(), pool.bytes()), (2, 2 * P));
    assert_eq!(shared_in_use(), 3, "the merged area's node went back");
    // vmalloc again from the pool: the same node goes to the busy tree.
    let va = pool.get_va(P, P).unwrap();
    let start = va.va_start();
    busy.insert_va(va).map_err(|(_, e)| e).unwrap();
    assert_eq!(shared_in_use(), 3);
    // Errors hand the area back: an overlap, an unpooled size, a double free.
    let dup = Va::<Shared>::new(start, start + P, 0).unwrap();
    let (dup, err) = busy.insert_va(dup).unwrap_err();
    assert_eq!(err, KvaError::Overlap);
    let big = Va::<Shared>::new(s, s + (MAX_VA_SIZE_PAGES as u64 + 1) * P, 0).unwrap();
    let big = pool.put_va(big).unwrap_err();
    let free_dup = Va::<Shared>::new(e - P, e, 0).unwrap();
    let (free_dup, err) = kva.free_va(free_dup).unwrap_err();
    assert_eq!(err, KvaError::Overlap);
    drop((dup, big, free_dup));
    assert_eq!(shared_in_use(), 3, "dropped areas free their nodes");
    // Everything back: the free tree is one block again, one node in use.
    let va = busy.remove_va(start).unwrap();
    kva.free_va(va).map_err(|(_, e)| e).unwrap();
    pool.decay_va(true, |va| kva.free_va(va).map_err(|(_, e)| e).unwrap());
    assert_eq!(kva.nr_free_ranges(), 1);
    assert_eq!(kva.free_bytes(), GIB);
    kva.check().unwrap();
    busy.check().unwrap();
    lazy.check().unwrap();
    pool.check().unwrap();
    assert_eq!(shared_in_use(), 1);
}

// A free that merges with nothing links the area's own node (no allocation: cannot fail).
#[test]
fn free_va_links_its_node_when_nothing_merges() {
    let (s, e) = (BASE, BASE + GIB);
    let mut kva = KvaAllocator::new(s, e, Shared).unwrap();
    let a = kva.alloc(P, P, s, e).unwrap();
    let b = kva.alloc(P, P, s, e).unwrap();
    let c = kva.alloc(P, P, s, e).unwrap();
    assert_eq!((a, b, c), (s, s + P, s + 2 * P));
    let before = shared_in_use();
    kva.free_va(Va::<Shared>::new(a, a + P, 0).unwrap()).map_err(|(_, e)| e).unwrap();
    assert_eq!(shared_in_use(), before + 1, "linked, not freed");
    assert_eq!(kva.nr_free_ranges(), 2);
    kva.free_va(Va::<Shared>::new(b, b + P, 0).unwrap()).map_err(|(_, e)| e).unwrap();
    assert_eq!(shared_in_use(), before + 1, "merged: its node freed");
    kva.check().unwrap();
}

// Random vmalloc/vfree/purge/decay sequences with moving areas: after every step each node is
// in exactly one place (free tree, busy, lazy, pool: their counts add up to the shared cache's
// nodes in use) and no byte is lost (free + pooled + busy + lazy = the span).
#[test]
fn moving_areas_random_sequences_account_for_every_node_and_byte() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (s, e) = (BASE, BASE + 64 * MIB);
        let mut kva = KvaAllocator::new(s, e, Shared).unwrap();
        let mut busy = BusyTree::new(Shared);
        let mut lazy = BusyTree::new(Shared);
        let mut pool = VaPool::new(Shared);
        let mut live: Vec<u64> = Vec::new();
        for step in 0..400 {
            match rng.below(10) {
                0..=3 => {
                    // vmalloc: the pool first (exact size), else the free tree.
                    let max = if rng.chance(80) { 4 } else { 300 };
                    let size = (1 + rng.below(max)) * P;
                    let va = match pool.get_va(size, P) {
                        Some(va) => Some(va),
                        None => kva
                            .alloc(size, P, s, e)
                            .ok()
                            .map(|start| Va::<Shared>::new(start, start + size, 0).unwrap()),
                    };
                    if let Some(mut va) = va {
                        let start = va.va_start();
                        va.set_value(start ^ 0x5a);
                        busy.insert_va(va).map_err(|(_, e)| e).unwrap();
                        live.push(start);
                    }
                }
                4..=6 if !live.is_empty() => {
                    // vfree: busy -> lazy.
                    let start = live.swap_remove(rng.below(live.len() as u64) as usize);
                    let va = busy.remove_va(start).unwrap();
                    assert_eq!(va.value(), start ^ 0x5a);
                    lazy.insert_va(va).map_err(|(_, e)| e).unwrap();
                }
                7 => {
                    // purge: lazy -> pool when pooled, else the free tree.
                    let mut detached = core::mem::replace(&mut lazy, BusyTree::new(Shared));
                    detached.drain_va(|va| {
                        if let Err(va) = pool.put_va(va) {
                            kva.free_va(va).map_err(|(_, e)| e).unwrap();
                        }
                    });
                }
                8 => {
                    let full = rng.chance(30);
                    pool.decay_va(full, |va| kva.free_va(va).map_err(|(_, e)| e).unwrap());
                }
                _ => {
                    // A double free (a page already free) is refused and handed back.
                    if let Some(r) = kva.iter_free().next() {
                        let dup = Va::<Shared>::new(r.va_start, r.va_start + P, 0).unwrap();
                        let (dup, err) = kva.free_va(dup).unwrap_err();
                        assert_eq!(err, KvaError::Overlap);
                        drop(dup);
                    }
                }
            }
            let nodes = kva.nr_free_ranges() + busy.len() + lazy.len() + pool.nr_areas();
            assert_eq!(shared_in_use(), nodes, "seed {seed} step {step}: a node lost or doubled");
            let bytes = kva.free_bytes() + pool.bytes() + busy.bytes() + lazy.bytes();
            assert_eq!(bytes, e - s, "seed {seed} step {step}: bytes lost");
            if step % 50 == 0 {
                kva.check().unwrap();
                busy.check().unwrap();
                lazy.check().unwrap();
                pool.check().unwrap();
            }
        }
        // Tear down: everything back to one free block and one node.
        for start in live.drain(..) {
            let va = busy.remove_va(start).unwrap();
            kva.free_va(va).map_err(|(_, e)| e).unwrap();
        }
        lazy.drain_va(|va| kva.free_va(va).map_err(|(_, e)| e).unwrap());
        pool.decay_va(true, |va| kva.free_va(va).map_err(|(_, e)| e).unwrap());
        assert_eq!((kva.nr_free_ranges(), kva.free_bytes()), (1, e - s));
        assert_eq!(shared_in_use(), 1);
        kva.check().unwrap();
    }
}
