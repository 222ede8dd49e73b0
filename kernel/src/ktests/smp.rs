//! SMP: cross-CPU calls, work items and barriers on every online CPU.
use crate::smp::*;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use mm_types::NR_CPUS;

crate::ktest!(call_on_every_cpu_runs_there, {
    let seen: [AtomicBool; NR_CPUS] = [const { AtomicBool::new(false) }; NR_CPUS];
    on_each_cpu(&|| seen[crate::percpu_defs::smp_processor_id()].store(true, Ordering::SeqCst));
    for (cpu, s) in seen.iter().enumerate() {
        crate::kassert_eq!(s.load(Ordering::SeqCst), cpu_online(cpu));
    }
    Ok(())
});

crate::ktest!(barrier_and_work_on_all_cpus, {
    use alloc::sync::Arc;
    let n = num_online_cpus();
    let barrier = Arc::new(Barrier::new(n));
    let phase = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    for cpu in online_cpus().filter(|&c| c != crate::percpu_defs::smp_processor_id()) {
        let (b, p, d) = (barrier.clone(), phase.clone(), done.clone());
        start_work(
            cpu,
            Box::new(move || {
                for _ in 0..10 {
                    p.fetch_add(1, Ordering::SeqCst);
                    b.wait();
                    b.wait();
                }
                d.fetch_add(1, Ordering::SeqCst);
                crate::smp::wake_waiters();
            }),
        );
    }
    for round in 1..=10 {
        phase.fetch_add(1, Ordering::SeqCst);
        barrier.wait();
        // Everyone incremented exactly once in this round before anyone passed the barrier.
        crate::kassert_eq!(phase.load(Ordering::SeqCst), round * n);
        barrier.wait();
    }
    while done.load(Ordering::SeqCst) != n - 1 {
        quiescent_point();
        wait_for_event();
    }
    Ok(())
});
