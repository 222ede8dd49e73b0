//! IRQ handling: the IRQ vector's entry (`handle_irq`, from exception.rs) acknowledges
//! interrupts at the GIC until none is pending and calls the handler registered for each
//! (Linux: handle_arch_irq -> gic_handle_irq -> generic_handle_domain_irq). Only per-CPU
//! interrupts exist here (SGIs 0-15 for IPIs, PPIs 16-31 such as the timer), so the registry
//! is a table of 32 function pointers set at boot (Linux: request_percpu_irq).
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::gic;

/// Number of per-CPU interrupts (SGIs and PPIs).
pub const NR_PERCPU_IRQS: usize = 32;

static HANDLERS: [AtomicUsize; NR_PERCPU_IRQS] = [const { AtomicUsize::new(0) }; NR_PERCPU_IRQS];
/// Interrupts acknowledged with no handler (Linux: the "spurious"/bad IRQ count).
static UNHANDLED: AtomicU64 = AtomicU64::new(0);

crate::define_per_cpu! {
    /// IRQs taken on this CPU, and the nesting depth (Linux: kstat_irqs, in_irq()).
    static IRQ_COUNT: AtomicU64 = AtomicU64::new(0);
}
crate::define_per_cpu! {
    static IN_IRQ: AtomicUsize = AtomicUsize::new(0);
}

/// Registers `handler` for per-CPU interrupt `intid` (< 32). Every CPU enables the line in
/// its own GIC interface (gic::cpu_init's mask). Fails when the INTID is out of range or taken.
pub fn request_percpu_irq(intid: u32, handler: fn(u32)) -> Result<(), &'static str> {
    let slot = HANDLERS.get(intid as usize).ok_or("INTID is not a per-CPU interrupt")?;
    slot.compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Acquire)
        .map(|_| ())
        .map_err(|_| "INTID already has a handler")
}

/// Mask of the per-CPU INTIDs with a handler (what each CPU enables).
pub fn enabled_mask() -> u32 {
    (0..NR_PERCPU_IRQS)
        .filter(|&i| HANDLERS[i].load(Ordering::Acquire) != 0)
        .fold(0, |m, i| m | (1 << i))
}

/// Whether this CPU is running an interrupt handler (Linux `in_hardirq()`).
#[inline]
pub fn in_irq() -> bool {
    IN_IRQ.this_cpu().load(Ordering::Relaxed) != 0
}

/// IRQs taken by `cpu` since boot.
pub fn irq_count(cpu: usize) -> u64 {
    IRQ_COUNT.on(cpu).load(Ordering::Relaxed)
}

pub fn unhandled() -> u64 {
    UNHANDLED.load(Ordering::Relaxed)
}

/// The IRQ exception's body (interrupts masked, as on entry). Acknowledges and handles until
/// the GIC reports nothing pending (INTID 1020-1023).
pub fn handle_irq() {
    IN_IRQ.this_cpu().fetch_add(1, Ordering::Relaxed);
    loop {
        let (intid, raw) = gic::ack();
        if intid >= 1020 {
            break;
        }
        IRQ_COUNT.this_cpu().fetch_add(1, Ordering::Relaxed);
        let h = HANDLERS.get(intid as usize).map_or(0, |h| h.load(Ordering::Acquire));
        if h != 0 {
            // SAFETY: a non-zero slot holds a `fn(u32)` stored by request_percpu_irq.
            let f: fn(u32) = unsafe { core::mem::transmute::<usize, fn(u32)>(h) };
            f(intid);
        } else {
            UNHANDLED.fetch_add(1, Ordering::Relaxed);
        }
        gic::eoi(raw);
    }
    IN_IRQ.this_cpu().fetch_sub(1, Ordering::Relaxed);
}
