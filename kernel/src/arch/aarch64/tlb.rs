//! The hardware side of `mm_pgtable::TlbOps`: real barriers and broadcast TLBIs.
use mm_pgtable::{tlbi_range_operand, tlbi_vaddr, TlbOps};

/// [`TlbOps`] on the CPU: real barriers and broadcast TLBIs.

#[derive(Debug, Clone, Copy)]
pub struct HwTlb {
    range: bool,
}

impl HwTlb {
    /// Probe FEAT_TLBIRANGE (ID_AA64ISAR0_EL1.TLB, bits [59:56], == 0b0010).
    pub fn new() -> Self {
        // Linux: system_supports_tlb_range(), a cpucap static branch; probe once.
        static RANGE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
        match RANGE.load(core::sync::atomic::Ordering::Relaxed) {
            1 => return HwTlb { range: false },
            2 => return HwTlb { range: true },
            _ => {}
        }
        let isar0: u64;
        // SAFETY: reading an ID register has no side effects.
        unsafe {
            core::arch::asm!("mrs {}, id_aa64isar0_el1", out(reg) isar0, options(nomem, nostack, preserves_flags))
        };
        let range = (isar0 >> 56) & 0xf == 0b0010;
        RANGE.store(if range { 2 } else { 1 }, core::sync::atomic::Ordering::Relaxed);
        HwTlb { range }
    }

    /// Force the range-TLBI choice (e.g. to compare both paths).
    pub const fn with_range(range: bool) -> Self {
        HwTlb { range }
    }
}

impl Default for HwTlb {
    fn default() -> Self {
        Self::new()
    }
}

impl TlbOps for HwTlb {
    #[inline(always)]
    fn dmb_ishst(&mut self) {
        // SAFETY: barrier.
        unsafe { core::arch::asm!("dmb ishst", options(nostack, preserves_flags)) };
    }
    #[inline(always)]
    fn dsb_ishst(&mut self) {
        // SAFETY: barrier.
        unsafe { core::arch::asm!("dsb ishst", options(nostack, preserves_flags)) };
    }
    #[inline(always)]
    fn dsb_ish(&mut self) {
        // SAFETY: barrier.
        unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
    }
    #[inline(always)]
    fn isb(&mut self) {
        // SAFETY: barrier.
        unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) };
    }
    #[inline(always)]
    fn tlbi_vaale1is(&mut self, va: u64) {
        // SAFETY: TLB invalidation has no memory-safety effect.
        unsafe {
            core::arch::asm!("tlbi vaale1is, {}", in(reg) tlbi_vaddr(va), options(nostack, preserves_flags))
        };
    }
    #[inline(always)]
    fn tlbi_vaae1is(&mut self, va: u64) {
        // SAFETY: as above.
        unsafe {
            core::arch::asm!("tlbi vaae1is, {}", in(reg) tlbi_vaddr(va), options(nostack, preserves_flags))
        };
    }
    #[inline(always)]
    fn tlbi_rvaale1is(&mut self, va: u64, scale: u32, num: u32) {
        // TLBI RVAALE1IS = SYS #0, C8, C2, #7 (FEAT_TLBIRANGE); the generic SYS form needs no
        // assembler extension.
        // SAFETY: as above; only issued when has_tlbirange().
        unsafe {
            core::arch::asm!("sys #0, c8, c2, #7, {}", in(reg) tlbi_range_operand(va, scale, num), options(nostack, preserves_flags))
        };
    }
    #[inline(always)]
    fn tlbi_vmalle1is(&mut self) {
        // SAFETY: as above.
        unsafe { core::arch::asm!("tlbi vmalle1is", options(nostack, preserves_flags)) };
    }
    #[inline(always)]
    fn has_tlbirange(&self) -> bool {
        self.range
    }
}
