//! The interrupt controller: GICv2 or GICv3, chosen from the device tree's interrupt-controller
//! `compatible` (Linux: IRQCHIP_DECLARE matches), behind one small interface: per-CPU setup,
//! acknowledge/end of interrupt, and SGIs to a set of CPUs (IPIs).
//!
//! Before the kernel takes an interrupt, the boot CPU checks that an SGI to itself arrives and
//! can be acknowledged (a GIC left configured for the secure world only would never deliver);
//! without a usable GIC the kernel runs without interrupts: no tick, and idle CPUs wait in WFE.
use core::sync::atomic::{AtomicU8, Ordering};

use bootcfg::dt::Gic;

pub mod v2;
pub mod v3;

/// 0: none (or unusable), 2: GICv2, 3: GICv3.
static VERSION: AtomicU8 = AtomicU8::new(0);

#[inline(always)]
fn version() -> u8 {
    VERSION.load(Ordering::Relaxed)
}

/// Whether interrupts work (a GIC passed the self-test).
#[inline(always)]
pub fn present() -> bool {
    version() != 0
}

/// "GICv2" / "GICv3" / "none", for the banner.
pub fn name() -> &'static str {
    match version() {
        2 => "GICv2",
        3 => "GICv3",
        _ => "none",
    }
}

/// Boot CPU: maps and enables the distributor (and finds the GICv3 redistributors), sets up
/// this CPU's interface with `ppis` enabled and self-tests SGI delivery. Interrupts stay
/// masked at the CPU. On failure, says why; the kernel then runs without interrupts.
pub fn init(
    gic: &Gic,
    cpu: usize,
    ppis: u32,
    ioremap: &dyn Fn(u64, u64) -> Option<u64>,
) -> Result<(), &'static str> {
    match gic {
        Gic::V2 { gicd, gicc } => {
            let d = ioremap(*gicd, 0x1000).ok_or("early page-table pool exhausted")?;
            let c = ioremap(*gicc, 0x2000).ok_or("early page-table pool exhausted")?;
            v2::init(d, c);
            VERSION.store(2, Ordering::Release);
        }
        Gic::V3 { gicd, redist_regions, redist_stride } => {
            let d = ioremap(*gicd, 0x1_0000).ok_or("early page-table pool exhausted")?;
            v3::init(d, redist_regions, *redist_stride, ioremap)?;
            VERSION.store(3, Ordering::Release);
        }
    }
    let ok = cpu_init(cpu, ppis) && selftest(cpu);
    if !ok {
        VERSION.store(0, Ordering::Release);
        return Err(
            "an SGI sent to this CPU never arrived (GIC not set up for the non-secure world?)",
        );
    }
    Ok(())
}

/// This CPU's interface (every CPU, before it unmasks interrupts): every SGI and the PPIs in
/// `ppis` enabled. False when it cannot be set up.
pub fn cpu_init(cpu: usize, ppis: u32) -> bool {
    match version() {
        2 => v2::cpu_init(cpu, ppis),
        3 => v3::cpu_init(cpu, super::mpidr(), ppis),
        _ => false,
    }
}

/// The SGI of the boot CPU's self-test.
const SGI_TEST: u32 = 15;

/// With interrupts masked: SGI_TEST to this CPU, acknowledged by polling.
fn selftest(cpu: usize) -> bool {
    send_ipi_mask(SGI_TEST, 1 << cpu);
    for _ in 0..100_000 {
        let (id, raw) = ack();
        if id < 1020 {
            eoi(raw);
            if id == SGI_TEST {
                return true;
            }
        }
    }
    false
}

/// Acknowledges the highest-priority pending interrupt: (INTID, value for `eoi`). INTID
/// 1020-1023: nothing pending.
#[inline]
pub fn ack() -> (u32, u32) {
    match version() {
        2 => v2::ack(),
        3 => v3::ack(),
        _ => (1023, 1023),
    }
}

#[inline]
pub fn eoi(raw: u32) {
    match version() {
        2 => v2::eoi(raw),
        3 => v3::eoi(raw),
        _ => {}
    }
}

/// SGI `ipi` to the logical CPUs in `mask` (bit n = CPU n).
#[inline]
pub fn send_ipi_mask(ipi: u32, mask: u64) {
    super::dsb_ishst();
    match version() {
        2 => v2::send_sgi_mask(ipi, mask),
        3 => v3::send_sgi_mask(ipi, mask),
        _ => {}
    }
}

/// SGI `ipi` to every CPU but this one.
#[inline]
pub fn send_ipi_others(ipi: u32) {
    super::dsb_ishst();
    match version() {
        2 => v2::send_sgi_others(ipi),
        3 => v3::send_sgi_others(ipi),
        _ => {}
    }
}
