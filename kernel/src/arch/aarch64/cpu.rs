//! CPU registers, barriers, the generic timer and the IRQ-off guard.
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// This CPU's per-CPU offset (Linux arm64 `__my_cpu_offset`: TPIDR_EL1).
#[inline(always)]
pub fn my_cpu_offset() -> usize {
    let v: u64;
    // SAFETY: reading TPIDR_EL1 (EL1-owned, no side effects, touches no memory).
    unsafe { asm!("mrs {}, tpidr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v as usize
}

/// Linux `set_my_cpu_offset`: every CPU does this before its first per-CPU access.
///
/// # Safety
/// `off` must be this CPU's `__per_cpu_offset` (or 0 before the per-CPU areas exist).
#[inline]
pub unsafe fn set_my_cpu_offset(off: usize) {
    // SAFETY: the caller passes this CPU's offset (the contract above); the ISB makes the new value
    // visible to the per-CPU accesses that follow.
    unsafe {
        asm!("msr tpidr_el1, {}", "isb", in(reg) off as u64, options(nostack, preserves_flags))
    };
}

/// MPIDR_EL1 affinity bits (Aff3..Aff0), as device trees write CPU `reg` values.
#[inline]
pub fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v & 0xff_00ff_ffff
}

#[inline]
pub fn current_el() -> u64 {
    let v: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) v, options(nomem, nostack, preserves_flags)) };
    (v >> 2) & 3
}

static TIMER_HZ: AtomicU64 = AtomicU64::new(0);

/// CNTFRQ_EL0, read once: 62.5 MHz on QEMU cortex-a72, 1 GHz with -cpu max, 54 MHz on a Pi 4.
pub fn timer_hz() -> u64 {
    let mut hz = TIMER_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        // SAFETY: reading the counter frequency register has no side effects.
        unsafe {
            asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack, preserves_flags))
        };
        hz &= 0xffff_ffff;
        TIMER_HZ.store(hz, Ordering::Relaxed);
    }
    hz
}

/// Override the frequency when the device tree's timer node names one (firmware bugs).
pub fn set_timer_hz(hz: u64) {
    TIMER_HZ.store(hz, Ordering::Relaxed);
}

/// CNTVCT_EL0 (Linux's get_cycles() on arm64), ordered after earlier instructions.
#[inline(always)]
pub fn cycles() -> u64 {
    let v: u64;
    // SAFETY: an ISB and a read of the virtual counter: no side effects.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Microseconds between two counter values (Linux's ktime_us_delta for our purpose).
pub fn cycles_to_us(delta: u64) -> u64 {
    ((delta as u128 * 1_000_000) / timer_hz().max(1) as u128) as u64
}

#[inline(always)]
pub fn wfe_raw() {
    // SAFETY: WFE only waits for an event or an interrupt; at worst it returns at once.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
}
#[inline(always)]
pub fn dsb_ishst() {
    // SAFETY: a barrier changes no memory contents or registers.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}
#[inline(always)]
pub fn dsb_ish() {
    // SAFETY: a barrier changes no memory contents or registers.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
}
#[inline(always)]
pub fn dsb_sy() {
    // SAFETY: a barrier changes no memory contents or registers.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}
#[inline(always)]
pub fn isb() {
    // SAFETY: a barrier changes no memory contents or registers.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Clean and invalidate the data cache line holding `va` to the point of coherency: for data
/// that a CPU with its MMU (and so its caches) off will read, such as a spin-table slot.
#[inline]
pub fn dcache_clean_inval_poc(va: u64, len: u64) {
    let mut a = va & !63;
    while a < va + len {
        // SAFETY: DC CIVAC writes a line back and invalidates it, leaving memory contents as they
        // are; callers pass data they own and that is mapped.
        unsafe { asm!("dc civac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += 64;
    }
    dsb_sy();
}

/// Linux `arch_local_irq_save`: masks IRQs, returns the previous DAIF (a compiler barrier).
#[inline(always)]
pub fn local_irq_save() -> usize {
    let daif: u64;
    // SAFETY: masks IRQs on this CPU; no memory changes (not nomem: a compiler barrier).
    unsafe {
        asm!("mrs {}, daif", "msr daifset, #2", out(reg) daif, options(nostack, preserves_flags))
    };
    daif as usize
}

/// Linux `arch_local_irq_restore`.
#[inline(always)]
pub fn local_irq_restore(flags: usize) {
    // SAFETY: writes back a DAIF value read by local_irq_save; a compiler barrier.
    unsafe { asm!("msr daif, {}", in(reg) flags as u64, options(nostack, preserves_flags)) };
}

/// Linux `local_irq_enable`: unmask IRQs on this CPU (pending ones are taken at once).
#[inline(always)]
pub fn local_irq_enable() {
    // SAFETY: unmasks IRQs; the vectors handle them. A compiler barrier.
    unsafe { asm!("msr daifclr, #2", options(nostack, preserves_flags)) };
}

/// Whether IRQs are masked on this CPU (Linux `irqs_disabled`).
#[inline(always)]
pub fn irqs_disabled() -> bool {
    let daif: u64;
    // SAFETY: reading DAIF has no side effects.
    unsafe { asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    daif & (1 << 7) != 0
}

/// WFI: sleep until an interrupt is pending (taken or not: with IRQs masked a pending
/// interrupt still ends it).
#[inline(always)]
pub fn wfi() {
    // SAFETY: WFI only waits; it changes no memory.
    unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
}

/// SEV: set the event register of every CPU (wakes WFE waiters).
#[inline(always)]
pub fn sev_raw() {
    // SAFETY: SEV only signals an event to the other CPUs.
    unsafe { asm!("sev", options(nomem, nostack, preserves_flags)) };
}

/// Masks IRQs (DAIF.I) for its lifetime and restores the previous state: the guard around
/// per-CPU data such as the pcp lists (Linux: local_irq_save / local_irq_restore).
///
/// Both ends are compiler barriers (the asm may touch memory, as Linux's arch_local_irq_save
/// has a "memory" clobber), so no access to per-CPU data moves out of the guarded section. Not
/// Send: a guard belongs to the CPU that masked its interrupts.
pub struct IrqGuard {
    daif: u64,
    _not_send: core::marker::PhantomData<*mut ()>,
}

impl IrqGuard {
    #[inline(always)]
    pub fn new() -> Self {
        let daif: u64;
        // SAFETY: masks IRQs on this CPU and keeps the previous DAIF for Drop; no memory changes
        // (the asm is not nomem, so it is a compiler barrier).
        unsafe {
            asm!("mrs {}, daif", "msr daifset, #2", out(reg) daif, options(nostack, preserves_flags));
        }
        IrqGuard { daif, _not_send: core::marker::PhantomData }
    }
}

impl Default for IrqGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for IrqGuard {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: restores the DAIF value read in new(); no memory is touched (a compiler barrier).
        unsafe { asm!("msr daif, {}", in(reg) self.daif, options(nostack, preserves_flags)) };
    }
}
