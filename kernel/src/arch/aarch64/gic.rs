//! Just enough GICv2 (QEMU virt's GIC, the Pi 4's GIC-400) to let idle CPUs sleep in WFI and
//! wake them with an SGI: QEMU TCG treats WFE as a busy yield, so CPUs waiting in WFE loops
//! would steal host time from the CPUs doing work. IRQs stay masked at the CPU (DAIF.I): a
//! pending interrupt still ends WFI, and the woken CPU acknowledges it by hand.
//!
//! Each CPU checks at bring-up that an SGI to itself becomes pending and can be acknowledged;
//! if not (a GIC configured for the secure world only, no GICv2), waits fall back to WFE.
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const GICD_CTLR: u64 = 0x000;
const GICD_ISENABLER0: u64 = 0x100;
const GICD_IPRIORITYR: u64 = 0x400;
const GICD_SGIR: u64 = 0xf00;
const GICC_CTLR: u64 = 0x000;
const GICC_PMR: u64 = 0x004;
const GICC_IAR: u64 = 0x00c;
const GICC_EOIR: u64 = 0x010;
/// The SGI used as a wake-up kick.
const SGI_WAKE: u32 = 0;

static GICD: AtomicU64 = AtomicU64::new(0);
static GICC: AtomicU64 = AtomicU64::new(0);
/// Set once the boot CPU's self-test passed; every CPU then sleeps in WFI.
static WFI_OK: AtomicBool = AtomicBool::new(false);

fn rd(base: u64, off: u64) -> u32 {
    // SAFETY: base is a GIC block mapped as device memory by init (GICD or GICC from early_ioremap)
    // and off a register offset inside it.
    unsafe { read_volatile((base + off) as *const u32) }
}
fn wr(base: u64, off: u64, v: u32) {
    // SAFETY: as in rd: a register of a mapped GIC block.
    unsafe { write_volatile((base + off) as *mut u32, v) }
}

/// Records the mapped distributor and CPU interface (boot CPU, before secondaries start).
pub fn init(gicd_va: u64, gicc_va: u64) {
    GICD.store(gicd_va, Ordering::Release);
    GICC.store(gicc_va, Ordering::Release);
    wr(gicd_va, GICD_CTLR, rd(gicd_va, GICD_CTLR) | 1);
    if cpu_init() {
        WFI_OK.store(true, Ordering::Release);
    }
}

/// Per-CPU interface setup and self-test; true when SGIs reach this CPU.
pub fn cpu_init() -> bool {
    let (d, c) = (GICD.load(Ordering::Acquire), GICC.load(Ordering::Acquire));
    if d == 0 || c == 0 {
        return false;
    }
    wr(d, GICD_ISENABLER0, 1 << SGI_WAKE);
    // SGI priority 0x80 (banked per CPU), below the priority mask.
    let p = rd(d, GICD_IPRIORITYR) & !0xff;
    wr(d, GICD_IPRIORITYR, p | 0x80);
    wr(c, GICC_PMR, 0xf0);
    wr(c, GICC_CTLR, rd(c, GICC_CTLR) | 1);
    // Self-test: SGI to this CPU only (TargetListFilter = 0b10), then acknowledge it.
    wr(d, GICD_SGIR, (0b10 << 24) | SGI_WAKE);
    super::cpu::dsb_sy();
    for _ in 0..1000 {
        let iar = rd(c, GICC_IAR);
        if iar & 0x3ff == SGI_WAKE {
            wr(c, GICC_EOIR, iar);
            return true;
        }
        if iar & 0x3ff < 1020 {
            wr(c, GICC_EOIR, iar);
        }
    }
    false
}

pub fn wfi_enabled() -> bool {
    WFI_OK.load(Ordering::Relaxed)
}

/// Turns WFI waits off on every CPU (a secondary whose self-test failed).
pub fn disable_wfi() {
    WFI_OK.store(false, Ordering::Release);
}

/// Wakes every other CPU (the SEV of WFI waits).
#[inline]
pub fn kick_others() {
    if WFI_OK.load(Ordering::Relaxed) {
        super::cpu::dsb_sy();
        // TargetListFilter = 0b01: all CPUs but the sender.
        wr(GICD.load(Ordering::Relaxed), GICD_SGIR, (0b01 << 24) | SGI_WAKE);
    }
}

/// Waits for an event: WFI (ended by a kick), then acknowledges whatever woke the CPU.
#[inline]
pub fn wait() {
    if !WFI_OK.load(Ordering::Relaxed) {
        super::cpu::wfe_raw();
        return;
    }
    // SAFETY: WFI waits for an interrupt (a GIC SGI wakes it); it changes no memory.
    unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
    let c = GICC.load(Ordering::Relaxed);
    loop {
        let iar = rd(c, GICC_IAR);
        if iar & 0x3ff >= 1020 {
            break;
        }
        wr(c, GICC_EOIR, iar);
    }
}
