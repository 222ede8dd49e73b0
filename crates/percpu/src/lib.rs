//! The chunk-internal allocator of Linux's percpu allocator (`mm/percpu.c`), as pure logic.
//!
//! Linux serves `__alloc_percpu(size, align)` from **chunks**. A chunk is one *unit* per possible
//! CPU; an allocation is an **offset** that is valid in every unit. This crate manages the offset
//! space of one unit exactly the way Linux's bitmap allocator (v4.14+, with the v5.1 scan hints and
//! the v5.14 depopulation/sidelining) does:
//!
//! * [`PcpuChunk`]: `struct pcpu_chunk` - `alloc_map` (1 bit per [`PCPU_MIN_ALLOC_SIZE`] bytes),
//!   `bound_map` (allocation start bits plus the bit after the end, used by the free path to find
//!   the size), one [`PcpuBlockMd`] (`struct pcpu_block_md`) per page plus the chunk-level
//!   `chunk_md`, `free_bytes`, the `populated` page bitmap, `nr_populated` and
//!   `nr_empty_pop_pages`.
//! * [`PcpuSlots`] / [`ChunkList`]: `pcpu_size_to_slot`, `pcpu_chunk_slot`, the
//!   `pcpu_chunk_lists[]` slot lists with Linux's `list_move`/`list_move_tail` ordering, the
//!   sidelined / free / to_depopulate slots and chunk isolation.
//! * [`PcpuPool`]: the chunk-search and bookkeeping parts of `pcpu_alloc`, `free_percpu` and
//!   `pcpu_balance_workfn`, with the memory side (creating a chunk's vm areas, mapping and
//!   unmapping pages, TLB flushes) delegated to a [`PcpuBacking`] implemented by the kernel.
//!
//! All hints are kept in bits (4-byte fragments), as in Linux; byte values appear only at the
//! public API. Nothing here touches memory: the caller maps pages on demand using
//! [`PcpuChunk::next_unpopulated_range`] / [`PcpuPool::chunk_populated`].
//!
//! Faithfulness note: Linux's `pcpu_block_update_hint_free` updates the chunk-level hint for an
//! in-block free with `pcpu_block_update(&chunk->chunk_md, pcpu_block_off_to_off(s_index, start),
//! end)` where `end` is still block-relative. For any block but the first this yields a negative
//! length and only `first_free` is updated, so `chunk_md.contig_hint` can under-estimate the
//! largest free area until the next full refresh (a free that empties a page or spans blocks,
//! or an allocation that breaks the chunk hint). This crate reproduces that behaviour (see
//! [`LINUX_FREE_CHUNK_HINT_QUIRK`]) so chunk selection matches Linux.
//!
//! Layout: this file holds the constants and re-exports every public item; the code is in
//! private modules, each using only those listed before it: `bitmap` (find_bit helpers),
//! `block` ([`PcpuBlockMd`]), `chunk` ([`PcpuChunk`]: construction, accessors, alloc and free),
//! `chunk_hints` (more of `impl PcpuChunk`: hint scanning and refresh, population bookkeeping,
//! the consistency check, [`RangeIter`]), `slots` ([`PcpuSlots`], [`ChunkList`],
//! [`Candidates`]) and `pool` ([`PcpuBacking`], [`PcpuPool`]). Tests are in `tests`.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use mm_types::PAGE_SIZE;

mod bitmap;
mod block;
mod chunk;
mod chunk_hints;
mod pool;
mod slots;
#[cfg(test)]
mod tests;

pub use block::PcpuBlockMd;
pub use chunk::{pcpu_request_bits, PcpuChunk};
pub use chunk_hints::RangeIter;
pub use pool::{PcpuAllocError, PcpuArea, PcpuBacking, PcpuPool};
pub use slots::{Candidates, ChunkId, ChunkList, PcpuSlots};

/// Linux `PCPU_MIN_ALLOC_SHIFT`: one bitmap bit per 4 bytes.
pub const PCPU_MIN_ALLOC_SHIFT: usize = 2;
/// Linux `PCPU_MIN_ALLOC_SIZE`: the allocation granule (bytes per bitmap bit).
pub const PCPU_MIN_ALLOC_SIZE: usize = 1 << PCPU_MIN_ALLOC_SHIFT;
/// Linux `PCPU_BITMAP_BLOCK_SIZE`: one metadata block per page.
pub const PCPU_BITMAP_BLOCK_SIZE: usize = PAGE_SIZE;
/// Linux `PCPU_BITMAP_BLOCK_BITS`: bits per metadata block (1024 with 4 KiB pages).
pub const PCPU_BITMAP_BLOCK_BITS: usize = PCPU_BITMAP_BLOCK_SIZE >> PCPU_MIN_ALLOC_SHIFT;
/// Linux `PCPU_MIN_UNIT_SIZE` (`PFN_ALIGN(32 << 10)`): largest request `pcpu_alloc` accepts and the
/// smallest legal unit size.
pub const PCPU_MIN_UNIT_SIZE: usize = 32 << 10;
/// Linux `PCPU_SLOT_BASE_SHIFT`: 1-31 bytes share the same slot.
pub const PCPU_SLOT_BASE_SHIFT: u32 = 5;
/// Linux `PCPU_SLOT_FAIL_THRESHOLD`: chunks in slots below this are moved to slot 0 (sidelined
/// from the search) when `pcpu_find_block_fit` fails on them.
pub const PCPU_SLOT_FAIL_THRESHOLD: usize = 3;
/// Linux `PCPU_EMPTY_POP_PAGES_LOW`: below this many empty populated pages, schedule balancing.
pub const PCPU_EMPTY_POP_PAGES_LOW: i64 = 2;
/// Linux `PCPU_EMPTY_POP_PAGES_HIGH`: balancing populates up to this many empty pages.
pub const PCPU_EMPTY_POP_PAGES_HIGH: i64 = 4;

/// Reproduce Linux's block-relative `end` in the chunk-hint update of
/// `pcpu_block_update_hint_free` (see the crate documentation). `true` = faithful to Linux.
pub const LINUX_FREE_CHUNK_HINT_QUIRK: bool = true;

/// Bits per metadata block, the short name the chunk code uses.
pub(crate) const B: usize = PCPU_BITMAP_BLOCK_BITS;
