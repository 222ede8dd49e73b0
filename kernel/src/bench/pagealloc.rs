//! Page-allocator micro-benchmark (`bench=pagealloc`): alloc+free pairs at a few orders and
//! 100-page bulk allocations, timed with the generic timer. Under `-icount shift=0` one guest
//! nanosecond is one instruction, so `ns_per_op` reads as instructions per operation.
use alloc::vec;

use crate::arch;
use crate::mm::page_alloc;
use crate::println;
use mm_types::gfp::GfpFlags;

fn ns(delta: u64) -> u64 {
    ((delta as u128 * 1_000_000_000) / arch::timer_hz() as u128) as u64
}

fn pairs(order: u32, n: u64) -> u64 {
    // Warm the pcp lists first so the loop measures the steady state.
    for _ in 0..64 {
        let p = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, order).unwrap();
        page_alloc::__free_pages(p, order);
    }
    let t0 = arch::cycles();
    for _ in 0..n {
        let p = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, order).unwrap();
        page_alloc::__free_pages(p, order);
    }
    ns(arch::cycles() - t0) / n
}

pub fn run() {
    let n = 20_000;
    println!(
        "pagealloc: timer {} Hz; under -icount shift=0, ns_per_op = guest instructions per op",
        arch::timer_hz()
    );
    for (name, order) in
        [("order0_pcp", 0u32), ("order2_pcp", 2), ("order4_buddy", 4), ("order9_pcp", 9)]
    {
        let per = pairs(order, n);
        println!("BENCH pagealloc {name} alloc+free ops={n} ns_per_op={per}");
    }
    // One order-0 page freed through free_pages_bulk (vfree of a 1-page area with the patch).
    let t0 = arch::cycles();
    for _ in 0..n {
        let p = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).unwrap();
        page_alloc::free_pages_bulk(&[p]);
    }
    println!(
        "BENCH pagealloc order0_free_pages_bulk alloc+free ops={n} ns_per_op={}",
        ns(arch::cycles() - t0) / n
    );
    let t0 = arch::cycles();
    for _ in 0..n {
        let p = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).unwrap();
        page_alloc::__free_contig_range(p, 1);
    }
    println!(
        "BENCH pagealloc order0_free_contig_range alloc+free ops={n} ns_per_op={}",
        ns(arch::cycles() - t0) / n
    );
    // Bulk: 100 order-0 pages in one alloc_pages_bulk, freed one by one and through
    // free_pages_bulk (the seed patch's path; pages from a bulk allocation are mostly contiguous).
    let mut slots = vec![None; 100];
    let rounds = 1000;
    for (name, bulk_free) in [("bulk100_free_single", false), ("bulk100_free_pages_bulk", true)] {
        let t0 = arch::cycles();
        for _ in 0..rounds {
            slots.iter_mut().for_each(|s| *s = None);
            let got = page_alloc::alloc_pages_bulk(GfpFlags::GFP_KERNEL, 100, &mut slots);
            assert_eq!(got, 100);
            if bulk_free {
                let mut pfns = [0u64; 100];
                for (d, s) in pfns.iter_mut().zip(slots.iter()) {
                    *d = s.unwrap();
                }
                page_alloc::free_pages_bulk(&pfns);
            } else {
                for s in slots.iter() {
                    page_alloc::__free_page(s.unwrap());
                }
            }
        }
        println!(
            "BENCH pagealloc {name} ops={rounds} ns_per_op={} ns_per_page={}",
            ns(arch::cycles() - t0) / rounds,
            ns(arch::cycles() - t0) / (rounds * 100)
        );
    }
    // cond_resched(), called per page by the baseline vfree and per run by free_pages_bulk:
    // the common path (nothing due: one per-CPU flag test) and the slow path (flag set: mailbox
    // poll and RCU quiescent-state report, here with nothing pending). Per call, loop included.
    let n = 100_000u64;
    let t0 = arch::cycles();
    for _ in 0..n {
        crate::smp::cond_resched();
    }
    println!("BENCH pagealloc cond_resched_idle ops={n} ns_per_op={}", ns(arch::cycles() - t0) / n);
    let t0 = arch::cycles();
    for _ in 0..n {
        crate::smp::set_need_resched_local();
        crate::smp::cond_resched();
    }
    println!("BENCH pagealloc cond_resched_due ops={n} ns_per_op={}", ns(arch::cycles() - t0) / n);
}
