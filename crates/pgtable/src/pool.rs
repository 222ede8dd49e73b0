//! How the page-table code reaches table pages ([`PtMemory`]), and an early table pool
//! ([`OffsetPool`]) for before the page allocator exists.

use crate::PAGE_SIZE;
use core::ptr;

/// How the page-table code reaches table pages.
///
/// # Safety
///
/// Implementors promise that for the root table's PA and every PA returned by
/// [`alloc_table`](Self::alloc_table) (until it is passed to [`free_table`](Self::free_table)),
/// [`table`](Self::table) returns a pointer to 4 KiB of memory, valid for reads and writes and
/// 8-byte aligned, that is the table page at that PA, and that pages returned by `alloc_table`
/// are zeroed. In the kernel the pointer is the linear-map (or image) alias; on the host it
/// points into a simulation. The page-table code accesses entries with volatile 64-bit loads
/// and stores (Linux READ_ONCE / WRITE_ONCE). Concurrent mappers of disjoint VA ranges are safe:
/// the only entries they can share are table links, installed under
/// [`with_populate_lock`](Self::with_populate_lock); other writers to the same entries must be
/// serialised by the caller.
pub unsafe trait PtMemory {
    /// The table page at physical address `pa`.
    fn table(&self, pa: u64) -> *mut [u64; 512];
    /// A zeroed 4 KiB page for a new table; its PA (4 KiB aligned). `None` when out of memory.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Give back a table page that is no longer linked anywhere.
    fn free_table(&mut self, pa: u64);
    /// Runs `f` under the lock that serialises linking new tables (Linux: init_mm's
    /// page_table_lock in `__pte_alloc_kernel` / `__pmd_alloc`). Only populating takes it: leaf
    /// writes of disjoint VA ranges need no lock. The default (single-threaded users, host
    /// models) takes none.
    fn with_populate_lock(&mut self, f: &mut dyn FnMut()) {
        f()
    }
}

// ------------------------------------------------------------------------------------------------
// An early table pool (before the page allocator exists)
// ------------------------------------------------------------------------------------------------

/// [`PtMemory`] over one physically contiguous region with a fixed VA-PA offset: a static pool
/// in the kernel image (`voffset` = kimage_voffset) or the linear map (`voffset` =
/// PAGE_OFFSET - PHYS_OFFSET). Bump allocation, freed pages go on an intrusive free list.
///
/// `table(pa)` works for *any* PA at the same offset (the root table in .bss, pages from the
/// region), so one `OffsetPool` can serve `swapper_pg_dir` plus its early tables. Once the page
/// allocator is up, the integrator switches to a `PtMemory` that allocates with
/// `alloc_pages(GFP_PGTABLE_KERNEL, 0)`, zeroes, and returns `page_to_phys`, with `table(pa)` =
/// `phys_to_virt(pa)` (pool pages stay valid: they are in the image or the linear map).
#[derive(Debug)]
pub struct OffsetPool {
    voffset: u64,
    next: u64,
    end: u64,
    free: u64,
    /// Pages handed out and not freed.
    pub in_use: usize,
}

impl OffsetPool {
    /// A pool with no pages whose `table()` still translates with `voffset` (VA = PA + voffset).
    ///
    /// # Safety
    /// Every table PA later passed to this pool (`table`, `free_table`, a `PageTable` root
    /// walked with it) must be mapped at `PA + voffset`, as for [`OffsetPool::new`].
    pub const unsafe fn empty(voffset: u64) -> Self {
        OffsetPool { voffset, next: 0, end: 0, free: 0, in_use: 0 }
    }

    /// A pool over `[pool_pa, pool_pa + bytes)` whose VA is `pool_va`.
    ///
    /// # Safety
    /// The region must be page aligned, exclusively owned by the pool, mapped at `pool_va`
    /// for its whole lifetime, and every table PA later passed to `table()` must be mapped at
    /// the same offset.
    pub unsafe fn new(pool_va: *mut u8, pool_pa: u64, bytes: usize) -> Self {
        debug_assert_eq!(pool_pa & (PAGE_SIZE as u64 - 1), 0);
        debug_assert_eq!(pool_va as u64 & (PAGE_SIZE as u64 - 1), 0);
        OffsetPool {
            voffset: (pool_va as u64).wrapping_sub(pool_pa),
            next: pool_pa,
            end: pool_pa + (bytes as u64 & !(PAGE_SIZE as u64 - 1)),
            free: 0,
            in_use: 0,
        }
    }

    /// Pages never handed out yet.
    pub fn remaining(&self) -> usize {
        ((self.end - self.next) / PAGE_SIZE as u64) as usize
    }
}

// SAFETY: table() is the fixed-offset alias the constructor's contract guarantees (`new`: the
// region and every table PA used with the pool, root included, are mapped at `voffset`; a pool
// from `empty` relies on its user for the same); `alloc_table` hands out only region pages not
// in use (below the bump pointer's `end`, or from the free list) and zeroes them first.
unsafe impl PtMemory for OffsetPool {
    fn table(&self, pa: u64) -> *mut [u64; 512] {
        pa.wrapping_add(self.voffset) as *mut [u64; 512]
    }

    fn alloc_table(&mut self) -> Option<u64> {
        let pa = if self.free != 0 {
            let pa = self.free;
            // SAFETY: a freed pool page; its first word holds the next free PA. `free` is
            // non-zero only after `free_table` pushed a page this pool handed out, which is a
            // page-aligned page of the region mapped at `voffset` (`new`'s contract) that no
            // table uses any more.
            self.free = unsafe { ptr::read(self.table(pa) as *const u64) };
            pa
        } else if self.next < self.end {
            let pa = self.next;
            self.next += PAGE_SIZE as u64;
            pa
        } else {
            return None;
        };
        // SAFETY: the page belongs to the pool and is mapped at the offset: `pa` is a free-list
        // page or the bump pointer below `end`, a whole page of the region `new`'s contract makes
        // exclusively the pool's and mapped at `voffset`, and it is not handed out, so nothing
        // else accesses its 4 KiB.
        unsafe { ptr::write_bytes(self.table(pa) as *mut u8, 0, PAGE_SIZE) };
        self.in_use += 1;
        Some(pa)
    }

    fn free_table(&mut self, pa: u64) {
        // SAFETY: the page is no longer linked; reuse its first word as the free-list link.
        // `free_table`'s contract: `pa` came from `alloc_table`, so it is a page-aligned page of
        // the region mapped at `voffset`, and nothing else accesses it now.
        unsafe { ptr::write(self.table(pa) as *mut u64, self.free) };
        self.free = pa;
        self.in_use -= 1;
    }
}
