//! Interrupts: the tick on every CPU, interrupts taken while allocator locks are held, and the
//! vmstat work's decay_pcp_high.
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::arch::{self, gic, irq};
use crate::mm::page_alloc;
use crate::smp;
use crate::tick::TICK;
use mm_page_alloc::stat::VmEvent;
use mm_types::gfp::GfpFlags;
use mm_types::NR_CPUS;

/// Counter ticks in `ms` milliseconds.
fn ms(ms: u64) -> u64 {
    arch::timer_hz() * ms / 1000
}

crate::ktest!(tick_arrives_on_every_cpu, {
    if !gic::present() || crate::tick::hz() == 0 {
        crate::println!("  (no interrupts or hz=0: nothing to check)");
        return Ok(());
    }
    // Each CPU stays busy (not idle, so its tick runs even under nohz) until it has taken
    // three ticks, or 1 s passed.
    let got: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];
    smp::on_each_cpu(&|| {
        let t = &TICK.this_cpu().ticks;
        let t0 = t.load(Ordering::Relaxed);
        let start = arch::cycles();
        while t.load(Ordering::Relaxed) < t0 + 3 && arch::cycles() - start < ms(1000) {
            core::hint::spin_loop();
        }
        got[crate::percpu_defs::smp_processor_id()]
            .store(t.load(Ordering::Relaxed) - t0, Ordering::Relaxed);
    });
    for cpu in smp::online_cpus() {
        let n = got[cpu].load(Ordering::Relaxed);
        crate::kassert!(n >= 3, "cpu{cpu} took {n} ticks in 1 s at {} Hz", crate::tick::hz());
    }
    crate::println!(
        "  ticks so far: {}",
        smp::online_cpus()
            .map(|c| alloc::format!("cpu{c}={}", TICK.on(c).ticks.load(Ordering::Relaxed)))
            .collect::<alloc::vec::Vec<_>>()
            .join(" ")
    );
    Ok(())
});

/// The SGI the lock tests raise on their own CPU.
const IPI_TEST: u32 = 14;
/// Page the test interrupt frees (0: none), and whether the handler ran.
static IRQ_PAGE: AtomicU64 = AtomicU64::new(0);
static IRQ_RAN: AtomicBool = AtomicBool::new(false);

/// An interrupt handler that frees a page (Linux: a driver's completion path calling
/// __free_page from hard-irq context).
fn free_page_from_irq(_intid: u32) {
    let pfn = IRQ_PAGE.swap(0, Ordering::AcqRel);
    if pfn != 0 {
        page_alloc::__free_page(pfn);
    }
    IRQ_RAN.store(true, Ordering::Release);
}

/// Runs `f` with this CPU's pcp of every zone locked (nested, zone order).
fn with_all_pcps_locked(cpu: usize, zone: usize, f: &mut dyn FnMut()) {
    if zone == mm_types::gfp::MAX_NR_ZONES {
        f();
        return;
    }
    page_alloc::allocator().with_pcp_locked(cpu, zone, || with_all_pcps_locked(cpu, zone + 1, f));
}

crate::ktest!(irq_under_pcp_and_zone_locks_does_not_deadlock, {
    if !gic::present() {
        crate::println!("  (no interrupts: nothing to check)");
        return Ok(());
    }
    match irq::request_percpu_irq(IPI_TEST, free_page_from_irq) {
        Ok(()) | Err("INTID already has a handler") => {}
        Err(e) => return Err(e.into()),
    }
    let me = crate::percpu_defs::smp_processor_id();
    let pa = page_alloc::allocator();
    let fails = || pa.sum_vm_event(VmEvent::PcpTrylockFail as usize);
    // 1. pcp lock held, interrupts on: the interrupt is taken inside, its free finds the pcp
    //    locked and goes to the buddy under zone->lock (Linux free_unref_page ->
    //    free_one_page), instead of spinning on a lock its own CPU holds.
    let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).ok_or("no page")?;
    IRQ_PAGE.store(pfn, Ordering::Release);
    IRQ_RAN.store(false, Ordering::Release);
    let (f0, free0) = (fails(), page_alloc::nr_free_pages());
    let mut ran_inside = false;
    with_all_pcps_locked(me, 0, &mut || {
        gic::send_ipi_mask(IPI_TEST, 1 << me);
        let start = arch::cycles();
        while !IRQ_RAN.load(Ordering::Acquire) && arch::cycles() - start < ms(100) {
            core::hint::spin_loop();
        }
        ran_inside = IRQ_RAN.load(Ordering::Acquire);
    });
    crate::kassert!(ran_inside, "the interrupt was not taken while the pcp lock was held");
    crate::kassert_eq!(fails() - f0, 1);
    crate::kassert_eq!(page_alloc::nr_free_pages(), free0 + 1);
    // 2. zone->lock held (interrupts masked by it): the interrupt waits for the unlock.
    let pfn = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).ok_or("no page")?;
    IRQ_PAGE.store(pfn, Ordering::Release);
    IRQ_RAN.store(false, Ordering::Release);
    let mut ran_while_locked = true;
    pa.with_zone_locked(me, 0, || {
        gic::send_ipi_mask(IPI_TEST, 1 << me);
        let start = arch::cycles();
        while arch::cycles() - start < ms(20) {
            core::hint::spin_loop();
        }
        ran_while_locked = IRQ_RAN.load(Ordering::Acquire);
    });
    let start = arch::cycles();
    while !IRQ_RAN.load(Ordering::Acquire) && arch::cycles() - start < ms(100) {
        core::hint::spin_loop();
    }
    crate::kassert!(!ran_while_locked, "an interrupt ran while zone->lock was held");
    crate::kassert!(IRQ_RAN.load(Ordering::Acquire), "the interrupt never came after the unlock");
    crate::kassert_eq!(IRQ_PAGE.load(Ordering::Acquire), 0);
    crate::println!(
        "  pcp_trylock_fail +1 (free from the interrupt went to the buddy), irqs on this cpu: {}",
        irq::irq_count(me)
    );
    Ok(())
});

crate::ktest!(decay_pcp_high_lowers_high_after_an_idle_second, {
    if !gic::present() || crate::tick::hz() == 0 {
        crate::println!("  (no tick: nothing to check)");
        return Ok(());
    }
    let me = crate::percpu_defs::smp_processor_id();
    let pa = page_alloc::allocator();
    // A long free streak raises this CPU's pcp high (nr_pcp_high) in the zone the pages
    // came from. Twice: a zone an earlier test ran out of memory in is still marked
    // ZONE_BELOW_HIGH (nr_pcp_high keeps high at high_min then); the first streak's frees past
    // high reach the buddy and clear it, as Linux's free path does (nothing else clears it
    // here: no kswapd). Which tests run first depends on the link order of .ktest.
    let mut pages = alloc::vec::Vec::new();
    for _ in 0..2 {
        for _ in 0..3000 {
            pages.push(page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).ok_or("no page")?);
        }
        page_alloc::drain_local_pages();
        for p in pages.drain(..) {
            page_alloc::__free_page(p);
        }
    }
    let zone = (0..mm_types::gfp::MAX_NR_ZONES)
        .max_by_key(|&z| pa.pcp_snapshot(me, z).high - pa.pcp_snapshot(me, z).high_min)
        .unwrap_or(0);
    let s0 = pa.pcp_snapshot(me, zone);
    crate::kassert!(s0.high > s0.high_min, "high did not grow: {s0:?}");
    let t = TICK.this_cpu();
    let (runs0, decays0) =
        (t.vmstat_runs.load(Ordering::Relaxed), t.decay_runs.load(Ordering::Relaxed));
    // An idle second for the allocator: no allocations, the tick running, cond_resched()
    // calls where the vmstat work gets to run.
    let start = arch::cycles();
    while t.vmstat_runs.load(Ordering::Relaxed) == runs0 && arch::cycles() - start < ms(1500) {
        smp::cond_resched();
        core::hint::spin_loop();
    }
    let s1 = pa.pcp_snapshot(me, zone);
    let (runs1, decays1) =
        (t.vmstat_runs.load(Ordering::Relaxed), t.decay_runs.load(Ordering::Relaxed));
    crate::println!(
        "  zone {zone} cpu{me}: high {} -> {} (high_min {}, count {} -> {}), vmstat work runs {runs0} -> {runs1}, decaying {decays0} -> {decays1}",
        s0.high, s1.high, s0.high_min, s0.count, s1.count
    );
    crate::kassert!(runs1 > runs0, "no vmstat work ran within 1.5 s");
    crate::kassert!(s1.high < s0.high, "high not lowered: {} -> {}", s0.high, s1.high);
    crate::kassert!(s1.high >= s1.high_min);
    crate::kassert!(decays1 > decays0);
    page_alloc::drain_local_pages();
    Ok(())
});
