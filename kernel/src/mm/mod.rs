//! Memory management, named after Linux's mm/.

/// 4 KiB granule.
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// Largest buddy order (Linux: MAX_PAGE_ORDER, 4 MiB blocks with 4 KiB pages).
pub const MAX_PAGE_ORDER: usize = 10;
/// Order of a 2 MiB PMD block (Linux: pageblock_order / HPAGE_PMD_ORDER on arm64 4K).
pub const PAGEBLOCK_ORDER: usize = 9;

/// A page frame number (physical address >> PAGE_SHIFT).
pub type Pfn = u64;

// Kernel glue (target only): the page allocator instance, kmalloc, boot-time setup.
#[cfg(target_os = "none")]
pub mod kalloc;
#[cfg(target_os = "none")]
pub mod kmalloc;
#[cfg(target_os = "none")]
mod ktests;
#[cfg(target_os = "none")]
pub mod kva_glue;
#[cfg(target_os = "none")]
pub mod percpu;
#[cfg(target_os = "none")]
pub mod setup;
#[cfg(target_os = "none")]
pub mod vmalloc;
#[cfg(target_os = "none")]
mod vmalloc_ktests;

// Page-table walker and KVA allocator (issue 5).
pub mod kva;
#[cfg(not(target_os = "none"))]
pub mod kva_model;
pub mod pgtable;
pub mod vmap_lazy;

// Physical memory (issue 3): memblock, struct page, zones, buddy, pcp, gfp, stats.
// (modules added below)
pub mod buddy;
pub mod gfp;
pub mod memblock;
pub mod page;
pub mod page_alloc;
#[cfg(test)]
mod page_alloc_tests;
pub mod pcp;
pub mod stat;
pub mod zone;

pub use gfp::GfpFlags;
pub use memblock::Memblock;
pub use page::Page;
pub use page_alloc::{MmError, PageAllocConfig, PageAllocHooks, PageAllocator};
pub mod percpu_alloc;
