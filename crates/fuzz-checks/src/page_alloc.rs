//! The `page_alloc` target: an operation sequence decoded from the input runs against the page
//! allocator (several zones, several CPUs' pcp lists) and an independent model (who owns which
//! page). After every step: no page handed out twice, no free block overlapping an owned page,
//! free (buddy + pcp) + owned = managed, the vm-event counters agree with the model, and
//! `verify()` passes. At the end everything is freed and drained and the buddy must be exactly
//! as after boot.
use super::Input;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use mm_page_alloc::page_alloc::{
    num_pages_contiguous, BadPage, PageAllocConfig, PageAllocator, VerifyReport,
};
use mm_page_alloc::stat::VmEvent;
use mm_page_alloc::{Memblock, Page};
use mm_types::gfp::{gfp_zone, GfpFlags as G, MAX_NR_ZONES};
use mm_types::{MAX_PAGE_ORDER, PAGE_SHIFT};

use super::{FULL_EVERY, MAX_OPS};

/// The simulated machines: (RAM banks, reservations, zone_dma_limit). All small (at most 6144
/// pages) so that building one per input is cheap.
type Layout = (&'static [(u64, u64)], &'static [(u64, u64)], Option<u64>);

fn layout(i: u8) -> Layout {
    match i % 3 {
        // Two zones (DMA below 4 MiB, DMA32), a 4 MiB hole, everything 4 MiB aligned.
        0 => (&[(0x4000_0000, 8 << 20), (0x40c0_0000, 4 << 20)], &[], Some(0x403f_ffff)),
        // The same with unaligned reservations (kernel image, DTB, firmware page, 16 bytes).
        1 => (
            &[(0x4000_0000, 8 << 20), (0x40c0_0000, 4 << 20)],
            &[
                (0x4000_0000, 0x2_3000),
                (0x4040_5000, 0x1000),
                (0x40ff_e000, 0x2000),
                (0x4063_0000, 0x10),
            ],
            Some(0x403f_ffff),
        ),
        // Three zones: RAM straddles 4 GiB (DMA 8 MiB, DMA32 8 MiB, NORMAL 8 MiB), one page
        // reserved in each.
        _ => (
            &[(0xff00_0000, 16 << 20), (0x1_0000_0000, 8 << 20)],
            &[(0xff00_0000, 0x1000), (0xff80_0000, 0x1000), (0x1_0000_0000, 0x1000)],
            Some(0xff7f_ffff),
        ),
    }
}

fn gfp_of(g: u8) -> G {
    let g = match g % 7 {
        0 => G::GFP_KERNEL,
        1 => G::GFP_ATOMIC,
        2 => G::GFP_KERNEL | G::GFP_DMA,
        3 => G::GFP_NOWAIT | G::__GFP_ZERO,
        4 => G::GFP_KERNEL | G::GFP_DMA32,
        5 => G::GFP_KERNEL | G::__GFP_COMP,
        _ => G::GFP_NOWAIT,
    };
    g | G::__GFP_NOWARN
}

struct Model {
    /// head pfn -> (order, compound); split blocks appear as order-0 entries.
    owned: BTreeMap<u64, (u32, bool)>,
    owned_pages: u64,
    bitmap: Vec<bool>,
    min_pfn: u64,
}

impl Model {
    fn take(&mut self, pa: &PageAllocator, pfn: u64, order: u32, compound: bool) {
        assert_eq!(
            pfn & ((1 << order) - 1),
            0,
            "pfn {pfn:#x} handed out misaligned for order {order}"
        );
        for p in pfn..pfn + (1 << order) {
            let i =
                p.checked_sub(self.min_pfn).map(|i| i as usize).filter(|&i| i < self.bitmap.len());
            let i = i.unwrap_or_else(|| panic!("pfn {p:#x} outside mem_map handed out"));
            assert!(!self.bitmap[i], "pfn {p:#x} handed out twice");
            self.bitmap[i] = true;
        }
        let pg = pa.pfn_to_page(pfn).unwrap();
        assert_eq!((pg.page_count(), pg.order()), (1, order), "fresh block {pfn:#x}");
        assert!(!pg.is_reserved(), "reserved page {pfn:#x} handed out");
        self.owned.insert(pfn, (order, compound));
        self.owned_pages += 1 << order;
    }
    fn release(&mut self, pfn: u64) -> u32 {
        let (order, _) = self.owned.remove(&pfn).expect("owned");
        for p in pfn..pfn + (1 << order) {
            self.bitmap[(p - self.min_pfn) as usize] = false;
        }
        self.owned_pages -= 1 << order;
        order
    }
    fn nth(&self, k: usize, pred: impl Fn(u64, u32, bool) -> bool) -> Option<(u64, u32, bool)> {
        let n = self.owned.iter().filter(|(&p, &(o, c))| pred(p, o, c)).count();
        if n == 0 {
            return None;
        }
        self.owned
            .iter()
            .filter(|(&p, &(o, c))| pred(p, o, c))
            .nth(k % n)
            .map(|(&p, &(o, c))| (p, o, c))
    }
    /// Maximal run of owned order-0 pages starting at `pfn`, at most `len`.
    fn run0(&self, pfn: u64, len: usize) -> Vec<u64> {
        let mut v = Vec::new();
        let mut p = pfn;
        while v.len() < len && matches!(self.owned.get(&p), Some(&(0, _))) {
            v.push(p);
            p += 1;
        }
        v
    }
}

/// Pages allocated minus pages freed, by the zone counters and by the order counters.
fn event_balance(pa: &PageAllocator) -> (i128, i128) {
    let ev = pa.all_vm_events();
    let alloc_zone: u64 = (0..MAX_NR_ZONES).map(|z| ev[VmEvent::pgalloc_zone(z)]).sum();
    let by_zone = alloc_zone as i128 - ev[VmEvent::Pgfree as usize] as i128;
    let pages = |f: fn(u32) -> usize| -> i128 {
        (0..=MAX_PAGE_ORDER as u32).map(|o| (ev[f(o)] as i128) << o).sum()
    };
    (by_zone, pages(VmEvent::pgalloc_order) - pages(VmEvent::pgfree_order))
}

struct Checker {
    baseline: (i128, i128),
    steps: usize,
}

impl Checker {
    /// After every step: conservation and the counters (cheap). Every [`FULL_EVERY`]th step
    /// and at the end (`full`): also `verify()` with every free block checked against the
    /// owned blocks.
    fn check(
        &mut self,
        pa: &PageAllocator,
        md: &Model,
        what: &dyn core::fmt::Debug,
        full: bool,
    ) -> Option<VerifyReport> {
        self.steps += 1;
        let (buddy, pcp) = (pa.nr_free_pages_total(), pa.nr_pcp_pages());
        assert_eq!(
            buddy + pcp + md.owned_pages,
            pa.totalram_pages(),
            "after {what:?}: free {buddy} + pcp {pcp} + owned {} != managed",
            md.owned_pages
        );
        let (z, o) = event_balance(pa);
        let owned = md.owned_pages as i128;
        assert_eq!(
            z - self.baseline.0,
            owned,
            "after {what:?}: pgalloc_<zone> - pgfree != owned pages"
        );
        assert_eq!(
            o - self.baseline.1,
            owned,
            "after {what:?}: pgalloc_order - pgfree_order (pages) != owned pages"
        );
        if !full && !self.steps.is_multiple_of(FULL_EVERY) {
            return None;
        }
        let rep = pa
            .verify(|pfn, order, _| {
                // Owned blocks are disjoint, so only the last one starting below the free
                // block's end can overlap it.
                let end = pfn + (1 << order);
                assert!(pfn >= md.min_pfn && end <= md.min_pfn + md.bitmap.len() as u64, "after {what:?}: free block {pfn:#x}/{order} outside mem_map");
                if let Some((&p, &(o, _))) = md.owned.range(..end).next_back() {
                    assert!(p + (1 << o) <= pfn, "after {what:?}: free block {pfn:#x}/{order} overlaps owned block {p:#x}/{o}");
                }
            })
            .unwrap_or_else(|e| panic!("after {what:?}: {e}"));
        assert_eq!(
            rep.buddy_pages.iter().sum::<u64>(),
            buddy,
            "after {what:?}: free lists vs NR_FREE_PAGES"
        );
        assert_eq!(
            rep.pcp_pages.iter().sum::<u64>(),
            pcp,
            "after {what:?}: pcp lists vs pcp->count"
        );
        Some(rep)
    }
}

#[derive(Debug)]
enum Op {
    Alloc { cpu: usize, order: u32, gfp: u8 },
    Free { cpu: usize, k: usize },
    Split { k: usize },
    BulkAlloc { cpu: usize, n: usize, pre: u8, gfp: u8 },
    FreeContig { cpu: usize, k: usize, len: usize, how: u8 },
    FreeBulkScattered { cpu: usize, k: usize, n: usize, step: usize },
    Drain { cpu: usize, other: usize, kind: u8 },
    Misuse { k: usize, kind: u8 },
    Decay { cpu: usize },
    GetPut { k: usize },
}

fn decode(inp: &mut Input, nr_cpus: usize) -> Op {
    let cpu = |inp: &mut Input| inp.u8() as usize % nr_cpus;
    match inp.u8() % 16 {
        0..=4 => {
            let cpu = cpu(inp);
            let order = match inp.u8() {
                0..=169 => inp.u8() as u32 % 4,
                170..=219 => 4 + inp.u8() as u32 % 5,
                220..=234 => 9,
                235..=249 => 10,
                b => 11 + (b as u32 % 3) * 20, // above MAX_PAGE_ORDER: must fail cleanly
            };
            Op::Alloc { cpu, order, gfp: inp.u8() }
        }
        5 | 6 => Op::Free { cpu: cpu(inp), k: inp.u16() as usize },
        7 => Op::Split { k: inp.u16() as usize },
        8 => Op::BulkAlloc {
            cpu: cpu(inp),
            n: 1 + inp.u8() as usize % 100,
            pre: inp.u8(),
            gfp: inp.u8(),
        },
        9 | 10 => Op::FreeContig {
            cpu: cpu(inp),
            k: inp.u16() as usize,
            len: 1 + inp.u16() as usize % 700,
            how: inp.u8() % 3,
        },
        11 => Op::FreeBulkScattered {
            cpu: cpu(inp),
            k: inp.u16() as usize,
            n: 1 + inp.u8() as usize % 64,
            step: 1 + inp.u8() as usize % 3,
        },
        12 => Op::Drain { cpu: cpu(inp), other: cpu(inp), kind: inp.u8() % 3 },
        13 => Op::Misuse { k: inp.u16() as usize, kind: inp.u8() % 7 },
        14 => Op::Decay { cpu: cpu(inp) },
        _ => Op::GetPut { k: inp.u16() as usize },
    }
}

/// Runs one input. Panics (with the step and what differed) on any disagreement.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let conf = inp.u8();
    let (ram, reserved, dma_limit) = layout(conf);
    let nr_cpus = 1 + (conf as usize / 3) % 4;
    let mut mb = Memblock::new();
    for &(b, s) in ram {
        mb.add(b, s).unwrap();
    }
    for &(b, s) in reserved {
        mb.reserve(b, s).unwrap();
    }
    let min_pfn = mb.start_of_dram() >> PAGE_SHIFT;
    let max_pfn = (mb.end_of_dram() + 4095) >> PAGE_SHIFT;
    let pages: Vec<Page> = (min_pfn..max_pfn).map(|_| Page::new()).collect();
    let mut cfg = PageAllocConfig { nr_cpus, zone_dma_limit: dma_limit, ..Default::default() };
    match (conf as usize / 12) % 3 {
        1 => cfg.percpu_pagelist_high_fraction = 8,
        2 => cfg.pcp_enabled = false,
        _ => {}
    }
    let pa = PageAllocator::new(&pages, min_pfn, &mb, &cfg).unwrap();
    let reserved_pfns: Vec<u64> =
        (min_pfn..max_pfn).filter(|&p| pa.pfn_to_page(p).unwrap().is_reserved()).collect();
    let mut ck = Checker { baseline: event_balance(&pa), steps: 0 };
    let mut md =
        Model { owned: BTreeMap::new(), owned_pages: 0, bitmap: vec![false; pages.len()], min_pfn };
    let initial = ck.check(&pa, &md, &"boot", true).unwrap();

    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let op = decode(&mut inp, nr_cpus);
        match op {
            Op::Alloc { cpu, order, gfp } => {
                let g = gfp_of(gfp);
                let got = pa.alloc_pages(cpu, g, order);
                if order as usize > MAX_PAGE_ORDER {
                    assert_eq!(got, None, "order {order} > MAX_PAGE_ORDER allocated");
                }
                if let Some(p) = got {
                    md.take(&pa, p, order, g.contains(G::__GFP_COMP) && order > 0);
                    let z = pa.pfn_to_page(p).unwrap().zone_idx() as usize;
                    assert!(
                        z <= gfp_zone(g),
                        "{op:?}: block {p:#x} from zone {z} above gfp_zone {}",
                        gfp_zone(g)
                    );
                }
            }
            Op::Free { cpu, k } => {
                if let Some((p, o, _)) = md.nth(k, |_, _, _| true) {
                    md.release(p);
                    assert_eq!(pa.__free_pages(cpu, p, o), Ok(()), "{op:?}");
                }
            }
            Op::Split { k } => {
                if let Some((p, o, compound)) = md.nth(k, |_, o, _| o > 0) {
                    if compound {
                        assert_eq!(
                            pa.split_page(p, o).map_err(|e| e.what),
                            Err(BadPage::SplitCompound)
                        );
                    } else {
                        assert_eq!(pa.split_page(p, o), Ok(()), "{op:?}");
                        md.release(p);
                        for q in p..p + (1 << o) {
                            md.take(&pa, q, 0, false);
                        }
                    }
                }
            }
            Op::BulkAlloc { cpu, n, pre, gfp } => {
                let g =
                    if gfp % 2 == 0 { G::GFP_KERNEL | G::__GFP_NOWARN } else { gfp_of(gfp / 2) };
                let g = g - G::__GFP_COMP;
                let mut arr = vec![None; n];
                let marks: Vec<usize> = (0..n)
                    .filter(|i| pre != 0 && (i * 7 + pre as usize).is_multiple_of(11))
                    .collect();
                for &i in &marks {
                    arr[i] = Some(u64::MAX - i as u64);
                }
                let got = pa.alloc_pages_bulk(cpu, g, n, &mut arr);
                assert!(got <= n, "{op:?}: returned {got}");
                for (i, slot) in arr.iter().enumerate() {
                    if marks.contains(&i) {
                        assert_eq!(
                            *slot,
                            Some(u64::MAX - i as u64),
                            "{op:?}: pre-filled slot {i} overwritten"
                        );
                    } else if let Some(p) = *slot {
                        assert!(i < got, "{op:?}: slot {i} filled beyond the returned count {got}");
                        md.take(&pa, p, 0, false);
                        let z = pa.pfn_to_page(p).unwrap().zone_idx() as usize;
                        assert!(z <= gfp_zone(g), "{op:?}: page {p:#x} from zone {z}");
                    } else {
                        assert!(i >= got, "{op:?}: slot {i} empty below the returned count {got}");
                    }
                }
            }
            Op::FreeContig { cpu, k, len, how } => {
                if let Some((p, _, _)) = md.nth(k, |_, o, _| o == 0) {
                    let run = md.run0(p, len);
                    for &q in &run {
                        md.release(q);
                    }
                    let r = match how {
                        0 => pa.__free_contig_range(cpu, p, run.len() as u64),
                        1 => pa.free_contig_range(cpu, p, run.len() as u64),
                        _ => {
                            let mut calls = 0;
                            let r = pa.free_pages_bulk(cpu, &run, || calls += 1);
                            assert_eq!(
                                calls, 1,
                                "{op:?}: one contiguous run, {calls} resched calls"
                            );
                            r
                        }
                    };
                    assert_eq!(r, Ok(()), "{op:?}");
                }
            }
            Op::FreeBulkScattered { cpu, k, n, step } => {
                let zeros: Vec<u64> =
                    md.owned.iter().filter(|(_, &(o, _))| o == 0).map(|(&p, _)| p).collect();
                if !zeros.is_empty() {
                    let start = k % zeros.len();
                    let mut pick: Vec<u64> =
                        zeros[start..].iter().step_by(step).take(n).copied().collect();
                    if k & 0x8000 != 0 {
                        pick.reverse(); // descending: every page its own run
                    }
                    for &q in &pick {
                        md.release(q);
                    }
                    // Independent run count: a run ends where the next PFN is not the previous + 1.
                    let runs = 1 + pick.windows(2).filter(|w| w[1] != w[0] + 1).count();
                    let mut off = 0;
                    let mut runs2 = 0;
                    while off < pick.len() {
                        off += num_pages_contiguous(&pick[off..]);
                        runs2 += 1;
                    }
                    assert_eq!(runs, runs2, "num_pages_contiguous disagrees on {pick:x?}");
                    let mut calls = 0;
                    assert_eq!(pa.free_pages_bulk(cpu, &pick, || calls += 1), Ok(()), "{op:?}");
                    assert_eq!(calls, runs, "{op:?}: free_pages_bulk resched calls != runs");
                }
            }
            Op::Drain { cpu, other, kind } => match kind {
                0 => pa.drain_local_pages(cpu),
                1 => pa.drain_all_pages(cpu),
                _ => pa.drain_pages(cpu, other),
            },
            Op::Decay { cpu } => {
                pa.decay_pcp_high(cpu);
            }
            Op::GetPut { k } => {
                if let Some((p, o, _)) = md.nth(k, |_, _, _| true) {
                    assert_eq!(pa.get_page(p), Ok(()), "{op:?}");
                    assert_eq!(pa.pfn_to_page(p).unwrap().page_count(), 2);
                    // Dropping the extra reference frees nothing.
                    assert_eq!(pa.__free_pages(0, p, o), Ok(()), "{op:?}");
                    assert_eq!(pa.pfn_to_page(p).unwrap().page_count(), 1);
                }
            }
            Op::Misuse { k, kind } => misuse(&pa, &mut md, &reserved_pfns, k, kind, nr_cpus),
        }
        ck.check(&pa, &md, &op, false);
    }

    // Free everything, drain every CPU: the buddy must be exactly as after boot.
    let all: Vec<(u64, u32)> = md.owned.iter().map(|(&p, &(o, _))| (p, o)).collect();
    for (i, (p, o)) in all.into_iter().enumerate() {
        md.release(p);
        assert_eq!(pa.__free_pages(i % nr_cpus, p, o), Ok(()), "final free of {p:#x}/{o}");
    }
    for cpu in 0..nr_cpus {
        pa.drain_pages(0, cpu);
    }
    let end = ck.check(&pa, &md, &"free everything and drain", true).unwrap();
    assert_eq!(
        end.pcp_pages, [0; MAX_NR_ZONES],
        "pages left on pcp lists after draining every CPU"
    );
    assert_eq!(end.nr_free, initial.nr_free, "buddy differs from boot after freeing everything");
}

/// A misuse must be refused with the right reason and change nothing (the caller checks).
fn misuse(
    pa: &PageAllocator,
    md: &mut Model,
    reserved_pfns: &[u64],
    k: usize,
    kind: u8,
    nr_cpus: usize,
) {
    match kind {
        0 => {
            // Double free (the first goes to a pcp list or the buddy).
            if let Some((p, o, _)) = md.nth(k, |_, _, _| true) {
                md.release(p);
                assert_eq!(pa.__free_pages(0, p, o), Ok(()));
                let e = pa.__free_pages(1 % nr_cpus, p, o).unwrap_err();
                assert!(
                    matches!(
                        e.what,
                        BadPage::DoubleFreePcp { .. }
                            | BadPage::DoubleFreeBuddy { .. }
                            | BadPage::NotAllocated
                    ),
                    "double free of {p:#x}/{o}: {e}"
                );
            }
        }
        1 => {
            if let Some((p, o, _)) = md.nth(k, |_, _, _| true) {
                let wrong =
                    if o < 10 && p & ((2 << o) - 1) == 0 { Some(o + 1) } else { o.checked_sub(1) };
                if let Some(w) = wrong {
                    let e = pa.__free_pages(0, p, w).unwrap_err();
                    assert_eq!(e.what, BadPage::WrongOrder { freed: w, allocated: o }, "{p:#x}");
                }
            }
        }
        2 => {
            if let Some((p, _, _)) = md.nth(k, |_, o, _| o > 0) {
                assert_eq!(
                    pa.__free_page(0, p + 1).unwrap_err().what,
                    BadPage::NotAllocated,
                    "tail page {:#x}",
                    p + 1
                );
            }
        }
        3 => {
            if !reserved_pfns.is_empty() {
                let q = reserved_pfns[k % reserved_pfns.len()];
                assert_eq!(
                    pa.__free_page(0, q).unwrap_err().what,
                    BadPage::Reserved,
                    "reserved {q:#x}"
                );
                assert_eq!(
                    pa.put_page(0, q).unwrap_err().what,
                    BadPage::Reserved,
                    "put_page reserved {q:#x}"
                );
            }
        }
        4 => {
            if let Some((p, _, _)) = md.nth(k, |_, _, _| true) {
                assert_eq!(
                    pa.__free_pages(0, p | 1, 1).unwrap_err().what,
                    BadPage::Misaligned { order: 1 }
                );
            }
        }
        5 => {
            let beyond = md.min_pfn + md.bitmap.len() as u64 + (k as u64 % 3);
            assert_eq!(pa.__free_page(0, beyond).unwrap_err().what, BadPage::OutOfRange);
            assert_eq!(
                pa.__free_pages(0, md.min_pfn, 11).unwrap_err().what,
                BadPage::BadOrder { order: 11 }
            );
        }
        _ => {
            // A maximal order-0 run plus the page after it (never a freeable page): the run is
            // freed, the error names the page after it.
            if let Some((p, _, _)) = md.nth(k, |_, o, _| o == 0) {
                let run = md.run0(p, usize::MAX);
                for &q in &run {
                    md.release(q);
                }
                let e = pa.__free_contig_range(0, p, run.len() as u64 + 1).unwrap_err();
                assert_eq!(e.pfn, p + run.len() as u64);
            }
        }
    }
}
