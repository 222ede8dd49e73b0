//! RCU: grace periods against readers on other CPUs, rcu_barrier.
use crate::rcu::*;
use crate::{arch, smp};
use core::sync::atomic::Ordering;

crate::ktest!(rcu_grace_period_waits_for_readers_on_other_cpus, {
    use alloc::boxed::Box;
    use alloc::sync::Arc;
    use core::sync::atomic::AtomicUsize;
    let others: alloc::vec::Vec<usize> =
        smp::online_cpus().filter(|&c| c != crate::percpu_defs::smp_processor_id()).collect();
    let Some(&reader) = others.first() else {
        // One CPU: a grace period ends at once.
        let before = completed();
        synchronize_rcu();
        crate::kassert!(completed() > before);
        return Ok(());
    };
    // The reader enters a read-side section, holds it until told, then leaves.
    let state = Arc::new(AtomicUsize::new(0));
    let s = state.clone();
    smp::start_work(
        reader,
        Box::new(move || {
            rcu_read_lock();
            s.store(1, Ordering::SeqCst);
            crate::smp::wake_waiters();
            while s.load(Ordering::SeqCst) != 2 {
                smp::cond_resched(); // quiescent points inside a read-side section do not count
            }
            rcu_read_unlock();
            s.store(3, Ordering::SeqCst);
            crate::smp::wake_waiters();
        }),
    );
    while state.load(Ordering::SeqCst) != 1 {
        smp::wait_for_event();
    }
    // An object freed with kvfree_rcu must stay alive while the reader is inside.
    let obj = crate::mm::vmalloc::vmalloc(mm_types::PAGE_SIZE);
    crate::kassert!(!obj.is_null());
    // SAFETY: `obj` is a live one-page vmalloc area (non-null, checked) owned by this test.
    unsafe { *obj = 0x5a };
    let freed_before = completed();
    kvfree_rcu_mightsleep(obj);
    flush_bulk();
    // Give the grace-period machinery plenty of quiescent points: it must not end.
    for _ in 0..1000 {
        rcu_quiescent();
        smp::poll_mailbox();
    }
    let mut report = alloc::string::String::new();
    let v = arch::exception::probe_read(obj, &mut report);
    crate::kassert!(v == Some(0x5a), "object freed while a reader was inside: {:?} {}", v, report);
    crate::kassert!(local_ready_callbacks(), "callback ran before the reader left");
    state.store(2, Ordering::SeqCst);
    crate::smp::wake_waiters();
    rcu_barrier();
    crate::kassert!(completed() > freed_before);
    crate::kassert!(!local_ready_callbacks());
    while state.load(Ordering::SeqCst) != 3 {
        smp::wait_for_event();
    }
    Ok(())
});

// rcu_barrier must not sleep while this CPU owes the quiescent state of a grace period it
// started itself: two callbacks queued back to back need two grace periods, the second started
// by this CPU's own report ending the first. Sleeping then (nobody else will kick this CPU for
// it) hung the single-CPU kernel: the sleep is skipped while this CPU's NEED_RESCHED is set.
crate::ktest!(rcu_barrier_never_sleeps_owing_its_own_quiescent_state, {
    use core::sync::atomic::AtomicUsize;
    static RAN: AtomicUsize = AtomicUsize::new(0);
    static mut H1: RcuHead = RcuHead::new();
    static mut H2: RcuHead = RcuHead::new();
    /// The RCU callback: counts one run.
    ///
    /// # Safety
    ///
    /// None beyond call_rcu's callback type: the head is not used.
    unsafe fn count(_h: *mut RcuHead) {
        RAN.fetch_add(1, Ordering::SeqCst);
    }
    RAN.store(0, Ordering::SeqCst);
    // The first starts a grace period; the second, queued before any quiescent state, needs
    // the next one (NEED_GP).
    // SAFETY: the heads are statics that outlive their callbacks; `count` ignores its argument.
    unsafe {
        call_rcu(&raw mut H1, count);
        call_rcu(&raw mut H2, count);
    }
    rcu_barrier();
    crate::kassert_eq!(RAN.load(Ordering::SeqCst), 2);
    Ok(())
});

// rcu_barrier must wait for callbacks that already left their queue but are still running on
// another CPU (a kvfree_rcu block vfrees hundreds of areas): a slow callback queued on another
// CPU has finished by the time rcu_barrier returns.
crate::ktest!(rcu_barrier_waits_for_a_running_callback_on_another_cpu, {
    use alloc::boxed::Box;
    use core::sync::atomic::AtomicUsize;
    static DONE: AtomicUsize = AtomicUsize::new(0);
    static mut HEAD: RcuHead = RcuHead::new();
    /// The RCU callback: spins 2 ms, then flags that it finished.
    ///
    /// # Safety
    ///
    /// None beyond call_rcu's callback type: the head is not used.
    unsafe fn slow(_h: *mut RcuHead) {
        let t0 = arch::cycles();
        while arch::cycles_to_us(arch::cycles() - t0) < 2000 {
            core::hint::spin_loop();
        }
        DONE.store(1, Ordering::SeqCst);
    }
    let Some(other) = smp::online_cpus().find(|&c| c != crate::percpu_defs::smp_processor_id())
    else {
        return Ok(()); // one CPU: nothing runs elsewhere
    };
    DONE.store(0, Ordering::SeqCst);
    let queued = alloc::sync::Arc::new(AtomicUsize::new(0));
    let q = queued.clone();
    smp::start_work(
        other,
        Box::new(move || {
            // SAFETY: HEAD is a static (valid forever) queued by this test alone, once, and
            // rcu_barrier waits for the callback before the test ends; `slow` ignores its head.
            unsafe { call_rcu(&raw mut HEAD, slow) };
            q.store(1, Ordering::SeqCst);
            crate::smp::wake_waiters();
        }),
    );
    while queued.load(Ordering::SeqCst) == 0 {
        smp::quiescent_point();
        smp::wait_for_event();
    }
    rcu_barrier();
    crate::kassert!(
        DONE.load(Ordering::SeqCst) == 1,
        "rcu_barrier returned while a callback was still running"
    );
    Ok(())
});

// A CPU looping over vm_map_ram/vm_unmap_ram must let grace periods end while it loops. In
// Linux vm_unmap_ram() (like alloc_vmap_area, vfree, vmap, vunmap and the headless
// kvfree_rcu) begins with might_sleep(), which in the Debian 6.12 configuration we compare with
// (CONFIG_PREEMPT_VOLUNTARY) is a cond_resched(): the point where a non-preemptible kernel's
// CPU reports its quiescent state. Without it the loop held up every grace period until it
// ended, and the full-strength stress preset ran out of memory: another CPU's
// kvfree_rcu_1_arg_vmalloc_test queued a million one-page areas behind a grace period that
// could not end ("vmalloc error: size 8192, vm_struct allocation failed").
crate::ktest!(vm_map_ram_loop_lets_grace_periods_end, {
    use alloc::boxed::Box;
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicU64, AtomicUsize};
    use mm_types::gfp::GfpFlags;
    const LOOPING: usize = 1;
    const MEASURE: usize = 2;
    const OK: usize = 3;
    const STALLED: usize = 4;
    const NO_MAP: usize = 5;
    /// Loops allowed after the grace periods were requested (each is a few microseconds).
    const LIMIT: usize = 20_000;
    let me = crate::percpu_defs::smp_processor_id();
    let Some(other) = smp::online_cpus().find(|&c| c != me) else {
        return Ok(()); // one CPU: no grace period waits for another
    };
    let pfn = crate::mm::page_alloc::alloc_pages(GfpFlags::GFP_KERNEL, 0).ok_or("no page")?;
    let state = Arc::new(AtomicUsize::new(0));
    let before = Arc::new(AtomicU64::new(0));
    let (s, b) = (state.clone(), before.clone());
    smp::start_work(
        other,
        Box::new(move || {
            let mut after = 0;
            let result = loop {
                let v = crate::mm::vmalloc::vm_map_ram(&[pfn]);
                if v.is_null() {
                    break NO_MAP;
                }
                // SAFETY: `v` is what vm_map_ram of one page returned just above, unmapped once.
                unsafe { crate::mm::vmalloc::vm_unmap_ram(v, 1) };
                match s.load(Ordering::SeqCst) {
                    0 => {
                        s.store(LOOPING, Ordering::SeqCst);
                        smp::wake_waiters();
                    }
                    MEASURE => {
                        // Two grace periods ended: the second began after this loop did, so
                        // this CPU's quiescent state was part of it.
                        if completed() >= b.load(Ordering::SeqCst) + 2 {
                            break OK;
                        }
                        after += 1;
                        if after > LIMIT {
                            break STALLED;
                        }
                    }
                    _ => {}
                }
            };
            s.store(result, Ordering::SeqCst);
            smp::wake_waiters();
        }),
    );
    while state.load(Ordering::SeqCst) == 0 {
        smp::wait_for_event();
    }
    before.store(completed(), Ordering::SeqCst);
    state.store(MEASURE, Ordering::SeqCst);
    synchronize_rcu();
    synchronize_rcu();
    while state.load(Ordering::SeqCst) <= MEASURE {
        smp::quiescent_point();
        smp::wait_for_event();
    }
    crate::mm::page_alloc::__free_page(pfn);
    let r = state.load(Ordering::SeqCst);
    crate::kassert!(r != NO_MAP, "vm_map_ram failed");
    crate::kassert!(
        r == OK,
        "no grace period ended during {} vm_map_ram/vm_unmap_ram loops on cpu {}",
        LIMIT,
        other
    );
    Ok(())
});
