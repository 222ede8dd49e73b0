//! arm64 kernel page tables: descriptors, protections, mapping, unmapping, walking and TLB
//! maintenance, written so that the same code runs in the kernel on real tables and on the
//! host over simulated physical memory.
//!
//! Geometry: AArch64 stage 1, 4 KiB granule, 48-bit VA, four levels. Linux names the levels
//! pgd (L0, VA[47:39], 512 GiB per entry), pud (L1, VA[38:30], 1 GiB blocks), pmd (L2,
//! VA[29:21], 2 MiB blocks) and pte (L3, VA[20:12], 4 KiB pages); p4d is folded.
//!
//! What mirrors what (Linux mm tree of early 2026, the v7.0/v7.1 era that `linux-mm.md` was
//! written from):
//!
//! | here | Linux |
//! |---|---|
//! | [`PteFlags`], [`PageProt`] presets | `arch/arm64/include/asm/pgtable-hwdef.h`, `pgtable-prot.h` |
//! | `MT_*`, [`MAIR_EL1_SET`] | `arch/arm64/include/asm/memory.h`, `sysreg.h`, `arch/arm64/mm/proc.S` |
//! | [`PageTable::map_range`] | `vmap_range_noflush` → `vmap_p4d/pud/pmd/pte_range`, `vmap_try_huge_pud/pmd`, arm64 `arch_vmap_pte_range_map_size` (contiguous PTEs), `pmd_set_huge`, `pmd_free_pte_page`, `pud_free_pmd_page` |
//! | [`PageTable::map_pages`] | `__vmap_pages_range_noflush` (`vmap_small_pages_range_noflush` for 4 KiB, `vmap_range_noflush` per 2^page_shift chunk for huge vmalloc) |
//! | [`PageTable::unmap_range`] | `vunmap_range_noflush` → `vunmap_p4d/pud/pmd/pte_range`, `pmd_clear_huge`, `arch_vmap_pte_range_unmap_size` |
//! | [`PageTable::walk`] | `vmalloc_to_page` (and the fault-path table dump) |
//! | [`flush_tlb_kernel_range`], [`flush_tlb_all`], [`flush_tlb_kernel_pgtable`] | `arch/arm64/include/asm/tlbflush.h` of the same tree (`__flush_tlb_range_op`, `__flush_tlb_range_limit_excess`, `__flush_tlb_kernel_pgtable`) |
//!
//! Barriers. A new valid kernel entry needs `DSB ISHST` (make the store visible to the table
//! walker) and `ISB` (drop any speculatively fetched "invalid" result) before it is used; an
//! invalid->valid change needs no TLBI because invalid entries are never cached. Linux arm64
//! (since the "batch barriers when updating kernel mappings" work, v6.16) queues that pair while
//! in lazy-MMU mode and emits it once when the mode is left. Here every mapping call emits the
//! pair exactly once at its end (or not at all with [`MapFlags::NO_BARRIER`], so a caller can
//! batch several calls and finish with [`publish_mappings`]). Nothing reads a new mapping before
//! the call returns, so the coarser batching is observably the same.
//!
//! Live entries. vmalloc only ever writes empty entries: Linux `BUG()`s in `vmap_pte_range` and
//! returns `-EBUSY` in `vmap_pages_pte_range` when it meets a non-empty PTE, because a live
//! entry means a VA was reused before its lazy TLB flush. Here the default is to refuse with
//! [`MapError::AlreadyMapped`] (the vmalloc path). With [`MapFlags::REPLACE`] (linear map,
//! kernel image permission changes) a live leaf that would change is replaced with
//! break-before-make: write invalid, `DSB ISHST`, `TLBI VAALE1IS`, `DSB ISH`, write new. A live
//! contiguous run is broken as a whole (all 16 entries cleared and invalidated) and the new range
//! must cover it completely. Splitting a block into a table is not supported (error).
//!
//! Unmapping never flushes the TLB (the vmalloc layer flushes lazily, once per purge, with
//! [`flush_tlb_kernel_range`]) and never frees intermediate table pages, like Linux: after
//! warm-up a map is only leaf writes. The one place tables are freed is where Linux frees them
//! too: a 2 MiB (1 GiB) block replacing an *empty* PTE (PMD) table (`pmd_free_pte_page`), which
//! clears the table entry, invalidates walk caches for that address (`TLBI VAAE1IS`) and frees
//! the table page.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

// One private module per concept; every public item is re-exported here, so the API is flat
// (`mm_pgtable::X`). Dependencies run one way: attr <- desc; pool <- entry; tlb; then
// mapper (PageTable, map paths) <- unmap, walk (both add methods to PageTable).
mod attr; // memory types (MAIR)
mod desc; // descriptor bits and helpers, PageProt
mod entry; // table indices and volatile entry access (the unsafe core)
mod mapper; // PageTable, map_range / map_pages
mod pool; // PtMemory, OffsetPool
#[cfg(test)]
mod tests;
mod tlb; // TlbOps, TLBI operands, flush functions
mod unmap; // unmap_range
mod walk; // walk, for_each_leaf

pub use attr::{
    mair_attridx, MAIR_ATTR_DEVICE_nGnRE, MAIR_ATTR_DEVICE_nGnRnE, MT_DEVICE_nGnRE,
    MT_DEVICE_nGnRnE, MAIR_ATTR_NORMAL, MAIR_ATTR_NORMAL_NC, MAIR_ATTR_NORMAL_TAGGED, MAIR_EL1_SET,
    MT_NORMAL, MT_NORMAL_NC, MT_NORMAL_TAGGED,
};
pub use desc::{
    desc_addr, desc_is_block, desc_is_table, desc_valid, kernel_table_desc, pte_attrindx, PageProt,
    PteFlags,
};
pub use mapper::{MapError, MapFlags, MapStats, PageTable};
pub use pool::{OffsetPool, PtMemory};
pub use tlb::{
    flush_tlb_all, flush_tlb_kernel_pgtable, flush_tlb_kernel_range, flush_tlb_range_limit_excess,
    publish_mappings, tlbi_range_operand, tlbi_range_pages, tlbi_vaddr, TlbOps, MAX_DVM_OPS,
    MAX_TLBI_RANGE_PAGES,
};
pub use unmap::{UnmapError, UnmapResult};
pub use walk::{Leaf, Translation};

// ------------------------------------------------------------------------------------------------
// Geometry
// ------------------------------------------------------------------------------------------------

pub use mm_types::{
    CONT_PTES, CONT_PTE_SHIFT, CONT_PTE_SIZE, PAGE_SHIFT, PAGE_SIZE, PGDIR_SHIFT, PGDIR_SIZE,
    PMD_SHIFT, PMD_SIZE, PTRS_PER_TABLE, PUD_SHIFT, PUD_SIZE, VA_BITS,
};

/// Output-address field of a descriptor, bits [47:12] (48-bit PA, no LPA2).
pub const PTE_ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;
