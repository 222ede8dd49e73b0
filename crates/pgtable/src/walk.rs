//! Software walks: [`PageTable::walk`] (one VA) and [`PageTable::for_each_leaf`] (a range).

use crate::desc::{desc_addr, desc_is_block, desc_is_table, desc_valid, PageProt, PteFlags};
use crate::entry::{get, level_shift, pt_index, tbl};
use crate::mapper::PageTable;
use crate::pool::PtMemory;
use crate::{CONT_PTE_SIZE, PAGE_SIZE, PTE_ADDR_MASK, PTRS_PER_TABLE, VA_BITS};

/// Result of a software walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address the walked VA translates to (including the offset in the leaf).
    pub pa: u64,
    /// Level of the leaf: 1 (1 GiB block), 2 (2 MiB block) or 3 (page).
    pub level: u8,
    /// Size covered by the leaf descriptor: 1 GiB, 2 MiB or 4 KiB.
    pub block_size: u64,
    /// The contiguous bit is set on the leaf.
    pub cont: bool,
    /// The raw leaf descriptor.
    pub desc: u64,
}

impl Translation {
    /// Attribute bits of the leaf.
    pub const fn flags(&self) -> PteFlags {
        PteFlags::from_bits_retain(self.desc & !PTE_ADDR_MASK)
    }
    /// MAIR index.
    pub const fn attr_index(&self) -> u64 {
        self.flags().attr_index()
    }
    /// The leaf's span including the contiguous hint (64 KiB for a contiguous page).
    pub const fn map_size(&self) -> u64 {
        if self.cont && self.level == 3 {
            CONT_PTE_SIZE
        } else {
            self.block_size
        }
    }
    /// The protection of the leaf in page form (table/page bit set, contiguous hint dropped:
    /// it describes the mapping, not the access rights).
    pub const fn prot(&self) -> PageProt {
        PageProt::from_bits(
            (self.desc & !PTE_ADDR_MASK & !PteFlags::CONT.bits()) | PteFlags::TYPE_PAGE,
        )
    }
    /// Writable at EL1.
    pub const fn writable(&self) -> bool {
        self.desc & PteFlags::RDONLY.bits() == 0
    }
    /// Executable at EL1.
    pub const fn executable(&self) -> bool {
        self.desc & PteFlags::PXN.bits() == 0
    }
}

/// One valid leaf visited by [`PageTable::for_each_leaf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// VA the leaf entry starts at.
    pub va: u64,
    /// Level (1, 2 or 3).
    pub level: u8,
    /// Span of this one descriptor.
    pub size: u64,
    /// The descriptor.
    pub desc: u64,
}

impl PageTable {
    /// Software walk of `va` (Linux `vmalloc_to_page`-style): the leaf and the PA it yields, or
    /// `None` when unmapped (or the tree holds an entry the kernel never writes).
    pub fn walk<M: PtMemory + ?Sized>(&self, mem: &M, va: u64) -> Option<Translation> {
        let mut table = self.root_pa;
        for level in 0u8..=3 {
            let shift = level_shift(level);
            // SAFETY: `table` is the root or the address of a table descriptor read at the level
            // above, so `tbl` gives a valid table page (see `tbl`); `pt_index` is below 512.
            let e = unsafe { get(tbl(mem, table), pt_index(va, shift)) };
            if !desc_valid(e) {
                return None;
            }
            let size = 1u64 << shift;
            match (level, e & 0b11) {
                (3, 0b11) => {
                    return Some(Translation {
                        pa: desc_addr(e) | (va & (PAGE_SIZE as u64 - 1)),
                        level,
                        block_size: size,
                        cont: e & PteFlags::CONT.bits() != 0,
                        desc: e,
                    })
                }
                (1 | 2, 0b01) => {
                    return Some(Translation {
                        pa: (desc_addr(e) & !(size - 1)) | (va & (size - 1)),
                        level,
                        block_size: size,
                        cont: e & PteFlags::CONT.bits() != 0,
                        desc: e,
                    })
                }
                (0..=2, 0b11) => table = desc_addr(e),
                _ => return None,
            }
        }
        None
    }

    /// Visit every valid leaf that overlaps `[start, end)` in address order (`end == 0` means
    /// the top of the address space). A `start` with the top 16 bits set walks the tree as a
    /// TTBR1 (kernel) tree, otherwise as TTBR0; the range must not span both halves. For dumps,
    /// tests and checks.
    pub fn for_each_leaf<M: PtMemory + ?Sized, F: FnMut(Leaf)>(
        &self,
        mem: &M,
        start: u64,
        end: u64,
        mut f: F,
    ) {
        let base = if start >> VA_BITS == 0xffff { 0xffff_0000_0000_0000 } else { 0 };
        visit(
            mem,
            self.root_pa,
            0,
            base,
            start & !(PAGE_SIZE as u64 - 1),
            end.wrapping_sub(1),
            &mut f,
        );
    }
}

fn visit<M: PtMemory + ?Sized, F: FnMut(Leaf)>(
    mem: &M,
    table: u64,
    level: u8,
    base: u64,
    start: u64,
    last: u64,
    f: &mut F,
) {
    let shift = level_shift(level);
    let span = 1u64 << shift;
    let t = tbl(mem, table);
    for i in 0..PTRS_PER_TABLE {
        let va = base | ((i as u64) << shift);
        let va_last = va + (span - 1);
        if va_last < start || va > last {
            continue;
        }
        // SAFETY: `table` is the root or the address of a table descriptor of this tree, so `t`
        // is valid per `tbl`; `i < PTRS_PER_TABLE` = 512.
        let e = unsafe { get(t, i) };
        if !desc_valid(e) {
            continue;
        }
        if level < 3 && desc_is_table(e) {
            visit(mem, desc_addr(e), level + 1, va, start, last, f);
        } else if (level == 3 && e & 0b11 == 0b11)
            || ((level == 1 || level == 2) && desc_is_block(e))
        {
            f(Leaf { va, level, size: span, desc: e });
        }
    }
}
