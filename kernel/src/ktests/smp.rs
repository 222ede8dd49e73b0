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

// kmalloc's cpu slabs: objects allocated on this CPU and freed half here (the lock-free fast
// path into this CPU's freelist) and half on another CPU (remote frees into a slab frozen by
// this CPU), reused, freed again; then kmalloc_shrink flushes every CPU's cpu slab and every
// slab is empty again. A freelist object lost or handed out twice fails the pattern or the count.
crate::ktest!(kmalloc_cpu_slabs_survive_remote_frees_and_flush, {
    use crate::mm::kmalloc::{kfree, kmalloc, kmalloc_nr_slabs, kmalloc_shrink};
    use mm_types::gfp::GfpFlags;
    const N: usize = 600;
    const SIZE: usize = 64;
    kmalloc_shrink();
    let base = kmalloc_nr_slabs();
    let me = crate::percpu_defs::smp_processor_id();
    let other = online_cpus().find(|&c| c != me);
    for round in 0..3u64 {
        let mut objs = alloc::vec::Vec::with_capacity(N);
        for i in 0..N {
            let p = kmalloc(SIZE, GfpFlags::GFP_KERNEL) as *mut u64;
            crate::kassert!(!p.is_null(), "kmalloc failed");
            // SAFETY: a fresh 64-byte kmalloc object, ours alone.
            unsafe { p.write(round << 32 | i as u64) };
            objs.push(p as usize);
        }
        for (i, &p) in objs.iter().enumerate() {
            // SAFETY: written above; no two objects overlap unless the allocator is broken,
            // which this check would show.
            crate::kassert_eq!(unsafe { (p as *const u64).read() }, round << 32 | i as u64);
        }
        let (remote, local): (alloc::vec::Vec<_>, alloc::vec::Vec<_>) =
            objs.iter().enumerate().partition(|(i, _)| i % 2 == 0 && other.is_some());
        if let Some(cpu) = other {
            let remote: alloc::vec::Vec<usize> = remote.iter().map(|(_, &p)| p).collect();
            call_on_cpu(cpu, &|| {
                for &p in &remote {
                    // SAFETY: a live object of this size handed over by its owner, freed once.
                    unsafe { kfree(p as *mut u8, SIZE) };
                }
            });
        }
        for (_, &p) in local {
            // SAFETY: a live object of this size, freed once.
            unsafe { kfree(p as *mut u8, SIZE) };
        }
    }
    kmalloc_shrink();
    crate::kassert_eq!(kmalloc_nr_slabs(), base);
    Ok(())
});
