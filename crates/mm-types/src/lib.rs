//! The vocabulary every layer shares, defined once: the arm64 4 KiB-granule geometry (Linux's
//! `asm/page-def.h`, `asm/pgtable-hwdef.h`), the buddy allocator's order limits, `NR_CPUS`,
//! address newtypes and the GFP flags.
//!
//! Sizes that are used as byte counts are `usize` ([`PAGE_SIZE`]); spans of the virtual address
//! space that only ever meet `u64` addresses are `u64` ([`PMD_SIZE`], [`PUD_SIZE`], ...).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod addr;
pub mod gfp;

pub use addr::{PhysAddr, VirtAddr};
pub use gfp::GfpFlags;

/// 4 KiB granule.
pub const PAGE_SHIFT: u32 = 12;
/// 4 KiB.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// Entries per table page at every level (Linux: PTRS_PER_PTE = PTRS_PER_PMD = ... = 512).
pub const PTRS_PER_TABLE: usize = 512;
/// L2 (pmd) entry span: 2 MiB.
pub const PMD_SHIFT: u32 = 21;
/// 2 MiB.
pub const PMD_SIZE: u64 = 1 << PMD_SHIFT;
/// L1 (pud) entry span: 1 GiB.
pub const PUD_SHIFT: u32 = 30;
/// 1 GiB.
pub const PUD_SIZE: u64 = 1 << PUD_SHIFT;
/// L0 (pgd) entry span: 512 GiB.
pub const PGDIR_SHIFT: u32 = 39;
/// 512 GiB.
pub const PGDIR_SIZE: u64 = 1 << PGDIR_SHIFT;
/// Contiguous-PTE run: 16 entries = 64 KiB (Linux CONT_PTE_SHIFT / CONT_PTES / CONT_PTE_SIZE).
pub const CONT_PTE_SHIFT: u32 = 16;
/// Entries in a contiguous-PTE run.
pub const CONT_PTES: usize = 16;
/// 64 KiB.
pub const CONT_PTE_SIZE: u64 = 1 << CONT_PTE_SHIFT;
/// Virtual address bits (T1SZ = 16).
pub const VA_BITS: u32 = 48;

/// Largest buddy order (Linux: MAX_PAGE_ORDER, 4 MiB blocks with 4 KiB pages).
pub const MAX_PAGE_ORDER: usize = 10;
/// Order of a 2 MiB PMD block (Linux: pageblock_order / HPAGE_PMD_ORDER on arm64 4K).
pub const PAGEBLOCK_ORDER: usize = (PMD_SHIFT - PAGE_SHIFT) as usize;

/// CPUs supported: the size of every per-CPU array (Linux CONFIG_NR_CPUS).
pub const NR_CPUS: usize = 64;

/// A page frame number (physical address >> PAGE_SHIFT), as Linux's `unsigned long pfn`.
pub type Pfn = u64;
