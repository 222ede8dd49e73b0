//! Linux's lib/test_vmalloc.c, re-implemented in the kernel: the same tests in the same index
//! order, the same parameters and the same output lines, so its serial log reads like Linux's.
//!
//! Beyond Linux: a suite mode (`test_vmalloc.suite=seed`) running the seed table's 19 rows in one
//! boot, and a leak line after each test (free pages and free vmalloc space before and after,
//! both taken after a lazy purge and an RCU barrier).
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch;
use crate::mm::{kmalloc, page_alloc, percpu, vmalloc as vm};
use crate::{println, rcu, smp};
use bootcfg::test_vmalloc::{self as params, Rng, Suite, TvParams, TESTS};
use mm_types::gfp::GfpFlags;
use mm_types::PAGE_SIZE;

/// One test call: Ok = pass, Err = fail (xfailed when the test is marked xfail).
type TestFn = fn(&TvParams, &mut Rng) -> Result<(), ()>;

const TEST_FNS: [TestFn; 13] = [
    fix_size_alloc_test,
    full_fit_alloc_test,
    long_busy_list_alloc_test,
    random_size_alloc_test,
    fix_align_alloc_test,
    random_size_align_alloc_test,
    align_shift_alloc_test,
    pcpu_alloc_test,
    kvfree_rcu_1_arg_vmalloc_test,
    kvfree_rcu_2_arg_vmalloc_test,
    vm_map_ram_test,
    no_block_alloc_test,
    vrealloc_test,
];

crate::define_per_cpu! {
    /// Counter time spent inside the timed loops of the current test call, for tests with setup
    /// outside their loop (full_fit, long_busy_list): the rest of the call is setup/teardown,
    /// reported on its own line so tvtool can scale it with the loops (suite mode).
    static LOOP_CYCLES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
}
crate::define_per_cpu! {
    static LOOP_T0: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
}

/// Marks the start of a test's loop (not in Linux: measurement only, outside the loop).
#[inline(always)]
fn loop_begin() {
    LOOP_T0.this_cpu().store(arch::cycles(), Ordering::Relaxed);
}

/// Marks the end of a test's loop.
#[inline(always)]
fn loop_end() {
    let d = arch::cycles() - LOOP_T0.this_cpu().load(Ordering::Relaxed);
    LOOP_CYCLES.this_cpu().fetch_add(d, Ordering::Relaxed);
}

/// Writes one byte at the start of a mapping ("touch").
///
/// # Safety
///
/// `p` must be valid for a one-byte write: the start of a live mapping the caller owns.
#[inline(always)]
unsafe fn touch(p: *mut u8, v: u8) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_volatile(p, v) };
}

fn fix_size_alloc_test(p: &TvParams, _: &mut Rng) -> Result<(), ()> {
    let size = p.nr_pages as usize * PAGE_SIZE;
    for _ in 0..p.test_loop_count {
        let ptr = if p.use_huge {
            vm::vmalloc_huge(size, GfpFlags::GFP_KERNEL)
        } else {
            vm::vmalloc(size)
        };
        if ptr.is_null() {
            return Err(());
        }
        // SAFETY: `ptr` is a live area of at least one page (non-null, checked), ours until the
        // vfree below.
        unsafe { touch(ptr, 1) };
        vm::vfree(ptr);
    }
    Ok(())
}

fn full_fit_alloc_test(p: &TvParams, _: &mut Rng) -> Result<(), ()> {
    // Fragment the VA space with one-page holes (junk = lazy_max_pages), then allocate into them.
    let junk_length = vm::lazy_max_pages();
    let ptr_arr = vm::vmalloc(junk_length * core::mem::size_of::<*mut u8>()) as *mut *mut u8;
    let junk_arr = vm::vmalloc(junk_length * core::mem::size_of::<*mut u8>()) as *mut *mut u8;
    let mut rv = Ok(());
    if ptr_arr.is_null() || junk_arr.is_null() {
        rv = Err(());
    } else {
        // SAFETY: ptr_arr and junk_arr are live areas (non-null, checked) of junk_length
        // pointers each, page aligned, owned by this call until the vfrees at the end, so every
        // index i < junk_length is in bounds; `q` is touched only when non-null, a live one-page
        // area of this call's.
        unsafe {
            for i in 0..junk_length {
                *ptr_arr.add(i) = vm::vmalloc(PAGE_SIZE);
                *junk_arr.add(i) = vm::vmalloc(PAGE_SIZE);
            }
            for i in 0..junk_length {
                vm::vfree(*junk_arr.add(i));
            }
            loop_begin();
            for _ in 0..p.test_loop_count {
                let q = vm::vmalloc(PAGE_SIZE);
                if q.is_null() {
                    rv = Err(());
                    break;
                }
                touch(q, 1);
                vm::vfree(q);
            }
            loop_end();
            for i in 0..junk_length {
                vm::vfree(*ptr_arr.add(i));
            }
        }
    }
    vm::vfree(ptr_arr as *mut u8);
    vm::vfree(junk_arr as *mut u8);
    rv
}

fn long_busy_list_alloc_test(p: &TvParams, _: &mut Rng) -> Result<(), ()> {
    const BUSY: usize = 15_000;
    let arr = vm::vmalloc(BUSY * core::mem::size_of::<*mut u8>()) as *mut *mut u8;
    if arr.is_null() {
        return Err(());
    }
    let mut rv = Ok(());
    // SAFETY: `arr` is a live area (non-null, checked) of BUSY pointers, page aligned, owned by
    // this call until the vfree at the end, so every index i < BUSY is in bounds; `a` and `b`
    // are touched only when both are non-null, live areas of this call's.
    unsafe {
        for i in 0..BUSY {
            let q = vm::vmalloc(PAGE_SIZE);
            *arr.add(i) = q;
            if q.is_null() {
                rv = Err(());
            }
        }
        if rv.is_ok() {
            loop_begin();
            for _ in 0..p.test_loop_count {
                let a = vm::vmalloc(100 * PAGE_SIZE);
                let b = vm::vmalloc(PAGE_SIZE);
                if a.is_null() || b.is_null() {
                    vm::vfree(a);
                    vm::vfree(b);
                    rv = Err(());
                    break;
                }
                touch(a, 1);
                touch(b, 1);
                vm::vfree(a);
                vm::vfree(b);
            }
            loop_end();
        }
        for i in 0..BUSY {
            vm::vfree(*arr.add(i));
        }
    }
    vm::vfree(arr as *mut u8);
    rv
}

fn random_size_alloc_test(p: &TvParams, rng: &mut Rng) -> Result<(), ()> {
    for _ in 0..p.test_loop_count {
        let n = rng.below(100) as usize + 1;
        let q = vm::vmalloc(n * PAGE_SIZE);
        if q.is_null() {
            return Err(());
        }
        // SAFETY: `q` is a live area of n pages (non-null, checked), ours until the vfree.
        unsafe { touch(q, 1) };
        vm::vfree(q);
    }
    Ok(())
}

/// THREAD_ALIGN << 1 on arm64 with VMAP_STACK (THREAD_SIZE 16 KiB, THREAD_ALIGN 32 KiB).
const FIX_ALIGN: usize = 2 * 2 * 16 * 1024;

fn fix_align_alloc_test(p: &TvParams, _: &mut Rng) -> Result<(), ()> {
    for _ in 0..p.test_loop_count {
        let q = vm::__vmalloc_node(
            5 * PAGE_SIZE,
            FIX_ALIGN,
            GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO,
        );
        if q.is_null() {
            return Err(());
        }
        vm::vfree(q);
    }
    Ok(())
}

fn random_size_align_alloc_test(p: &TvParams, rng: &mut Rng) -> Result<(), ()> {
    for _ in 0..p.test_loop_count {
        let rnd = rng.byte() as usize;
        let align = 1usize << (rnd % 23);
        let size = ((rnd % 10) + 1) * PAGE_SIZE;
        let q = vm::__vmalloc_node(size, align, GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO);
        if q.is_null() {
            return Err(());
        }
        vm::vfree(q);
    }
    Ok(())
}

/// Alignments up to 2^63 exhaust the VA space: the test is expected to fail.
fn align_shift_alloc_test(_: &TvParams, _: &mut Rng) -> Result<(), ()> {
    for i in 0..64 {
        let align = 1usize << i;
        let q = vm::__vmalloc_node(PAGE_SIZE, align, GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO);
        if q.is_null() {
            return Err(());
        }
        vm::vfree(q);
    }
    Ok(())
}

fn pcpu_alloc_test(p: &TvParams, rng: &mut Rng) -> Result<(), ()> {
    let n = p.nr_pcpu_objects as usize;
    let arr = vm::vmalloc(n * core::mem::size_of::<usize>()) as *mut usize;
    if arr.is_null() {
        return Err(());
    }
    let mut rv = Ok(());
    // SAFETY: `arr` is a live area (non-null, checked) of n usizes, page aligned, owned by this
    // call until the vfree at the end: every index i < n is in bounds.
    unsafe {
        for i in 0..n {
            let size = rng.below((PAGE_SIZE / 4) as u32) as usize + 1;
            // align = 2^k, k uniform in [1, PAGE_SHIFT - 1]
            let align = 1usize << (rng.below(mm_types::PAGE_SHIFT - 1) + 1);
            let q = percpu::alloc_percpu(size, align);
            *arr.add(i) = q;
            if q == 0 {
                rv = Err(());
            }
        }
        for i in 0..n {
            let q = *arr.add(i);
            if q != 0 {
                percpu::free_percpu(q);
            }
        }
    }
    vm::vfree(arr as *mut u8);
    rv
}

/// The object of the kvfree_rcu tests: an rcu_head followed by 20 bytes (Linux: struct test_kvfree_rcu).
#[repr(C)]
struct TestKvfreeRcu {
    rcu: rcu::RcuHead,
    array: [u8; 20],
}

fn kvfree_rcu_1_arg_vmalloc_test(p: &TvParams, _: &mut Rng) -> Result<(), ()> {
    for _ in 0..p.test_loop_count {
        let q = vm::vmalloc(PAGE_SIZE) as *mut TestKvfreeRcu;
        if q.is_null() {
            return Err(());
        }
        // SAFETY: `q` is a live one-page area (non-null, checked; page aligned, and a page holds
        // a TestKvfreeRcu) owned by this call until kvfree_rcu_mightsleep takes it.
        unsafe { core::ptr::write_volatile(&mut (*q).array[0], 1) };
        rcu::kvfree_rcu_mightsleep(q as *mut u8);
    }
    Ok(())
}

fn kvfree_rcu_2_arg_vmalloc_test(p: &TvParams, _: &mut Rng) -> Result<(), ()> {
    for _ in 0..p.test_loop_count {
        let q = vm::vmalloc(PAGE_SIZE) as *mut TestKvfreeRcu;
        if q.is_null() {
            return Err(());
        }
        // SAFETY: `q` is a live one-page area (non-null, checked; page aligned, and a page holds
        // a TestKvfreeRcu) owned by this call; `rcu` is the first field of the repr(C) struct,
        // so the head is at the object's start, as kvfree_rcu requires, and `q` is not used
        // after kvfree_rcu takes it.
        unsafe {
            core::ptr::write_volatile(&mut (*q).array[0], 1);
            rcu::kvfree_rcu(q as *mut u8, &raw mut (*q).rcu);
        }
    }
    Ok(())
}

fn vm_map_ram_test(p: &TvParams, _: &mut Rng) -> Result<(), ()> {
    let n = p.nr_pages.max(1) as usize;
    let mut pages: Vec<Option<mm_types::Pfn>> = vec![None; n];
    let got = page_alloc::alloc_pages_bulk(GfpFlags::GFP_KERNEL, n, &mut pages);
    let mut rv = if got == n { Ok(()) } else { Err(()) };
    if rv.is_ok() {
        let pfns: Vec<mm_types::Pfn> = pages.iter().map(|p| p.unwrap()).collect();
        for _ in 0..p.test_loop_count {
            let v = vm::vm_map_ram(&pfns);
            if v.is_null() {
                rv = Err(());
                break;
            }
            // SAFETY: `v` maps n >= 1 pages (non-null, checked), this call's until the unmap;
            // it is what vm_map_ram of n pages returned and is unmapped once.
            unsafe {
                touch(v, 0xa5);
                vm::vm_unmap_ram(v, n);
            }
        }
    }
    for pfn in pages.into_iter().flatten() {
        page_alloc::__free_page(pfn);
    }
    rv
}

fn no_block_alloc_test(p: &TvParams, rng: &mut Rng) -> Result<(), ()> {
    // xfail in Linux: non-blocking vmalloc may fail (page tables, reclaim). Here nothing sleeps,
    // so it normally passes; a failure is still reported, and counted as xfailed.
    let n = p.nr_pages.max(1) as usize;
    let mut rv = Ok(());
    for _ in 0..p.test_loop_count {
        let gfp = if rng.below(2) == 0 { GfpFlags::GFP_ATOMIC } else { GfpFlags::GFP_NOWAIT };
        let q = vm::__vmalloc(n * PAGE_SIZE, gfp);
        if q.is_null() {
            rv = Err(());
        } else {
            // SAFETY: `q` is a live area of n >= 1 pages (non-null), ours until the vfree.
            unsafe { touch(q, 0) };
        }
        vm::vfree(q);
    }
    rv
}

fn vrealloc_test(p: &TvParams, _: &mut Rng) -> Result<(), ()> {
    for _ in 0..p.test_loop_count {
        let mut q = vm::vmalloc(PAGE_SIZE);
        if q.is_null() {
            return Err(());
        }
        // SAFETY: `q` is a live one-page area (non-null, checked) owned by this call.
        unsafe { *q = b'a' };
        let check = |q: *mut u8| -> Result<(), ()> {
            // SAFETY: only called with vrealloc's result: when non-null, a live area of at least
            // PAGE_SIZE / 2 bytes owned by this call.
            if q.is_null() || unsafe { *q } != b'a' {
                Err(())
            } else {
                Ok(())
            }
        };
        // Grow: must move (the area has no room), content kept.
        // SAFETY: `q` is the start of a live vmalloc area owned by this call (vrealloc frees it
        // only when it moves, and `q` is then replaced by the result or not used again).
        let r = unsafe { vm::vrealloc(q, 4 * PAGE_SIZE, GfpFlags::GFP_KERNEL) };
        if check(r).is_err() {
            vm::vfree(if r.is_null() { q } else { r });
            return Err(());
        }
        q = r;
        for size in [PAGE_SIZE, PAGE_SIZE / 2, PAGE_SIZE] {
            // SAFETY: as above: `q` is the start of this call's live area.
            let r = unsafe { vm::vrealloc(q, size, GfpFlags::GFP_KERNEL) };
            if check(r).is_err() {
                vm::vfree(if r.is_null() { q } else { r });
                return Err(());
            }
            q = r;
        }
        vm::vfree(q);
    }
    Ok(())
}

#[derive(Clone, Copy, Default)]
struct TestResult {
    passed: u32,
    failed: u32,
    xfailed: u32,
    time_us: u64,
}

struct Worker {
    results: [TestResult; TESTS.len()],
    start: u64,
    stop: u64,
}

/// Free pages (after draining pcp lists) and free vmalloc space (after a lazy purge), once
/// every RCU callback has run: the figures the leak line compares.
///
/// Caches are shrunk first (kvfree_rcu's spare block pages, kmalloc slabs, KVA tree-node slabs,
/// empty percpu chunks, fragmented vmap blocks), as `echo 3 > drop_caches` would; page-table pages of the vmalloc range, which
/// Linux never frees, count as free pages here so that the first test to need them is not
/// reported as a loss.
pub fn settle_and_measure() -> (u64, u64) {
    rcu::rcu_barrier();
    rcu::kvfree_rcu_shrink();
    vm::vm_unmap_aliases();
    percpu::percpu_shrink();
    vm::vm_unmap_aliases();
    vm::vmap_node_shrink();
    kmalloc::kmalloc_shrink();
    crate::mm::kva::shrink();
    page_alloc::drain_all_pages();
    (
        page_alloc::nr_free_pages() + crate::mm::pgtable::nr_pagetable_pages(),
        vm::free_vmalloc_bytes(),
    )
}

/// What still holds memory after a LOST leak line, so a failing CI log says where to look.
fn leak_report() {
    let (busy, busy_bytes, lazy, lazy_bytes) = crate::mm::kva::usage();
    let nodes = crate::mm::kva::node_stats();
    println!(
        "mm: state after LOST: busy vmap areas {} ({} KiB), lazy areas {} ({} KiB), vmap_area nodes {} in {} pages, rcu callbacks pending {}, free pages {}, page-table pages {}",
        busy, busy_bytes >> 10, lazy, lazy_bytes >> 10, nodes.objects_in_use, nodes.pages, rcu::nr_pending(), page_alloc::nr_free_pages(), crate::mm::pgtable::nr_pagetable_pages()
    );
}

/// Free pages, vmalloc'ed pages and the grace-period state, for failure and end-of-run lines.
fn mm_state() -> String {
    let g = rcu::gp_stats();
    format!(
        "free {} pages, vmalloc {} pages, rcu: {} callbacks pending, {} grace periods, running one for {} ms waiting for cpus {:#x}, longest {} ms (ended by cpu {})",
        page_alloc::nr_free_pages(),
        page_alloc::nr_vmalloc_pages(),
        rcu::nr_pending(),
        g.completed,
        arch::cycles_to_us(g.running_for) / 1000,
        g.waiting_for,
        arch::cycles_to_us(g.longest) / 1000,
        g.longest_ended_by
    )
}

/// Runs the selected tests of one worker in its (shuffled) order; returns the results.
fn run_worker(p: &TvParams, id: usize, leak_lines: bool, failures: &AtomicUsize) -> Worker {
    let mut rng = Rng::new(p.seed ^ ((id as u64 + 1) * 0x9e37_79b9_7f4a_7c15));
    let mut order: Vec<usize> = (0..TESTS.len()).collect();
    if !p.sequential_test_order {
        params::shuffle(&mut order, &mut rng);
    }
    let mut w =
        Worker { results: [TestResult::default(); TESTS.len()], start: arch::cycles(), stop: 0 };
    for &i in &order {
        if p.run_test_mask & (1 << i) == 0 {
            continue;
        }
        let before = if leak_lines { Some(settle_and_measure()) } else { None };
        LOOP_CYCLES.this_cpu().store(0, Ordering::Relaxed);
        let t0 = arch::cycles();
        for repeat in 0..p.test_repeat_count {
            match TEST_FNS[i](p, &mut rng) {
                Ok(()) => w.results[i].passed += 1,
                Err(()) if TESTS[i].1 => w.results[i].xfailed += 1,
                Err(()) => {
                    w.results[i].failed += 1;
                    // Not in Linux's output: the state a failure happened in (most failures
                    // under stress are memory running out).
                    println!(
                        "test_vmalloc: {} failed (worker {}, cpu {}, repeat {}): {}",
                        TESTS[i].0,
                        id,
                        crate::percpu_defs::smp_processor_id(),
                        repeat,
                        mm_state()
                    );
                }
            }
        }
        let total = arch::cycles() - t0;
        w.results[i].time_us = arch::cycles_to_us(total) / p.test_repeat_count as u64;
        let in_loops = LOOP_CYCLES.this_cpu().load(Ordering::Relaxed);
        let setup_us = (in_loops > 0).then(|| {
            arch::cycles_to_us(total.saturating_sub(in_loops)) / p.test_repeat_count as u64
        });
        if let Some((pages0, va0)) = before {
            let (pages1, va1) = settle_and_measure();
            let ok = pages1 >= pages0 && va1 >= va0;
            println!(
                "test_vmalloc: leak {} free_pages {}->{} free_va {:#x}->{:#x} {}",
                TESTS[i].0,
                pages0,
                pages1,
                va0,
                va1,
                if ok { "ok" } else { "LOST" }
            );
            if !ok {
                failures.fetch_add(1, Ordering::SeqCst);
                leak_report();
            }
        }
        // Suite mode scales the loops but not a test's fixed setup: say how much of avg it is.
        if let (Some(us), Some(_)) = (setup_us, p.suite) {
            println!("test_vmalloc: setup {} usec: {}", TESTS[i].0, us);
        }
    }
    w.stop = arch::cycles();
    w
}

/// One run of the benchmark with `p` (Linux: init_test_configuration + do_concurrent_test).
/// Returns the number of failures (failed tests and leak losses).
fn do_concurrent_test(p: &TvParams, leak_check: bool) -> usize {
    let online: Vec<usize> = smp::online_cpus().collect();
    let nr = p.nr_threads as usize;
    let failures = Arc::new(AtomicUsize::new(0));
    // Worker i runs on CPU online[i % n]; several workers on one CPU run one after another.
    if nr > online.len() {
        println!(
            "test_vmalloc: {} workers on {} CPUs: workers sharing a CPU run one after another",
            nr,
            online.len()
        );
    }
    let leak_lines = leak_check && nr == 1;
    let before = if leak_check && !leak_lines { Some(settle_and_measure()) } else { None };
    let results: Arc<spin::Mutex<Vec<Option<Worker>>>> =
        Arc::new(spin::Mutex::new((0..nr).map(|_| None).collect()));
    let cpus_used = online.len().min(nr);
    let barrier = Arc::new(smp::Barrier::new(cpus_used));
    let done = Arc::new(AtomicUsize::new(0));
    let me = crate::percpu_defs::smp_processor_id();
    let params = Arc::new(p.clone());
    let job = |slot: usize| {
        let (results, barrier, done, params, failures) =
            (results.clone(), barrier.clone(), done.clone(), params.clone(), failures.clone());
        move || {
            barrier.wait();
            let mut id = slot;
            while id < nr {
                let w = run_worker(&params, id, leak_lines, &failures);
                results.lock()[id] = Some(w);
                id += cpus_used;
            }
            done.fetch_add(1, Ordering::SeqCst);
            crate::smp::wake_waiters();
        }
    };
    for (slot, &cpu) in online.iter().enumerate().take(cpus_used) {
        if cpu != me {
            smp::start_work(cpu, Box::new(job(slot)));
        }
    }
    let my_slot = online.iter().position(|&c| c == me).unwrap();
    if my_slot < cpus_used {
        job(my_slot)();
    }
    while done.load(Ordering::SeqCst) < cpus_used {
        smp::quiescent_point();
        smp::wait_for_event();
    }
    let results = results.lock();
    for (id, w) in results.iter().enumerate() {
        let w = w.as_ref().unwrap();
        for (i, r) in w.results.iter().enumerate() {
            if p.run_test_mask & (1 << i) == 0 {
                continue;
            }
            if r.failed > 0 {
                failures.fetch_add(1, Ordering::SeqCst);
            }
            println!(
                "Summary: {} passed: {} failed: {} xfailed: {} repeat: {} loops: {} avg: {} usec",
                TESTS[i].0,
                r.passed,
                r.failed,
                r.xfailed,
                p.test_repeat_count,
                p.test_loop_count,
                r.time_us
            );
        }
        println!("All test took worker{}={} cycles", id, w.stop - w.start);
    }
    page_alloc::warn_flush();
    if p.suite == Some(Suite::Stress) || p.nr_threads > 1 || failures.load(Ordering::SeqCst) > 0 {
        println!("test_vmalloc: end of run: {}", mm_state());
    }
    if let Some((pages0, va0)) = before {
        let (pages1, va1) = settle_and_measure();
        let ok = pages1 >= pages0 && va1 >= va0;
        println!(
            "test_vmalloc: leak all free_pages {}->{} free_va {:#x}->{:#x} {}",
            pages0,
            pages1,
            va0,
            va1,
            if ok { "ok" } else { "LOST" }
        );
        if !ok {
            failures.fetch_add(1, Ordering::SeqCst);
            leak_report();
        }
    }
    failures.load(Ordering::SeqCst)
}

/// Runs the benchmark as the boot parameters say. Returns (passed, failed) summary counts for
/// the closing line: a test passes when it did not fail (xfail counts as passed).
pub fn run(pairs: &[(String, Option<String>)]) -> Result<(usize, usize), String> {
    let p = TvParams::parse(pairs, smp::num_online_cpus() as u32)?;
    let cfg = bootcfg::config::get();
    println!(
        "test_vmalloc: params {} {} timer_hz={} cpus={}",
        p.describe(),
        cfg.mm_switches(),
        arch::timer_hz(),
        smp::num_online_cpus()
    );
    let rows: Vec<(Option<params::Row>, TvParams)> = match p.suite {
        Some(Suite::Seed) => params::seed_rows()
            .into_iter()
            .map(|r| {
                let mut q = p.clone();
                q.run_test_mask = 1 << r.test;
                q.nr_pages = r.nr_pages;
                q.use_huge = r.use_huge;
                q.test_loop_count = p.scaled(r.loops);
                (Some(r), q)
            })
            .collect(),
        _ => vec![(None, p.clone())],
    };
    let (mut passed, mut failed) = (0, 0);
    // Warm rows: each row starts from the state the previous one left (pcp lists, lazily freed
    // areas, vmap pools), as consecutive module loads in Linux do; the leak check then covers
    // the whole suite instead of each row.
    let warm = p.suite == Some(Suite::Seed) && p.warm_rows;
    let suite_before = if warm { Some(settle_and_measure()) } else { None };
    for (row, q) in rows {
        if let Some(r) = row {
            println!(
                "test_vmalloc: row {} p:{} h:{} l:{}",
                TESTS[r.test].0, r.nr_pages, r.use_huge as u8, r.loops
            );
        }
        let f = do_concurrent_test(&q, !warm);
        let selected = (0..TESTS.len()).filter(|i| q.run_test_mask & (1 << i) != 0).count()
            * q.nr_threads as usize;
        failed += f.min(selected.max(1));
        passed += selected.saturating_sub(f);
    }
    if let Some((pages0, va0)) = suite_before {
        let (pages1, va1) = settle_and_measure();
        let ok = pages1 >= pages0 && va1 >= va0;
        println!(
            "test_vmalloc: leak suite free_pages {}->{} free_va {:#x}->{:#x} {}",
            pages0,
            pages1,
            va0,
            va1,
            if ok { "ok" } else { "LOST" }
        );
        if !ok {
            failed += 1;
            leak_report();
        }
    }
    Ok((passed, failed))
}

/// Description used in error messages.
pub fn describe_error(e: &str) -> String {
    format!("test_vmalloc: {e}")
}
