//! In-kernel tests of vmalloc and percpu on real page tables.
use alloc::string::String;
use alloc::vec::Vec;

use crate::mm::{page_alloc, percpu, vmalloc as vm};
use crate::{arch, kassert, kassert_eq, ktest, smp};
use mm_types::gfp::GfpFlags;
use mm_types::PAGE_SIZE;

/// Free pages (+ vmalloc page tables) and free VA after purging and shrinking caches: the
/// figures test_vmalloc's leak lines compare.
fn settled() -> (u64, u64) {
    crate::bench::test_vmalloc::settle_and_measure()
}

ktest!(vmalloc_write_read_free_sizes_and_alignments, {
    let before = settled();
    let mut rng = bootcfg::test_vmalloc::Rng::new(7);
    for pages in [1usize, 2, 3, 15, 16, 17, 100, 255, 256, 511, 512, 513, 1000, 1024] {
        for align_shift in [12u32, 16, 21, 22] {
            let size = pages * PAGE_SIZE;
            let p = vm::__vmalloc_node(size, 1 << align_shift, GfpFlags::GFP_KERNEL);
            kassert!(!p.is_null(), "vmalloc of {} pages, align 2^{} failed", pages, align_shift);
            kassert_eq!(p as usize % (1 << align_shift), 0);
            let seed = rng.next_u32();
            for i in 0..pages {
                // SAFETY: `p` is a live vmalloc area of `pages` pages (non-null, checked) owned
                // by this test; page i < pages starts page aligned.
                unsafe { (p.add(i * PAGE_SIZE) as *mut u32).write_volatile(seed ^ i as u32) };
            }
            for i in 0..pages {
                // SAFETY: as above.
                let v = unsafe { (p.add(i * PAGE_SIZE) as *const u32).read_volatile() };
                kassert_eq!(v, seed ^ i as u32);
            }
            vm::vfree(p);
        }
    }
    kassert_eq!(settled(), before);
    Ok(())
});

ktest!(vmalloc_huge_maps_pmd_blocks_and_cont_ptes, {
    let before = settled();
    let p = vm::vmalloc_huge(2 << 20, GfpFlags::GFP_KERNEL);
    kassert!(!p.is_null());
    let t = vm::walk(p as u64).ok_or("2 MiB huge area unmapped")?;
    kassert!(
        t.level == 2 && t.block_size == 2 << 20,
        "2 MiB vmalloc_huge not a PMD block: level {} size {:#x}",
        t.level,
        t.block_size
    );
    // SAFETY: the last byte of the live 2 MiB area `p` (non-null, checked), owned by this test.
    unsafe { p.add((2 << 20) - 1).write_volatile(1) };
    vm::vfree(p);
    for kib in [64usize, 128, 192] {
        let p = vm::vmalloc_huge(kib << 10, GfpFlags::GFP_KERNEL);
        kassert!(!p.is_null());
        for off in (0..(kib << 10)).step_by(PAGE_SIZE) {
            let t = vm::walk(p as u64 + off as u64).ok_or("huge area page unmapped")?;
            kassert!(
                t.level == 3 && t.cont,
                "{} KiB vmalloc_huge: page at +{:#x} not a contiguous PTE",
                kib,
                off
            );
        }
        vm::vfree(p);
    }
    // Without the huge flag: plain PTEs.
    let p = vm::vmalloc(64 << 10);
    let t = vm::walk(p as u64).ok_or("unmapped")?;
    kassert!(t.level == 3 && !t.cont, "plain vmalloc used a contiguous mapping");
    vm::vfree(p);
    kassert_eq!(settled(), before);
    Ok(())
});

ktest!(vmalloc_guard_page_and_use_after_free_fault, {
    let p = vm::vmalloc(3 * PAGE_SIZE);
    kassert!(!p.is_null());
    let mut report = String::new();
    // SAFETY: one past the end of the 3-page area `p` (non-null, checked): an allowed `add`
    // result (the guard page follows; no wrap-around).
    let guard = unsafe { p.add(3 * PAGE_SIZE) };
    // SAFETY: `guard` is the area's guard page: unmapped, so the write faults and is fixed up;
    // were it mapped (the bug this test looks for), it is still inside the VA range vmalloc
    // reserved for this area, which nothing else uses.
    let faulted = unsafe { arch::exception::probe_write(guard, 1, &mut report) };
    kassert!(faulted, "a write one byte past a vmalloc area did not fault");
    kassert!(report.contains("guard page"), "report does not name the guard page: {}", report);
    crate::println!("    (expected) {report}");
    vm::vfree(p);
    let mut report = String::new();
    let v = arch::exception::probe_read(p, &mut report);
    kassert!(v.is_none(), "read after vfree did not fault");
    kassert!(report.contains("vfree") || report.contains("no area"), "{}", report);
    crate::println!("    (expected) {report}");
    Ok(())
});

ktest!(vmalloc_concurrent_on_every_cpu, {
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicUsize, Ordering};
    let before = settled();
    let cpus: Vec<usize> = smp::online_cpus().collect();
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let work = |errors: Arc<AtomicUsize>, done: Arc<AtomicUsize>| {
        move || {
            let me = crate::percpu_defs::smp_processor_id() as u32;
            let mut rng = bootcfg::test_vmalloc::Rng::new(99 + me as u64);
            let mut held: Vec<(*mut u8, usize)> = Vec::new();
            for i in 0..3000u32 {
                if held.len() < 32 && rng.below(2) == 0 {
                    let pages = rng.below(64) as usize + 1;
                    let p = if rng.below(4) == 0 {
                        vm::vmalloc_huge(pages * PAGE_SIZE, GfpFlags::GFP_KERNEL)
                    } else {
                        vm::vmalloc(pages * PAGE_SIZE)
                    };
                    if p.is_null() {
                        errors.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    for k in 0..pages {
                        // SAFETY: `p` is a live area of `pages` pages (non-null, checked) that
                        // only this CPU uses; page k starts page aligned.
                        unsafe { (p.add(k * PAGE_SIZE) as *mut u32).write_volatile(me << 24 | i) };
                    }
                    held.push((p, pages));
                } else if let Some((p, pages)) = held.pop() {
                    // SAFETY: `p` is a live area of `pages` pages from `held`, this CPU's alone
                    // until the vfree below.
                    let tag = unsafe { (p as *const u32).read_volatile() };
                    for k in 0..pages {
                        // SAFETY: as above, page k < pages.
                        if unsafe { (p.add(k * PAGE_SIZE) as *const u32).read_volatile() } != tag
                            || tag >> 24 != me
                        {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    vm::vfree(p);
                }
                smp::cond_resched();
            }
            for (p, _) in held {
                vm::vfree(p);
            }
            done.fetch_add(1, Ordering::SeqCst);
            crate::smp::wake_waiters();
        }
    };
    let me = crate::percpu_defs::smp_processor_id();
    for &c in cpus.iter().filter(|&&c| c != me) {
        smp::start_work(c, alloc::boxed::Box::new(work(errors.clone(), done.clone())));
    }
    work(errors.clone(), done.clone())();
    while done.load(Ordering::SeqCst) < cpus.len() {
        smp::quiescent_point();
        crate::smp::wait_for_event();
    }
    kassert_eq!(errors.load(Ordering::SeqCst), 0);
    kassert_eq!(settled(), before);
    Ok(())
});

ktest!(vfree_switch_changes_the_free_orders, {
    // The counters tell the two vfree paths apart: free_pages_bulk frees an order-3 block of an
    // 8-page area as one chunk, the baseline as 8 order-0 frees.
    let a = page_alloc::allocator();
    let sum = |o: u32| -> u64 {
        (0..mm_types::NR_CPUS)
            .map(|c| a.events(c).get(mm_page_alloc::stat::VmEvent::pgfree_order(o)))
            .sum()
    };
    let (o0, o3) = (sum(0), sum(3));
    let p = vm::vmalloc(8 * PAGE_SIZE);
    kassert!(!p.is_null());
    vm::vfree(p);
    let (d0, d3) = (sum(0) - o0, sum(3) - o3);
    match bootcfg::config::get().vfree {
        bootcfg::config::VfreeMode::Bulk => {
            kassert!(d3 >= 1, "bulk vfree freed no order-3 chunk (order-0 frees {})", d0)
        }
        bootcfg::config::VfreeMode::Single => {
            kassert!(d0 >= 8 && d3 == 0, "single vfree: order-0 frees {}, order-3 {}", d0, d3)
        }
    }
    Ok(())
});

ktest!(percpu_values_written_on_each_cpu_read_from_another, {
    use core::sync::atomic::{AtomicU64, Ordering};
    let before = settled();
    let p = percpu::alloc_percpu(8, 8);
    kassert!(p != 0);
    smp::on_each_cpu(&|| {
        let cpu = crate::percpu_defs::smp_processor_id();
        let slot = percpu::per_cpu_ptr(p, cpu) as *const AtomicU64;
        // SAFETY: `p` is a live, zeroed 8-byte, 8-aligned percpu allocation (freed only after
        // this loop) and per_cpu_ptr gives this CPU's copy; an AtomicU64 may share it.
        unsafe { (*slot).store(0xc0de_0000 + cpu as u64, Ordering::SeqCst) };
    });
    for cpu in smp::online_cpus() {
        // SAFETY: as above, CPU `cpu`'s copy, accessed atomically.
        let v =
            unsafe { (*(percpu::per_cpu_ptr(p, cpu) as *const AtomicU64)).load(Ordering::SeqCst) };
        kassert_eq!(v, 0xc0de_0000 + cpu as u64);
    }
    percpu::free_percpu(p);
    kassert_eq!(settled(), before);
    Ok(())
});

// Memory runs out under vmalloc: it returns null (no panic, no lost range), the KVA trees still
// find nodes for the free paths (their reserve), and every page and byte of VA comes back.
ktest!(vmalloc_until_oom_then_free_everything, {
    let before = settled();
    // Hold almost everything in 2 MiB blocks so the vmalloc part stays short, then give 8 MiB
    // back for vmalloc to exhaust.
    let nowarn = GfpFlags::GFP_KERNEL | GfpFlags::__GFP_NOWARN;
    let mut held: Vec<u64> = Vec::new();
    while let Some(pfn) = page_alloc::alloc_pages(nowarn, 9) {
        held.push(pfn);
    }
    for _ in 0..4 {
        if let Some(pfn) = held.pop() {
            page_alloc::__free_pages(pfn, 9);
        }
    }
    let mut areas: Vec<*mut u8> = Vec::new();
    loop {
        let p = vm::__vmalloc(4 * PAGE_SIZE, nowarn);
        if p.is_null() {
            break;
        }
        // SAFETY: `p` is a live 4-page area (non-null, checked) owned by this test.
        unsafe { p.write_volatile(areas.len() as u8) };
        areas.push(p);
        kassert!(areas.len() < 100_000, "vmalloc never failed");
    }
    kassert!(areas.len() >= 100, "only {} areas of 4 pages from 8 MiB", areas.len());
    for (i, &p) in areas.iter().enumerate() {
        // SAFETY: every area in `areas` is still live (freed below) and was written above.
        kassert_eq!(unsafe { p.read_volatile() }, i as u8);
    }
    for p in areas {
        vm::vfree(p);
    }
    for pfn in held {
        page_alloc::__free_pages(pfn, 9);
    }
    kassert_eq!(settled(), before);
    Ok(())
});

// vm_unmap_aliases flushes the dirty ranges of live vmap blocks: a slot unmapped with
// vm_unmap_ram (PTE cleared, no TLB flush) must fault after vm_unmap_aliases, even though its
// block still has free space and nothing was lazily freed. Without the flush QEMU's TLB still
// holds the old translation and the read returns the old page's byte.
ktest!(vm_unmap_aliases_flushes_dirty_vmap_block_ranges, {
    let before = settled();
    let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).ok_or("no page")?;
    // SAFETY: a page just allocated, through the linear map.
    unsafe { page_alloc::pfn_to_virt(pfn).write_volatile(0x5a) };
    // A fresh block on this CPU: map, read through the mapping (fills the TLB), unmap.
    let keep = vm::vm_map_ram(&[pfn]);
    let p = vm::vm_map_ram(&[pfn]);
    kassert!(!p.is_null() && !keep.is_null());
    // SAFETY: `p` maps the page (checked non-null above).
    kassert_eq!(unsafe { p.read_volatile() }, 0x5a);
    // SAFETY: `p` is what vm_map_ram of 1 page returned, unmapped once here.
    unsafe { vm::vm_unmap_ram(p, 1) };
    vm::vm_unmap_aliases();
    let mut report = String::new();
    let v = arch::exception::probe_read(p, &mut report);
    kassert!(v.is_none(), "read of an unmapped vm_map_ram slot after vm_unmap_aliases returned {:?} (stale TLB entry)", v);
    // SAFETY: `keep` is what vm_map_ram of 1 page returned, unmapped once here.
    unsafe { vm::vm_unmap_ram(keep, 1) };
    page_alloc::__free_page(pfn);
    kassert_eq!(settled(), before);
    Ok(())
});

// vmap() maps pages it does not own: vfree() of a vmap area unmaps it and frees no page (Linux
// frees them only with VM_MAP_PUT_PAGES); the owner frees them afterwards without a report.
ktest!(vfree_of_a_vmap_area_leaves_the_pages_to_their_owner, {
    let before = settled();
    let reports = page_alloc::bad_page_reports();
    let pfns: Vec<u64> =
        (0..4).map(|_| page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).unwrap()).collect();
    let p = vm::vmap(&pfns);
    kassert!(!p.is_null());
    // SAFETY: the vmap area maps 4 pages; page 3 is inside it.
    unsafe { p.add(3 * PAGE_SIZE).write_volatile(7) };
    vm::vfree(p);
    // SAFETY: the page is still allocated (the point of the test), read through the linear map.
    kassert_eq!(unsafe { page_alloc::pfn_to_virt(pfns[3]).read_volatile() }, 7);
    kassert_eq!(page_alloc::bad_page_reports(), reports);
    for &pfn in &pfns {
        page_alloc::__free_page(pfn);
    }
    kassert!(
        page_alloc::bad_page_reports() == reports,
        "a vmap'ed page was freed by vfree (double free on the owner's free)"
    );
    kassert_eq!(settled(), before);
    Ok(())
});

// purge_fragmented_blocks against vb_alloc on other CPUs: every CPU maps and unmaps pages
// through its vmap blocks and checks that what it maps stays mapped and holds its pattern,
// while CPU 0 keeps purging fragmented blocks. A block freed while another CPU still handed
// out space in it shows up as a fault or a wrong byte (or a vmalloc bug line).
ktest!(purge_fragmented_blocks_races_vm_map_ram_on_other_cpus, {
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let others: Vec<usize> =
        smp::online_cpus().filter(|&c| c != crate::percpu_defs::smp_processor_id()).collect();
    if others.is_empty() {
        return Ok(()); // needs a second CPU
    }
    let before = settled();
    let warnings = vm::nr_misuse_reports();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    for &cpu in &others {
        let (stop, errors, done) = (stop.clone(), errors.clone(), done.clone());
        smp::start_work(
            cpu,
            alloc::boxed::Box::new(move || {
                let me = crate::percpu_defs::smp_processor_id() as u8;
                let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).unwrap();
                // Map one slot, check it, unmap it: after every unmap the block holds no live
                // mapping and has free space, so it is a purge candidate at the very moment this
                // CPU bump-allocates its next slot from it.
                while !stop.load(Ordering::Relaxed) {
                    let p = vm::vm_map_ram(&[pfn]);
                    if p.is_null() {
                        errors.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    let mut report = String::new();
                    // SAFETY: p is this CPU's own vm_map_ram slot over a page it allocated; the
                    // write faults (and is reported) only if a purge on another CPU took it.
                    let wrote_faulted = unsafe { arch::exception::probe_write(p, me, &mut report) };
                    if (wrote_faulted || arch::exception::probe_read(p, &mut report) != Some(me))
                        && errors.fetch_add(1, Ordering::SeqCst) == 0
                    {
                        crate::println!("purge race: cpu {} addr {:p}: {}", me, p, report);
                    }
                    // SAFETY: `p` is what vm_map_ram of 1 page returned, unmapped once here.
                    unsafe { vm::vm_unmap_ram(p, 1) };
                }
                page_alloc::__free_page(pfn);
                done.fetch_add(1, Ordering::SeqCst);
                crate::smp::wake_waiters();
            }),
        );
    }
    let t0 = arch::cycles();
    while arch::cycles_to_us(arch::cycles() - t0) < 300_000 {
        vm::purge_fragmented_blocks();
        smp::quiescent_point();
    }
    stop.store(true, Ordering::SeqCst);
    while done.load(Ordering::SeqCst) < others.len() {
        smp::quiescent_point();
        crate::smp::wait_for_event();
    }
    kassert!(
        errors.load(Ordering::SeqCst) == 0,
        "vm_map_ram space lost or unmapped under purge_fragmented_blocks: {} errors",
        errors.load(Ordering::SeqCst)
    );
    // A block freed under a live slot makes that slot's vm_unmap_ram a "not a vmap block" report.
    kassert!(
        vm::nr_misuse_reports() == warnings,
        "{} vmalloc warnings during the race (a block freed while in use)",
        vm::nr_misuse_reports() - warnings
    );
    kassert_eq!(settled(), before);
    Ok(())
});

// Misuse Linux warns about is detected, named and survived: vfree of an address that is no
// vmalloc area (a linear-map page, an address inside the vmalloc range nobody allocated), a
// double vfree, vfree of a vm_map_ram area (small and large), vm_unmap_ram of a vmalloc area
// (small and large). Each is one counted warning; no page or VA is lost, the areas involved
// still work, and they are freed normally afterwards.
ktest!(vmalloc_misuse_is_reported_and_survived, {
    let before = settled();
    let w0 = vm::nr_misuse_reports();
    let mut expect = 0;
    let check = |what: &str, expect: &mut u64| -> Result<(), String> {
        *expect += 1;
        let got = vm::nr_misuse_reports() - w0;
        kassert!(got == *expect, "{}: {} warnings, expected {}", what, got, *expect);
        Ok(())
    };
    // Not a vmalloc area.
    let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).ok_or("no page")?;
    vm::vfree(page_alloc::pfn_to_virt(pfn));
    check("vfree of a linear-map address", &mut expect)?;
    vm::vfree((arch::VMALLOC_START + (1 << 30)) as *mut u8);
    check("vfree of an unallocated vmalloc address", &mut expect)?;
    // Double vfree.
    let p = vm::vmalloc(3 * PAGE_SIZE);
    kassert!(!p.is_null());
    vm::vfree(p);
    vm::vfree(p);
    check("double vfree", &mut expect)?;
    // vfree of vm_map_ram areas (a vmap-block slot and a large area), then they still work.
    let pfns: Vec<u64> =
        (0..65).map(|_| page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).unwrap()).collect();
    let small = vm::vm_map_ram(&pfns[..1]);
    let large = vm::vm_map_ram(&pfns);
    kassert!(!small.is_null() && !large.is_null());
    vm::vfree(small);
    check("vfree of a vm_map_ram block slot", &mut expect)?;
    vm::vfree(large);
    check("vfree of a large vm_map_ram area", &mut expect)?;
    // SAFETY: both mappings stayed in place (the vfree calls were refused); in-bounds offsets.
    unsafe {
        small.write_volatile(1);
        large.add(64 * PAGE_SIZE).write_volatile(2);
        kassert_eq!(page_alloc::pfn_to_virt(pfns[0]).read_volatile(), 1);
        kassert_eq!(page_alloc::pfn_to_virt(pfns[64]).read_volatile(), 2);
    }
    // vm_unmap_ram of vmalloc areas (small and large count), then they still work.
    let a = vm::vmalloc(PAGE_SIZE);
    let b = vm::vmalloc(65 * PAGE_SIZE);
    kassert!(!a.is_null() && !b.is_null());
    // SAFETY: `a` lies in a vmalloc area, not in a vmap block: refused and reported, untouched.
    unsafe { vm::vm_unmap_ram(a, 1) };
    check("vm_unmap_ram of a 1-page vmalloc area", &mut expect)?;
    // SAFETY: a count above VMAP_MAX_ALLOC: checked against the busy tree, no contract.
    unsafe { vm::vm_unmap_ram(b, 65) };
    check("vm_unmap_ram of a 65-page vmalloc area", &mut expect)?;
    // SAFETY: both vmalloc areas stayed mapped (vm_unmap_ram was refused); in-bounds offsets.
    unsafe {
        a.write_volatile(3);
        b.add(64 * PAGE_SIZE).write_volatile(4);
    }
    vm::vfree(a);
    vm::vfree(b);
    // SAFETY: `small` is what vm_map_ram of 1 page returned (the vfree of it was refused),
    // unmapped once here; `large` has a count above VMAP_MAX_ALLOC (no contract).
    unsafe {
        vm::vm_unmap_ram(small, 1);
        vm::vm_unmap_ram(large, 65);
    }
    for pfn in pfns {
        page_alloc::__free_page(pfn);
    }
    page_alloc::__free_page(pfn);
    kassert!(vm::nr_misuse_reports() - w0 == expect, "correct frees reported a warning");
    kassert_eq!(settled(), before);
    Ok(())
});

// vmap_lazy_nr against concurrent purges: other CPUs vfree as fast as they can while this CPU
// purges in a loop. A freed area must be counted before a purge can take it from the lazy tree;
// counted after (the old order), a purge subtracts pages that were never added and the counter
// wraps ("vmalloc bug: vmap_lazy_nr underflow"), making every freeing CPU purge.
ktest!(vmap_lazy_nr_never_underflows_under_concurrent_purges, {
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let others: Vec<usize> =
        smp::online_cpus().filter(|&c| c != crate::percpu_defs::smp_processor_id()).collect();
    if others.is_empty() {
        return Ok(());
    }
    let before = settled();
    let w0 = vm::nr_misuse_reports();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    for &cpu in &others {
        let (stop, done) = (stop.clone(), done.clone());
        smp::start_work(
            cpu,
            alloc::boxed::Box::new(move || {
                while !stop.load(Ordering::Relaxed) {
                    let p = vm::vmalloc(PAGE_SIZE);
                    if !p.is_null() {
                        vm::vfree(p);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                crate::smp::wake_waiters();
            }),
        );
    }
    let t0 = arch::cycles();
    let mut purges = 0u64;
    while arch::cycles_to_us(arch::cycles() - t0) < 300_000 {
        vm::purge_vmap_area_lazy();
        purges += 1;
        kassert!(vm::vmap_lazy_nr() < 1 << 40, "vmap_lazy_nr wrapped: {:#x}", vm::vmap_lazy_nr());
    }
    stop.store(true, Ordering::SeqCst);
    while done.load(Ordering::SeqCst) < others.len() {
        smp::quiescent_point();
        crate::smp::wait_for_event();
    }
    kassert!(
        vm::nr_misuse_reports() == w0,
        "{} vmalloc bug reports after {} purges",
        vm::nr_misuse_reports() - w0,
        purges
    );
    kassert_eq!(settled(), before);
    kassert_eq!(vm::vmap_lazy_nr(), 0);
    Ok(())
});
