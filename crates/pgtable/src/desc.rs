//! Descriptor bits ([`PteFlags`]), descriptor helpers and page protections ([`PageProt`]).

use crate::attr::{MT_DEVICE_nGnRE, MT_DEVICE_nGnRnE, MT_NORMAL, MT_NORMAL_NC, MT_NORMAL_TAGGED};
use crate::PTE_ADDR_MASK;
use bitflags::bitflags;

bitflags! {
    /// Bits of a stage-1 VMSAv8-64 descriptor (Linux `PTE_*` / `PMD_SECT_*` / `PMD_TABLE_*`).
    ///
    /// Bits [1:0]: `0b11` = table (L0-L2) or page (L3), `0b01` = block (L1/L2), bit 0 clear =
    /// invalid. The output address lives in [`PTE_ADDR_MASK`]. Multi-bit fields
    /// (`ATTRINDX_MASK`, `SH_MASK`) are masks; use [`PteFlags::attr_index`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PteFlags: u64 {
        /// Descriptor is valid.
        const VALID = 1 << 0;
        /// Table descriptor at L0-L2, page descriptor at L3 (Linux PTE_TABLE_BIT / PTE_TYPE_PAGE bit 1).
        const TABLE = 1 << 1;
        /// AttrIndx[2:0] (bits 4:2), index into MAIR_EL1.
        const ATTRINDX_MASK = 0b111 << 2;
        /// Non-secure.
        const NS = 1 << 5;
        /// AP[1]: EL0 accessible (Linux PTE_USER).
        const USER = 1 << 6;
        /// AP[2]: read-only (Linux PTE_RDONLY).
        const RDONLY = 1 << 7;
        /// SH[1:0] field mask (bits 9:8).
        const SH_MASK = 0b11 << 8;
        /// SH = inner shareable (Linux PTE_SHARED).
        const SHARED = 0b11 << 8;
        /// Access flag.
        const AF = 1 << 10;
        /// Not global (ASID-tagged); kernel mappings are global unless KPTI.
        const NG = 1 << 11;
        /// Dirty bit modifier; Linux uses it as PTE_WRITE.
        const DBM = 1 << 51;
        /// Contiguous hint (one of 16 aligned, identical-attribute entries).
        const CONT = 1 << 52;
        /// Privileged execute-never.
        const PXN = 1 << 53;
        /// Unprivileged execute-never (UXN/XN).
        const UXN = 1 << 54;
        /// Software dirty (Linux PTE_DIRTY).
        const SW_DIRTY = 1 << 55;
        /// Software special (Linux PTE_SPECIAL).
        const SW_SPECIAL = 1 << 56;
        /// Table descriptors only: PXNTable.
        const TABLE_PXN = 1 << 59;
        /// Table descriptors only: UXNTable (Linux PMD_TABLE_UXN for kernel tables).
        const TABLE_UXN = 1 << 60;
    }
}

impl PteFlags {
    /// Linux PTE_WRITE (= DBM).
    pub const WRITE: PteFlags = PteFlags::DBM;
    /// Linux PTE_TYPE_PAGE / PMD_TYPE_TABLE (`0b11`).
    pub const TYPE_PAGE: u64 = 0b11;
    /// Linux PMD_TYPE_SECT (`0b01`, block).
    pub const TYPE_SECT: u64 = 0b01;
    /// Linux PMD_TABLE_AF (bit 10 in a table descriptor, used with FEAT_HAFT; ignored otherwise).
    pub const TABLE_AF: u64 = 1 << 10;

    /// The AttrIndx field (0..=7).
    pub const fn attr_index(self) -> u64 {
        (self.bits() >> 2) & 0b111
    }
}

/// Linux `PTE_ATTRINDX(mt)`.
pub const fn pte_attrindx(mt: u64) -> u64 {
    (mt & 0b111) << 2
}

/// Output address of a descriptor.
#[inline]
pub const fn desc_addr(desc: u64) -> u64 {
    desc & PTE_ADDR_MASK
}

/// Valid bit set.
#[inline]
pub const fn desc_valid(desc: u64) -> bool {
    desc & 1 != 0
}

/// A valid table descriptor (meaningful at L0-L2).
#[inline]
pub const fn desc_is_table(desc: u64) -> bool {
    desc & 0b11 == 0b11
}

/// A valid block descriptor (meaningful at L1/L2: Linux `pud_sect` / `pmd_sect`).
#[inline]
pub const fn desc_is_block(desc: u64) -> bool {
    desc & 0b11 == 0b01
}

/// Kernel table descriptor as Linux `pmd_populate_kernel` / `pud_populate` / `p4d_populate`
/// write it for init_mm: `TYPE_TABLE | TABLE_AF | TABLE_UXN`.
#[inline]
pub const fn kernel_table_desc(table_pa: u64) -> u64 {
    (table_pa & PTE_ADDR_MASK)
        | PteFlags::TYPE_PAGE
        | PteFlags::TABLE_AF
        | PteFlags::TABLE_UXN.bits()
}

// ------------------------------------------------------------------------------------------------
// Protections (pgprot_t)
// ------------------------------------------------------------------------------------------------

/// A page protection: the attribute bits of a page descriptor (Linux `pgprot_t`). Block
/// descriptors are derived from it by clearing the table bit (`mk_pmd_sect_prot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageProt(pub PteFlags);

const PROT_DEFAULT: u64 = PteFlags::TYPE_PAGE | PteFlags::AF.bits() | PteFlags::SHARED.bits(); // PTE_MAYBE_NG = 0
const XN: u64 = PteFlags::PXN.bits() | PteFlags::UXN.bits();
const WRITE: u64 = PteFlags::DBM.bits();
const PROT_NORMAL: u64 = PROT_DEFAULT | XN | WRITE | pte_attrindx(MT_NORMAL);

#[allow(non_upper_case_globals)]
impl PageProt {
    /// Linux PROT_NORMAL = PAGE_KERNEL: RW, PXN+UXN, Normal WB, inner shareable, AF, global.
    /// Value `0x0068_0000_0000_0703`.
    pub const PAGE_KERNEL: PageProt = PageProt(PteFlags::from_bits_retain(PROT_NORMAL));
    /// Read-only kernel data: `(PROT_NORMAL & ~PTE_WRITE) | PTE_RDONLY`.
    pub const PAGE_KERNEL_RO: PageProt =
        PageProt(PteFlags::from_bits_retain((PROT_NORMAL & !WRITE) | PteFlags::RDONLY.bits()));
    /// Kernel text: `(PROT_NORMAL & ~(PTE_WRITE | PTE_PXN)) | PTE_RDONLY`.
    pub const PAGE_KERNEL_ROX: PageProt = PageProt(PteFlags::from_bits_retain(
        (PROT_NORMAL & !(WRITE | PteFlags::PXN.bits())) | PteFlags::RDONLY.bits(),
    ));
    /// Writable + executable: `PROT_NORMAL & ~PTE_PXN`.
    pub const PAGE_KERNEL_EXEC: PageProt =
        PageProt(PteFlags::from_bits_retain(PROT_NORMAL & !PteFlags::PXN.bits()));
    /// `PAGE_KERNEL_EXEC | PTE_CONT`.
    pub const PAGE_KERNEL_EXEC_CONT: PageProt = PageProt(PteFlags::from_bits_retain(
        (PROT_NORMAL & !PteFlags::PXN.bits()) | PteFlags::CONT.bits(),
    ));
    /// Linux PROT_DEVICE_nGnRE (ioremap): RW, XN, Device-nGnRE.
    pub const PROT_DEVICE_nGnRE: PageProt = PageProt(PteFlags::from_bits_retain(
        PROT_DEFAULT | XN | WRITE | pte_attrindx(MT_DEVICE_nGnRE),
    ));
    /// Linux PROT_DEVICE_nGnRnE.
    pub const PROT_DEVICE_nGnRnE: PageProt = PageProt(PteFlags::from_bits_retain(
        PROT_DEFAULT | XN | WRITE | pte_attrindx(MT_DEVICE_nGnRnE),
    ));
    /// Linux PROT_NORMAL_NC (pgprot_writecombine).
    pub const PROT_NORMAL_NC: PageProt = PageProt(PteFlags::from_bits_retain(
        PROT_DEFAULT | XN | WRITE | pte_attrindx(MT_NORMAL_NC),
    ));
    /// Linux PROT_NORMAL_TAGGED.
    pub const PROT_NORMAL_TAGGED: PageProt = PageProt(PteFlags::from_bits_retain(
        PROT_DEFAULT | XN | WRITE | pte_attrindx(MT_NORMAL_TAGGED),
    ));

    /// Raw bits.
    pub const fn bits(self) -> u64 {
        self.0.bits()
    }
    /// From raw bits (the address field is ignored when building descriptors).
    pub const fn from_bits(bits: u64) -> Self {
        PageProt(PteFlags::from_bits_retain(bits))
    }
    /// Mark non-global (Linux PTE_MAYBE_NG with `arm64_use_ng_mappings`, i.e. KPTI).
    pub const fn with_ng(self) -> Self {
        Self::from_bits(self.bits() | PteFlags::NG.bits())
    }
    /// Linux `pgprot_nx`: privileged execute-never.
    pub const fn nx(self) -> Self {
        Self::from_bits(self.bits() | PteFlags::PXN.bits())
    }
    /// The MAIR index.
    pub const fn attr_index(self) -> u64 {
        self.0.attr_index()
    }
    /// The page (L3) descriptor for `pa` (Linux `pfn_pte`). Only attribute bits outside the
    /// address field are taken from the protection.
    #[inline]
    pub const fn page_desc(self, pa: u64) -> u64 {
        (self.bits() & !PTE_ADDR_MASK) | PteFlags::TYPE_PAGE | (pa & PTE_ADDR_MASK)
    }
    /// The block (L1/L2) descriptor for `pa` (Linux `pfn_pmd(pfn, mk_pmd_sect_prot(prot))`):
    /// table bit cleared, contiguous bit dropped.
    #[inline]
    pub const fn block_desc(self, pa: u64) -> u64 {
        (self.bits() & !PTE_ADDR_MASK & !0b10 & !PteFlags::CONT.bits())
            | PteFlags::TYPE_SECT
            | (pa & PTE_ADDR_MASK)
    }
}
