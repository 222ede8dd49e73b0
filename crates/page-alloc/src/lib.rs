//! Linux's page allocator (mm/page_alloc.c, mm/mm_init.c, mm/memblock.c, mm/vmstat.c) over a
//! `struct page` array, as a library the kernel instantiates once and the host tests many times.
//!
//! Layers, lowest first (each module uses only the ones above it in this list, and
//! [`page_alloc`] ties them together):
//!
//! | module | Linux | what |
//! |---|---|---|
//! | [`memblock`] | mm/memblock.c | boot-time memory and reserved ranges |
//! | [`page`] | include/linux/mm_types.h | `struct page`: flags, order, free-list links |
//! | [`zone`] | include/linux/mmzone.h, mm/mm_init.c | zones, free areas, watermarks, batch/high formulas |
//! | [`buddy`] | mm/page_alloc.c | buddy merging and splitting |
//! | [`pcp`] | mm/page_alloc.c | per-CPU page lists (`struct per_cpu_pages`) |
//! | [`stat`] | mm/vmstat.c | vm events and zone/node counters |
//! | [`page_alloc`] | mm/page_alloc.c | `PageAllocator`: the allocation and free paths |
//!
//! No global state: the caller hands in the `struct page` array, memblock and the hooks
//! (zeroing, rescheduling, bad-page reports) through [`PageAllocConfig`] and [`PageAllocHooks`].
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod buddy;
pub mod memblock;
pub mod page;
pub mod page_alloc;
pub mod pcp;
pub mod stat;
#[cfg(test)]
mod tests;
pub mod zone;

pub use memblock::Memblock;
pub use page::Page;
pub use page_alloc::{MmError, PageAllocConfig, PageAllocHooks, PageAllocator};
