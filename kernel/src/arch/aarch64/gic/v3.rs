//! GICv3 (QEMU virt with `gic-version=3`/`max`, arm64 servers): distributor with affinity
//! routing, one redistributor per CPU (found by walking the DT's redistributor regions and
//! matching GICR_TYPER's affinity with MPIDR, as Linux's gic_populate_rdist), and the CPU
//! interface through the ICC_* system registers: acknowledge with ICC_IAR1_EL1, end with
//! ICC_EOIR1_EL1, SGIs with ICC_SGI1R_EL1 (Linux drivers/irqchip/irq-gic-v3.c).
use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering};

use mm_types::NR_CPUS;

const GICD_CTLR: u64 = 0x0000;
const GICD_CTLR_RWP: u32 = 1 << 31;
/// ARE_NS | EnableGrp1A | EnableGrp1 (Linux gic_dist_init, non-secure view).
const GICD_CTLR_ENABLE: u32 = (1 << 4) | (1 << 1) | 1;
const GICR_TYPER: u64 = 0x0008;
const GICR_WAKER: u64 = 0x0014;
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// SGI_base frame (second 64 KiB of a redistributor).
const SGI_BASE: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = 0x0080;
const GICR_ISENABLER0: u64 = 0x0100;
const GICR_ICENABLER0: u64 = 0x0180;
const GICR_IPRIORITYR: u64 = 0x0400;

static GICD: AtomicU64 = AtomicU64::new(0);

/// A redistributor frame the boot CPU found: its affinity (GICR_TYPER[63:32]) and the mapped
/// RD_base and SGI_base pages.
struct Rdist {
    aff: AtomicU64,
    rd: AtomicU64,
    sgi: AtomicU64,
}
/// Frames found (at most NR_CPUS are kept: more redistributors than CPUs we can run is fine).
static RDISTS: [Rdist; NR_CPUS] = [const {
    Rdist { aff: AtomicU64::new(u64::MAX), rd: AtomicU64::new(0), sgi: AtomicU64::new(0) }
}; NR_CPUS];
/// Each logical CPU's MPIDR affinity, for SGI targeting (written by the CPU itself).
static CPU_AFF: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(u64::MAX) }; NR_CPUS];

fn rd32(va: u64) -> u32 {
    // SAFETY: va is a GIC register inside a block mapped as device memory (early_ioremap in init).
    unsafe { read_volatile(va as *const u32) }
}
fn wr32(va: u64, v: u32) {
    // SAFETY: as rd32.
    unsafe { write_volatile(va as *mut u32, v) }
}
fn rd64(va: u64) -> u64 {
    // SAFETY: as rd32 (GICR_TYPER is a 64-bit register, 8-byte aligned).
    unsafe { read_volatile(va as *const u64) }
}

fn wait_rwp(gicd: u64) {
    while rd32(gicd + GICD_CTLR) & GICD_CTLR_RWP != 0 {
        core::hint::spin_loop();
    }
}

/// MPIDR affinity in GICR_TYPER's packing: Aff3.Aff2.Aff1.Aff0.
fn packed_aff(mpidr: u64) -> u64 {
    ((mpidr >> 8) & 0xff00_0000) | (mpidr & 0xff_ffff)
}

/// Records the distributor, turns on affinity routing and group 1, and maps every
/// redistributor frame of `regions` (page 0 of RD_base and of SGI_base), walking each region
/// with `stride` or by GICR_TYPER (VLPIS: 256 KiB frames, else 128 KiB) up to its Last bit.
/// Returns the number of redistributors found, or an error.
pub fn init(
    gicd_va: u64,
    regions: &[(u64, u64)],
    stride: Option<u64>,
    ioremap: &dyn Fn(u64, u64) -> Option<u64>,
) -> Result<usize, &'static str> {
    GICD.store(gicd_va, Ordering::Release);
    wr32(gicd_va + GICD_CTLR, 0);
    wait_rwp(gicd_va);
    wr32(gicd_va + GICD_CTLR, GICD_CTLR_ENABLE);
    wait_rwp(gicd_va);
    let mut n = 0;
    for &(base, size) in regions {
        let mut off = 0;
        while off < size && n < NR_CPUS {
            let rd = ioremap(base + off, 0x1000).ok_or("early page-table pool exhausted")?;
            let sgi =
                ioremap(base + off + SGI_BASE, 0x1000).ok_or("early page-table pool exhausted")?;
            let typer = rd64(rd + GICR_TYPER);
            RDISTS[n].rd.store(rd, Ordering::Relaxed);
            RDISTS[n].sgi.store(sgi, Ordering::Relaxed);
            RDISTS[n].aff.store(typer >> 32, Ordering::Release);
            n += 1;
            if typer & (1 << 4) != 0 {
                break; // Last
            }
            off += stride.unwrap_or(if typer & (1 << 1) != 0 { 0x4_0000 } else { 0x2_0000 });
        }
    }
    if n == 0 {
        return Err("no redistributor found");
    }
    Ok(n)
}

/// This CPU's redistributor (woken, SGIs and PPIs group 1, priorities, only `ppis` enabled) and
/// CPU interface (system registers on, priority mask, group 1 on). False when no redistributor
/// matches this CPU's MPIDR.
pub fn cpu_init(cpu: usize, mpidr: u64, ppis: u32) -> bool {
    let aff = packed_aff(mpidr);
    let Some(r) = RDISTS.iter().find(|r| r.aff.load(Ordering::Acquire) == aff) else {
        return false;
    };
    let (rd, sgi) = (r.rd.load(Ordering::Relaxed), r.sgi.load(Ordering::Relaxed));
    CPU_AFF[cpu].store(mpidr, Ordering::Release);
    // Linux gic_enable_redist(true).
    wr32(rd + GICR_WAKER, rd32(rd + GICR_WAKER) & !GICR_WAKER_PROCESSOR_SLEEP);
    while rd32(rd + GICR_WAKER) & GICR_WAKER_CHILDREN_ASLEEP != 0 {
        core::hint::spin_loop();
    }
    // All 16 SGIs on (they are IPIs; an unregistered one is counted as unhandled).
    let ppis = ppis | 0xffff;
    wr32(sgi + GICR_ICENABLER0, !ppis);
    wr32(sgi + GICR_IGROUPR0, !0);
    for i in 0..8 {
        wr32(sgi + GICR_IPRIORITYR + 4 * i, 0xa0a0_a0a0);
    }
    wr32(sgi + GICR_ISENABLER0, ppis);
    // SAFETY: ICC_SRE_EL1.SRE turns on the system-register interface (EL2, if any, allowed it:
    // head.S sets ICC_SRE_EL2.Enable); PMR/BPR/CTLR/IGRPEN1 are this CPU's own interface
    // state. No memory is touched.
    unsafe {
        let mut sre: u64;
        asm!("mrs {}, icc_sre_el1", out(reg) sre, options(nomem, nostack, preserves_flags));
        sre |= 1;
        asm!("msr icc_sre_el1, {}", "isb", in(reg) sre, options(nomem, nostack, preserves_flags));
        asm!("mrs {}, icc_sre_el1", out(reg) sre, options(nomem, nostack, preserves_flags));
        if sre & 1 == 0 {
            return false;
        }
        asm!(
            "msr icc_pmr_el1, {pmr}",
            "msr icc_bpr1_el1, xzr",
            "msr icc_ctlr_el1, xzr",
            "msr icc_igrpen1_el1, {one}",
            "isb",
            pmr = in(reg) 0xf0u64,
            one = in(reg) 1u64,
            options(nomem, nostack, preserves_flags)
        );
    }
    true
}

/// Acknowledges the highest-priority pending group-1 interrupt: (INTID, INTID for EOI).
#[inline]
pub fn ack() -> (u32, u32) {
    let iar: u64;
    // SAFETY: reading ICC_IAR1_EL1 acknowledges an interrupt of this CPU; no memory access.
    unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) iar, options(nomem, nostack, preserves_flags)) };
    // The acknowledge must be complete before the handler's side effects (Linux: dsb sy in
    // gic_read_iar for Cavium; an isb elsewhere is enough for ordering with later sysregs).
    let id = (iar & 0xff_ffff) as u32;
    (id, id)
}

#[inline]
pub fn eoi(id: u32) {
    // SAFETY: writing ICC_EOIR1_EL1 ends the interrupt this CPU acknowledged (EOImode 0: also
    // deactivates it); no memory access.
    unsafe {
        asm!("msr icc_eoir1_el1, {}", "isb", in(reg) id as u64, options(nomem, nostack, preserves_flags))
    };
}

fn sgi1r(v: u64) {
    // SAFETY: writing ICC_SGI1R_EL1 sends an SGI; no memory access. The dsb makes this CPU's
    // earlier stores visible before the target can take the interrupt (Linux gic_ipi_send_mask:
    // dsb(ishst) before, isb after).
    unsafe {
        asm!("dsb ishst", "msr icc_sgi1r_el1, {}", "isb", in(reg) v, options(nostack, preserves_flags))
    };
}

/// SGI `sgi` to the logical CPUs in `mask`: one ICC_SGI1R_EL1 write per cluster (Aff3.Aff2.Aff1)
/// with a 16-bit Aff0 target list (Linux gic_compute_target_list).
pub fn send_sgi_mask(sgi: u32, mut mask: u64) {
    while mask != 0 {
        let first = mask.trailing_zeros() as usize;
        let aff = CPU_AFF[first].load(Ordering::Relaxed);
        if aff == u64::MAX {
            mask &= !(1 << first);
            continue;
        }
        let cluster = aff & !0xff;
        let mut list = 0u64;
        let mut m = mask;
        while m != 0 {
            let c = m.trailing_zeros() as usize;
            m &= m - 1;
            let a = CPU_AFF[c].load(Ordering::Relaxed);
            if a != u64::MAX && a & !0xff == cluster && a & 0xff < 16 {
                list |= 1 << (a & 0xff);
                mask &= !(1 << c);
            }
        }
        mask &= !(1 << first);
        let v = ((aff >> 32) & 0xff) << 48
            | ((aff >> 16) & 0xff) << 32
            | (sgi as u64 & 0xf) << 24
            | ((aff >> 8) & 0xff) << 16
            | list;
        if list != 0 {
            sgi1r(v);
        }
    }
}

/// SGI `sgi` to every CPU but this one (IRM = 1).
pub fn send_sgi_others(sgi: u32) {
    sgi1r((1 << 40) | (sgi as u64 & 0xf) << 24);
}
