//! Host tests: simulated table memory and a recording TLB.

use super::*;
use crate::entry::{get, pt_index, set, tbl};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use std::collections::HashMap;

std::thread_local! {
    /// Addresses of the descriptors read through `get` while [`record_reads`] runs.
    static READS: core::cell::RefCell<Option<Vec<usize>>> = const { core::cell::RefCell::new(None) };
}

/// Called by `get` (test builds only) for every descriptor read.
pub(super) fn note_read(entry: usize) {
    READS.with(|r| {
        if let Some(v) = r.borrow_mut().as_mut() {
            v.push(entry);
        }
    });
}

/// Runs `f` and returns its result with the addresses of the descriptors it read, in order.
fn record_reads<R>(f: impl FnOnce() -> R) -> (R, Vec<usize>) {
    READS.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = f();
    let reads = READS.with(|r| r.borrow_mut().take().unwrap());
    (out, reads)
}

/// Simulated physical memory: table pages in boxes keyed by a fake PA.
struct SimMem {
    pages: HashMap<u64, *mut [u64; 512]>,
    next_pa: u64,
    allocs: u64,
    frees: u64,
    limit: Option<u64>,
    /// `table()` calls (table page lookups by the walkers).
    lookups: core::cell::Cell<u64>,
}

impl SimMem {
    fn new() -> Self {
        SimMem {
            pages: HashMap::new(),
            next_pa: 0x8000_0000,
            allocs: 0,
            frees: 0,
            limit: None,
            lookups: core::cell::Cell::new(0),
        }
    }
    fn live(&self) -> usize {
        self.pages.len()
    }
}

impl Drop for SimMem {
    fn drop(&mut self) {
        for (_, p) in self.pages.drain() {
            // SAFETY: allocated with Box::into_raw below; `drain` yields each page once, and
            // freed pages were removed from the map.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

// SAFETY: every PA maps to a live boxed page until freed; pages start zeroed. A
// `Box<[u64; 512]>` is 4 KiB, 8-byte aligned and never moves, and `table()` panics for any
// other PA instead of returning a dangling pointer.
unsafe impl PtMemory for SimMem {
    fn table(&self, pa: u64) -> *mut [u64; 512] {
        self.lookups.set(self.lookups.get() + 1);
        *self.pages.get(&pa).expect("table() on a PA that is not a table page")
    }
    fn alloc_table(&mut self) -> Option<u64> {
        if let Some(l) = self.limit {
            if self.allocs >= l {
                return None;
            }
        }
        let pa = self.next_pa;
        self.next_pa += PAGE_SIZE as u64;
        self.pages.insert(pa, Box::into_raw(Box::new([0u64; 512])));
        self.allocs += 1;
        Some(pa)
    }
    fn free_table(&mut self, pa: u64) {
        let p = self.pages.remove(&pa).expect("double free of a table page");
        // SAFETY: from Box::into_raw in `alloc_table`; removed from the map, so dropped once.
        drop(unsafe { Box::from_raw(p) });
        self.frees += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    DmbIshst,
    DsbIshst,
    DsbIsh,
    Isb,
    Vaale1is(u64),
    Vaae1is(u64),
    Rvaale1is(u64, u32, u32),
    Vmalle1is,
}

#[derive(Default)]
struct MockTlb {
    ops: Vec<Op>,
    range: bool,
}

impl MockTlb {
    fn with_range(range: bool) -> Self {
        MockTlb { ops: Vec::new(), range }
    }
    /// Ops without the table-allocation dmb.
    fn significant(&self) -> Vec<Op> {
        self.ops.iter().copied().filter(|o| *o != Op::DmbIshst).collect()
    }
}

impl TlbOps for MockTlb {
    fn dmb_ishst(&mut self) {
        self.ops.push(Op::DmbIshst)
    }
    fn dsb_ishst(&mut self) {
        self.ops.push(Op::DsbIshst)
    }
    fn dsb_ish(&mut self) {
        self.ops.push(Op::DsbIsh)
    }
    fn isb(&mut self) {
        self.ops.push(Op::Isb)
    }
    fn tlbi_vaale1is(&mut self, va: u64) {
        self.ops.push(Op::Vaale1is(va))
    }
    fn tlbi_vaae1is(&mut self, va: u64) {
        self.ops.push(Op::Vaae1is(va))
    }
    fn tlbi_rvaale1is(&mut self, va: u64, scale: u32, num: u32) {
        assert!(self.range, "range TLBI without FEAT_TLBIRANGE");
        assert!(scale <= 3 && num <= 31);
        self.ops.push(Op::Rvaale1is(va, scale, num))
    }
    fn tlbi_vmalle1is(&mut self) {
        self.ops.push(Op::Vmalle1is)
    }
    fn has_tlbirange(&self) -> bool {
        self.range
    }
}

const VMALLOC_START: u64 = 0xffff_8000_8000_0000;
const K: PageProt = PageProt::PAGE_KERNEL;
const ALL_HUGE: MapFlags = MapFlags::CONT_PTE.union(MapFlags::BLOCK_PMD);

fn setup() -> (SimMem, MockTlb, PageTable) {
    let mut mem = SimMem::new();
    let pt = PageTable::new(&mut mem).unwrap();
    (mem, MockTlb::default(), pt)
}

fn leaves(mem: &SimMem, pt: &PageTable, start: u64, end: u64) -> Vec<Leaf> {
    let mut v = Vec::new();
    pt.for_each_leaf(mem, start, end, |l| v.push(l));
    v
}

#[test]
fn constants_match_linux() {
    assert_eq!(MAIR_EL1_SET, 0x0000_0004_0044_ffff);
    assert_eq!(PageProt::PAGE_KERNEL.bits(), 0x0068_0000_0000_0703);
    assert_eq!(PageProt::PAGE_KERNEL_RO.bits(), 0x0060_0000_0000_0783);
    assert_eq!(PageProt::PAGE_KERNEL_ROX.bits(), 0x0040_0000_0000_0783);
    assert_eq!(PageProt::PAGE_KERNEL_EXEC.bits(), 0x0048_0000_0000_0703);
    assert_eq!(PageProt::PAGE_KERNEL_EXEC_CONT.bits(), 0x0058_0000_0000_0703);
    assert_eq!(PageProt::PROT_DEVICE_nGnRE.bits(), 0x0068_0000_0000_0713);
    assert_eq!(PageProt::PROT_DEVICE_nGnRnE.bits(), 0x0068_0000_0000_070f);
    assert_eq!(PageProt::PROT_NORMAL_NC.bits(), 0x0068_0000_0000_070b);
    assert_eq!(PageProt::PROT_NORMAL_TAGGED.bits(), 0x0068_0000_0000_0707);
    assert_eq!(PageProt::PROT_DEVICE_nGnRE.attr_index(), MT_DEVICE_nGnRE);
    assert_eq!(PageProt::PAGE_KERNEL.block_desc(0x4020_0000), 0x0068_0000_4020_0701);
    assert_eq!(PageProt::PAGE_KERNEL.page_desc(0x4020_1000), 0x0068_0000_4020_1703);
    assert_eq!(kernel_table_desc(0x4000_0000), 0x1000_0000_4000_0403);
    assert_eq!(MAX_TLBI_RANGE_PAGES, 1 << 21);
    assert_eq!(tlbi_vaddr(0xffff_8000_8000_3000), 0xf_fff8_0008_0003 & ((1 << 44) - 1));
    let op = tlbi_range_operand(0xffff_8000_8000_0000, 3, 31);
    assert_eq!(op & ((1 << 37) - 1), (0xffff_8000_8000_0000u64 >> 12) & ((1 << 37) - 1));
    assert_eq!((op >> 39) & 0x1f, 31);
    assert_eq!((op >> 44) & 3, 3);
    assert_eq!((op >> 46) & 3, 1);
    assert_eq!(MapFlags::for_page_shift(12), MapFlags::empty());
    assert_eq!(MapFlags::for_page_shift(16), MapFlags::CONT_PTE);
    assert_eq!(MapFlags::for_page_shift(21), ALL_HUGE);
    assert_eq!(MapFlags::for_page_shift(30), ALL_HUGE | MapFlags::BLOCK_PUD);
}

#[test]
fn pte_mapping_of_an_odd_range() {
    let (mut mem, mut tlb, pt) = setup();
    let va = VMALLOC_START + 0x3000;
    let pa = 0x4012_3000;
    let s = pt.map_range(&mut mem, &mut tlb, va, pa, 5 * PAGE_SIZE as u64, K, ALL_HUGE).unwrap();
    assert_eq!(s.ptes, 5);
    assert_eq!(s.cont_runs + s.pmd_blocks, 0);
    assert_eq!(s.tables_allocated, 3);
    for k in 0..5 {
        let t = pt.walk(&mem, va + k * PAGE_SIZE as u64 + 0x123).unwrap();
        assert_eq!(t.pa, pa + k * PAGE_SIZE as u64 + 0x123);
        assert_eq!((t.level, t.block_size, t.cont), (3, PAGE_SIZE as u64, false));
        assert_eq!(t.prot(), K);
        assert!(t.writable() && !t.executable());
    }
    assert!(pt.walk(&mem, va - PAGE_SIZE as u64).is_none());
    assert!(pt.walk(&mem, va + 5 * PAGE_SIZE as u64).is_none());
    // Three new tables (each preceded by dmb), then exactly one DSB ISHST + ISB, no TLBI.
    assert_eq!(tlb.ops.iter().filter(|o| **o == Op::DmbIshst).count(), 3);
    assert_eq!(tlb.significant(), [Op::DsbIshst, Op::Isb]);
    // A second mapping in the same tables allocates nothing.
    tlb.ops.clear();
    let s = pt
        .map_range(&mut mem, &mut tlb, va + 0x10_000, pa, PAGE_SIZE as u64, K, MapFlags::empty())
        .unwrap();
    assert_eq!(s.tables_allocated, 0);
    assert_eq!(tlb.ops, [Op::DsbIshst, Op::Isb]);
}

#[test]
fn pmd_block_when_aligned() {
    let (mut mem, mut tlb, pt) = setup();
    let va = VMALLOC_START + 5 * PMD_SIZE;
    let pa = 0x8_0040_0000 & !(PMD_SIZE - 1);
    let s = pt.map_range(&mut mem, &mut tlb, va, pa, PMD_SIZE, K, ALL_HUGE).unwrap();
    assert_eq!((s.pmd_blocks, s.ptes, s.tables_allocated), (1, 0, 2));
    let t = pt.walk(&mem, va + 0x12_3456).unwrap();
    assert_eq!((t.level, t.block_size, t.cont), (2, PMD_SIZE, false));
    assert_eq!(t.pa, pa + 0x12_3456);
    assert!(desc_is_block(t.desc));
    assert_eq!(t.attr_index(), MT_NORMAL);
    // Not allowed -> 512 PTEs; misaligned PA -> contiguous runs at best.
    let va2 = va + PMD_SIZE;
    let s = pt.map_range(&mut mem, &mut tlb, va2, pa, PMD_SIZE, K, MapFlags::empty()).unwrap();
    assert_eq!((s.pmd_blocks, s.ptes, s.cont_runs), (0, 512, 0));
    let va3 = va2 + PMD_SIZE;
    let s =
        pt.map_range(&mut mem, &mut tlb, va3, pa + CONT_PTE_SIZE, PMD_SIZE, K, ALL_HUGE).unwrap();
    assert_eq!((s.pmd_blocks, s.ptes, s.cont_runs), (0, 512, 32));
    assert_eq!(pt.walk(&mem, va3).unwrap().level, 3);
}

#[test]
fn pud_block_for_the_linear_map() {
    let (mut mem, mut tlb, pt) = setup();
    let va = 0xffff_0000_0000_0000;
    let pa = 0x4000_0000;
    let f = MapFlags::for_page_shift(PUD_SHIFT);
    let s = pt
        .map_range(&mut mem, &mut tlb, va, pa, 2 * PUD_SIZE + PMD_SIZE + CONT_PTE_SIZE, K, f)
        .unwrap();
    assert_eq!((s.pud_blocks, s.pmd_blocks, s.cont_runs), (2, 1, 1));
    let t = pt.walk(&mem, va + PUD_SIZE + 0x1234_5678).unwrap();
    assert_eq!((t.level, t.block_size), (1, PUD_SIZE));
    assert_eq!(t.pa, pa + PUD_SIZE + 0x1234_5678);
    let t = pt.walk(&mem, va + 2 * PUD_SIZE + 5).unwrap();
    assert_eq!((t.level, t.pa), (2, pa + 2 * PUD_SIZE + 5));
    let l = leaves(&mem, &pt, va, 0);
    assert_eq!(l.len(), 2 + 1 + 16);
    assert_eq!(l[0], Leaf { va, level: 1, size: PUD_SIZE, desc: K.block_desc(pa) });
}

#[test]
fn cont_bits_on_all_16_entries() {
    let (mut mem, mut tlb, pt) = setup();
    let va = VMALLOC_START + 7 * CONT_PTE_SIZE;
    let pa = 0x4100_0000 + 3 * CONT_PTE_SIZE;
    let s =
        pt.map_range(&mut mem, &mut tlb, va, pa, 4 * CONT_PTE_SIZE, K, MapFlags::CONT_PTE).unwrap();
    assert_eq!((s.cont_runs, s.ptes), (4, 64));
    let l = leaves(&mem, &pt, va, va + 4 * CONT_PTE_SIZE);
    assert_eq!(l.len(), 64);
    for (k, leaf) in l.iter().enumerate() {
        assert_eq!(leaf.level, 3);
        assert_eq!(leaf.va, va + k as u64 * PAGE_SIZE as u64);
        assert_ne!(leaf.desc & PteFlags::CONT.bits(), 0, "entry {k}");
        assert_eq!(desc_addr(leaf.desc), pa + k as u64 * PAGE_SIZE as u64);
    }
    let t = pt.walk(&mem, va + 0x1_8000).unwrap();
    assert!(t.cont);
    assert_eq!(t.map_size(), CONT_PTE_SIZE);
    // PA misaligned by a page: no contiguous bit anywhere.
    let va2 = va + 0x10_0000;
    let s = pt
        .map_range(
            &mut mem,
            &mut tlb,
            va2,
            pa + PAGE_SIZE as u64,
            2 * CONT_PTE_SIZE,
            K,
            MapFlags::CONT_PTE,
        )
        .unwrap();
    assert_eq!((s.cont_runs, s.ptes), (0, 32));
    assert!(leaves(&mem, &pt, va2, va2 + 2 * CONT_PTE_SIZE)
        .iter()
        .all(|l| l.desc & PteFlags::CONT.bits() == 0));
    // Less than 64 KiB left: plain PTEs.
    let va3 = va2 + 0x10_0000;
    let s = pt
        .map_range(
            &mut mem,
            &mut tlb,
            va3,
            pa,
            CONT_PTE_SIZE - PAGE_SIZE as u64,
            K,
            MapFlags::CONT_PTE,
        )
        .unwrap();
    assert_eq!((s.cont_runs, s.ptes), (0, 15));
}

#[test]
fn mixed_head_ptes_cont_runs_blocks_tail() {
    let (mut mem, mut tlb, pt) = setup();
    // Starts 3 pages before a 64 KiB boundary that is 2 runs before a 2 MiB boundary.
    let va = VMALLOC_START + 8 * PMD_SIZE - 2 * CONT_PTE_SIZE - 3 * PAGE_SIZE as u64;
    let pa = 0x6000_0000 - 2 * CONT_PTE_SIZE - 3 * PAGE_SIZE as u64;
    let size = 3 * PAGE_SIZE as u64
        + 2 * CONT_PTE_SIZE
        + 2 * PMD_SIZE
        + CONT_PTE_SIZE
        + 5 * PAGE_SIZE as u64;
    let s = pt.map_range(&mut mem, &mut tlb, va, pa, size, K, ALL_HUGE).unwrap();
    assert_eq!(s.pmd_blocks, 2);
    assert_eq!(s.cont_runs, 3);
    assert_eq!(s.ptes, 3 + 3 * 16 + 5);
    let mut expect = Vec::new();
    let mut a = va;
    for _ in 0..3 {
        expect.push((a, 3u8, false));
        a += PAGE_SIZE as u64;
    }
    for _ in 0..32 {
        expect.push((a, 3, true));
        a += PAGE_SIZE as u64;
    }
    for _ in 0..2 {
        expect.push((a, 2, false));
        a += PMD_SIZE;
    }
    for _ in 0..16 {
        expect.push((a, 3, true));
        a += PAGE_SIZE as u64;
    }
    for _ in 0..5 {
        expect.push((a, 3, false));
        a += PAGE_SIZE as u64;
    }
    assert_eq!(a, va + size);
    let got: Vec<_> = leaves(&mem, &pt, va, va + size)
        .iter()
        .map(|l| (l.va, l.level, l.desc & PteFlags::CONT.bits() != 0))
        .collect();
    assert_eq!(got, expect);
    // Every page translates to its PA.
    let mut off = 0;
    while off < size {
        assert_eq!(pt.walk(&mem, va + off).unwrap().pa, pa + off);
        off += PAGE_SIZE as u64;
    }
    assert_eq!(tlb.significant(), [Op::DsbIshst, Op::Isb]);
}

#[test]
fn unmap_clears_range_and_keeps_neighbours() {
    let (mut mem, mut tlb, pt) = setup();
    let base = VMALLOC_START + 16 * PMD_SIZE;
    let left = (base - 3 * PAGE_SIZE as u64, 0x7000_0000, 3 * PAGE_SIZE as u64);
    let mid = (base, 0x8000_0000, PMD_SIZE + 2 * CONT_PTE_SIZE + 4 * PAGE_SIZE as u64);
    let right = (base + mid.2, 0x9000_0000, 2 * PAGE_SIZE as u64);
    for (va, pa, sz) in [left, mid, right] {
        pt.map_range(&mut mem, &mut tlb, va, pa, sz, K, ALL_HUGE).unwrap();
    }
    let tables = mem.live();
    tlb.ops.clear();
    let r = pt.unmap_range(&mut mem, mid.0, mid.2).unwrap();
    assert_eq!(
        r,
        UnmapResult { pages: 512 + 32 + 4, ptes: 36, cont_runs: 2, pmd_blocks: 1, pud_blocks: 0 }
    );
    assert!(tlb.ops.is_empty(), "unmap must not flush");
    assert!(leaves(&mem, &pt, mid.0, mid.0 + mid.2).is_empty());
    assert_eq!(mem.live(), tables, "tables are kept");
    for (va, pa, sz) in [left, right] {
        for k in 0..sz / PAGE_SIZE as u64 {
            assert_eq!(
                pt.walk(&mem, va + k * PAGE_SIZE as u64).unwrap().pa,
                pa + k * PAGE_SIZE as u64
            );
        }
    }
    // Unmapping an already empty range is fine and clears nothing.
    assert_eq!(pt.unmap_range(&mut mem, mid.0, mid.2).unwrap(), UnmapResult::default());
    // A range nothing was ever mapped in (no tables at all).
    assert_eq!(
        pt.unmap_range(&mut mem, 0xffff_f000_0000_0000, PUD_SIZE).unwrap(),
        UnmapResult::default()
    );
}

#[test]
fn unmap_refuses_to_split_blocks_and_runs() {
    let (mut mem, mut tlb, pt) = setup();
    let va = VMALLOC_START + 4 * PMD_SIZE;
    pt.map_range(&mut mem, &mut tlb, va, 0x4000_0000, PMD_SIZE, K, ALL_HUGE).unwrap();
    let run = va + PMD_SIZE;
    pt.map_range(&mut mem, &mut tlb, run, 0x5000_0000, CONT_PTE_SIZE, K, ALL_HUGE).unwrap();
    let before = leaves(&mem, &pt, va, run + CONT_PTE_SIZE);
    assert_eq!(pt.unmap_range(&mut mem, va, 0), Err(UnmapError::Invalid));
    assert_eq!(pt.unmap_range(&mut mem, va + 1, PAGE_SIZE as u64), Err(UnmapError::Invalid));
    assert_eq!(pt.unmap_range(&mut mem, va, PAGE_SIZE as u64 + 1), Err(UnmapError::Invalid));
    assert_eq!(
        pt.unmap_range(&mut mem, !(PAGE_SIZE as u64 - 1), PAGE_SIZE as u64),
        Err(UnmapError::Invalid)
    );
    // Straddling the start: nothing changed.
    assert_eq!(
        pt.unmap_range(&mut mem, va + PAGE_SIZE as u64, PAGE_SIZE as u64),
        Err(UnmapError::PartialBlock { va, size: PMD_SIZE })
    );
    assert_eq!(leaves(&mem, &pt, va, run + CONT_PTE_SIZE), before);
    // Straddling the end: the block before the run is cleared, the run is left whole.
    assert_eq!(
        pt.unmap_range(&mut mem, va, PMD_SIZE + PAGE_SIZE as u64),
        Err(UnmapError::PartialBlock { va: run, size: CONT_PTE_SIZE })
    );
    assert!(leaves(&mem, &pt, va, run).is_empty());
    assert_eq!(leaves(&mem, &pt, run, run + CONT_PTE_SIZE), before[1..]);
    let r = pt.unmap_range(&mut mem, va, PMD_SIZE + CONT_PTE_SIZE).unwrap();
    assert_eq!(r, UnmapResult { pages: 16, ptes: 16, cont_runs: 1, pmd_blocks: 0, pud_blocks: 0 });
    assert!(leaves(&mem, &pt, va, run + CONT_PTE_SIZE).is_empty());
}

/// A block or run holding the range start is the first leaf the walk meets: the error
/// comes after one descent (no more reads) and nothing is changed, whatever the range end.
#[test]
fn unmap_straddling_start_changes_nothing() {
    let (mut mem, mut tlb, pt) = setup();
    let blk = VMALLOC_START + 4 * PMD_SIZE;
    pt.map_range(&mut mem, &mut tlb, blk, 0x4000_0000, PMD_SIZE, K, ALL_HUGE).unwrap();
    // Right after the block: one contiguous run and two pages.
    let run = blk + PMD_SIZE;
    pt.map_range(
        &mut mem,
        &mut tlb,
        run,
        0x5000_0000,
        CONT_PTE_SIZE + 2 * PAGE_SIZE as u64,
        K,
        ALL_HUGE,
    )
    .unwrap();
    let all_end = run + CONT_PTE_SIZE + 2 * PAGE_SIZE as u64;
    let before = leaves(&mem, &pt, blk, all_end);
    assert_eq!(before.len(), 1 + 16 + 2);
    let in_blk = UnmapError::PartialBlock { va: blk, size: PMD_SIZE };
    let in_run = UnmapError::PartialBlock { va: run, size: CONT_PTE_SIZE };
    for (va, end, err) in [
        (blk + PAGE_SIZE as u64, all_end, in_blk), // block, run and pages after it
        (blk + PMD_SIZE - PAGE_SIZE as u64, all_end, in_blk), // last page of the block
        (blk + PAGE_SIZE as u64, blk + 2 * PAGE_SIZE as u64, in_blk), // both ends inside the block
        (blk + PAGE_SIZE as u64, run + PAGE_SIZE as u64, in_blk), // and the end inside the run
        (run + PAGE_SIZE as u64, all_end, in_run), // rest of the run and the pages
        (run + 15 * PAGE_SIZE as u64, all_end, in_run), // last page of the run
        (run + 4 * PAGE_SIZE as u64, run + 8 * PAGE_SIZE as u64, in_run), // both ends inside the run
    ] {
        let (r, reads) = record_reads(|| pt.unmap_range(&mut mem, va, end - va));
        assert_eq!(r, Err(err), "[{va:#x}, {end:#x})");
        assert_eq!(leaves(&mem, &pt, blk, all_end), before, "[{va:#x}, {end:#x})");
        // root, pud, pmd entry (and the pte for a run): the first leaf, nothing after it.
        let depth = if err == in_blk { 3 } else { 4 };
        assert_eq!(reads.len(), depth, "[{va:#x}, {end:#x})");
    }
    // A 1 GiB block holding the start.
    let lin = 0xffff_0000_0000_0000;
    let f = MapFlags::for_page_shift(PUD_SHIFT);
    pt.map_range(&mut mem, &mut tlb, lin, 0x4000_0000, PUD_SIZE + PMD_SIZE, K, f).unwrap();
    let before = leaves(&mem, &pt, lin, lin + PUD_SIZE + PMD_SIZE);
    let (r, reads) = record_reads(|| pt.unmap_range(&mut mem, lin + PMD_SIZE, PUD_SIZE));
    assert_eq!(r, Err(UnmapError::PartialBlock { va: lin, size: PUD_SIZE }));
    assert_eq!(reads.len(), 2);
    assert_eq!(leaves(&mem, &pt, lin, lin + PUD_SIZE + PMD_SIZE), before);
}

/// A block or run holding the range end (and not its start) is the last leaf the walk
/// meets: everything before it is cleared (as in Linux), it stays whole and is reported.
#[test]
fn unmap_straddling_end_clears_the_rest() {
    let (mut mem, mut tlb, pt) = setup();
    // A neighbour page, then 3 pages and a run at the end of one PMD, a block in the next.
    let blk = VMALLOC_START + 8 * PMD_SIZE;
    let head = blk - CONT_PTE_SIZE - 3 * PAGE_SIZE as u64;
    let nb = head - PAGE_SIZE as u64;
    pt.map_range(&mut mem, &mut tlb, nb, 0x3000_0000, PAGE_SIZE as u64, K, ALL_HUGE).unwrap();
    let pa_head = 0x4000_0000 - CONT_PTE_SIZE - 3 * PAGE_SIZE as u64;
    let s = pt.map_range(&mut mem, &mut tlb, head, pa_head, blk - head, K, ALL_HUGE).unwrap();
    assert_eq!((s.ptes, s.cont_runs), (19, 1));
    pt.map_range(&mut mem, &mut tlb, blk, 0x4000_0000, PMD_SIZE, K, ALL_HUGE).unwrap();
    let block = leaves(&mem, &pt, blk, blk + PMD_SIZE);
    for end in [blk + PAGE_SIZE as u64, blk + PMD_SIZE - PAGE_SIZE as u64] {
        let (r, reads) = record_reads(|| pt.unmap_range(&mut mem, head, end - head));
        assert_eq!(r, Err(UnmapError::PartialBlock { va: blk, size: PMD_SIZE }));
        assert!(leaves(&mem, &pt, head, blk).is_empty(), "pages and run before the block cleared");
        assert_eq!(leaves(&mem, &pt, blk, blk + PMD_SIZE), block, "block untouched");
        assert_eq!(pt.walk(&mem, nb).unwrap().pa, 0x3000_0000, "neighbour kept");
        let mut sorted = reads.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), reads.len(), "an entry was read twice");
        // Again, now that the head is empty: same answer, still nothing else changed.
        pt.map_range(&mut mem, &mut tlb, head, pa_head, blk - head, K, ALL_HUGE).unwrap();
    }
    // A run holding the end, after pages and a whole run.
    let r0 = VMALLOC_START + 12 * PMD_SIZE;
    let start = r0 - 5 * PAGE_SIZE as u64;
    pt.map_range(
        &mut mem,
        &mut tlb,
        start,
        0x6000_0000 - 5 * PAGE_SIZE as u64,
        5 * PAGE_SIZE as u64 + 2 * CONT_PTE_SIZE,
        K,
        ALL_HUGE,
    )
    .unwrap();
    let r1 = r0 + CONT_PTE_SIZE;
    let second = leaves(&mem, &pt, r1, r1 + CONT_PTE_SIZE);
    assert_eq!(second.len(), 16);
    let r = pt.unmap_range(&mut mem, start, r1 + 3 * PAGE_SIZE as u64 - start);
    assert_eq!(r, Err(UnmapError::PartialBlock { va: r1, size: CONT_PTE_SIZE }));
    assert!(leaves(&mem, &pt, start, r1).is_empty());
    assert_eq!(leaves(&mem, &pt, r1, r1 + CONT_PTE_SIZE), second);
    // A 1 GiB block holding the end, after a 2 MiB block.
    let lin = 0xffff_0000_0000_0000 + PUD_SIZE - PMD_SIZE;
    let f = MapFlags::for_page_shift(PUD_SHIFT);
    pt.map_range(&mut mem, &mut tlb, lin, 0x4000_0000 - PMD_SIZE, PMD_SIZE + PUD_SIZE, K, f)
        .unwrap();
    let r = pt.unmap_range(&mut mem, lin, 2 * PMD_SIZE);
    assert_eq!(r, Err(UnmapError::PartialBlock { va: lin + PMD_SIZE, size: PUD_SIZE }));
    assert!(leaves(&mem, &pt, lin, lin + PMD_SIZE).is_empty());
    assert_eq!(pt.walk(&mem, lin + PMD_SIZE + 0x1234_5000).unwrap().pa, 0x4000_0000 + 0x1234_5000);
}

#[test]
fn unmap_whole_blocks_and_runs() {
    let (mut mem, mut tlb, pt) = setup();
    let va = VMALLOC_START + 2 * PMD_SIZE;
    pt.map_range(&mut mem, &mut tlb, va, 0x4000_0000, PMD_SIZE, K, ALL_HUGE).unwrap();
    let r = pt.unmap_range(&mut mem, va, PMD_SIZE).unwrap();
    assert_eq!(r, UnmapResult { pages: 512, ptes: 0, cont_runs: 0, pmd_blocks: 1, pud_blocks: 0 });
    pt.map_range(&mut mem, &mut tlb, va, 0x4000_0000, CONT_PTE_SIZE, K, ALL_HUGE).unwrap();
    let r = pt.unmap_range(&mut mem, va, CONT_PTE_SIZE).unwrap();
    assert_eq!(r, UnmapResult { pages: 16, ptes: 16, cont_runs: 1, pmd_blocks: 0, pud_blocks: 0 });
    assert!(leaves(&mem, &pt, va, va + PMD_SIZE).is_empty());
    // Mixed, across 1 GiB: pages, runs, 2 MiB blocks, a 1 GiB block, runs and pages.
    let lin = 0xffff_0000_0000_0000 + PUD_SIZE - PMD_SIZE - CONT_PTE_SIZE - 2 * PAGE_SIZE as u64;
    let pa = 0x4000_0000 - PMD_SIZE - CONT_PTE_SIZE - 2 * PAGE_SIZE as u64;
    let size = 2 * PAGE_SIZE as u64
        + CONT_PTE_SIZE
        + PMD_SIZE
        + PUD_SIZE
        + PMD_SIZE
        + 2 * CONT_PTE_SIZE
        + 3 * PAGE_SIZE as u64;
    let f = MapFlags::for_page_shift(PUD_SHIFT);
    let s = pt.map_range(&mut mem, &mut tlb, lin, pa, size, K, f).unwrap();
    assert_eq!((s.ptes, s.cont_runs, s.pmd_blocks, s.pud_blocks), (5 + 48, 3, 2, 1));
    let r = pt.unmap_range(&mut mem, lin, size).unwrap();
    assert_eq!(
        r,
        UnmapResult {
            pages: size / PAGE_SIZE as u64,
            ptes: 53,
            cont_runs: 3,
            pmd_blocks: 2,
            pud_blocks: 1
        }
    );
    assert!(leaves(&mem, &pt, lin, lin + size).is_empty());
}

/// unmap_range is one walk: each descriptor in the range is read exactly once, each table
/// page on the way is looked up once, and the total is what a single walk needs (Linux
/// vunmap_range_noflush), not that plus two probe walks of the ends.
#[test]
fn unmap_is_one_walk() {
    fn check(
        mem: &mut SimMem,
        pt: &PageTable,
        va: u64,
        size: u64,
        reads_expected: usize,
        tables: u64,
    ) -> UnmapResult {
        mem.lookups.set(0);
        let (r, reads) = record_reads(|| pt.unmap_range(mem, va, size));
        let mut sorted = reads.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), reads.len(), "a descriptor was read twice");
        assert_eq!(reads.len(), reads_expected, "descriptor reads");
        assert_eq!(mem.lookups.get(), tables, "table page lookups");
        r.unwrap()
    }
    let (mut mem, mut tlb, pt) = setup();
    // N small pages inside one PTE table: root + pud + pmd entry + N ptes, 4 tables.
    let n = 40;
    let va = VMALLOC_START + 0x3000;
    pt.map_range(&mut mem, &mut tlb, va, 0x4000_0000, n * PAGE_SIZE as u64, K, MapFlags::empty())
        .unwrap();
    let r = check(&mut mem, &pt, va, n * PAGE_SIZE as u64, 3 + n as usize, 4);
    assert_eq!(r.pages, n);
    // Same range again, now empty: the same single walk.
    check(&mut mem, &pt, va, n * PAGE_SIZE as u64, 3 + n as usize, 4);
    // One page: 4 reads (one walk() alone is 4; the old probes made it 12).
    pt.map_range(&mut mem, &mut tlb, va, 0x4000_0000, PAGE_SIZE as u64, K, MapFlags::empty())
        .unwrap();
    check(&mut mem, &pt, va, PAGE_SIZE as u64, 4, 4);
    // Across a 1 GiB boundary: root + 2 pud + 2 pmd entries + 6 ptes; root, pud, 2 pmd, 2 pte tables.
    let x = VMALLOC_START + PUD_SIZE - 3 * PAGE_SIZE as u64;
    pt.map_range(&mut mem, &mut tlb, x, 0x4000_0000, 6 * PAGE_SIZE as u64, K, MapFlags::empty())
        .unwrap();
    let r = check(&mut mem, &pt, x, 6 * PAGE_SIZE as u64, 1 + 2 + 2 + 6, 6);
    assert_eq!(r.pages, 6);
    // Mixed over three PMDs: 3 pages + 31 runs | a 2 MiB block | 2 runs + 5 pages.
    let m = VMALLOC_START + 16 * PMD_SIZE - CONT_PTE_SIZE * 31 - 3 * PAGE_SIZE as u64;
    let pa = 0x8000_0000 - CONT_PTE_SIZE * 31 - 3 * PAGE_SIZE as u64;
    let size = 3 * PAGE_SIZE as u64
        + 31 * CONT_PTE_SIZE
        + PMD_SIZE
        + 2 * CONT_PTE_SIZE
        + 5 * PAGE_SIZE as u64;
    let s = pt.map_range(&mut mem, &mut tlb, m, pa, size, K, ALL_HUGE).unwrap();
    assert_eq!((s.cont_runs, s.pmd_blocks), (33, 1));
    let ptes_first = 3 + 31 * 16;
    let ptes_last = 2 * 16 + 5;
    // root + pud + 3 pmd entries + every pte of the two PTE-mapped chunks.
    let r = check(&mut mem, &pt, m, size, 1 + 1 + 3 + ptes_first + ptes_last, 5);
    assert_eq!(
        r,
        UnmapResult {
            pages: size / PAGE_SIZE as u64,
            ptes: 3 + 5 + 33 * 16,
            cont_runs: 33,
            pmd_blocks: 1,
            pud_blocks: 0
        }
    );
}

/// Runs the kernel never writes (contiguous bit missing on some entries) are still never
/// cleared beyond the range.
#[test]
fn unmap_malformed_run() {
    let (mut mem, mut tlb, pt) = setup();
    let run = VMALLOC_START + 5 * CONT_PTE_SIZE;
    // Clear CONT on the run's first entry.
    let strip_first = |mem: &mut SimMem| {
        let l0 = tbl(mem, pt.root_pa);
        // SAFETY: tables of this simulated tree: `l0` is the root and each next table the
        // address in the table descriptor on the walk to the mapped `run`, all live pages of
        // `mem`; every index comes from `pt_index` (< 512).
        unsafe {
            let l1 = tbl(mem, desc_addr(get(l0, pt_index(run, PGDIR_SHIFT))));
            let l2 = tbl(mem, desc_addr(get(l1, pt_index(run, PUD_SHIFT))));
            let l3 = tbl(mem, desc_addr(get(l2, pt_index(run, PMD_SHIFT))));
            let i = pt_index(run, PAGE_SHIFT);
            set(l3, i, get(l3, i) & !PteFlags::CONT.bits());
        }
    };
    pt.map_range(&mut mem, &mut tlb, run, 0x4000_0000, CONT_PTE_SIZE, K, ALL_HUGE).unwrap();
    strip_first(&mut mem);
    // Whole run in range: cleared (entry 0 as a page, the rest as the run).
    let r = pt.unmap_range(&mut mem, run, CONT_PTE_SIZE).unwrap();
    assert_eq!((r.pages, r.ptes, r.cont_runs), (16, 16, 1));
    assert!(leaves(&mem, &pt, run, run + CONT_PTE_SIZE).is_empty());
    // Range ending inside it: entry 0 (no CONT bit) is cleared, the entries carrying the
    // bit are left and the run is reported.
    pt.map_range(&mut mem, &mut tlb, run, 0x4000_0000, CONT_PTE_SIZE, K, ALL_HUGE).unwrap();
    strip_first(&mut mem);
    let r = pt.unmap_range(&mut mem, run, 4 * PAGE_SIZE as u64);
    assert_eq!(r, Err(UnmapError::PartialBlock { va: run, size: CONT_PTE_SIZE }));
    let l = leaves(&mem, &pt, run, run + CONT_PTE_SIZE);
    assert_eq!(l.len(), 15);
    assert_eq!(l[0].va, run + PAGE_SIZE as u64);
}

#[test]
fn live_entries_are_refused_or_broken_before_make() {
    let (mut mem, mut tlb, pt) = setup();
    let va = VMALLOC_START + 0x4000;
    pt.map_range(&mut mem, &mut tlb, va, 0x4000_0000, 2 * PAGE_SIZE as u64, K, MapFlags::empty())
        .unwrap();
    // vmalloc path: a live PTE is a bug -> error, nothing after it written.
    let e = pt.map_range(
        &mut mem,
        &mut tlb,
        va - PAGE_SIZE as u64,
        0x5000_0000,
        3 * PAGE_SIZE as u64,
        K,
        MapFlags::empty(),
    );
    assert_eq!(e, Err(MapError::AlreadyMapped { va, level: 3, desc: K.page_desc(0x4000_0000) }));
    assert_eq!(pt.walk(&mem, va + PAGE_SIZE as u64).unwrap().pa, 0x4000_1000);
    // Same value again is refused too on the vmalloc path (Linux BUG()s on any non-none PTE).
    assert!(pt
        .map_range(&mut mem, &mut tlb, va, 0x4000_0000, PAGE_SIZE as u64, K, MapFlags::empty())
        .is_err());
    // REPLACE: break-before-make per changed entry.
    tlb.ops.clear();
    let s = pt
        .map_range(
            &mut mem,
            &mut tlb,
            va,
            0x5000_0000,
            2 * PAGE_SIZE as u64,
            PageProt::PAGE_KERNEL_RO,
            MapFlags::REPLACE,
        )
        .unwrap();
    assert_eq!(s.bbm, 2);
    assert_eq!(
        tlb.ops,
        [
            Op::DsbIshst,
            Op::Vaale1is(va),
            Op::DsbIsh,
            Op::DsbIshst,
            Op::Vaale1is(va + PAGE_SIZE as u64),
            Op::DsbIsh,
            Op::DsbIshst,
            Op::Isb
        ]
    );
    let t = pt.walk(&mem, va).unwrap();
    assert_eq!((t.pa, t.writable()), (0x5000_0000, false));
    // Replacing with the identical value needs no BBM.
    tlb.ops.clear();
    let s = pt
        .map_range(
            &mut mem,
            &mut tlb,
            va,
            0x5000_0000,
            PAGE_SIZE as u64,
            PageProt::PAGE_KERNEL_RO,
            MapFlags::REPLACE,
        )
        .unwrap();
    assert_eq!(s.bbm, 0);
    assert_eq!(tlb.ops, [Op::DsbIshst, Op::Isb]);
    // A block where a table is needed is never split.
    let blk = VMALLOC_START + 10 * PMD_SIZE;
    pt.map_range(&mut mem, &mut tlb, blk, 0x6000_0000, PMD_SIZE, K, ALL_HUGE).unwrap();
    assert!(matches!(
        pt.map_range(&mut mem, &mut tlb, blk, 0x7000_0000, PAGE_SIZE as u64, K, MapFlags::REPLACE),
        Err(MapError::AlreadyMapped { level: 2, .. })
    ));
    // A live block replaced by a block: BBM.
    tlb.ops.clear();
    let s = pt
        .map_range(&mut mem, &mut tlb, blk, 0x6020_0000, PMD_SIZE, K, ALL_HUGE | MapFlags::REPLACE)
        .unwrap();
    assert_eq!((s.bbm, s.pmd_blocks), (1, 1));
    assert_eq!(&tlb.ops[..3], &[Op::DsbIshst, Op::Vaale1is(blk), Op::DsbIsh]);
    assert_eq!(pt.walk(&mem, blk).unwrap().pa, 0x6020_0000);
}

#[test]
fn replace_breaks_whole_cont_runs_only() {
    let (mut mem, mut tlb, pt) = setup();
    let va = VMALLOC_START + CONT_PTE_SIZE;
    pt.map_range(&mut mem, &mut tlb, va, 0x4001_0000, CONT_PTE_SIZE, K, MapFlags::CONT_PTE)
        .unwrap();
    assert_eq!(
        pt.map_range(
            &mut mem,
            &mut tlb,
            va + PAGE_SIZE as u64,
            0x5000_0000,
            PAGE_SIZE as u64,
            K,
            MapFlags::REPLACE
        ),
        Err(MapError::PartialContRun { va: va + PAGE_SIZE as u64 })
    );
    tlb.ops.clear();
    let s = pt
        .map_range(&mut mem, &mut tlb, va, 0x5000_0000, CONT_PTE_SIZE, K, MapFlags::REPLACE)
        .unwrap();
    assert_eq!((s.bbm, s.ptes, s.cont_runs), (1, 16, 0));
    let tlbis = tlb.ops.iter().filter(|o| matches!(o, Op::Vaale1is(_))).count();
    assert_eq!(tlbis, 16);
    assert!(leaves(&mem, &pt, va, va + CONT_PTE_SIZE)
        .iter()
        .all(|l| l.desc & PteFlags::CONT.bits() == 0));
}

#[test]
fn block_replaces_an_empty_pte_table() {
    let (mut mem, mut tlb, pt) = setup();
    let blk = VMALLOC_START + 3 * PMD_SIZE;
    pt.map_range(
        &mut mem,
        &mut tlb,
        blk + PAGE_SIZE as u64,
        0x4000_0000,
        PAGE_SIZE as u64,
        K,
        MapFlags::empty(),
    )
    .unwrap();
    // A non-empty table must not be thrown away.
    assert!(matches!(
        pt.map_range(&mut mem, &mut tlb, blk, 0x6000_0000, PMD_SIZE, K, ALL_HUGE),
        Err(MapError::AlreadyMapped { level: 2, .. })
    ));
    pt.unmap_range(&mut mem, blk + PAGE_SIZE as u64, PAGE_SIZE as u64).unwrap();
    let tables = mem.live();
    tlb.ops.clear();
    let s = pt.map_range(&mut mem, &mut tlb, blk, 0x6000_0000, PMD_SIZE, K, ALL_HUGE).unwrap();
    assert_eq!((s.pmd_blocks, s.tables_freed), (1, 1));
    assert_eq!(mem.live(), tables - 1);
    assert_eq!(
        tlb.ops,
        [Op::DsbIshst, Op::Vaae1is(blk), Op::DsbIsh, Op::Isb, Op::DsbIshst, Op::Isb]
    );
    assert_eq!(pt.walk(&mem, blk + 0x1000).unwrap().level, 2);
}

#[test]
fn errors_and_out_of_memory() {
    let (mut mem, mut tlb, pt) = setup();
    assert_eq!(
        pt.map_range(
            &mut mem,
            &mut tlb,
            VMALLOC_START + 1,
            0,
            PAGE_SIZE as u64,
            K,
            MapFlags::empty()
        ),
        Err(MapError::Invalid)
    );
    assert_eq!(
        pt.map_range(
            &mut mem,
            &mut tlb,
            VMALLOC_START,
            0x800,
            PAGE_SIZE as u64,
            K,
            MapFlags::empty()
        ),
        Err(MapError::Invalid)
    );
    assert_eq!(
        pt.map_range(&mut mem, &mut tlb, VMALLOC_START, 0, 0, K, MapFlags::empty()),
        Err(MapError::Invalid)
    );
    assert_eq!(
        pt.map_range(&mut mem, &mut tlb, !0xfff, 0, 2 * PAGE_SIZE as u64, K, MapFlags::empty()),
        Err(MapError::Invalid)
    );
    assert_eq!(
        pt.map_range(
            &mut mem,
            &mut tlb,
            VMALLOC_START,
            1 << 48,
            PAGE_SIZE as u64,
            K,
            MapFlags::empty()
        ),
        Err(MapError::Invalid)
    );
    mem.limit = Some(mem.allocs + 2);
    let va = VMALLOC_START + 0x7000_0000;
    assert_eq!(
        pt.map_range(&mut mem, &mut tlb, va, 0x4000_0000, PAGE_SIZE as u64, K, MapFlags::empty()),
        Err(MapError::NoMemory { va })
    );
    assert!(
        tlb.significant().ends_with(&[Op::DsbIshst, Op::Isb]),
        "partial work is still published"
    );
}

/// Pages covered by a recorded flush (None = everything).
fn flushed_pages(ops: &[Op]) -> Option<Vec<u64>> {
    let mut v = Vec::new();
    for op in ops {
        match *op {
            Op::Vmalle1is => return None,
            Op::Vaale1is(va) => v.push(va),
            Op::Rvaale1is(va, scale, num) => {
                for k in 0..tlbi_range_pages(num as u64, scale) {
                    v.push(va + k * PAGE_SIZE as u64)
                }
            }
            _ => {}
        }
    }
    Some(v)
}

fn flush(range: bool, start: u64, end: u64) -> MockTlb {
    let mut tlb = MockTlb::with_range(range);
    flush_tlb_kernel_range(&mut tlb, start, end);
    tlb
}

#[test]
fn flush_threshold_without_range_ops() {
    let s = VMALLOC_START;
    let t = flush(false, s, s + 511 * PAGE_SIZE as u64);
    assert_eq!(t.ops.len(), 511 + 3);
    assert_eq!(t.ops[0], Op::DsbIshst);
    assert_eq!(&t.ops[512..], &[Op::DsbIsh, Op::Isb]);
    assert_eq!(
        flushed_pages(&t.ops).unwrap(),
        (0..511).map(|k| s + k * PAGE_SIZE as u64).collect::<Vec<_>>()
    );
    let t = flush(false, s, s + 512 * PAGE_SIZE as u64);
    assert_eq!(t.ops, [Op::DsbIshst, Op::Vmalle1is, Op::DsbIsh, Op::Isb]);
    // Unaligned bounds round outwards.
    let t = flush(false, s + 0x800, s + 0x1001);
    assert_eq!(
        t.ops,
        [Op::DsbIshst, Op::Vaale1is(s), Op::Vaale1is(s + PAGE_SIZE as u64), Op::DsbIsh, Op::Isb]
    );
}

#[test]
fn flush_with_range_ops() {
    let s = VMALLOC_START;
    let t = flush(true, s, s + PAGE_SIZE as u64);
    assert_eq!(t.ops, [Op::DsbIshst, Op::Vaale1is(s), Op::DsbIsh, Op::Isb]);
    let t = flush(true, s, s + 3 * PAGE_SIZE as u64);
    assert_eq!(
        t.ops,
        [
            Op::DsbIshst,
            Op::Rvaale1is(s, 0, 0),
            Op::Vaale1is(s + 2 * PAGE_SIZE as u64),
            Op::DsbIsh,
            Op::Isb
        ]
    );
    let t = flush(true, s, s + 512 * PAGE_SIZE as u64);
    assert_eq!(t.ops, [Op::DsbIshst, Op::Rvaale1is(s, 1, 7), Op::DsbIsh, Op::Isb]);
    let t = flush(true, s, s + (1 << 21) * PAGE_SIZE as u64);
    assert_eq!(t.ops, [Op::DsbIshst, Op::Rvaale1is(s, 3, 31), Op::DsbIsh, Op::Isb]);
    let t = flush(true, s, s + ((1 << 21) + 1) * PAGE_SIZE as u64);
    assert_eq!(t.ops, [Op::DsbIshst, Op::Vmalle1is, Op::DsbIsh, Op::Isb]);
    // Every size up to a few thousand pages: exact coverage, at most 4 range ops + 1 page.
    for pages in 1..3000u64 {
        let t = flush(true, s + 7 * PAGE_SIZE as u64, s + (7 + pages) * PAGE_SIZE as u64);
        let covered = flushed_pages(&t.ops).unwrap();
        assert_eq!(
            covered,
            (0..pages).map(|k| s + (7 + k) * PAGE_SIZE as u64).collect::<Vec<_>>(),
            "{pages}"
        );
        assert!(t.ops.len() <= 4 + 1 + 3);
    }
}

/// A table memory where "another CPU" links the same missing table first: at the first
/// populate it maps `other_va` (same 2 MiB region) through the inner memory, and only then
/// lets the caller's populate run.
struct RacingMem {
    inner: SimMem,
    root: u64,
    other_va: u64,
    raced: bool,
}

// SAFETY: delegates to SimMem (whose impl upholds the contract); the extra mapping made in
// `with_populate_lock` goes through the same SimMem.
unsafe impl PtMemory for RacingMem {
    fn table(&self, pa: u64) -> *mut [u64; 512] {
        self.inner.table(pa)
    }
    fn alloc_table(&mut self) -> Option<u64> {
        self.inner.alloc_table()
    }
    fn free_table(&mut self, pa: u64) {
        self.inner.free_table(pa)
    }
    fn with_populate_lock(&mut self, f: &mut dyn FnMut()) {
        if !self.raced {
            self.raced = true;
            let mut tlb = MockTlb::default();
            PageTable::from_root(self.root)
                .map_pages(
                    &mut self.inner,
                    &mut tlb,
                    self.other_va,
                    1,
                    |_| 0x4000_0000 + 7 * PAGE_SIZE as u64,
                    K,
                    PAGE_SHIFT,
                    MapFlags::empty(),
                )
                .unwrap();
        }
        f()
    }
}

// Two CPUs map disjoint pages of one 2 MiB region at once and both find its PTE table
// missing: the one that links second must use the first one's table and free its own
// (Linux __pte_alloc_kernel), not overwrite the link (which would unmap the other page and
// leak a table). Cannot be provoked on demand under QEMU, so a model of the interleaving.
#[test]
fn concurrent_populate_keeps_the_first_table_and_frees_the_second() {
    let mut mem = SimMem::new();
    let pt = PageTable::new(&mut mem).unwrap();
    let mut tlb = MockTlb::default();
    // Upper levels exist (a page in the next 2 MiB region); the target PMD entry is empty.
    let region = VMALLOC_START + 4 * PMD_SIZE;
    pt.map_pages(
        &mut mem,
        &mut tlb,
        region + PMD_SIZE,
        1,
        |_| 0x4000_0000,
        K,
        PAGE_SHIFT,
        MapFlags::empty(),
    )
    .unwrap();
    let live_before = mem.live();
    let mut rm = RacingMem {
        inner: mem,
        root: pt.root_pa,
        other_va: region + 5 * PAGE_SIZE as u64,
        raced: false,
    };
    let s = pt
        .map_pages(
            &mut rm,
            &mut tlb,
            region,
            1,
            |_| 0x4000_0000 + 3 * PAGE_SIZE as u64,
            K,
            PAGE_SHIFT,
            MapFlags::empty(),
        )
        .unwrap();
    assert!(rm.raced);
    assert_eq!(s.tables_allocated, 0, "the racing mapper's table was linked over the first one");
    assert_eq!(s.ptes, 1);
    let mem = rm.inner;
    // One new PTE table in all (the other CPU's); ours was freed.
    assert_eq!(mem.live(), live_before + 1);
    assert_eq!(mem.frees, 1);
    assert_eq!(pt.walk(&mem, region).unwrap().pa, 0x4000_0000 + 3 * PAGE_SIZE as u64);
    assert_eq!(
        pt.walk(&mem, region + 5 * PAGE_SIZE as u64).unwrap().pa,
        0x4000_0000 + 7 * PAGE_SIZE as u64
    );
}

#[test]
fn map_pages_small_and_huge() {
    let (mut mem, mut tlb, pt) = setup();
    // Scattered order-0 pages across a PMD boundary.
    let va = VMALLOC_START + PMD_SIZE - 2 * PAGE_SIZE as u64;
    let pages: Vec<u64> =
        [9u64, 3, 77, 5].iter().map(|p| 0x4000_0000 + p * PAGE_SIZE as u64).collect();
    let s = pt
        .map_pages(&mut mem, &mut tlb, va, 4, |i| pages[i], K, PAGE_SHIFT, MapFlags::empty())
        .unwrap();
    assert_eq!(s.ptes, 4);
    for (i, pa) in pages.iter().enumerate() {
        assert_eq!(pt.walk(&mem, va + i as u64 * PAGE_SIZE as u64).unwrap().pa, *pa);
    }
    assert_eq!(tlb.significant(), [Op::DsbIshst, Op::Isb]);
    assert!(matches!(
        pt.map_pages(&mut mem, &mut tlb, va, 1, |_| 0x5000_0000, K, PAGE_SHIFT, MapFlags::empty()),
        Err(MapError::AlreadyMapped { .. })
    ));
    // page_shift 16: two order-4 blocks -> two contiguous runs.
    let va = VMALLOC_START + 0x40_0000;
    let blocks = [0x4100_0000u64, 0x4200_0000];
    let s = pt
        .map_pages(
            &mut mem,
            &mut tlb,
            va,
            32,
            |i| blocks[i / 16] + (i % 16) as u64 * PAGE_SIZE as u64,
            K,
            16,
            MapFlags::empty(),
        )
        .unwrap();
    assert_eq!((s.cont_runs, s.ptes), (2, 32));
    assert_eq!(pt.walk(&mem, va + CONT_PTE_SIZE).unwrap().pa, 0x4200_0000);
    // page_shift 21: one order-9 block -> one PMD block.
    let va = VMALLOC_START + 0x80_0000;
    tlb.ops.clear();
    let s = pt
        .map_pages(
            &mut mem,
            &mut tlb,
            va,
            512,
            |i| 0x4400_0000 + i as u64 * PAGE_SIZE as u64,
            K,
            PMD_SHIFT,
            MapFlags::empty(),
        )
        .unwrap();
    assert_eq!((s.pmd_blocks, s.ptes), (1, 0));
    assert_eq!(tlb.significant(), [Op::DsbIshst, Op::Isb]);
    assert_eq!(
        pt.map_pages(
            &mut mem,
            &mut tlb,
            va,
            17,
            |i| i as u64 * PAGE_SIZE as u64,
            K,
            16,
            MapFlags::empty()
        ),
        Err(MapError::Invalid)
    );
}

#[test]
fn no_barrier_batching() {
    let (mut mem, mut tlb, pt) = setup();
    for k in 0..4 {
        pt.map_range(
            &mut mem,
            &mut tlb,
            VMALLOC_START + k * PAGE_SIZE as u64,
            0x4000_0000,
            PAGE_SIZE as u64,
            K,
            MapFlags::NO_BARRIER,
        )
        .unwrap();
    }
    assert!(tlb.significant().is_empty());
    publish_mappings(&mut tlb);
    assert_eq!(tlb.significant(), [Op::DsbIshst, Op::Isb]);
}

#[test]
fn offset_pool_backs_a_table_tree() {
    #[repr(C, align(4096))]
    struct Pages([[u64; 512]; 8]);
    let mut buf = Box::new(Pages([[0xdead_beef; 512]; 8]));
    let pool_pa = 0x4_0000_0000;
    // SAFETY: the buffer outlives the pool and is used only through it. It is 8 pages,
    // page aligned by `Pages`' repr, and every table PA used (root included) comes from it.
    let mut mem = unsafe { OffsetPool::new(buf.0.as_mut_ptr() as *mut u8, pool_pa, 8 * 4096) };
    let mut tlb = MockTlb::default();
    let pt = PageTable::new(&mut mem).unwrap();
    assert_eq!(pt.root_pa, pool_pa);
    pt.map_range(
        &mut mem,
        &mut tlb,
        VMALLOC_START,
        0x4000_0000,
        3 * PAGE_SIZE as u64,
        K,
        MapFlags::empty(),
    )
    .unwrap();
    assert_eq!(mem.in_use, 4);
    assert_eq!(pt.walk(&mem, VMALLOC_START + 0x2000).unwrap().pa, 0x4000_2000);
    // Fill the pool, then run out.
    let mut n = 0;
    while mem.alloc_table().is_some() {
        n += 1;
    }
    assert_eq!(n, 4);
    mem.free_table(pool_pa + 7 * PAGE_SIZE as u64);
    assert_eq!(mem.alloc_table(), Some(pool_pa + 7 * PAGE_SIZE as u64));
    drop(buf);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    const WINDOW_PAGES: u64 = 8192; // 32 MiB
    const BASE: u64 = VMALLOC_START + 64 * PMD_SIZE;

    #[derive(Debug, Clone)]
    enum Cmd {
        /// Map a range starting at page `at` of `pages`, PA congruence `pa_skew` pages.
        Map { at: u64, pages: u64, pa_skew: u64, flags: u8 },
        /// Unmap the n-th live mapping.
        Unmap { nth: usize },
    }

    fn cmd() -> impl Strategy<Value = Cmd> {
        prop_oneof![
            3 => (0..WINDOW_PAGES, prop_oneof![1..=40u64, 1..=1024u64, Just(512u64), Just(16u64), Just(1024u64)],
                  prop_oneof![Just(0u64), Just(0u64), 0..32u64], 0..4u8)
                .prop_map(|(at, pages, pa_skew, flags)| {
                    // Bias starts towards 64 KiB / 2 MiB alignment so runs and blocks happen.
                    let at = match at % 3 { 0 => at & !15, 1 => at & !511, _ => at };
                    Cmd::Map { at, pages, pa_skew, flags }
                }),
            1 => any::<usize>().prop_map(|nth| Cmd::Unmap { nth }),
        ]
    }

    /// A page index in the window, often a few pages either side of a 64 KiB or 2 MiB
    /// boundary (where mappings start and runs and blocks begin and end).
    fn near_boundary() -> impl Strategy<Value = u64> {
        (0..WINDOW_PAGES, 0..3u8, 0..5u64).prop_map(|(x, k, d)| {
            let snapped = match k {
                0 => return x,
                1 => x & !15,
                _ => x & !511,
            };
            (snapped + d).wrapping_sub(2).min(WINDOW_PAGES - 1)
        })
    }

    /// The units an unmap clears or refuses as a whole: (start, size) of each block, each
    /// contiguous run and each plain page, from the leaves.
    fn units(leaves: &[Leaf]) -> Vec<(u64, u64)> {
        let mut u: Vec<(u64, u64)> = Vec::new();
        for l in leaves {
            let unit = if l.level == 3 && l.desc & PteFlags::CONT.bits() != 0 {
                (l.va & !(CONT_PTE_SIZE - 1), CONT_PTE_SIZE)
            } else {
                (l.va, l.size)
            };
            if u.last() != Some(&unit) {
                u.push(unit);
            }
        }
        u
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn random_map_unmap_agrees_with_model(cmds in proptest::collection::vec(cmd(), 1..40)) {
            let (mut mem, mut tlb, pt) = setup();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new(); // page va -> pa
            let mut live: Vec<(u64, u64)> = Vec::new(); // (va, size)
            let mut next_pa = 0x10_0000_0000u64;
            for c in cmds {
                match c {
                    Cmd::Map { at, pages, pa_skew, flags } => {
                        let pages = pages.min(WINDOW_PAGES - at);
                        let va = BASE + at * PAGE_SIZE as u64;
                        let size = pages * PAGE_SIZE as u64;
                        if live.iter().any(|&(v, s)| va < v + s && v < va + size) {
                            continue; // only non-overlapping ranges
                        }
                        // PA congruent to VA modulo 2 MiB unless skewed.
                        let pa = next_pa + (va & (PMD_SIZE - 1)) + pa_skew * PAGE_SIZE as u64;
                        next_pa += 2 * PMD_SIZE + ((size + PMD_SIZE - 1) & !(PMD_SIZE - 1));
                        let f = MapFlags::from_bits_truncate(flags as u32 & 3);
                        pt.map_range(&mut mem, &mut tlb, va, pa, size, K, f).unwrap();
                        for k in 0..pages {
                            model.insert(va + k * PAGE_SIZE as u64, pa + k * PAGE_SIZE as u64);
                        }
                        live.push((va, size));
                    }
                    Cmd::Unmap { nth } => {
                        if live.is_empty() { continue; }
                        let (va, size) = live.remove(nth % live.len());
                        let r = pt.unmap_range(&mut mem, va, size).unwrap();
                        prop_assert_eq!(r.pages, size / PAGE_SIZE as u64);
                        for k in 0..size / PAGE_SIZE as u64 {
                            model.remove(&(va + k * PAGE_SIZE as u64));
                        }
                        prop_assert!(leaves(&mem, &pt, va, va + size).is_empty());
                    }
                }
            }
            for k in 0..WINDOW_PAGES {
                let va = BASE + k * PAGE_SIZE as u64;
                let got = pt.walk(&mem, va).map(|t| t.pa);
                prop_assert_eq!(got, model.get(&va).copied(), "page {:#x}", va);
                if let Some(t) = pt.walk(&mem, va) {
                    prop_assert_eq!(t.prot(), K);
                }
            }
            // Structural invariants: each contiguous run is 16 aligned entries with CONT set
            // and consecutive PAs.
            let all = leaves(&mem, &pt, BASE, BASE + WINDOW_PAGES * PAGE_SIZE as u64);
            for l in &all {
                if l.level == 3 && l.desc & PteFlags::CONT.bits() != 0 {
                    let run = l.va & !(CONT_PTE_SIZE - 1);
                    let first = pt.walk(&mem, run).unwrap();
                    prop_assert_eq!(first.pa & (CONT_PTE_SIZE - 1), 0);
                    for k in 0..16 {
                        let t = pt.walk(&mem, run + k * PAGE_SIZE as u64).unwrap();
                        prop_assert!(t.cont);
                        prop_assert_eq!(t.pa, first.pa + k * PAGE_SIZE as u64);
                    }
                }
            }
            pt.free_all(&mut mem);
            prop_assert_eq!(mem.live(), 0);
        }
    }

    proptest! {
        // Cheap (one small table tree per case); many cases so the rarer straddles occur.
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// Unmapping any sub-range of a random mix of pages, runs and blocks: refused with
        /// nothing changed when a block/run holds the start; when one holds only the end,
        /// everything else is cleared and it stays whole; otherwise everything in range
        /// is cleared. Always one read per descriptor.
        #[test]
        fn random_subrange_unmap_matches_leaf_model(
            maps in proptest::collection::vec(cmd(), 1..8),
            a in near_boundary(),
            b in near_boundary(),
        ) {
            let (mut mem, mut tlb, pt) = setup();
            let mut live: Vec<(u64, u64)> = Vec::new();
            let mut next_pa = 0x10_0000_0000u64;
            for c in maps {
                let Cmd::Map { at, pages, pa_skew, flags } = c else { continue };
                let pages = pages.min(WINDOW_PAGES - at);
                let va = BASE + at * PAGE_SIZE as u64;
                let size = pages * PAGE_SIZE as u64;
                if live.iter().any(|&(v, s)| va < v + s && v < va + size) {
                    continue;
                }
                let pa = next_pa + (va & (PMD_SIZE - 1)) + pa_skew * PAGE_SIZE as u64;
                next_pa += 2 * PMD_SIZE + ((size + PMD_SIZE - 1) & !(PMD_SIZE - 1));
                let f = MapFlags::from_bits_truncate(flags as u32 & 3);
                pt.map_range(&mut mem, &mut tlb, va, pa, size, K, f).unwrap();
                live.push((va, size));
            }
            let win_end = BASE + WINDOW_PAGES * PAGE_SIZE as u64;
            let va = BASE + a.min(b) * PAGE_SIZE as u64;
            let end = BASE + (a.max(b) + 1) * PAGE_SIZE as u64;
            let before = leaves(&mem, &pt, BASE, win_end);
            let us = units(&before);
            let holding = |a: u64| us.iter().copied().find(|&(s, z)| s <= a && a < s + z);
            let (r, reads) = record_reads(|| pt.unmap_range(&mut mem, va, end - va));
            let mut sorted = reads.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), reads.len(), "a descriptor was read twice");
            let after = leaves(&mem, &pt, BASE, win_end);
            match holding(va) {
                Some((s, z)) if s < va => {
                    prop_assert_eq!(r, Err(UnmapError::PartialBlock { va: s, size: z }));
                    prop_assert_eq!(after, before);
                }
                _ => {
                    let straddle = holding(end - PAGE_SIZE as u64).filter(|&(s, z)| s + z > end);
                    // Kept: leaves outside the range, and the straddling unit.
                    let kept: Vec<Leaf> = before
                        .iter()
                        .copied()
                        .filter(|l| {
                            let in_range = l.va < end && va < l.va + l.size;
                            let in_straddle = straddle.is_some_and(|(s, z)| s <= l.va && l.va < s + z);
                            !in_range || in_straddle
                        })
                        .collect();
                    prop_assert_eq!(&after, &kept);
                    match straddle {
                        Some((s, z)) => prop_assert_eq!(r, Err(UnmapError::PartialBlock { va: s, size: z })),
                        None => {
                            let r = r.unwrap();
                            let gone: u64 = us.iter().filter(|&&(s, z)| s < end && va < s + z).map(|&(_, z)| z).sum();
                            prop_assert_eq!(r.pages, gone / PAGE_SIZE as u64);
                        }
                    }
                }
            }
            pt.free_all(&mut mem);
        }
    }
}
