//! GICv2 (QEMU virt's default GIC, the Pi 4's GIC-400): memory-mapped distributor and CPU
//! interface (Linux drivers/irqchip/irq-gic.c). Only what a tick and IPIs need: SGIs and PPIs,
//! all group 1 (non-secure) as the firmware left them, priority 0xa0 under a 0xf0 mask.
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use mm_types::NR_CPUS;

const GICD_CTLR: u64 = 0x000;
const GICD_ISENABLER0: u64 = 0x100;
const GICD_ICENABLER0: u64 = 0x180;
const GICD_IPRIORITYR: u64 = 0x400;
const GICD_ITARGETSR: u64 = 0x800;
const GICD_SGIR: u64 = 0xf00;
const GICC_CTLR: u64 = 0x000;
const GICC_PMR: u64 = 0x004;
const GICC_IAR: u64 = 0x00c;
const GICC_EOIR: u64 = 0x010;

static GICD: AtomicU64 = AtomicU64::new(0);
static GICC: AtomicU64 = AtomicU64::new(0);
/// Linux gic_cpu_map: the CPU-interface bit of each logical CPU (GICD_ITARGETSR0 read back by
/// the CPU itself: the GIC's numbering need not match ours).
static CPU_MAP: [AtomicU8; NR_CPUS] = [const { AtomicU8::new(0) }; NR_CPUS];

fn rd(base: u64, off: u64) -> u32 {
    // SAFETY: base is a GIC block mapped as device memory by init (GICD or GICC from early_ioremap)
    // and off a register offset inside it.
    unsafe { read_volatile((base + off) as *const u32) }
}
fn wr(base: u64, off: u64, v: u32) {
    // SAFETY: as in rd: a register of a mapped GIC block.
    unsafe { write_volatile((base + off) as *mut u32, v) }
}

/// Records the mapped distributor and CPU interface and enables the distributor (boot CPU).
pub fn init(gicd_va: u64, gicc_va: u64) {
    GICD.store(gicd_va, Ordering::Release);
    GICC.store(gicc_va, Ordering::Release);
    wr(gicd_va, GICD_CTLR, rd(gicd_va, GICD_CTLR) | 1);
}

/// This CPU's interface: SGIs and PPIs masked but `ppis`, priorities, mask, enable (Linux
/// gic_cpu_init + gic_cpu_if_up). Returns false when the distributor is not set up.
pub fn cpu_init(cpu: usize, ppis: u32) -> bool {
    let (d, c) = (GICD.load(Ordering::Acquire), GICC.load(Ordering::Acquire));
    if d == 0 || c == 0 {
        return false;
    }
    // ITARGETSR0..7 are banked: any byte reads back this CPU's own interface bit. A
    // uniprocessor GIC has them RAZ/WI (GICv2 spec 4.3.12): its one interface is bit 0.
    let mask = rd(d, GICD_ITARGETSR) as u8;
    CPU_MAP[cpu].store(if mask == 0 { 1 } else { mask }, Ordering::Release);
    // All 16 SGIs on (they are IPIs; an unregistered one is counted as unhandled).
    let ppis = ppis | 0xffff;
    wr(d, GICD_ICENABLER0, !ppis);
    for i in 0..8 {
        wr(d, GICD_IPRIORITYR + 4 * i, 0xa0a0_a0a0);
    }
    wr(d, GICD_ISENABLER0, ppis);
    wr(c, GICC_PMR, 0xf0);
    wr(c, GICC_CTLR, rd(c, GICC_CTLR) | 1);
    true
}

/// Acknowledges the highest-priority pending interrupt: (INTID, the raw IAR for EOI).
#[inline]
pub fn ack() -> (u32, u32) {
    let iar = rd(GICC.load(Ordering::Relaxed), GICC_IAR);
    (iar & 0x3ff, iar)
}

#[inline]
pub fn eoi(iar: u32) {
    wr(GICC.load(Ordering::Relaxed), GICC_EOIR, iar);
}

/// SGI `sgi` to the logical CPUs in `mask` (at most 8 exist with a GICv2).
pub fn send_sgi_mask(sgi: u32, mask: u64) {
    let targets = (0..NR_CPUS.min(64))
        .filter(|&c| mask & (1 << c) != 0)
        .fold(0u32, |t, c| t | CPU_MAP[c].load(Ordering::Relaxed) as u32);
    if targets != 0 {
        wr(GICD.load(Ordering::Relaxed), GICD_SGIR, (targets << 16) | sgi);
    }
}

/// SGI `sgi` to every CPU but this one (TargetListFilter 0b01).
pub fn send_sgi_others(sgi: u32) {
    wr(GICD.load(Ordering::Relaxed), GICD_SGIR, (0b01 << 24) | sgi);
}
