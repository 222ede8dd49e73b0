//! Per-CPU areas: static and dynamic per-CPU variables and the zone pcps, seen from every CPU.
use crate::arch;
use crate::define_per_cpu;
use crate::percpu_defs::*;
use core::sync::atomic::Ordering;

define_per_cpu! {
    static KTEST_VALUE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0x1111);
}
define_per_cpu! {
    static KTEST_CELL: core::cell::Cell<u64> = core::cell::Cell::new(0);
}

// Every CPU finds its own area through TPIDR_EL1: cpu_number, a static per-CPU variable written
// with this_cpu access and read back from another CPU, a dynamic percpu variable, and the
// zone pcps, which must sit inside their CPU's unit of the first chunk.
crate::ktest!(per_cpu_areas_hold_each_cpus_statics_dynamics_and_pcp_lists, {
    use crate::mm::percpu;
    use core::sync::atomic::AtomicUsize;
    let bad = AtomicUsize::new(0);
    let dynamic = percpu::alloc_percpu(8, 8);
    crate::kassert!(dynamic != 0);
    crate::smp::on_each_cpu(&|| {
        let cpu = crate::percpu_defs::smp_processor_id();
        let (lo, hi) = percpu::first_chunk_unit(cpu);
        let mine = KTEST_VALUE.this_cpu_ptr() as usize;
        let ok = arch::my_cpu_offset() == per_cpu_offset(cpu)
            && CPU_NUMBER.read() == cpu
            && mine == KTEST_VALUE.per_cpu_ptr(cpu) as usize
            && (lo..hi).contains(&mine)
            && percpu::this_cpu_ptr(dynamic) == percpu::per_cpu_ptr(dynamic, cpu);
        if !ok {
            bad.fetch_or(1 << cpu, Ordering::SeqCst);
        }
        KTEST_VALUE.this_cpu().store(1000 * cpu as u64 + 7, Ordering::Relaxed);
        // Non-Sync per-CPU contents: reachable only under the interrupt guard.
        let g = arch::IrqGuard::new();
        let c = KTEST_CELL.get_with(&g);
        c.set(c.get() + 3000 + cpu as u64);
        // SAFETY: `dynamic` is a live, 8-aligned 8-byte percpu allocation (freed at the end);
        // this CPU's copy is written only here, by this CPU, and read after on_each_cpu returns.
        unsafe { *(percpu::this_cpu_ptr(dynamic) as *mut u64) = 2000 + cpu as u64 };
    });
    crate::kassert!(
        bad.load(Ordering::SeqCst) == 0,
        "CPUs with a wrong per-CPU offset: mask {:#x}",
        bad.load(Ordering::SeqCst)
    );
    for cpu in crate::smp::online_cpus() {
        let v = KTEST_VALUE.on(cpu).load(Ordering::Relaxed);
        crate::kassert_eq!(v, 1000 * cpu as u64 + 7);
        // SAFETY: every CPU finished its on_each_cpu call; nobody touches the cells now.
        let c = unsafe { (*KTEST_CELL.per_cpu_ptr(cpu)).get() };
        crate::kassert!(
            c >= 3000 + cpu as u64 && (c - cpu as u64).is_multiple_of(3000),
            "cpu {} cell {}",
            cpu,
            c
        );
        // SAFETY: CPU `cpu`'s copy of the live `dynamic` allocation, written by that CPU inside
        // on_each_cpu, which has returned: no one writes it now.
        let d = unsafe { *(percpu::per_cpu_ptr(dynamic, cpu) as *const u64) };
        crate::kassert_eq!(d, 2000 + cpu as u64);
        let (lo, hi) = percpu::first_chunk_unit(cpu);
        let pa = crate::mm::page_alloc::allocator();
        for (z, zone) in pa.zones().iter().enumerate() {
            if zone.populated() {
                let a = pa.zone_pcp_slot_addr(z, cpu);
                crate::kassert!(
                    (lo..hi).contains(&a),
                    "cpu {} zone {} pcp at {:#x}, outside its unit [{:#x}, {:#x})",
                    cpu,
                    z,
                    a,
                    lo,
                    hi
                );
            }
        }
    }
    // The template itself was never written after the copy.
    // SAFETY: the template is an initialised static; only read here.
    crate::kassert_eq!(unsafe { (*KTEST_VALUE.template_ptr()).load(Ordering::Relaxed) }, 0x1111);
    percpu::free_percpu(dynamic);
    Ok(())
});
