use core::ops::Range;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::bitmap::{bitmap_assign, find_last_bit_in, find_next_bit, find_next_zero_bit};
use crate::*;

/// xorshift64* - deterministic randomness without extra crates.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A [`PcpuBacking`] that only records which pages are backed.
#[derive(Default)]
struct MockBacking {
    unit_size: usize,
    pages: BTreeSet<(ChunkId, usize)>,
    created: usize,
    destroyed: usize,
    flushes: usize,
    fail_populate: bool,
    max_chunks: Option<usize>,
}

impl MockBacking {
    fn new(unit_size: usize) -> Self {
        Self { unit_size, ..Default::default() }
    }
}

impl PcpuBacking for MockBacking {
    fn create_chunk(&mut self, _id: ChunkId) -> Option<PcpuChunk> {
        if let Some(max) = self.max_chunks {
            if self.created - self.destroyed >= max {
                return None;
            }
        }
        self.created += 1;
        Some(PcpuChunk::new(self.unit_size, 0))
    }
    fn destroy_chunk(&mut self, id: ChunkId, chunk: PcpuChunk) {
        assert_eq!(chunk.nr_populated(), 0, "destroying a populated chunk");
        assert!(chunk.is_empty());
        assert!(!self.pages.iter().any(|&(c, _)| c == id));
        self.destroyed += 1;
    }
    fn populate(&mut self, id: ChunkId, pages: Range<usize>) -> bool {
        if self.fail_populate {
            return false;
        }
        for p in pages {
            assert!(self.pages.insert((id, p)), "page {p} of chunk {id} populated twice");
        }
        true
    }
    fn depopulate(&mut self, id: ChunkId, pages: Range<usize>) {
        for p in pages {
            assert!(self.pages.remove(&(id, p)), "page {p} of chunk {id} not populated");
        }
    }
    fn post_unmap_tlb_flush(&mut self, _id: ChunkId, _pages: Range<usize>) {
        self.flushes += 1;
    }
}

/// Live allocations per chunk: start -> end, with overlap detection.
#[derive(Default)]
struct Model {
    live: HashMap<ChunkId, BTreeMap<usize, usize>>,
    order: Vec<(ChunkId, usize)>,
}

impl Model {
    fn insert(&mut self, chunk: ChunkId, off: usize, size: usize) {
        let m = self.live.entry(chunk).or_default();
        if let Some((&s, &e)) = m.range(..=off).next_back() {
            assert!(e <= off, "chunk {chunk}: [{off}, +{size}) overlaps [{s}, {e})");
        }
        if let Some((&s, &e)) = m.range(off..).next() {
            assert!(off + size <= s, "chunk {chunk}: [{off}, +{size}) overlaps [{s}, {e})");
        }
        m.insert(off, off + size);
        self.order.push((chunk, off));
    }
    fn remove(&mut self, chunk: ChunkId, off: usize) -> usize {
        let e = self.live.get_mut(&chunk).unwrap().remove(&off).unwrap();
        e - off
    }
    fn used(&self, chunk: ChunkId) -> usize {
        self.live.get(&chunk).map_or(0, |m| m.iter().map(|(s, e)| e - s).sum())
    }
}

const UNIT: usize = 256 << 10;

// --- helpers ------------------------------------------------------------------------------

#[test]
fn bitmap_helpers() {
    let mut m = vec![0u64; 4];
    bitmap_assign(&mut m, 3, 130, true);
    assert_eq!(find_next_bit(&m, 256, 0), 3);
    assert_eq!(find_next_zero_bit(&m, 256, 3), 133);
    assert_eq!(find_next_zero_bit(&m, 256, 0), 0);
    assert_eq!(find_next_bit(&m, 256, 133), 256);
    assert_eq!(find_next_bit(&m, 100, 200), 100);
    assert_eq!(find_last_bit_in(&m, 0, 256), Some(132));
    assert_eq!(find_last_bit_in(&m, 0, 3), None);
    assert_eq!(find_last_bit_in(&m, 64, 70), Some(69));
    assert_eq!(find_last_bit_in(&m, 133, 256), None);
    bitmap_assign(&mut m, 64, 64, false);
    assert_eq!(find_next_zero_bit(&m, 256, 3), 64);
    assert_eq!(find_next_bit(&m, 256, 64), 128);
    assert_eq!(find_last_bit_in(&m, 0, 128), Some(63));
    assert_eq!(m.iter().map(|w| w.count_ones()).sum::<u32>(), 130 - 64);
}

#[test]
fn slots_match_linux() {
    assert_eq!(PcpuSlots::raw_size_to_slot(0), 1);
    assert_eq!(PcpuSlots::raw_size_to_slot(4), 1);
    assert_eq!(PcpuSlots::raw_size_to_slot(15), 1);
    assert_eq!(PcpuSlots::raw_size_to_slot(16), 2);
    assert_eq!(PcpuSlots::raw_size_to_slot(31), 2);
    assert_eq!(PcpuSlots::raw_size_to_slot(32), 3);
    assert_eq!(PcpuSlots::raw_size_to_slot(PAGE_SIZE), 10);
    let s = PcpuSlots::new(UNIT);
    assert_eq!((s.sidelined_slot, s.free_slot, s.to_depopulate_slot, s.nr_slots), (17, 18, 19, 20));
    assert_eq!(s.size_to_slot(UNIT), s.free_slot);
    assert_eq!(s.size_to_slot(UNIT - 4), 15);
    let mut c = PcpuChunk::new(UNIT, 0);
    assert_eq!(s.chunk_slot(&c), s.free_slot);
    c.alloc(4, 4).unwrap();
    assert_eq!(s.chunk_slot(&c), 15);
    // a full chunk goes to slot 0
    let mut c = PcpuChunk::new(PCPU_MIN_UNIT_SIZE, 0);
    for _ in 0..8 {
        c.alloc(PAGE_SIZE, PAGE_SIZE).unwrap();
    }
    assert_eq!(s.chunk_slot(&c), 0);
}

#[test]
fn chunk_list_order_and_candidates() {
    let s = PcpuSlots::new(UNIT);
    let mut l = ChunkList::new(s);
    l.relocate(0, None, 5);
    l.relocate(1, None, 5); // new chunks go to the head
    l.relocate(2, None, 7);
    assert_eq!(l.iter_slot(5).collect::<Vec<_>>(), vec![1, 0]);
    l.relocate(2, Some(7), 5); // got fuller: tail
    assert_eq!(l.iter_slot(5).collect::<Vec<_>>(), vec![1, 0, 2]);
    l.relocate(1, Some(5), 6); // got emptier: head of the new slot
    l.relocate(3, None, 6);
    assert_eq!(l.iter_slot(6).collect::<Vec<_>>(), vec![3, 1]);
    assert_eq!(l.slot_of(2), Some(5));
    // candidates for a 64-byte request start at slot 4: slot 5 then 6
    let mut cur = l.candidates(64);
    let mut seen = Vec::new();
    while let Some((slot, id)) = cur.next(&l) {
        seen.push((slot, id));
        if id == 0 {
            l.move_to(0, 0, true); // moving the current chunk is safe
        }
    }
    assert_eq!(seen, vec![(5, 0), (5, 2), (6, 3), (6, 1)]);
    assert_eq!(l.first(0), Some(0));
    // isolation: relocate leaves isolated chunks alone
    assert!(l.isolate(3));
    assert!(!l.isolate(3));
    assert_eq!(l.slot_of(3), Some(s.to_depopulate_slot));
    l.relocate(3, Some(6), 9);
    assert_eq!(l.slot_of(3), Some(s.to_depopulate_slot));
    assert!(l.reintegrate(3, 9));
    assert_eq!(l.slot_of(3), Some(9));
    l.remove(3);
    assert_eq!(l.slot_of(3), None);
    assert!(l.is_slot_empty(9));
}

// --- single-chunk edge cases ----------------------------------------------------------------

#[test]
fn fresh_chunk_state() {
    let c = PcpuChunk::new(UNIT, 0);
    c.check_hints().unwrap();
    assert_eq!(c.free_bytes(), UNIT);
    assert_eq!(c.contig_hint(), UNIT);
    assert!(c.is_empty());
    assert_eq!(c.nr_populated(), 0);
    assert_eq!(c.nr_empty_pop_pages(), 0);
}

#[test]
fn exact_page_and_block_spanning() {
    let mut c = PcpuChunk::new(UNIT, 0);
    assert_eq!(c.alloc(PAGE_SIZE, PAGE_SIZE), Some(0));
    c.check_hints().unwrap();
    assert_eq!(c.alloc(4, 4), Some(PAGE_SIZE));
    // spans pages 1..=3: starts right after the 4-byte area
    let off = c.alloc(3 * PAGE_SIZE, 4).unwrap();
    assert_eq!(off, PAGE_SIZE + 4);
    c.check_hints().unwrap();
    assert_eq!(c.free_bytes(), UNIT - 4 * PAGE_SIZE - 4);
    // an unaligned cross-page area, then free in the middle and merge across blocks
    let a = c.alloc(PAGE_SIZE + 100, 8).unwrap();
    let b = c.alloc(PAGE_SIZE, 4).unwrap();
    assert_eq!(a % 8, 0);
    c.check_hints().unwrap();
    assert_eq!(c.free(off), Ok(3 * PAGE_SIZE));
    c.check_hints().unwrap();
    assert_eq!(c.free(a), Ok(PAGE_SIZE + 100));
    c.check_hints().unwrap();
    assert_eq!(c.free(PAGE_SIZE), Ok(4));
    c.check_hints().unwrap();
    assert_eq!(c.free(0), Ok(PAGE_SIZE));
    c.check_hints().unwrap();
    assert_eq!(c.free(b), Ok(PAGE_SIZE));
    c.check_hints().unwrap();
    assert!(c.is_empty());
    assert_eq!(c.contig_hint(), UNIT);
}

#[test]
fn align_equals_size_and_sizes_round_up() {
    let mut c = PcpuChunk::new(UNIT, 0);
    assert_eq!(c.alloc(1, 1), Some(0)); // 1 byte -> one 4-byte bit
    for shift in 1..=12 {
        let sz = 1usize << shift;
        let off = c.alloc(sz, sz).unwrap();
        assert_eq!(off % sz, 0, "size {sz}");
        c.check_hints().unwrap();
    }
    assert_eq!(c.free(0), Ok(4));
    assert_eq!(c.alloc(3, 2), Some(0));
    // invalid requests
    assert_eq!(c.alloc(0, 4), None);
    assert_eq!(c.alloc(8, 12), None);
    // like pcpu_alloc, alignments below 4 are raised to 4 first
    assert!(c.alloc(8, 3).is_some());
    assert_eq!(c.alloc(8, 2 * PAGE_SIZE), None);
    assert_eq!(c.alloc(UNIT + 4, 4), None);
    c.check_hints().unwrap();
}

#[test]
fn full_chunk_returns_none() {
    let mut c = PcpuChunk::new(PCPU_MIN_UNIT_SIZE, 0);
    let mut offs = Vec::new();
    while let Some(off) = c.alloc(1000, 8) {
        offs.push(off);
    }
    c.check_hints().unwrap();
    assert!(c.free_bytes() < 1000);
    assert_eq!(c.alloc(1000, 8), None);
    // fill the crumbs with 4-byte areas until really full
    while c.alloc(4, 4).is_some() {}
    assert_eq!(c.free_bytes(), 0);
    assert_eq!(c.contig_hint(), 0);
    assert_eq!(c.alloc(4, 4), None);
    c.check_hints().unwrap();
    for off in offs {
        assert_eq!(c.free(off), Ok(1000));
    }
    c.check_hints().unwrap();
}

#[test]
fn bad_frees_are_rejected() {
    let mut c = PcpuChunk::new(UNIT, 100);
    assert_eq!(c.free_bytes(), UNIT - 100);
    let a = c.alloc(64, 64).unwrap();
    assert_eq!(a, 128);
    assert!(c.free(a + 4).is_err(), "inside an allocation");
    assert!(c.free(a + 2).is_err(), "misaligned");
    assert!(c.free(a + 64).is_err(), "free space");
    assert!(c.free(0).is_err(), "static area");
    assert!(c.free(96).is_err(), "static area end");
    assert!(c.free(UNIT).is_err(), "beyond the unit");
    assert!(c.free(50 * PAGE_SIZE).is_err(), "never allocated");
    c.check_hints().unwrap();
    assert_eq!(c.free(a), Ok(64));
    assert!(c.free(a).is_err(), "double free");
    c.check_hints().unwrap();
    assert!(c.is_empty());
    // stale boundary bits in free space are not mistaken for allocations
    let x = c.alloc(40, 4).unwrap();
    c.free(x).unwrap();
    let y = c.alloc(8, 4).unwrap();
    assert_eq!(y, x);
    assert!(c.free(x + 40).is_err());
    assert_eq!(c.free(y), Ok(8));
    c.check_hints().unwrap();
}

#[test]
fn static_reserve_and_first_chunk() {
    let c = PcpuChunk::new(UNIT, 3 * PAGE_SIZE + 12);
    c.check_hints().unwrap();
    assert_eq!(c.start_offset(), 3 * PAGE_SIZE + 12);
    assert_eq!(c.contig_hint(), UNIT - 3 * PAGE_SIZE - 12);
    assert!(c.is_empty());

    // Linux-style first chunk: static area ends 0x540 into a page, 20000 dynamic bytes
    let mut f = PcpuChunk::new_first_chunk(0x540, 20000);
    f.check_hints().unwrap();
    assert!(f.immutable());
    assert_eq!(f.nr_pages(), (0x540 + 20000usize).div_ceil(PAGE_SIZE));
    assert_eq!(f.free_bytes(), 20000);
    assert_eq!(f.nr_populated(), f.nr_pages());
    // all pages are populated but the first and last hold hidden parts
    assert_eq!(f.nr_empty_pop_pages(), f.nr_pages() as i32 - 2);
    let mut offs = Vec::new();
    while let Some(o) = f.alloc(100, 4) {
        assert!(o >= 0x540 && o + 100 <= 0x540 + 20000);
        offs.push(o);
    }
    assert_eq!(offs.len(), 200);
    assert!(f.free(0x540 + 20000).is_err());
    f.check_hints().unwrap();
    for o in offs {
        f.free(o).unwrap();
    }
    f.check_hints().unwrap();
    assert!(f.is_empty());
    assert_eq!(f.max_free_run(), 20000);
}

#[test]
fn population_tracking() {
    let mut c = PcpuChunk::new(UNIT, 0);
    let off = c.alloc(2 * PAGE_SIZE, PAGE_SIZE).unwrap();
    assert_eq!(c.nr_empty_pop_pages(), -2);
    assert_eq!(c.pages_needing_population(off, 2 * PAGE_SIZE).collect::<Vec<_>>(), vec![0, 1]);
    c.mark_populated(1..2);
    assert_eq!(c.pages_needing_population(off, 2 * PAGE_SIZE).collect::<Vec<_>>(), vec![0]);
    assert_eq!(c.next_unpopulated_range(0, 2), Some(0..1));
    c.mark_populated(0..1);
    assert_eq!(c.nr_empty_pop_pages(), 0);
    c.check_hints().unwrap();
    // atomic (pop_only) allocations must stay in populated pages
    assert_eq!(c.alloc_ext(8, 4, true), None);
    c.mark_populated(5..7);
    let a = c.alloc_ext(PAGE_SIZE + 4, 4, true).unwrap();
    assert!(a >= 5 * PAGE_SIZE && a + PAGE_SIZE + 4 <= 7 * PAGE_SIZE);
    assert_eq!(c.alloc_ext(PAGE_SIZE, 4, true), None);
    c.check_hints().unwrap();
    c.free(a).unwrap();
    assert_eq!(c.nr_empty_pop_pages(), 2);
    c.depopulate(6);
    assert_eq!(c.populated_ranges().collect::<Vec<_>>(), vec![0..2, 5..6]);
    c.free(off).unwrap();
    assert_eq!(c.nr_empty_pop_pages(), 3);
    c.check_hints().unwrap();
}

// --- model tests ----------------------------------------------------------------------

fn check_area(pool: &PcpuPool, area: &PcpuArea, size: usize, align: usize) {
    let chunk = pool.chunk(area.chunk).unwrap();
    assert_eq!(
        area.offset % align.max(PCPU_MIN_ALLOC_SIZE),
        0,
        "misaligned {area:?} align {align}"
    );
    assert_eq!(area.size, size.div_ceil(4) * 4);
    assert!(area.offset >= chunk.start_offset());
    assert!(area.offset + area.size <= chunk.unit_size(), "{area:?} outside the unit");
    for p in PcpuChunk::page_range(area.offset, area.size) {
        assert!(chunk.is_page_populated(p), "page {p} of {area:?} not populated");
    }
}

/// Linux's pcpu_alloc_test pattern at full scale: `nr` allocations of 1..=1024 bytes,
/// align 2^[1,11], then free everything in random order.
fn run_pcpu_alloc_test(nr: usize, seed: u64, check_every: usize, balance: bool) -> (usize, usize) {
    let mut rng = Rng(seed);
    let mut pool = PcpuPool::new(UNIT);
    let mut backing = MockBacking::new(UNIT);
    let mut model = Model::default();
    let mut ops = 0usize;
    for _ in 0..nr {
        let size = 1 + rng.below(1024) as usize;
        let align = 1usize << (1 + rng.below(11));
        let area = pool.alloc(size, align, false, &mut backing).expect("alloc failed");
        check_area(&pool, &area, size, align);
        model.insert(area.chunk, area.offset, area.size);
        ops += 1;
        if ops.is_multiple_of(check_every) {
            pool.chunk(area.chunk).unwrap().check_hints().unwrap();
        }
        if ops.is_multiple_of(5000) {
            pool.check().unwrap();
        }
        if balance && pool.below_low_watermark() && ops.is_multiple_of(97) {
            pool.balance_work(&mut backing);
            pool.check().unwrap();
        }
    }
    pool.check().unwrap();
    let peak_chunks = pool.nr_chunks();
    let peak_pages = pool.nr_populated();
    for id in pool.chunk_ids().collect::<Vec<_>>() {
        let c = pool.chunk(id).unwrap();
        assert_eq!(c.usable_bytes() - c.free_bytes(), model.used(id));
    }

    // free in random order
    let mut order = core::mem::take(&mut model.order);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for (chunk, off) in order {
        let size = model.remove(chunk, off);
        let (freed, need_balance) = pool.free(chunk, off).unwrap();
        assert_eq!(freed, size);
        ops += 1;
        if ops.is_multiple_of(check_every) {
            pool.chunk(chunk).unwrap().check_hints().unwrap();
        }
        if balance && need_balance && ops.is_multiple_of(13) {
            pool.balance_work(&mut backing);
            pool.check().unwrap();
        }
    }
    pool.check().unwrap();
    for id in pool.chunk_ids().collect::<Vec<_>>() {
        let c = pool.chunk(id).unwrap();
        assert!(c.is_empty());
        assert_eq!(c.free_bytes(), UNIT);
        assert_eq!(c.contig_hint(), UNIT, "chunk {id} contig_hint after freeing everything");
        assert_eq!(c.nr_alloc(), 0);
        assert_eq!(pool.slots().chunk_slot(c), pool.slots().free_slot);
    }
    // the balance work releases all fully free chunks but one and their pages
    pool.balance_work(&mut backing);
    pool.balance_work(&mut backing);
    pool.check().unwrap();
    assert_eq!(pool.nr_chunks(), 1, "one free chunk is kept");
    assert_eq!(backing.created - backing.destroyed, pool.nr_chunks());
    assert_eq!(backing.pages.len(), pool.nr_populated());
    std::eprintln!(
        "pcpu_alloc_test nr={nr}: peak {peak_chunks} chunks, {peak_pages} populated pages/unit, \
         {} chunks created, {} destroyed, {} reclaim flushes, {} left",
        backing.created,
        backing.destroyed,
        backing.flushes,
        pool.nr_chunks()
    );
    (peak_chunks, backing.created)
}

#[test]
fn pcpu_alloc_test_35000() {
    let (peak, created) = run_pcpu_alloc_test(35_000, 0x5eed_1234_abcd_0001, 50, false);
    // ~35000 * (512 + alignment padding) bytes of offset space in 256 KiB units
    assert!((70..=160).contains(&peak), "peak chunks {peak}");
    assert_eq!(created, peak);
}

#[test]
fn pcpu_alloc_test_with_balance_work() {
    run_pcpu_alloc_test(12_000, 0x0dd_ba11, 25, true);
}

#[test]
fn interleaved_alloc_free_with_full_checks() {
    let mut rng = Rng(42);
    let mut pool = PcpuPool::new(64 << 10);
    let mut backing = MockBacking::new(64 << 10);
    let mut live: Vec<PcpuArea> = Vec::new();
    let mut model = Model::default();
    for step in 0..20_000usize {
        if live.is_empty() || rng.below(100) < 55 {
            let max = if rng.below(10) == 0 { 6000 } else { 300 };
            let size = 1 + rng.below(max) as usize;
            let align = 1usize << rng.below(13);
            let area = pool.alloc(size, align, false, &mut backing).unwrap();
            check_area(&pool, &area, size, align);
            model.insert(area.chunk, area.offset, area.size);
            live.push(area);
        } else {
            let i = rng.below(live.len() as u64) as usize;
            let a = live.swap_remove(i);
            assert_eq!(model.remove(a.chunk, a.offset), a.size);
            assert_eq!(pool.free(a.chunk, a.offset).unwrap().0, a.size);
        }
        if step.is_multiple_of(20) {
            pool.check().unwrap();
        }
        if step.is_multiple_of(500) {
            pool.balance_work(&mut backing);
        }
    }
    pool.check().unwrap();
}

#[test]
fn atomic_allocations_and_population_failure() {
    let mut pool = PcpuPool::new(64 << 10);
    let mut backing = MockBacking::new(64 << 10);
    // atomic with no chunk at all fails and asks the balance work for pages
    assert_eq!(pool.alloc(16, 8, true, &mut backing), None);
    pool.balance_work(&mut backing);
    pool.check().unwrap();
    assert_eq!(pool.nr_empty_pop_pages(), PCPU_EMPTY_POP_PAGES_HIGH);
    let a = pool.alloc(16, 8, true, &mut backing).unwrap();
    assert!(pool.chunk(a.chunk).unwrap().is_page_populated(a.offset / PAGE_SIZE));
    // a failing population frees the area again
    backing.fail_populate = true;
    assert_eq!(pool.alloc(4 * PAGE_SIZE, PAGE_SIZE, false, &mut backing), None);
    pool.check().unwrap();
    backing.fail_populate = false;
    let b = pool.alloc(4 * PAGE_SIZE, PAGE_SIZE, false, &mut backing).unwrap();
    pool.check().unwrap();
    pool.free(a.chunk, a.offset).unwrap();
    pool.free(b.chunk, b.offset).unwrap();
    assert!(pool.free(b.chunk, b.offset).is_err());
    assert!(pool.free(99, 0).is_err());
    pool.check().unwrap();
    // invalid requests
    assert_eq!(pool.search(0, 4, false), Err(PcpuAllocError::Invalid));
    assert_eq!(pool.search(PCPU_MIN_UNIT_SIZE + 1, 4, false), Err(PcpuAllocError::Invalid));
    assert_eq!(pool.search(8, 12, false), Err(PcpuAllocError::Invalid));
}

#[test]
fn chunk_creation_failure_returns_none() {
    let mut pool = PcpuPool::new(PCPU_MIN_UNIT_SIZE);
    let mut backing = MockBacking::new(PCPU_MIN_UNIT_SIZE);
    backing.max_chunks = Some(2);
    let mut n = 0;
    while pool.alloc(PAGE_SIZE, PAGE_SIZE, false, &mut backing).is_some() {
        n += 1;
    }
    assert_eq!(n, 16);
    pool.check().unwrap();
}

#[test]
fn first_chunk_in_pool() {
    let mut pool = PcpuPool::new(UNIT);
    let mut backing = MockBacking::new(UNIT);
    let first = PcpuChunk::new_first_chunk(0x7c0, 30000);
    let id = pool.add_chunk(first, true);
    assert_eq!(pool.nr_empty_pop_pages(), pool.chunk(id).unwrap().nr_empty_pop_pages() as i64);
    let mut areas = Vec::new();
    for i in 0..400 {
        let a = pool.alloc(1 + i % 300, 8, false, &mut backing).unwrap();
        areas.push(a);
    }
    assert_eq!(areas[0].chunk, id, "the first chunk serves first");
    assert!(areas.iter().any(|a| a.chunk != id), "then a new chunk is created");
    pool.check().unwrap();
    for a in areas {
        pool.free(a.chunk, a.offset).unwrap();
    }
    pool.balance_work(&mut backing);
    pool.check().unwrap();
    assert!(pool.chunk(id).is_some(), "the first chunk is never destroyed");
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(usize, u32),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1usize..=1024, 1u32..=11).prop_map(|(s, a)| Op::Alloc(s, a)),
            1 => (1usize..=1024, 1u32..=12).prop_map(|(s, a)| Op::Alloc(s * 4, a)),
            3 => any::<usize>().prop_map(Op::Free),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_ops_keep_hints_consistent(ops in proptest::collection::vec(op(), 1..400)) {
            let unit = 64 << 10;
            let mut pool = PcpuPool::new(unit);
            let mut backing = MockBacking::new(unit);
            let mut model = Model::default();
            let mut live: Vec<PcpuArea> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(size, a) => {
                        let align = 1usize << a;
                        let area = pool.alloc(size, align, false, &mut backing).unwrap();
                        check_area(&pool, &area, size, align);
                        model.insert(area.chunk, area.offset, area.size);
                        live.push(area);
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let a = live.swap_remove(i % live.len());
                        prop_assert_eq!(model.remove(a.chunk, a.offset), a.size);
                        prop_assert_eq!(pool.free(a.chunk, a.offset).unwrap().0, a.size);
                    }
                    Op::Free(_) => {}
                }
                if let Err(e) = pool.check() {
                    return Err(TestCaseError::fail(e));
                }
            }
            for a in live.drain(..) {
                pool.free(a.chunk, a.offset).unwrap();
            }
            pool.check().map_err(TestCaseError::fail)?;
            for id in pool.chunk_ids().collect::<Vec<_>>() {
                let c = pool.chunk(id).unwrap();
                prop_assert!(c.is_empty());
                prop_assert_eq!(c.contig_hint(), unit);
            }
        }

        #[test]
        fn single_chunk_alloc_until_full(reqs in proptest::collection::vec((1usize..=2048, 0u32..=12), 1..300)) {
            let mut c = PcpuChunk::new(32 << 10, 0);
            let mut model = Model::default();
            let mut offs = Vec::new();
            for (size, a) in reqs {
                let align = 1usize << a;
                if let Some(off) = c.alloc(size, align) {
                    prop_assert_eq!(off % align.max(4), 0);
                    model.insert(0, off, size.div_ceil(4) * 4);
                    offs.push(off);
                } else {
                    // Linux rejects on hints alone; it must at least never reject when
                    // the request fits the whole free space of an empty chunk
                    prop_assert!(!c.is_empty());
                }
                c.check_hints().map_err(TestCaseError::fail)?;
            }
            for off in offs {
                c.free(off).unwrap();
                c.check_hints().map_err(TestCaseError::fail)?;
            }
            prop_assert!(c.is_empty());
            prop_assert_eq!(c.contig_hint(), 32 << 10);
        }
    }
}
