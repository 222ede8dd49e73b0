//! Linux's page allocator (mm/page_alloc.c, mm/mm_init.c, mm/memblock.c, mm/vmstat.c) over a
//! `struct page` array, as a library the kernel instantiates once and the host tests many times.
//!
//! Layers, lowest first; each module uses only modules listed above it (no module cycles,
//! `scripts/modcycles.py`), and [`page_alloc`] ties them together:
//!
//! | module | Linux | what | uses |
//! |---|---|---|---|
//! | [`memblock`] | mm/memblock.c | boot-time memory and reserved ranges | |
//! | [`page`] | include/linux/mm_types.h | `struct page`: flags, order, free-list links; mem_map | |
//! | [`pcp`] | include/linux/mmzone.h | per-CPU page lists (`struct per_cpu_pages`), the per-CPU pageset pointer, pindex helpers | page |
//! | [`zone`] | include/linux/mmzone.h, mm/mm_init.c | `struct zone` (free areas, watermarks, `per_cpu_pageset`), batch/high formulas | page, pcp |
//! | [`buddy`] | mm/page_alloc.c | buddy merging and splitting on one zone's free areas (zone->lock held) | page, zone |
//! | [`stat`] | mm/vmstat.c | vm events and node counters | zone |
//! | [`page_alloc`] | mm/page_alloc.c | `PageAllocator`: init, the allocation and free paths, pcp refill/drain, counters, verify | all of the above |
//!
//! `unsafe` is confined to [`page`] (initialising a raw mem_map) and [`pcp`] (the per-CPU
//! pageset pointer); every other module is `#![forbid(unsafe_code)]`.
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
