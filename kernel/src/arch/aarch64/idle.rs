//! Waiting for and signalling events between CPUs: WFI with a GIC SGI as the wake-up where a
//! GIC is available (QEMU TCG runs WFE as a busy yield), WFE/SEV otherwise.
use core::arch::asm;

/// Waits for an event: WFI woken by a GIC kick where available (QEMU TCG's WFE is a busy
/// yield), else WFE.
#[inline(always)]
pub fn wfe() {
    super::gic::wait();
}
/// Signals waiting CPUs: SEV for WFE waiters, plus an SGI kick for WFI waiters.
#[inline(always)]
pub fn sev() {
    // SAFETY: SEV only signals an event to the other CPUs.
    unsafe { asm!("sev", options(nomem, nostack, preserves_flags)) };
    super::gic::kick_others();
}
