//! Waiting and waking between CPUs.
//!
//! With a GIC, a waiting CPU sleeps in WFI with interrupts masked (a pending interrupt ends
//! WFI, and is taken when the wait unmasks them); a wake-up is an SGI (`IPI_WAKEUP`, Linux's
//! IPI_RESCHEDULE) whose handler sets this CPU's `WAKE_EVENT`, the software copy of WFE's event
//! register: a kick that lands after the waiter checked its condition but before it slept is
//! remembered, so the next wait returns at once and the caller looks again.
//!
//! Two kinds of sleepers: a CPU in its idle loop (`idle_sleep`) waits only for work addressed
//! to it, so only targeted kicks (`kick_cpu`) wake it; a CPU in a wait loop (`wait`: a barrier,
//! a cross-CPU call, a grace period) waits for a change anyone may make, so `sev` kicks every
//! online CPU that is not in its idle loop. Idle CPUs are therefore not woken by events that
//! do not concern them (Linux wakes waiters through wait queues; idle CPUs only by IPIs).
//!
//! Without a usable GIC (no interrupts at all) both fall back to WFE/SEV, which QEMU TCG runs
//! as a busy yield.
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{gic, irq, timer};

/// SGI used to wake a CPU (Linux arm64 IPI_RESCHEDULE is 0 too).
pub const IPI_WAKEUP: u32 = 0;

/// CPUs online / sleeping in their idle loop (bit n = logical CPU n).
static ONLINE_MASK: AtomicU64 = AtomicU64::new(0);
static IDLE_MASK: AtomicU64 = AtomicU64::new(0);
/// Idle CPUs stop their tick (Linux CONFIG_NO_HZ_IDLE, boot parameter `nohz`).
static NOHZ: AtomicBool = AtomicBool::new(true);

crate::define_per_cpu! {
    /// A wake-up kick arrived since this CPU last waited.
    static WAKE_EVENT: AtomicBool = AtomicBool::new(false);
}

fn ipi_wakeup(_intid: u32) {
    WAKE_EVENT.this_cpu().store(true, Ordering::Relaxed);
}

/// Registers the wake-up IPI's handler (before the GIC enables per-CPU interrupts).
pub fn init() {
    let _ = irq::request_percpu_irq(IPI_WAKEUP, ipi_wakeup);
}

pub fn set_nohz(on: bool) {
    NOHZ.store(on, Ordering::Relaxed);
}

pub fn nohz() -> bool {
    NOHZ.load(Ordering::Relaxed)
}

/// Marks `cpu` online for `sev` (before it first waits).
pub fn mark_online(cpu: usize) {
    ONLINE_MASK.fetch_or(1 << cpu, Ordering::AcqRel);
}

/// The online CPUs (bit n = logical CPU n).
pub fn online_mask() -> u64 {
    ONLINE_MASK.load(Ordering::Acquire)
}

/// The CPUs sleeping in their idle loop, read with a full RMW so that a CPU seen idle here
/// orders its later accesses after everything this CPU did before (RCU's extended quiescent
/// state: Linux reads the dynticks counter with a fully ordered atomic).
pub fn idle_mask_sync() -> u64 {
    IDLE_MASK.fetch_or(0, Ordering::SeqCst)
}

/// Wakes every online CPU that is waiting outside its idle loop (and WFE waiters).
pub fn sev(me: usize) {
    super::sev_raw();
    if !gic::present() {
        return;
    }
    let others = ONLINE_MASK.load(Ordering::Relaxed) & !(1 << me);
    let targets = others & !IDLE_MASK.load(Ordering::SeqCst);
    if targets == others && others != 0 {
        gic::send_ipi_others(IPI_WAKEUP);
    } else if targets != 0 {
        gic::send_ipi_mask(IPI_WAKEUP, targets);
    }
}

/// Wakes `cpu` whatever it is doing (Linux smp_send_reschedule).
pub fn kick_cpu(cpu: usize) {
    if gic::present() {
        gic::send_ipi_mask(IPI_WAKEUP, 1 << cpu);
    } else {
        super::dsb_ishst();
        super::sev_raw();
    }
}

/// Sleeps until a kick or any interrupt, unless `pending()` or a kick already arrived.
/// Spurious returns are allowed: callers loop on their condition.
#[inline]
pub fn wait(pending: impl Fn() -> bool) {
    if !gic::present() {
        if !pending() {
            super::wfe_raw();
        }
        return;
    }
    let flags = super::local_irq_save();
    if !pending() && !WAKE_EVENT.this_cpu().swap(false, Ordering::Relaxed) {
        super::wfi();
    }
    super::local_irq_restore(flags);
}

/// The idle loop's sleep for CPU `me`: marks it idle (so `sev` leaves it alone and RCU counts
/// it quiescent), stops its tick if `nohz`, and sleeps until an interrupt unless `pending()`.
pub fn idle_sleep(me: usize, pending: impl Fn() -> bool) {
    if !gic::present() {
        if !pending() {
            super::wfe_raw();
        }
        return;
    }
    let flags = super::local_irq_save();
    let bit = 1u64 << me;
    IDLE_MASK.fetch_or(bit, Ordering::SeqCst);
    if !pending() && !WAKE_EVENT.this_cpu().swap(false, Ordering::Relaxed) {
        let nohz = nohz();
        if nohz {
            timer::stop_tick();
        }
        super::wfi();
        if nohz {
            timer::program_next_tick();
        }
    }
    IDLE_MASK.fetch_and(!bit, Ordering::SeqCst);
    super::local_irq_restore(flags);
}
