//! The per-CPU tick from the arm generic timer's EL1 virtual timer (CNTV_*: Linux's
//! arch_timer with the virtual counter, its default at EL1). Each CPU programs its own
//! comparator; deadlines are absolute counter values on multiples of the tick period, so every
//! CPU ticks at the same instants (Linux: tick_setup_periodic aligns on tick_next_period).
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Counter ticks per kernel tick (timer_hz / HZ); 0 until `set_period`.
static PERIOD: AtomicU64 = AtomicU64::new(0);

/// Sets the tick period from HZ (boot CPU, before any CPU starts its tick).
pub fn set_period(hz: u64) {
    PERIOD.store((super::timer_hz() / hz.max(1)).max(1), Ordering::Release);
}

pub fn period() -> u64 {
    PERIOD.load(Ordering::Relaxed)
}

/// Arms this CPU's virtual timer for the next period boundary after now (CNTV_CVAL_EL0,
/// CNTV_CTL_EL0.ENABLE, IMASK clear). Called by the tick handler and when a stopped tick
/// restarts.
#[inline]
pub fn program_next_tick() {
    let p = period();
    if p == 0 {
        return;
    }
    let next = (super::cycles() / p + 1) * p;
    // SAFETY: writes this CPU's own virtual-timer comparator and control (EL1 access to the
    // EL0 virtual timer registers is always allowed); no memory is touched.
    unsafe {
        asm!(
            "msr cntv_cval_el0, {}",
            "msr cntv_ctl_el0, {}",
            "isb",
            in(reg) next,
            in(reg) 1u64,
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// Stops this CPU's tick (NOHZ idle): the timer is disabled, its interrupt line drops.
#[inline]
pub fn stop_tick() {
    // SAFETY: disables this CPU's virtual timer; no memory is touched.
    unsafe { asm!("msr cntv_ctl_el0, xzr", "isb", options(nomem, nostack, preserves_flags)) };
}
