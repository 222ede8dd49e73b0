//! In-kernel tests of the page allocator and the kernel page tables (run with `ktest`).
use alloc::string::String;
use alloc::vec::Vec;

use crate::arch;
use crate::mm::page_alloc;
use crate::mm::pgtable::{kernel_pgtable, KernelPt};
use crate::{kassert, kassert_eq, ktest};
use mm_page_alloc::page_alloc::BadPage;
use mm_pgtable::PteFlags;
use mm_types::gfp::GfpFlags;

/// Free pages counted the way the leak checks do: buddy free pages after draining every pcp list.
fn settled_free() -> u64 {
    page_alloc::drain_all_pages();
    page_alloc::nr_free_pages()
}

ktest!(page_alloc_until_oom_then_free_everything, {
    let before = settled_free();
    // Largest blocks first, then smaller ones, until even order 0 fails: null, not a panic.
    let mut held: Vec<(u64, u32)> = Vec::new();
    for order in (0..=10u32).rev() {
        while let Some(pfn) =
            page_alloc::alloc_pages(GfpFlags::GFP_KERNEL | GfpFlags::__GFP_NOWARN, order)
        {
            held.push((pfn, order));
        }
    }
    kassert!(page_alloc::alloc_pages(GfpFlags::GFP_KERNEL | GfpFlags::__GFP_NOWARN, 0).is_none());
    let got: u64 = held.iter().map(|&(_, o)| 1u64 << o).sum();
    kassert!(got + 2048 >= before, "allocated {} of {} free pages before OOM", got, before);
    // No page handed out twice.
    let mut pfns: Vec<(u64, u64)> = held.iter().map(|&(p, o)| (p, p + (1 << o))).collect();
    pfns.sort_unstable();
    for w in pfns.windows(2) {
        kassert!(w[0].1 <= w[1].0, "overlapping blocks {:#x?} and {:#x?}", w[0], w[1]);
    }
    for (pfn, order) in held {
        page_alloc::__free_pages(pfn, order);
    }
    kassert_eq!(settled_free(), before);
    Ok(())
});

ktest!(page_alloc_zeroes_with_gfp_zero, {
    let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 2).ok_or("alloc")?;
    // SAFETY: the order-2 block (4 pages) just allocated is this test's until the free below;
    // the linear map covers it.
    unsafe { core::ptr::write_bytes(page_alloc::pfn_to_virt(pfn), 0xa5, 4 * 4096) };
    page_alloc::__free_pages(pfn, 2);
    let pfn =
        page_alloc::alloc_pages(GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO, 2).ok_or("alloc")?;
    let ok = (0..4).all(|i| crate::ktests::page_alloc::page_is_zero(pfn + i));
    page_alloc::__free_pages(pfn, 2);
    kassert!(ok, "__GFP_ZERO page not zeroed");
    Ok(())
});

// Each misuse is reported with the pfn and what was wrong, and leaves the allocator intact.
ktest!(page_alloc_reports_misuse, {
    let before = settled_free();
    let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).ok_or("alloc")?;
    page_alloc::try_free_pages(pfn, 0).map_err(|e| alloc::format!("first free failed: {e}"))?;
    let e = page_alloc::try_free_pages(pfn, 0).err().ok_or("double free not detected")?;
    kassert_eq!(e.pfn, pfn);
    kassert!(
        matches!(
            e.what,
            BadPage::DoubleFreePcp { .. } | BadPage::DoubleFreeBuddy { .. } | BadPage::NotAllocated
        ),
        "{e}"
    );
    crate::println!("    (expected) {e}");

    let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).ok_or("alloc")?;
    let e = page_alloc::try_free_pages(pfn, 3).err().ok_or("wrong order not detected")?;
    crate::println!("    (expected) {e}");
    page_alloc::try_free_pages(pfn, 0).map_err(|e| alloc::format!("{e}"))?;

    // The kernel image is reserved memory.
    let kpfn = arch::mmu::kimage_pa() >> 12;
    let e =
        page_alloc::try_free_pages(kpfn, 0).err().ok_or("freeing a reserved page not detected")?;
    kassert!(matches!(e.what, BadPage::Reserved), "{e}");
    crate::println!("    (expected) {e}");

    // Refcount underflow: put a page whose count is already zero.
    let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).ok_or("alloc")?;
    page_alloc::try_free_pages(pfn, 0).map_err(|e| alloc::format!("{e}"))?;
    let e = page_alloc::allocator()
        .put_page(crate::percpu_defs::smp_processor_id(), pfn)
        .err()
        .ok_or("put_page of a free page not detected")?;
    crate::println!("    (expected) {e}");
    kassert_eq!(settled_free(), before);
    Ok(())
});

ktest!(free_contig_range_chunks_reach_pcp_and_buddy, {
    let before = settled_free();
    let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 9).ok_or("alloc order 9")?;
    page_alloc::split_page(pfn, 9);
    page_alloc::__free_contig_range(pfn, 512);
    kassert_eq!(settled_free(), before);
    let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 4).ok_or("alloc order 4")?;
    page_alloc::split_page(pfn, 4);
    let pages: Vec<u64> = (0..16).map(|i| pfn + i).collect();
    page_alloc::free_pages_bulk(&pages);
    kassert_eq!(settled_free(), before);
    Ok(())
});

ktest!(kernel_image_is_mapped_w_xor_x, {
    unsafe extern "C" {
        static _text: u8;
        static _erodata: u8;
        static __bss_start: u8;
    }
    let pt = kernel_pgtable();
    let text = pt.walk(&KernelPt, (&raw const _text) as u64).ok_or("text unmapped")?;
    let f = text.flags();
    kassert!(f.contains(PteFlags::RDONLY) && !f.contains(PteFlags::PXN), "text not RX: {:?}", f);
    let ro = pt.walk(&KernelPt, ((&raw const _erodata) as u64) - 8).ok_or("rodata unmapped")?;
    kassert!(
        ro.flags().contains(PteFlags::RDONLY) && ro.flags().contains(PteFlags::PXN),
        "rodata not R: {:?}",
        ro.flags()
    );
    let bss = pt.walk(&KernelPt, (&raw const __bss_start) as u64).ok_or("bss unmapped")?;
    kassert!(
        !bss.flags().contains(PteFlags::RDONLY) && bss.flags().contains(PteFlags::PXN),
        "data not RW+XN: {:?}",
        bss.flags()
    );
    // The linear map uses blocks where RAM is aligned.
    let lin = pt
        .walk(&KernelPt, arch::PAGE_OFFSET + (arch::mmu::kimage_pa() & !0x3fff_ffff))
        .ok_or("linear map")?;
    kassert!(lin.level <= 2, "linear map not using blocks (level {})", lin.level);
    Ok(())
});

ktest!(stack_guard_pages_fault, {
    for cpu in 0..2 {
        let (guard, _, _) = crate::smp::stack_range(cpu);
        let mut report = String::new();
        let r = arch::exception::probe_read(guard as *const u8, &mut report);
        kassert!(r.is_none(), "guard page of cpu{} stack is readable", cpu);
        kassert!(report.contains("translation fault"), "{}", report);
    }
    Ok(())
});

// All CPUs allocate and free mixed orders concurrently, tagging each page with its owner and
// checking the tag before freeing: no page is handed out twice; afterwards counts are back.
ktest!(smp_concurrent_alloc_free_mixed_orders, {
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicUsize, Ordering};
    let before = settled_free();
    let cpus: Vec<usize> = crate::smp::online_cpus().collect();
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    // About 400k operations in all (100k per CPU at -smp 4): at -smp 64 on a 2-core host the
    // vCPUs mostly spin on zone->lock behind a preempted holder, so the total is what is kept.
    let ops = if cpus.len() > 1 { (400_000 / cpus.len()).clamp(5_000, 100_000) } else { 20_000 };
    let work = |errors: Arc<AtomicUsize>, done: Arc<AtomicUsize>| {
        move || {
            let me = crate::percpu_defs::smp_processor_id() as u64 + 1;
            let mut rng = bootcfg::test_vmalloc::Rng::new(0x1234 + me);
            let mut held: Vec<(u64, u32)> = Vec::with_capacity(64);
            for i in 0..ops {
                if i % 16 == 0 {
                    // Bulk order-0 allocation, split high-order blocks, and the patch's frees.
                    let mut slots = [None; 32];
                    let got = page_alloc::alloc_pages_bulk(
                        GfpFlags::GFP_KERNEL | GfpFlags::__GFP_NOWARN,
                        32,
                        &mut slots,
                    );
                    let mut pfns = [0u64; 32];
                    for (k, s) in slots.iter().take(got).enumerate() {
                        let pfn = s.unwrap();
                        pfns[k] = pfn;
                        // SAFETY: a page this CPU just got from the bulk allocation and holds
                        // until free_pages_bulk below; reached through the linear map.
                        unsafe {
                            (page_alloc::pfn_to_virt(pfn) as *mut u64)
                                .write_volatile(me << 32 | pfn)
                        };
                    }
                    let order = rng.below(5);
                    let big = page_alloc::alloc_pages(
                        GfpFlags::GFP_KERNEL | GfpFlags::__GFP_NOWARN,
                        order,
                    );
                    if let Some(b) = big {
                        page_alloc::split_page(b, order);
                        for k in 0..(1u64 << order) {
                            // SAFETY: page k of the block this CPU just allocated and split; it
                            // holds every page until the contig-range free below.
                            unsafe {
                                (page_alloc::pfn_to_virt(b + k) as *mut u64)
                                    .write_volatile(me << 32 | (b + k))
                            };
                        }
                    }
                    for &pfn in &pfns[..got] {
                        // SAFETY: still this CPU's page from the bulk allocation above.
                        if unsafe { (page_alloc::pfn_to_virt(pfn) as *mut u64).read_volatile() }
                            != me << 32 | pfn
                        {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    if let Some(b) = big {
                        for k in 0..(1u64 << order) {
                            // SAFETY: still this CPU's page of the split block above.
                            if unsafe {
                                (page_alloc::pfn_to_virt(b + k) as *mut u64).read_volatile()
                            } != me << 32 | (b + k)
                            {
                                errors.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        if rng.below(2) == 0 {
                            page_alloc::__free_contig_range(b, 1 << order)
                        } else {
                            page_alloc::free_contig_range(b, 1 << order)
                        }
                    }
                    page_alloc::free_pages_bulk(&pfns[..got]);
                }
                if held.len() < 48 && (rng.below(2) == 0 || held.is_empty()) {
                    let order = match rng.below(16) {
                        0 => 10,
                        1 => 9,
                        2..=4 => rng.below(9),
                        _ => rng.below(4),
                    };
                    if let Some(pfn) = page_alloc::alloc_pages(
                        GfpFlags::GFP_KERNEL | GfpFlags::__GFP_NOWARN,
                        order,
                    ) {
                        let p = page_alloc::pfn_to_virt(pfn) as *mut u64;
                        // SAFETY: the first page of a block this CPU just allocated and keeps in
                        // `held` until it frees it; two words, page aligned.
                        unsafe {
                            p.write_volatile(me << 32 | i as u64);
                            p.add(1).write_volatile(pfn);
                        }
                        held.push((pfn, order));
                    }
                } else {
                    let k = rng.below(held.len() as u32) as usize;
                    let (pfn, order) = held.swap_remove(k);
                    let p = page_alloc::pfn_to_virt(pfn) as *mut u64;
                    // SAFETY: a block this CPU allocated and wrote (above), still held until the
                    // free below.
                    let (tag, tpfn) = unsafe { (p.read_volatile(), p.add(1).read_volatile()) };
                    if tag >> 32 != me || tpfn != pfn {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                    page_alloc::__free_pages(pfn, order);
                }
                if i % 256 == 0 {
                    crate::smp::cond_resched();
                }
            }
            for (pfn, order) in held {
                page_alloc::__free_pages(pfn, order);
            }
            done.fetch_add(1, Ordering::SeqCst);
            crate::smp::wake_waiters();
        }
    };
    let me = crate::percpu_defs::smp_processor_id();
    for &c in cpus.iter().filter(|&&c| c != me) {
        crate::smp::start_work(c, alloc::boxed::Box::new(work(errors.clone(), done.clone())));
    }
    work(errors.clone(), done.clone())();
    while done.load(Ordering::SeqCst) < cpus.len() {
        crate::smp::quiescent_point();
        crate::smp::wait_for_event();
    }
    kassert_eq!(errors.load(Ordering::SeqCst), 0);
    kassert_eq!(page_alloc::bad_page_reports(), 0);
    kassert_eq!(settled_free(), before);
    Ok(())
});

/// Unused pages must read as zero for tests that check __GFP_ZERO.
pub fn page_is_zero(pfn: u64) -> bool {
    let p = page_alloc::pfn_to_virt(pfn) as *const u64;
    // SAFETY: every PFN the page allocator manages is mapped by the linear map; only read.
    (0..mm_types::PAGE_SIZE / 8).all(|i| unsafe { p.add(i).read_volatile() } == 0)
}
