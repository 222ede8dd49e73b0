//! The chunk-internal allocator of Linux's percpu allocator (`mm/percpu.c`), as pure logic.
//!
//! Linux serves `__alloc_percpu(size, align)` from **chunks**. A chunk is one *unit* per possible
//! CPU; an allocation is an **offset** that is valid in every unit. This module manages the offset
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
//! or an allocation that breaks the chunk hint). This module reproduces that behaviour (see
//! [`LINUX_FREE_CHUNK_HINT_QUIRK`]) so chunk selection matches Linux.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use mm_types::PAGE_SIZE;

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
/// `pcpu_block_update_hint_free` (see the module documentation). `true` = faithful to Linux.
pub const LINUX_FREE_CHUNK_HINT_QUIRK: bool = true;

const B: usize = PCPU_BITMAP_BLOCK_BITS;

// ---------------------------------------------------------------------------------------------
// Bitmap helpers (Linux lib/bitmap.c / find_bit semantics on u64 words).
// ---------------------------------------------------------------------------------------------

fn bits_to_words(bits: usize) -> usize {
    bits.div_ceil(64)
}

fn test_bit(map: &[u64], i: usize) -> bool {
    map[i / 64] >> (i % 64) & 1 != 0
}

fn set_bit(map: &mut [u64], i: usize) {
    map[i / 64] |= 1 << (i % 64);
}

/// `bitmap_set` / `bitmap_clear` on `[start, start + n)`.
fn bitmap_assign(map: &mut [u64], start: usize, n: usize, value: bool) {
    let mut i = start;
    let end = start + n;
    while i < end {
        let w = i / 64;
        let lo = i % 64;
        let hi = core::cmp::min(64, lo + (end - i));
        let mask = if hi - lo == 64 { !0u64 } else { ((1u64 << (hi - lo)) - 1) << lo };
        if value {
            map[w] |= mask;
        } else {
            map[w] &= !mask;
        }
        i += hi - lo;
    }
}

/// `find_next_bit` (`invert == false`) / `find_next_zero_bit` (`invert == true`): the first bit
/// in `[start, size)` that is set (clear), or `size`.
fn find_next(map: &[u64], size: usize, start: usize, invert: bool) -> usize {
    if start >= size {
        return size;
    }
    let flip = if invert { !0u64 } else { 0 };
    let mut w = start / 64;
    let mut word = (map[w] ^ flip) & (!0u64 << (start % 64));
    loop {
        if word != 0 {
            return core::cmp::min(w * 64 + word.trailing_zeros() as usize, size);
        }
        w += 1;
        if w * 64 >= size {
            return size;
        }
        word = map[w] ^ flip;
    }
}

fn find_next_bit(map: &[u64], size: usize, start: usize) -> usize {
    find_next(map, size, start, false)
}

fn find_next_zero_bit(map: &[u64], size: usize, start: usize) -> usize {
    find_next(map, size, start, true)
}

/// The last set bit in `[lo, hi)` (Linux `find_last_bit` on a sub-bitmap).
fn find_last_bit_in(map: &[u64], lo: usize, hi: usize) -> Option<usize> {
    if hi <= lo {
        return None;
    }
    let mut w = (hi - 1) / 64;
    let top = (hi - 1) % 64;
    let mut word = map[w] & if top == 63 { !0u64 } else { (1u64 << (top + 1)) - 1 };
    loop {
        if word != 0 {
            let bit = w * 64 + 63 - word.leading_zeros() as usize;
            return if bit >= lo { Some(bit) } else { None };
        }
        if w * 64 <= lo || w == 0 {
            return None;
        }
        w -= 1;
        word = map[w];
    }
}

fn align_up(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

/// Linux `pcpu_region_overlap`: do `[a, b)` and `[x, y)` overlap?
fn region_overlap(a: usize, b: usize, x: usize, y: usize) -> bool {
    a < y && x < b
}

// ---------------------------------------------------------------------------------------------
// struct pcpu_block_md
// ---------------------------------------------------------------------------------------------

/// Linux `struct pcpu_block_md`: hints for one page of the bitmap (or, as `chunk_md`, for the
/// whole chunk). All fields are in bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PcpuBlockMd {
    /// Size of a known free area before `contig_hint_start` (0 = none).
    pub scan_hint: u32,
    pub scan_hint_start: u32,
    /// Largest known free area in the block.
    pub contig_hint: u32,
    pub contig_hint_start: u32,
    /// Free bits at the start of the block.
    pub left_free: u32,
    /// Free bits at the end of the block.
    pub right_free: u32,
    /// A lower bound on the first free bit.
    pub first_free: u32,
    /// Total bits this md describes.
    pub nr_bits: u32,
}

impl PcpuBlockMd {
    /// Linux `pcpu_init_md_block` (on zeroed memory, so the `*_start` fields are 0).
    fn init(nr_bits: usize) -> Self {
        let n = nr_bits as u32;
        Self {
            scan_hint: 0,
            scan_hint_start: 0,
            contig_hint: n,
            contig_hint_start: 0,
            left_free: n,
            right_free: n,
            first_free: 0,
            nr_bits: n,
        }
    }

    /// Linux `pcpu_check_block_hint`: does an `bits`-bit, `align`-aligned request fit the
    /// contig hint?
    fn check_block_hint(&self, bits: usize, align: usize) -> bool {
        let start = self.contig_hint_start as usize;
        let bit_off = align_up(start, align) - start;
        bit_off + bits <= self.contig_hint as usize
    }

    /// Linux `pcpu_next_hint`: where to start scanning - past the scan hint if the request is
    /// larger than it and the contig hint lies after it, else `first_free`.
    fn next_hint(&self, alloc_bits: usize) -> usize {
        if self.scan_hint != 0
            && self.contig_hint_start > self.scan_hint_start
            && alloc_bits > self.scan_hint as usize
        {
            return (self.scan_hint_start + self.scan_hint) as usize;
        }
        self.first_free as usize
    }

    /// Linux `pcpu_block_update`: account a free area `[start, end)` (the entire free extent).
    /// Signed like the C `int`s: the chunk-level quirk call passes `end < start`.
    fn update(&mut self, start: i64, end: i64) {
        let contig = end - start;
        self.first_free = core::cmp::min(self.first_free as i64, start) as u32;
        if start == 0 {
            self.left_free = contig as u32;
        }
        if end == self.nr_bits as i64 {
            self.right_free = contig as u32;
        }

        let contig_hint = self.contig_hint as i64;
        let contig_hint_start = self.contig_hint_start as i64;
        let scan_hint = self.scan_hint as i64;
        let scan_hint_start = self.scan_hint_start as i64;
        if contig > contig_hint {
            // promote the old contig_hint to be the new scan_hint
            if start > contig_hint_start {
                if contig_hint > scan_hint {
                    self.scan_hint_start = self.contig_hint_start;
                    self.scan_hint = self.contig_hint;
                } else if start < scan_hint_start {
                    // old contig_hint == scan_hint, keep scan_hint_start < contig_hint_start
                    self.scan_hint = 0;
                }
            } else {
                self.scan_hint = 0;
            }
            self.contig_hint_start = start as u32;
            self.contig_hint = contig as u32;
        } else if contig == contig_hint {
            if contig_hint_start != 0
                && (start == 0 || start.trailing_zeros() > contig_hint_start.trailing_zeros())
            {
                // start has a better alignment so use it
                self.contig_hint_start = start as u32;
                if start < scan_hint_start && contig_hint > scan_hint {
                    self.scan_hint = 0;
                }
            } else if start > scan_hint_start || contig_hint > scan_hint {
                self.scan_hint_start = start as u32;
                self.scan_hint = contig as u32;
            }
        } else if start < contig_hint_start
            && (contig > scan_hint || (contig == scan_hint && start > scan_hint_start))
        {
            // smaller than contig_hint: only a larger (or equal, farther) scan_hint
            self.scan_hint_start = start as u32;
            self.scan_hint = contig as u32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// struct pcpu_chunk
// ---------------------------------------------------------------------------------------------

/// Validate and convert a byte request the way `pcpu_alloc` does: `align` is raised to
/// [`PCPU_MIN_ALLOC_SIZE`], `size` rounded up to it. Returns `(alloc_bits, bit_align)` or `None`
/// for `size == 0`, a non-power-of-two `align` or `align > PAGE_SIZE`.
pub fn pcpu_request_bits(size: usize, align: usize) -> Option<(usize, usize)> {
    let align = core::cmp::max(align, PCPU_MIN_ALLOC_SIZE);
    let size = align_up(size, PCPU_MIN_ALLOC_SIZE);
    if size == 0 || align > PAGE_SIZE || !align.is_power_of_two() {
        return None;
    }
    Some((size >> PCPU_MIN_ALLOC_SHIFT, align >> PCPU_MIN_ALLOC_SHIFT))
}

/// Linux `struct pcpu_chunk` minus the memory side (`base_addr`, `data`): the allocation state of
/// one unit's offset space.
#[derive(Clone, Debug)]
pub struct PcpuChunk {
    nr_pages: usize,
    /// Bytes hidden at the start (Linux `start_offset`; the static area of the first chunk).
    start_offset: usize,
    /// Bytes hidden at the end (Linux `end_offset`).
    end_offset: usize,
    alloc_map: Vec<u64>,
    bound_map: Vec<u64>,
    md_blocks: Vec<PcpuBlockMd>,
    chunk_md: PcpuBlockMd,
    free_bytes: usize,
    populated: Vec<u64>,
    nr_populated: usize,
    nr_empty_pop_pages: i32,
    immutable: bool,
    nr_alloc: usize,
}

impl PcpuChunk {
    /// A dynamic chunk (Linux `pcpu_alloc_chunk`): `unit_size` bytes (a multiple of
    /// `PAGE_SIZE`), nothing populated. A non-zero `static_reserved` (rounded up to
    /// [`PCPU_MIN_ALLOC_SIZE`]) is hidden as allocated at the start, the way
    /// `pcpu_alloc_first_chunk` hides `start_offset`; it is never handed out nor freeable.
    pub fn new(unit_size: usize, static_reserved: usize) -> Self {
        assert!(
            unit_size > 0 && unit_size.is_multiple_of(PAGE_SIZE),
            "unit size must be whole pages"
        );
        let start_offset = align_up(static_reserved, PCPU_MIN_ALLOC_SIZE);
        assert!(start_offset < unit_size, "static reserve must leave room in the unit");
        let mut chunk = Self::blank(unit_size / PAGE_SIZE);
        chunk.free_bytes = unit_size;
        if start_offset != 0 {
            chunk.free_bytes -= start_offset;
            chunk.hide_start(start_offset);
        }
        chunk
    }

    /// The first chunk as `pcpu_alloc_first_chunk` builds it: the region starts `start_offset`
    /// bytes into its first page (the end of the static area) and serves `map_size` bytes; the
    /// region is rounded up to whole pages, both ends are hidden, everything is populated and the
    /// chunk is immutable (pre-mapped, never [de]populated).
    pub fn new_first_chunk(start_offset: usize, map_size: usize) -> Self {
        assert!(
            start_offset.is_multiple_of(PCPU_MIN_ALLOC_SIZE)
                && map_size.is_multiple_of(PCPU_MIN_ALLOC_SIZE)
        );
        assert!(map_size > 0);
        let region_size = align_up(start_offset + map_size, PAGE_SIZE);
        let nr_pages = region_size / PAGE_SIZE;
        let mut chunk = Self::blank(nr_pages);
        chunk.immutable = true;
        bitmap_assign(&mut chunk.populated, 0, nr_pages, true);
        chunk.nr_populated = nr_pages;
        chunk.nr_empty_pop_pages = nr_pages as i32;
        chunk.free_bytes = map_size;
        if start_offset != 0 {
            chunk.hide_start(start_offset);
        }
        let end_offset = region_size - start_offset - map_size;
        if end_offset != 0 {
            // hide the end of the bitmap
            let offset_bits = end_offset / PCPU_MIN_ALLOC_SIZE;
            let map_bits = chunk.map_bits();
            chunk.end_offset = end_offset;
            bitmap_assign(&mut chunk.alloc_map, map_bits - offset_bits, offset_bits, true);
            set_bit(&mut chunk.bound_map, (start_offset + map_size) / PCPU_MIN_ALLOC_SIZE);
            set_bit(&mut chunk.bound_map, map_bits);
            chunk.block_update_hint_alloc(map_bits - offset_bits, offset_bits);
        }
        chunk
    }

    fn blank(nr_pages: usize) -> Self {
        let map_bits = nr_pages * B;
        let mut chunk = Self {
            nr_pages,
            start_offset: 0,
            end_offset: 0,
            alloc_map: vec![0; bits_to_words(map_bits)],
            bound_map: vec![0; bits_to_words(map_bits + 1)],
            md_blocks: Vec::new(),
            chunk_md: PcpuBlockMd::init(map_bits),
            free_bytes: 0,
            populated: vec![0; bits_to_words(nr_pages)],
            nr_populated: 0,
            nr_empty_pop_pages: 0,
            immutable: false,
            nr_alloc: 0,
        };
        // pcpu_init_md_blocks
        chunk.md_blocks = vec![PcpuBlockMd::init(B); nr_pages];
        chunk
    }

    /// The "hide the beginning of the bitmap" step of `pcpu_alloc_first_chunk`.
    fn hide_start(&mut self, start_offset: usize) {
        let offset_bits = start_offset / PCPU_MIN_ALLOC_SIZE;
        self.start_offset = start_offset;
        bitmap_assign(&mut self.alloc_map, 0, offset_bits, true);
        set_bit(&mut self.bound_map, 0);
        set_bit(&mut self.bound_map, offset_bits);
        self.chunk_md.first_free = offset_bits as u32;
        self.block_update_hint_alloc(0, offset_bits);
    }

    // --- geometry and accessors -----------------------------------------------------------

    /// Linux `pcpu_chunk_map_bits`.
    fn map_bits(&self) -> usize {
        self.nr_pages * B
    }

    /// Pages per unit (Linux `chunk->nr_pages`).
    pub fn nr_pages(&self) -> usize {
        self.nr_pages
    }

    /// Bytes of offset space (`nr_pages * PAGE_SIZE`).
    pub fn unit_size(&self) -> usize {
        self.nr_pages * PAGE_SIZE
    }

    /// Bytes that can ever be allocated (unit minus the hidden start/end).
    pub fn usable_bytes(&self) -> usize {
        self.unit_size() - self.start_offset - self.end_offset
    }

    /// Hidden bytes at the start (the static reserve / Linux `start_offset`).
    pub fn start_offset(&self) -> usize {
        self.start_offset
    }

    /// Linux `chunk->free_bytes`.
    pub fn free_bytes(&self) -> usize {
        self.free_bytes
    }

    /// `chunk_md.contig_hint` in bytes: the chunk's (possibly under-estimated, never
    /// over-estimated) largest free area, which decides its slot.
    pub fn contig_hint(&self) -> usize {
        self.chunk_md.contig_hint as usize * PCPU_MIN_ALLOC_SIZE
    }

    /// No allocations besides the hidden static/end areas.
    pub fn is_empty(&self) -> bool {
        self.free_bytes == self.usable_bytes()
    }

    /// Live allocations (Linux's `chunk->nr_alloc` statistic).
    pub fn nr_alloc(&self) -> usize {
        self.nr_alloc
    }

    /// Linux `chunk->nr_populated`.
    pub fn nr_populated(&self) -> usize {
        self.nr_populated
    }

    /// Linux `chunk->nr_empty_pop_pages`. Like Linux it is `nr_populated` minus the number of
    /// pages holding an allocation, so it is transiently negative between an allocation in
    /// unpopulated pages and their population.
    pub fn nr_empty_pop_pages(&self) -> i32 {
        self.nr_empty_pop_pages
    }

    /// Linux `chunk->immutable`: pre-mapped, never [de]populated (the first chunk).
    pub fn immutable(&self) -> bool {
        self.immutable
    }

    /// The chunk-level md (`chunk->chunk_md`).
    pub fn chunk_md(&self) -> &PcpuBlockMd {
        &self.chunk_md
    }

    /// The md of page `index` (`chunk->md_blocks[index]`).
    pub fn block_md(&self, index: usize) -> &PcpuBlockMd {
        &self.md_blocks[index]
    }

    /// Is page `page` backed?
    pub fn is_page_populated(&self, page: usize) -> bool {
        test_bit(&self.populated, page)
    }

    /// Holds page `page` no allocation (its block's `contig_hint` covers it, the test Linux's
    /// `pcpu_reclaim_populated` uses)?
    pub fn is_page_empty(&self, page: usize) -> bool {
        self.md_blocks[page].contig_hint as usize == B
    }

    // --- allocation ---------------------------------------------------------------------------

    /// Allocate `size` bytes aligned to `align` (power of two, at most `PAGE_SIZE`; raised to 4)
    /// and return the offset in the unit: `pcpu_find_block_fit` then `pcpu_alloc_area`, as
    /// `pcpu_alloc` does for one chunk (non-atomic: unpopulated pages may be used).
    pub fn alloc(&mut self, size: usize, align: usize) -> Option<usize> {
        self.alloc_ext(size, align, false)
    }

    /// [`Self::alloc`] with Linux's `pop_only` (atomic allocations use populated pages only).
    pub fn alloc_ext(&mut self, size: usize, align: usize, pop_only: bool) -> Option<usize> {
        let (bits, bit_align) = pcpu_request_bits(size, align)?;
        let start = self.find_block_fit(bits, bit_align, pop_only)?;
        self.alloc_area(bits, bit_align, start)
    }

    /// Linux `pcpu_find_block_fit`: the bit offset to start `pcpu_alloc_area`'s scan from, or
    /// `None` if the hints say the request cannot fit. `align` is in bits (power of two,
    /// at most `PCPU_BITMAP_BLOCK_BITS`).
    pub fn find_block_fit(&self, alloc_bits: usize, align: usize, pop_only: bool) -> Option<usize> {
        // If it cannot fit in the chunk's contig hint, there is memory pressure and a new chunk
        // would be created soon anyway: do not scan.
        if !self.chunk_md.check_block_hint(alloc_bits, align) {
            return None;
        }
        let map_bits = self.map_bits();
        let start = self.chunk_md.next_hint(alloc_bits);
        // pcpu_for_each_fit_region
        let (mut bit_off, mut bits) = self.next_fit_region(alloc_bits, align, start);
        while bit_off < map_bits {
            if !pop_only {
                break;
            }
            match self.is_populated(bit_off, bits) {
                Ok(()) => break,
                Err(next_off) => {
                    bit_off = next_off;
                    bits = 0;
                }
            }
            (bit_off, bits) = self.next_fit_region(alloc_bits, align, bit_off + bits);
        }
        if bit_off >= map_bits {
            return None;
        }
        Some(bit_off)
    }

    /// Linux `pcpu_is_populated`: are the pages under `[bit_off, bit_off + bits)` populated?
    /// On failure returns the bit offset after the first unpopulated run (`next_off`).
    fn is_populated(&self, bit_off: usize, bits: usize) -> Result<(), usize> {
        let start = bit_off * PCPU_MIN_ALLOC_SIZE / PAGE_SIZE;
        let end = ((bit_off + bits) * PCPU_MIN_ALLOC_SIZE).div_ceil(PAGE_SIZE);
        let start = find_next_zero_bit(&self.populated, end, start);
        if start >= end {
            return Ok(());
        }
        let end = find_next_bit(&self.populated, end, start + 1);
        Err(end * PAGE_SIZE / PCPU_MIN_ALLOC_SIZE)
    }

    /// Linux `pcpu_next_fit_region`: the next region, found from the block hints only, that can
    /// hold the request, as `(bit_off, bits)`; `bit_off == map_bits` when there is none.
    fn next_fit_region(&self, alloc_bits: usize, align: usize, from: usize) -> (usize, usize) {
        let nr_blocks = self.nr_pages;
        let mut i = from / B;
        let mut block_off = from % B;
        let mut bit_off = from;
        let mut bits = 0usize;
        while i < nr_blocks {
            let block = &self.md_blocks[i];
            // handles contig area across blocks
            if bits != 0 {
                bits += block.left_free as usize;
                if bits >= alloc_bits {
                    return (bit_off, bits);
                }
                if block.left_free as usize == B {
                    i += 1;
                    continue;
                }
            }

            // check block->contig_hint
            let chs = block.contig_hint_start as usize;
            bits = align_up(chs, align) - chs;
            // block_off tells whether this hint was checked in the previous iteration
            if block.contig_hint != 0
                && chs >= block_off
                && block.contig_hint as usize >= bits + alloc_bits
            {
                let start = block.next_hint(alloc_bits);
                bits = bits + alloc_bits + chs - start;
                return (i * B + start, bits);
            }
            // reset to satisfy the second predicate above
            block_off = 0;

            let off = align_up(B - block.right_free as usize, align);
            bits = B - off;
            bit_off = i * B + off;
            if bits >= alloc_bits {
                return (bit_off, bits);
            }
            i += 1;
        }
        // no valid offsets were found - fail condition
        (self.map_bits(), bits)
    }

    /// Linux `pcpu_next_md_free_region`: the next free area the block hints know of (a block's
    /// contig hint, or right_free/left_free runs merged across blocks), as `(bit_off, bits)`.
    fn next_md_free_region(&self, from: usize) -> (usize, usize) {
        let nr_blocks = self.nr_pages;
        let mut i = from / B;
        let mut block_off = from % B;
        let mut bit_off = from;
        let mut bits = 0usize;
        while i < nr_blocks {
            let block = &self.md_blocks[i];
            // handles contig area across blocks
            if bits != 0 {
                bits += block.left_free as usize;
                if block.left_free as usize == B {
                    i += 1;
                    continue;
                }
                return (bit_off, bits);
            }

            // a contig_hint not yet checked that does not spill into the next block
            bits = block.contig_hint as usize;
            let chs = block.contig_hint_start as usize;
            if bits != 0 && chs >= block_off && bits + chs < B {
                return (i * B + chs, bits);
            }
            block_off = 0;

            bits = block.right_free as usize;
            bit_off = (i + 1) * B - bits;
            i += 1;
        }
        (bit_off, bits)
    }

    /// Linux `pcpu_find_zero_area` (a `bitmap_find_next_zero_area_off` that remembers the
    /// largest free area it skipped): returns `(index, largest_off, largest_bits)`; `index + nr >
    /// size` means no fit.
    fn find_zero_area(
        &self,
        size: usize,
        mut start: usize,
        nr: usize,
        align_mask: usize,
    ) -> (usize, usize, usize) {
        let map = &self.alloc_map;
        let mut largest_off = 0usize;
        let mut largest_bits = 0usize;
        loop {
            let index = find_next_zero_bit(map, size, start);
            // align allocation
            let index = (index + align_mask) & !align_mask;
            let area_off = index;
            let end = index + nr;
            if end > size {
                return (end, largest_off, largest_bits);
            }
            let i = find_next_bit(map, end, index);
            if i < end {
                let area_bits = i - area_off;
                // remember largest unused area with best alignment
                if area_bits > largest_bits
                    || (area_bits == largest_bits
                        && largest_off != 0
                        && (area_off == 0
                            || area_off.trailing_zeros() > largest_off.trailing_zeros()))
                {
                    largest_off = area_off;
                    largest_bits = area_bits;
                }
                start = i + 1;
                continue;
            }
            return (index, largest_off, largest_bits);
        }
    }

    /// Linux `pcpu_alloc_area`: scan from `start` (found by [`Self::find_block_fit`]) for
    /// `alloc_bits` free bits aligned to `align` bits, mark them in the allocation and boundary
    /// maps and update the hints. Returns the byte offset. (The slot relocation Linux does here
    /// is the caller's: see [`ChunkList::relocate`] / [`PcpuPool`].)
    pub fn alloc_area(&mut self, alloc_bits: usize, align: usize, start: usize) -> Option<usize> {
        let align_mask = if align != 0 { align - 1 } else { 0 };
        let map_bits = self.map_bits();
        let end = core::cmp::min(start + alloc_bits + B, map_bits);
        let (bit_off, area_off, area_bits) =
            self.find_zero_area(end, start, alloc_bits, align_mask);
        if bit_off >= end {
            return None;
        }
        if area_bits != 0 {
            self.block_update_scan(area_off, area_bits);
        }

        // update alloc map
        bitmap_assign(&mut self.alloc_map, bit_off, alloc_bits, true);
        // update boundary map
        set_bit(&mut self.bound_map, bit_off);
        bitmap_assign(&mut self.bound_map, bit_off + 1, alloc_bits - 1, false);
        set_bit(&mut self.bound_map, bit_off + alloc_bits);

        self.free_bytes -= alloc_bits * PCPU_MIN_ALLOC_SIZE;

        // update first free bit
        if bit_off == self.chunk_md.first_free as usize {
            self.chunk_md.first_free =
                find_next_zero_bit(&self.alloc_map, map_bits, bit_off + alloc_bits) as u32;
        }

        self.block_update_hint_alloc(bit_off, alloc_bits);
        self.nr_alloc += 1;
        Some(bit_off * PCPU_MIN_ALLOC_SIZE)
    }

    /// Free the allocation starting at byte `offset` (Linux `pcpu_free_area`): its size comes from
    /// the boundary map; returns the bytes freed. Unlike Linux, an offset that is not the start
    /// of a live allocation is rejected instead of corrupting the maps.
    pub fn free(&mut self, offset: usize) -> Result<usize, &'static str> {
        if !offset.is_multiple_of(PCPU_MIN_ALLOC_SIZE) {
            return Err("percpu free: offset is not a multiple of PCPU_MIN_ALLOC_SIZE");
        }
        if offset < self.start_offset || offset >= self.unit_size() - self.end_offset {
            return Err("percpu free: offset outside the chunk's dynamic area");
        }
        let bit_off = offset / PCPU_MIN_ALLOC_SIZE;
        if !test_bit(&self.alloc_map, bit_off) {
            return Err("percpu free: offset is not allocated");
        }
        // The boundary map keeps stale bits only in free space and at area ends, never inside a
        // live allocation, so an allocated bit with its boundary bit set starts an allocation.
        if !test_bit(&self.bound_map, bit_off) {
            return Err("percpu free: offset is inside an allocation, not at its start");
        }
        Ok(self.free_area(bit_off))
    }

    /// Linux `pcpu_free_area` (the bit offset is known valid).
    fn free_area(&mut self, bit_off: usize) -> usize {
        let map_bits = self.map_bits();
        // find end index
        let end = find_next_bit(&self.bound_map, map_bits, bit_off + 1);
        let bits = end - bit_off;
        bitmap_assign(&mut self.alloc_map, bit_off, bits, false);

        let freed = bits * PCPU_MIN_ALLOC_SIZE;
        self.free_bytes += freed;
        // update first free bit
        self.chunk_md.first_free = core::cmp::min(self.chunk_md.first_free, bit_off as u32);

        self.block_update_hint_free(bit_off, bits);
        self.nr_alloc -= 1;
        freed
    }

    // --- hint maintenance -----------------------------------------------------------------

    /// Linux `pcpu_update_empty_pages` (chunk part; the global count is [`PcpuPool`]'s).
    fn update_empty_pages(&mut self, nr: i32) {
        self.nr_empty_pop_pages += nr;
    }

    /// Linux `pcpu_block_update_scan`: a free area skipped by the alloc scan (because of
    /// alignment) may deserve to be the block's scan hint; scan backwards for its real start.
    fn block_update_scan(&mut self, bit_off: usize, bits: usize) {
        let s_off = bit_off % B;
        let e_off = s_off + bits;
        if e_off > B {
            return;
        }
        let s_index = bit_off / B;
        let base = s_index * B;
        // scan backwards in case of alignment skipping free bits
        let s_off = match find_last_bit_in(&self.alloc_map, base, base + s_off) {
            Some(l_bit) => l_bit - base + 1,
            None => 0,
        };
        self.md_blocks[s_index].update(s_off as i64, e_off as i64);
    }

    /// Linux `pcpu_chunk_refresh_hint`: recompute `chunk_md` from the block hints, either from
    /// `first_free` (full scan) or by promoting the scan hint and scanning past it.
    fn chunk_refresh_hint(&mut self, full_scan: bool) {
        let mut bit_off;
        let md = &mut self.chunk_md;
        // promote scan_hint to contig_hint
        if !full_scan && md.scan_hint != 0 {
            bit_off = (md.scan_hint_start + md.scan_hint) as usize;
            md.contig_hint_start = md.scan_hint_start;
            md.contig_hint = md.scan_hint;
            md.scan_hint = 0;
        } else {
            bit_off = md.first_free as usize;
            md.contig_hint = 0;
        }

        // pcpu_for_each_md_free_region
        let map_bits = self.map_bits();
        let mut bits;
        (bit_off, bits) = self.next_md_free_region(bit_off);
        while bit_off < map_bits {
            self.chunk_md.update(bit_off as i64, (bit_off + bits) as i64);
            (bit_off, bits) = self.next_md_free_region(bit_off + bits + 1);
        }
    }

    /// Linux `pcpu_block_refresh_hint`: rescan one block's bitmap (from past the promoted scan
    /// hint, or from `first_free`) to rebuild its contig/scan hints and right_free.
    fn block_refresh_hint(&mut self, index: usize) {
        let base = index * B;
        let block = &mut self.md_blocks[index];
        let map = &self.alloc_map;
        // promote scan_hint to contig_hint
        let start = if block.scan_hint != 0 {
            let start = (block.scan_hint_start + block.scan_hint) as usize;
            block.contig_hint_start = block.scan_hint_start;
            block.contig_hint = block.scan_hint;
            block.scan_hint = 0;
            start
        } else {
            block.contig_hint = 0;
            block.first_free as usize
        };
        block.right_free = 0;

        // iterate over free areas and update the contig hints (for_each_clear_bitrange_from)
        let size = base + B;
        let mut rs = find_next_zero_bit(map, size, base + start);
        while rs < size {
            let re = find_next_bit(map, size, rs + 1);
            block.update((rs - base) as i64, (re - base) as i64);
            rs = find_next_zero_bit(map, size, re + 1);
        }
    }

    /// Linux `pcpu_block_update_hint_alloc`: update the block and chunk hints for the allocation
    /// `[bit_off, bit_off + bits)`; blocks are rescanned only if their contig hint broke, the
    /// chunk only if its contig hint broke.
    fn block_update_hint_alloc(&mut self, bit_off: usize, bits: usize) {
        let mut nr_empty_pages = 0i32;
        let s_index = bit_off / B;
        let e_index = (bit_off + bits - 1) / B;
        let s_off = bit_off % B;
        let e_off = (bit_off + bits - 1) % B + 1;
        let s_base = s_index * B;
        let e_base = e_index * B;

        // Update s_block.
        {
            let s_block = &mut self.md_blocks[s_index];
            if s_block.contig_hint as usize == B {
                nr_empty_pages += 1;
            }
            // block->first_free must be updated if the allocation takes its place
            if s_off == s_block.first_free as usize {
                s_block.first_free =
                    (find_next_zero_bit(&self.alloc_map, s_base + B, s_base + s_off + bits)
                        - s_base) as u32;
            }
            if region_overlap(
                s_block.scan_hint_start as usize,
                (s_block.scan_hint_start + s_block.scan_hint) as usize,
                s_off,
                s_off + bits,
            ) {
                s_block.scan_hint = 0;
            }
        }
        let s_block = self.md_blocks[s_index];
        if region_overlap(
            s_block.contig_hint_start as usize,
            (s_block.contig_hint_start + s_block.contig_hint) as usize,
            s_off,
            s_off + bits,
        ) {
            // block contig hint is broken - scan to fix it
            if s_off == 0 {
                self.md_blocks[s_index].left_free = 0;
            }
            self.block_refresh_hint(s_index);
        } else {
            // update left and right contig manually
            let s_block = &mut self.md_blocks[s_index];
            s_block.left_free = core::cmp::min(s_block.left_free, s_off as u32);
            if s_index == e_index {
                s_block.right_free = core::cmp::min(s_block.right_free, (B - e_off) as u32);
            } else {
                s_block.right_free = 0;
            }
        }

        // Update e_block.
        if s_index != e_index {
            let mut middle_end = e_index;
            if self.md_blocks[e_index].contig_hint as usize == B {
                nr_empty_pages += 1;
            }
            // the end of a cross-block allocation is along the left part of e_block
            self.md_blocks[e_index].first_free =
                (find_next_zero_bit(&self.alloc_map, e_base + B, e_base + e_off) - e_base) as u32;

            if e_off == B {
                // reset the block (with the in-between ones)
                middle_end = e_index + 1;
            } else {
                let e_block = &mut self.md_blocks[e_index];
                if e_off > e_block.scan_hint_start as usize {
                    e_block.scan_hint = 0;
                }
                e_block.left_free = 0;
                if e_off > e_block.contig_hint_start as usize {
                    // contig hint is broken - scan to fix it
                    self.block_refresh_hint(e_index);
                } else {
                    let e_block = &mut self.md_blocks[e_index];
                    e_block.right_free = core::cmp::min(e_block.right_free, (B - e_off) as u32);
                }
            }

            // update in-between md_blocks
            nr_empty_pages += (e_index - s_index - 1) as i32;
            for block in &mut self.md_blocks[s_index + 1..middle_end] {
                block.scan_hint = 0;
                block.contig_hint = 0;
                block.left_free = 0;
                block.right_free = 0;
            }
        }

        // If the allocation is not atomic, some blocks may not be populated yet; they are added
        // back by pcpu_chunk_populated().
        if nr_empty_pages != 0 {
            self.update_empty_pages(-nr_empty_pages);
        }

        let md = &mut self.chunk_md;
        if region_overlap(
            md.scan_hint_start as usize,
            (md.scan_hint_start + md.scan_hint) as usize,
            bit_off,
            bit_off + bits,
        ) {
            md.scan_hint = 0;
        }
        // The only time a full chunk scan is required is if the chunk contig hint is broken.
        if region_overlap(
            md.contig_hint_start as usize,
            (md.contig_hint_start + md.contig_hint) as usize,
            bit_off,
            bit_off + bits,
        ) {
            self.chunk_refresh_hint(false);
        }
    }

    /// Linux `pcpu_block_update_hint_free`: merge the freed `[bit_off, bit_off + bits)` with the
    /// free space around it (using the contig hints, else scanning to the block edges), update
    /// the touched blocks, reset fully covered blocks, and refresh the chunk hint when a page
    /// becomes free or the free spans blocks.
    fn block_update_hint_free(&mut self, bit_off: usize, bits: usize) {
        let mut nr_empty_pages = 0i32;
        let s_index = bit_off / B;
        let e_index = (bit_off + bits - 1) / B;
        let s_off = bit_off % B;
        let e_off = (bit_off + bits - 1) % B + 1;
        let s_base = s_index * B;
        let e_base = e_index * B;
        let s_block = self.md_blocks[s_index];
        let e_block = self.md_blocks[e_index];

        // start and end of the whole free area within their respective blocks
        let start = if s_off == (s_block.contig_hint + s_block.contig_hint_start) as usize {
            s_block.contig_hint_start as usize
        } else {
            // scan backwards to find the extent of the free area
            match find_last_bit_in(&self.alloc_map, s_base, s_base + s_off) {
                Some(l_bit) => l_bit - s_base + 1,
                None => 0,
            }
        };
        let end = if e_off == e_block.contig_hint_start as usize {
            (e_block.contig_hint_start + e_block.contig_hint) as usize
        } else {
            find_next_bit(&self.alloc_map, e_base + B, e_base + e_off) - e_base
        };

        // update s_block
        let s_end = if s_index == e_index { end } else { B };
        if start == 0 && s_end == B {
            nr_empty_pages += 1;
        }
        self.md_blocks[s_index].update(start as i64, s_end as i64);

        // freeing across blocks
        if s_index != e_index {
            // update e_block
            if end == B {
                nr_empty_pages += 1;
            }
            self.md_blocks[e_index].update(0, end as i64);

            // reset md_blocks in the middle
            nr_empty_pages += (e_index - s_index - 1) as i32;
            for block in &mut self.md_blocks[s_index + 1..e_index] {
                block.first_free = 0;
                block.scan_hint = 0;
                block.contig_hint_start = 0;
                block.contig_hint = B as u32;
                block.left_free = B as u32;
                block.right_free = B as u32;
            }
        }

        if nr_empty_pages != 0 {
            self.update_empty_pages(nr_empty_pages);
        }

        // Refresh chunk metadata when the free makes a block free or spans across blocks.
        if end as i64 - start as i64 >= B as i64 || s_index != e_index {
            self.chunk_refresh_hint(true);
        } else {
            let chunk_end = if LINUX_FREE_CHUNK_HINT_QUIRK { end } else { s_base + end };
            self.chunk_md.update((s_base + start) as i64, chunk_end as i64);
        }
    }

    // --- population -------------------------------------------------------------------------

    /// Page range `[PFN_DOWN(offset), PFN_UP(offset + size))` of an allocation.
    pub fn page_range(offset: usize, size: usize) -> Range<usize> {
        offset / PAGE_SIZE..(offset + size).div_ceil(PAGE_SIZE)
    }

    /// The first run of unpopulated pages in `[from, end)` (`for_each_clear_bitrange_from`), as
    /// `pcpu_alloc` walks them to populate an allocation. Re-query after each
    /// [`Self::mark_populated`].
    pub fn next_unpopulated_range(&self, from: usize, end: usize) -> Option<Range<usize>> {
        let end = core::cmp::min(end, self.nr_pages);
        let rs = find_next_zero_bit(&self.populated, end, from);
        if rs >= end {
            return None;
        }
        Some(rs..find_next_bit(&self.populated, end, rs + 1))
    }

    /// Runs of unpopulated pages under the allocation `[offset, offset + size)`.
    pub fn unpopulated_ranges(&self, offset: usize, size: usize) -> RangeIter<'_> {
        let r = Self::page_range(offset, size);
        RangeIter {
            map: &self.populated,
            next: r.start,
            end: core::cmp::min(r.end, self.nr_pages),
            set: false,
        }
    }

    /// Page indexes under `[offset, offset + size)` that are not populated yet.
    pub fn pages_needing_population(
        &self,
        offset: usize,
        size: usize,
    ) -> impl Iterator<Item = usize> + '_ {
        self.unpopulated_ranges(offset, size).flatten()
    }

    /// Runs of populated pages in the whole chunk (`for_each_set_bitrange`), e.g. to unmap them
    /// before destroying it.
    pub fn populated_ranges(&self) -> RangeIter<'_> {
        RangeIter { map: &self.populated, next: 0, end: self.nr_pages, set: true }
    }

    /// Linux `pcpu_chunk_populated` (chunk part): pages `range` are now backed.
    pub fn mark_populated(&mut self, range: Range<usize>) {
        assert!(range.end <= self.nr_pages);
        debug_assert!(
            find_next_bit(&self.populated, range.end, range.start) >= range.end,
            "populating already populated pages"
        );
        let nr = range.len();
        bitmap_assign(&mut self.populated, range.start, nr, true);
        self.nr_populated += nr;
        self.update_empty_pages(nr as i32);
    }

    /// Linux `pcpu_chunk_depopulated` (chunk part): pages `range` are no longer backed. Linux
    /// only depopulates pages that hold no allocation.
    pub fn depopulate_range(&mut self, range: Range<usize>) {
        assert!(range.end <= self.nr_pages);
        debug_assert!(
            find_next_zero_bit(&self.populated, range.end, range.start) >= range.end,
            "depopulating unpopulated pages"
        );
        debug_assert!(range.clone().all(|p| self.is_page_empty(p)), "depopulating a used page");
        let nr = range.len();
        bitmap_assign(&mut self.populated, range.start, nr, false);
        self.nr_populated -= nr;
        self.update_empty_pages(-(nr as i32));
    }

    /// [`Self::depopulate_range`] for one page.
    pub fn depopulate(&mut self, page: usize) {
        self.depopulate_range(page..page + 1);
    }

    // --- verification -----------------------------------------------------------------------

    /// Recompute everything from the bitmaps and compare with the maintained metadata.
    ///
    /// Linux's hints are *hints*: differential testing against Linux's own C functions shows
    /// that a block's `contig_hint` and `right_free` can under-estimate (`pcpu_block_refresh_hint`
    /// promotes a scan hint and rescans only past it, and resets `right_free` first) and that
    /// `first_free` is only a lower bound. So this checks what Linux guarantees: every hint names
    /// space that really is free and never over-states it, a block's `contig_hint` is whole
    /// (`PCPU_BITMAP_BLOCK_BITS`) exactly when the page is empty, and the counters
    /// (`free_bytes`, `nr_populated`, `nr_empty_pop_pages`, live areas vs boundary map) are exact.
    pub fn check_hints(&self) -> Result<(), String> {
        let map = &self.alloc_map;
        let map_bits = self.map_bits();
        let mut zeros = 0usize;
        let mut nonempty_blocks = 0usize;
        let is_free_run = |start: usize, len: usize| -> bool {
            len == 0 || find_next_bit(map, start + len, start) >= start + len
        };
        let mut global_max = 0usize;
        let mut global_run = 0usize;
        let mut global_first_zero = map_bits;
        for (i, block) in self.md_blocks.iter().enumerate() {
            let base = i * B;
            let mut max_run = 0usize;
            let mut run = 0usize;
            let mut left = None;
            let mut first_zero = B;
            let mut block_zeros = 0;
            for b in 0..B {
                if test_bit(map, base + b) {
                    if left.is_none() {
                        left = Some(b);
                    }
                    run = 0;
                    global_run = 0;
                } else {
                    if first_zero == B {
                        first_zero = b;
                    }
                    if global_first_zero == map_bits {
                        global_first_zero = base + b;
                    }
                    block_zeros += 1;
                    run += 1;
                    global_run += 1;
                    max_run = max_run.max(run);
                    global_max = global_max.max(global_run);
                }
            }
            zeros += block_zeros;
            if block_zeros != B {
                nonempty_blocks += 1;
            }
            let left = left.unwrap_or(B);
            let right = run;
            let err = |what: &str| {
                Err(format!(
                    "block {i}: {what}: md {block:?}, bitmap max_run {max_run} left {left} right {right} first_zero {first_zero}"
                ))
            };
            let (ch, chs) = (block.contig_hint as usize, block.contig_hint_start as usize);
            if block.nr_bits as usize != B {
                return err("nr_bits");
            }
            if ch > max_run || chs + ch > B || !is_free_run(base + chs, ch) {
                return err("contig_hint names space that is not free");
            }
            if (ch == B) != (block_zeros == B) {
                return err("contig_hint == PCPU_BITMAP_BLOCK_BITS must mean an empty page");
            }
            if block.left_free as usize > left {
                return err("left_free over-estimates the free bits at the block start");
            }
            if block.right_free as usize > right {
                return err("right_free over-estimates the free bits at the block end");
            }
            if block.first_free as usize > first_zero {
                return err("first_free is past the first free bit");
            }
            if block.scan_hint != 0
                && (block.scan_hint > block.contig_hint
                    || block.scan_hint_start as usize + block.scan_hint as usize > B
                    || !is_free_run(
                        base + block.scan_hint_start as usize,
                        block.scan_hint as usize,
                    ))
            {
                return err("scan_hint area is not free or exceeds contig_hint");
            }
        }

        let md = &self.chunk_md;
        let cerr = |what: &str| {
            Err(format!("chunk_md: {what}: md {md:?}, bitmap max_run {global_max} first_zero {global_first_zero}"))
        };
        if md.contig_hint as usize > global_max {
            return cerr("contig_hint over-estimates the largest free run");
        }
        if md.contig_hint_start as usize + md.contig_hint as usize > map_bits
            || !is_free_run(md.contig_hint_start as usize, md.contig_hint as usize)
        {
            return cerr("contig_hint area is not free");
        }
        if md.first_free as usize > global_first_zero {
            return cerr("first_free is past the first free bit");
        }
        if md.scan_hint != 0
            && (md.scan_hint_start as usize + md.scan_hint as usize > map_bits
                || !is_free_run(md.scan_hint_start as usize, md.scan_hint as usize))
        {
            return cerr("scan_hint area is not free");
        }

        if zeros * PCPU_MIN_ALLOC_SIZE != self.free_bytes {
            return Err(format!("free_bytes {} but {} free bits", self.free_bytes, zeros));
        }
        let pop: usize = self.populated.iter().map(|w| w.count_ones() as usize).sum();
        if pop != self.nr_populated {
            return Err(format!("nr_populated {} but {} bits set", self.nr_populated, pop));
        }
        let expect_empty = self.nr_populated as i64 - nonempty_blocks as i64;
        if self.nr_empty_pop_pages as i64 != expect_empty {
            return Err(format!(
                "nr_empty_pop_pages {} but populated {} - non-empty pages {}",
                self.nr_empty_pop_pages, self.nr_populated, nonempty_blocks
            ));
        }

        // Boundary map: every allocated run starts and ends on a boundary bit; the number of
        // allocated bits carrying a boundary bit is the number of areas (live + hidden).
        let mut starts = 0usize;
        let mut p = find_next_bit(map, map_bits, 0);
        while p < map_bits {
            let e = find_next_zero_bit(map, map_bits, p);
            if !test_bit(&self.bound_map, p) || !test_bit(&self.bound_map, e) {
                return Err(format!("allocated run [{p}, {e}) lacks boundary bits"));
            }
            let mut q = p;
            while q < e {
                starts += 1;
                q = find_next_bit(&self.bound_map, e, q + 1);
            }
            p = find_next_bit(map, map_bits, e);
        }
        let hidden = (self.start_offset != 0) as usize + (self.end_offset != 0) as usize;
        if starts != self.nr_alloc + hidden {
            return Err(format!(
                "{} areas in the maps but nr_alloc {} (+{hidden} hidden)",
                starts, self.nr_alloc
            ));
        }
        Ok(())
    }

    /// The largest free run in bytes, from the bitmap (for tests and statistics).
    pub fn max_free_run(&self) -> usize {
        let map_bits = self.map_bits();
        let mut best = 0;
        let mut p = find_next_zero_bit(&self.alloc_map, map_bits, 0);
        while p < map_bits {
            let e = find_next_bit(&self.alloc_map, map_bits, p);
            best = best.max(e - p);
            p = find_next_zero_bit(&self.alloc_map, map_bits, e);
        }
        best * PCPU_MIN_ALLOC_SIZE
    }
}

/// Iterator over runs of set (or clear) bits of a chunk's populated bitmap.
pub struct RangeIter<'a> {
    map: &'a [u64],
    next: usize,
    end: usize,
    set: bool,
}

impl Iterator for RangeIter<'_> {
    type Item = Range<usize>;
    fn next(&mut self) -> Option<Range<usize>> {
        let rs = find_next(self.map, self.end, self.next, !self.set);
        if rs >= self.end {
            self.next = self.end;
            return None;
        }
        let re = find_next(self.map, self.end, rs + 1, self.set);
        self.next = re;
        Some(rs..re)
    }
}

// ---------------------------------------------------------------------------------------------
// Slots and chunk lists
// ---------------------------------------------------------------------------------------------

/// Linux's slot geometry (`pcpu_setup_first_chunk`): active slots `0..=__pcpu_size_to_slot(unit)`,
/// then `sidelined_slot` (isolated, depopulated chunks), `free_slot` (fully free chunks) and
/// `to_depopulate_slot` (isolated chunks awaiting depopulation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcpuSlots {
    /// Linux `pcpu_unit_size`.
    pub unit_size: usize,
    pub sidelined_slot: usize,
    pub free_slot: usize,
    pub to_depopulate_slot: usize,
    pub nr_slots: usize,
}

impl PcpuSlots {
    pub fn new(unit_size: usize) -> Self {
        let sidelined_slot = Self::raw_size_to_slot(unit_size) + 1;
        Self {
            unit_size,
            sidelined_slot,
            free_slot: sidelined_slot + 1,
            to_depopulate_slot: sidelined_slot + 2,
            nr_slots: sidelined_slot + 3,
        }
    }

    /// Linux `__pcpu_size_to_slot`: `max(fls(size) - PCPU_SLOT_BASE_SHIFT + 2, 1)`.
    pub fn raw_size_to_slot(size: usize) -> usize {
        let highbit = (usize::BITS - size.leading_zeros()) as i64; // fls
        core::cmp::max(highbit - PCPU_SLOT_BASE_SHIFT as i64 + 2, 1) as usize
    }

    /// Linux `pcpu_size_to_slot`: a whole unit maps to `free_slot`.
    pub fn size_to_slot(&self, size: usize) -> usize {
        if size == self.unit_size {
            return self.free_slot;
        }
        Self::raw_size_to_slot(size)
    }

    /// Linux `pcpu_chunk_slot`: slot 0 for (nearly) full chunks, else by the chunk contig hint.
    pub fn chunk_slot(&self, chunk: &PcpuChunk) -> usize {
        if chunk.free_bytes < PCPU_MIN_ALLOC_SIZE || chunk.chunk_md.contig_hint == 0 {
            return 0;
        }
        self.size_to_slot(chunk.contig_hint())
    }
}

/// Index of a chunk in a [`ChunkList`] / [`PcpuPool`].
pub type ChunkId = usize;

const NIL: u32 = u32::MAX;

/// Linux `pcpu_chunk_lists[]`: one doubly linked list per slot, over chunk ids (intrusive links
/// stored by id, so moves are O(1) and iteration order matches Linux's `list_move` (head) /
/// `list_move_tail` (tail)).
#[derive(Clone, Debug)]
pub struct ChunkList {
    slots: PcpuSlots,
    head: Vec<u32>,
    tail: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Slot each id is on (`NIL` = not on any list).
    on: Vec<u32>,
    isolated: Vec<bool>,
}

impl ChunkList {
    pub fn new(slots: PcpuSlots) -> Self {
        Self {
            slots,
            head: vec![NIL; slots.nr_slots],
            tail: vec![NIL; slots.nr_slots],
            next: Vec::new(),
            prev: Vec::new(),
            on: Vec::new(),
            isolated: Vec::new(),
        }
    }

    pub fn slots(&self) -> &PcpuSlots {
        &self.slots
    }

    fn grow(&mut self, id: ChunkId) {
        if id >= self.on.len() {
            self.next.resize(id + 1, NIL);
            self.prev.resize(id + 1, NIL);
            self.on.resize(id + 1, NIL);
            self.isolated.resize(id + 1, false);
        }
    }

    /// The slot list `id` is on.
    pub fn slot_of(&self, id: ChunkId) -> Option<usize> {
        match self.on.get(id) {
            Some(&s) if s != NIL => Some(s as usize),
            _ => None,
        }
    }

    /// Linux `chunk->isolated`.
    pub fn is_isolated(&self, id: ChunkId) -> bool {
        self.isolated.get(id).copied().unwrap_or(false)
    }

    /// `list_del`: take `id` off its list (and clear its isolation).
    pub fn remove(&mut self, id: ChunkId) {
        self.unlink(id);
        if id < self.isolated.len() {
            self.isolated[id] = false;
        }
    }

    fn unlink(&mut self, id: ChunkId) {
        let Some(slot) = self.slot_of(id) else { return };
        let (p, n) = (self.prev[id], self.next[id]);
        if p == NIL {
            self.head[slot] = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail[slot] = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[id] = NIL;
        self.next[id] = NIL;
        self.on[id] = NIL;
    }

    /// Linux `__pcpu_chunk_move`: `list_move` (to the head, `front`) or `list_move_tail` onto
    /// `slot`.
    pub fn move_to(&mut self, id: ChunkId, slot: usize, front: bool) {
        assert!(slot < self.slots.nr_slots);
        self.grow(id);
        self.unlink(id);
        let idu = id as u32;
        self.on[id] = slot as u32;
        if front {
            let h = self.head[slot];
            self.next[id] = h;
            self.prev[id] = NIL;
            if h == NIL {
                self.tail[slot] = idu;
            } else {
                self.prev[h as usize] = idu;
            }
            self.head[slot] = idu;
        } else {
            let t = self.tail[slot];
            self.prev[id] = t;
            self.next[id] = NIL;
            if t == NIL {
                self.head[slot] = idu;
            } else {
                self.next[t as usize] = idu;
            }
            self.tail[slot] = idu;
        }
    }

    /// Linux `pcpu_chunk_relocate`: after an allocation or free moved the chunk from slot
    /// `oslot` (`None` = new chunk, Linux's -1) to `nslot`, move it - to the head when it got
    /// emptier, to the tail when it got fuller. Isolated chunks stay where they are.
    pub fn relocate(&mut self, id: ChunkId, oslot: Option<usize>, nslot: usize) {
        if self.is_isolated(id) {
            return;
        }
        if oslot != Some(nslot) {
            let front = match oslot {
                None => true,
                Some(o) => o < nslot,
            };
            self.move_to(id, nslot, front);
        }
    }

    /// Linux `pcpu_isolate_chunk` (list part): mark isolated and move to the head of
    /// `to_depopulate_slot`. Returns whether it was not isolated before (the caller then removes
    /// its empty pages from the global count).
    pub fn isolate(&mut self, id: ChunkId) -> bool {
        self.grow(id);
        let newly = !self.isolated[id];
        self.isolated[id] = true;
        self.move_to(id, self.slots.to_depopulate_slot, true);
        newly
    }

    /// Linux `pcpu_reintegrate_chunk` (list part): clear isolation and put the chunk on `nslot`
    /// (as a new chunk). Returns whether it was isolated.
    pub fn reintegrate(&mut self, id: ChunkId, nslot: usize) -> bool {
        if !self.is_isolated(id) {
            return false;
        }
        self.isolated[id] = false;
        self.relocate(id, None, nslot);
        true
    }

    /// First chunk on `slot`.
    pub fn first(&self, slot: usize) -> Option<ChunkId> {
        match self.head[slot] {
            NIL => None,
            h => Some(h as usize),
        }
    }

    /// The chunk after `id` on its list.
    pub fn next_of(&self, id: ChunkId) -> Option<ChunkId> {
        match self.next.get(id) {
            Some(&n) if n != NIL => Some(n as usize),
            _ => None,
        }
    }

    /// Is `slot` empty (`list_empty`)?
    pub fn is_slot_empty(&self, slot: usize) -> bool {
        self.head[slot] == NIL
    }

    /// Chunks on `slot`, head first.
    pub fn iter_slot(&self, slot: usize) -> impl Iterator<Item = ChunkId> + '_ {
        let mut cur = self.first(slot);
        core::iter::from_fn(move || {
            let id = cur?;
            cur = self.next_of(id);
            Some(id)
        })
    }

    /// The search order of `pcpu_alloc` for a request of `size` bytes: slots
    /// `pcpu_size_to_slot(size)..=free_slot`, each list head first (the fullest suitable chunks
    /// first). The cursor pre-fetches the next chunk like `list_for_each_entry_safe`, so the
    /// caller may move the current chunk between [`Candidates::next`] calls.
    pub fn candidates(&self, size: usize) -> Candidates {
        let slot = self.slots.size_to_slot(size);
        Candidates {
            slot,
            next: if slot <= self.slots.free_slot { self.first(slot) } else { None },
            last: self.slots.free_slot,
        }
    }
}

/// Cursor over `pcpu_alloc`'s candidate chunks; see [`ChunkList::candidates`].
#[derive(Clone, Copy, Debug)]
pub struct Candidates {
    slot: usize,
    next: Option<ChunkId>,
    last: usize,
}

impl Candidates {
    /// The next `(slot, chunk)` to try.
    pub fn next(&mut self, list: &ChunkList) -> Option<(usize, ChunkId)> {
        loop {
            if let Some(id) = self.next {
                self.next = list.next_of(id);
                return Some((self.slot, id));
            }
            if self.slot >= self.last {
                return None;
            }
            self.slot += 1;
            self.next = list.first(self.slot);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The allocator core: pcpu_alloc / free_percpu / pcpu_balance_workfn without the memory side.
// ---------------------------------------------------------------------------------------------

/// The memory side of the percpu allocator, implemented by the kernel (Linux's
/// `mm/percpu-vm.c`). Page indexes are per unit: populating page `p` means backing page `p` of
/// every unit of the chunk.
pub trait PcpuBacking {
    /// Linux `pcpu_create_chunk`: reserve the chunk's vm areas (Linux: `pcpu_get_vm_areas`,
    /// top-down in the vmalloc space) and return its (empty, unpopulated) chunk. `id` is the
    /// id the pool will give it.
    fn create_chunk(&mut self, id: ChunkId) -> Option<PcpuChunk>;
    /// Linux `pcpu_destroy_chunk`: release the vm areas of a chunk with no populated pages.
    fn destroy_chunk(&mut self, id: ChunkId, chunk: PcpuChunk);
    /// Linux `pcpu_populate_chunk`: allocate and map `pages` in every unit; `false` on failure.
    fn populate(&mut self, id: ChunkId, pages: Range<usize>) -> bool;
    /// Linux `pcpu_depopulate_chunk`: unmap and free `pages` in every unit.
    fn depopulate(&mut self, id: ChunkId, pages: Range<usize>);
    /// Linux `pcpu_post_unmap_tlb_flush`: flush after a batch of depopulations of one chunk.
    fn post_unmap_tlb_flush(&mut self, id: ChunkId, pages: Range<usize>);
}

/// Why [`PcpuPool::search`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcpuAllocError {
    /// Size 0 or above `PCPU_MIN_UNIT_SIZE`, or a bad alignment.
    Invalid,
    /// No chunk could serve it: create a chunk (if [`PcpuPool::free_slot_empty`]) and retry.
    NoSpace,
}

/// A successful allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcpuArea {
    pub chunk: ChunkId,
    /// Byte offset in each unit of the chunk.
    pub offset: usize,
    /// Bytes reserved (the size rounded up to `PCPU_MIN_ALLOC_SIZE`).
    pub size: usize,
}

/// The chunks and global counters of Linux's percpu allocator: chunk search
/// (`pcpu_alloc`), free (`free_percpu`), chunk isolation and the balance work
/// (`pcpu_balance_free`, `pcpu_reclaim_populated`, `pcpu_balance_populated`).
#[derive(Debug)]
pub struct PcpuPool {
    slots: PcpuSlots,
    list: ChunkList,
    chunks: Vec<Option<PcpuChunk>>,
    first_chunk: Option<ChunkId>,
    /// Linux `pcpu_nr_empty_pop_pages` (excludes isolated chunks).
    nr_empty_pop_pages: i64,
    /// Linux `pcpu_nr_populated`.
    nr_populated: usize,
    /// Linux `pcpu_atomic_alloc_failed`.
    atomic_alloc_failed: bool,
}

impl PcpuPool {
    /// An empty pool for units of `unit_size` bytes (whole pages, at least
    /// [`PCPU_MIN_UNIT_SIZE`]).
    pub fn new(unit_size: usize) -> Self {
        assert!(unit_size.is_multiple_of(PAGE_SIZE) && unit_size >= PCPU_MIN_UNIT_SIZE);
        let slots = PcpuSlots::new(unit_size);
        Self {
            slots,
            list: ChunkList::new(slots),
            chunks: Vec::new(),
            first_chunk: None,
            nr_empty_pop_pages: 0,
            nr_populated: 0,
            atomic_alloc_failed: false,
        }
    }

    pub fn slots(&self) -> &PcpuSlots {
        &self.slots
    }

    pub fn list(&self) -> &ChunkList {
        &self.list
    }

    pub fn chunk(&self, id: ChunkId) -> Option<&PcpuChunk> {
        self.chunks.get(id).and_then(|c| c.as_ref())
    }

    /// Ids of all chunks.
    pub fn chunk_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.chunks.iter().enumerate().filter(|(_, c)| c.is_some()).map(|(i, _)| i)
    }

    pub fn nr_chunks(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_some()).count()
    }

    /// Linux `pcpu_nr_empty_pop_pages`.
    pub fn nr_empty_pop_pages(&self) -> i64 {
        self.nr_empty_pop_pages
    }

    /// Linux `pcpu_nr_populated` (pages per unit).
    pub fn nr_populated(&self) -> usize {
        self.nr_populated
    }

    /// The id the next [`Self::add_chunk`] will use.
    pub fn next_chunk_id(&self) -> ChunkId {
        self.chunks.iter().position(|c| c.is_none()).unwrap_or(self.chunks.len())
    }

    /// Put a new chunk in circulation (`pcpu_chunk_relocate(chunk, -1)` plus the global
    /// counters). `is_first` marks Linux's `pcpu_first_chunk`, which is never reclaimed.
    pub fn add_chunk(&mut self, chunk: PcpuChunk, is_first: bool) -> ChunkId {
        let id = self.next_chunk_id();
        let nslot = self.slots.chunk_slot(&chunk);
        self.nr_empty_pop_pages += chunk.nr_empty_pop_pages as i64;
        self.nr_populated += chunk.nr_populated;
        if id == self.chunks.len() {
            self.chunks.push(Some(chunk));
        } else {
            self.chunks[id] = Some(chunk);
        }
        if is_first {
            self.first_chunk = Some(id);
        }
        self.list.relocate(id, None, nslot);
        id
    }

    /// Take a chunk out of the pool (its populated pages stay counted until depopulated with
    /// [`Self::chunk_depopulated`]; remove depopulated chunks only).
    pub fn remove_chunk(&mut self, id: ChunkId) -> Option<PcpuChunk> {
        let chunk = self.chunks.get_mut(id)?.take()?;
        if !self.list.is_isolated(id) {
            self.nr_empty_pop_pages -= chunk.nr_empty_pop_pages as i64;
        }
        self.nr_populated -= chunk.nr_populated;
        self.list.remove(id);
        if self.first_chunk == Some(id) {
            self.first_chunk = None;
        }
        Some(chunk)
    }

    fn chunk_mut(&mut self, id: ChunkId) -> &mut PcpuChunk {
        self.chunks[id].as_mut().expect("no such percpu chunk")
    }

    /// Apply a change of a chunk's `nr_empty_pop_pages` to the global count (Linux
    /// `pcpu_update_empty_pages`: isolated chunks do not contribute).
    fn account(&mut self, id: ChunkId, before: i32) {
        if !self.list.is_isolated(id) {
            let after = self.chunks[id].as_ref().unwrap().nr_empty_pop_pages;
            self.nr_empty_pop_pages += (after - before) as i64;
        }
    }

    /// Is the free slot empty (Linux: create a chunk only if there is no fully free one)?
    pub fn free_slot_empty(&self) -> bool {
        self.list.is_slot_empty(self.slots.free_slot)
    }

    /// The chunk-search part of `pcpu_alloc`: try the candidate chunks from
    /// `pcpu_size_to_slot(size)` up to the free slot, head first; a chunk whose hints reject the
    /// request is moved to slot 0 when its slot is below `PCPU_SLOT_FAIL_THRESHOLD`. The chosen
    /// chunk is relocated and reintegrated if it was isolated. `is_atomic` restricts the search
    /// to populated pages (and records a failure for the balance work).
    pub fn search(
        &mut self,
        size: usize,
        align: usize,
        is_atomic: bool,
    ) -> Result<PcpuArea, PcpuAllocError> {
        let Some((bits, bit_align)) = pcpu_request_bits(size, align) else {
            return Err(PcpuAllocError::Invalid);
        };
        let size = bits * PCPU_MIN_ALLOC_SIZE;
        if size > PCPU_MIN_UNIT_SIZE {
            return Err(PcpuAllocError::Invalid);
        }
        let mut cursor = self.list.candidates(size);
        while let Some((slot, id)) = cursor.next(&self.list) {
            let chunk = self.chunks[id].as_ref().unwrap();
            let Some(start) = chunk.find_block_fit(bits, bit_align, is_atomic) else {
                if slot < PCPU_SLOT_FAIL_THRESHOLD {
                    self.list.move_to(id, 0, true);
                }
                continue;
            };
            let oslot = self.slots.chunk_slot(chunk);
            let before = chunk.nr_empty_pop_pages;
            let got = self.chunk_mut(id).alloc_area(bits, bit_align, start);
            self.account(id, before);
            if let Some(offset) = got {
                let nslot = self.slots.chunk_slot(self.chunks[id].as_ref().unwrap());
                self.list.relocate(id, Some(oslot), nslot);
                self.reintegrate_chunk(id);
                return Ok(PcpuArea { chunk: id, offset, size });
            }
        }
        if is_atomic {
            self.atomic_alloc_failed = true;
        }
        Err(PcpuAllocError::NoSpace)
    }

    /// Should the balance work run (`pcpu_nr_empty_pop_pages < PCPU_EMPTY_POP_PAGES_LOW`, checked
    /// by `pcpu_alloc` after each allocation)?
    pub fn below_low_watermark(&self) -> bool {
        self.nr_empty_pop_pages < PCPU_EMPTY_POP_PAGES_LOW
    }

    /// Linux `pcpu_alloc` without zeroing the area: search, create chunks as needed (non-atomic
    /// only), and populate the area's pages (non-atomic only; on failure the area is freed).
    pub fn alloc<Bk: PcpuBacking>(
        &mut self,
        size: usize,
        align: usize,
        is_atomic: bool,
        backing: &mut Bk,
    ) -> Option<PcpuArea> {
        let mut fresh_chunks = 0;
        let area = loop {
            match self.search(size, align, is_atomic) {
                Ok(area) => break area,
                Err(PcpuAllocError::Invalid) => return None,
                Err(PcpuAllocError::NoSpace) if is_atomic => return None,
                Err(PcpuAllocError::NoSpace) => {
                    // A fully free chunk serves every valid request, so a second failure
                    // with a fresh chunk means the hints are broken: give up, not loop.
                    if fresh_chunks >= 2 {
                        debug_assert!(false, "percpu: fresh chunk cannot serve a valid request");
                        return None;
                    }
                    fresh_chunks += 1;
                    if self.free_slot_empty() {
                        let id = self.next_chunk_id();
                        let chunk = backing.create_chunk(id)?;
                        let got = self.add_chunk(chunk, false);
                        debug_assert_eq!(got, id);
                    }
                }
            }
        };
        if !is_atomic {
            // populate if not all pages are already there
            let pages = PcpuChunk::page_range(area.offset, area.size);
            let mut from = pages.start;
            while let Some(r) =
                self.chunks[area.chunk].as_ref().unwrap().next_unpopulated_range(from, pages.end)
            {
                debug_assert!(!self.chunks[area.chunk].as_ref().unwrap().immutable);
                if !backing.populate(area.chunk, r.clone()) {
                    let _ = self.free(area.chunk, area.offset);
                    return None;
                }
                self.chunk_populated(area.chunk, r.clone());
                from = r.end;
            }
        }
        Some(area)
    }

    /// Linux `pcpu_chunk_populated`: pages `range` of chunk `id` were backed.
    pub fn chunk_populated(&mut self, id: ChunkId, range: Range<usize>) {
        let before = self.chunk_mut(id).nr_empty_pop_pages;
        let nr = range.len();
        self.chunk_mut(id).mark_populated(range);
        self.nr_populated += nr;
        self.account(id, before);
    }

    /// Linux `pcpu_chunk_depopulated`: pages `range` of chunk `id` were unmapped.
    pub fn chunk_depopulated(&mut self, id: ChunkId, range: Range<usize>) {
        let before = self.chunk_mut(id).nr_empty_pop_pages;
        let nr = range.len();
        self.chunk_mut(id).depopulate_range(range);
        self.nr_populated -= nr;
        self.account(id, before);
    }

    /// Linux `pcpu_isolate_chunk`.
    fn isolate_chunk(&mut self, id: ChunkId) {
        if !self.list.is_isolated(id) {
            self.nr_empty_pop_pages -= self.chunks[id].as_ref().unwrap().nr_empty_pop_pages as i64;
        }
        self.list.isolate(id);
    }

    /// Linux `pcpu_reintegrate_chunk`.
    fn reintegrate_chunk(&mut self, id: ChunkId) {
        if self.list.is_isolated(id) {
            let chunk = self.chunks[id].as_ref().unwrap();
            self.nr_empty_pop_pages += chunk.nr_empty_pop_pages as i64;
            let nslot = self.slots.chunk_slot(chunk);
            self.list.reintegrate(id, nslot);
        }
    }

    /// Linux `pcpu_should_reclaim_chunk`.
    fn should_reclaim_chunk(&self, id: ChunkId) -> bool {
        if self.first_chunk == Some(id) {
            return false;
        }
        let chunk = self.chunks[id].as_ref().unwrap();
        let empty = chunk.nr_empty_pop_pages as i64;
        (self.list.is_isolated(id) && empty != 0)
            || (self.nr_empty_pop_pages > PCPU_EMPTY_POP_PAGES_HIGH + empty
                && empty >= (chunk.nr_pages / 4) as i64)
    }

    /// Linux `free_percpu` after the chunk lookup: free the area at `offset` of chunk `id`,
    /// relocate the chunk, and decide whether the balance work should run (another fully free
    /// chunk exists, or this chunk was isolated for reclaim). Returns `(freed bytes,
    /// need_balance)`.
    pub fn free(&mut self, id: ChunkId, offset: usize) -> Result<(usize, bool), &'static str> {
        let Some(chunk) = self.chunks.get(id).and_then(|c| c.as_ref()) else {
            return Err("percpu free: no such chunk");
        };
        let oslot = self.slots.chunk_slot(chunk);
        let before = chunk.nr_empty_pop_pages;
        let freed = self.chunk_mut(id).free(offset)?;
        self.account(id, before);
        let chunk = self.chunks[id].as_ref().unwrap();
        let nslot = self.slots.chunk_slot(chunk);
        self.list.relocate(id, Some(oslot), nslot);

        let mut need_balance = false;
        let chunk = self.chunks[id].as_ref().unwrap();
        if !self.list.is_isolated(id) && chunk.free_bytes == self.slots.unit_size {
            // more than one fully free chunk: wake up the grim reaper
            need_balance = self.list.iter_slot(self.slots.free_slot).any(|c| c != id);
        } else if self.should_reclaim_chunk(id) {
            self.isolate_chunk(id);
            need_balance = true;
        }
        Ok((freed, need_balance))
    }

    /// Linux `pcpu_balance_free`: destroy every fully free chunk but the first one on the free
    /// slot (with `empty_only`, only those without populated empty pages), depopulating them
    /// first.
    pub fn balance_free<Bk: PcpuBacking>(&mut self, empty_only: bool, backing: &mut Bk) {
        let free_slot = self.slots.free_slot;
        let head = self.list.first(free_slot);
        let to_free: Vec<ChunkId> = self
            .list
            .iter_slot(free_slot)
            .filter(|&id| Some(id) != head)
            .filter(|&id| !empty_only || self.chunks[id].as_ref().unwrap().nr_empty_pop_pages == 0)
            .collect();
        for &id in &to_free {
            self.list.remove(id);
        }
        for id in to_free {
            let ranges: Vec<Range<usize>> =
                self.chunks[id].as_ref().unwrap().populated_ranges().collect();
            for r in ranges {
                backing.depopulate(id, r.clone());
                self.chunk_depopulated(id, r);
            }
            let chunk = self.remove_chunk(id).unwrap();
            backing.destroy_chunk(id, chunk);
        }
    }

    /// Linux `pcpu_reclaim_populated`: depopulate the empty pages of the chunks on the
    /// to_depopulate list, scanning each backwards, then sideline them (or reintegrate them
    /// when fully free or when empty populated pages ran short).
    pub fn reclaim_populated<Bk: PcpuBacking>(&mut self, backing: &mut Bk) {
        while let Some(id) = self.list.first(self.slots.to_depopulate_slot) {
            let nr_pages = self.chunks[id].as_ref().unwrap().nr_pages;
            let mut freed_page_start = nr_pages;
            let mut freed_page_end = 0;
            let mut reintegrate = false;
            let mut end: isize = -1;
            let mut i = nr_pages as isize - 1;
            while i >= 0 {
                let chunk = self.chunks[id].as_ref().unwrap();
                // no more work to do
                if chunk.nr_empty_pop_pages == 0 {
                    break;
                }
                // reintegrate chunk to prevent atomic alloc failures
                if self.nr_empty_pop_pages < PCPU_EMPTY_POP_PAGES_HIGH {
                    reintegrate = true;
                    break;
                }
                // extend the (i, end] run of empty populated pages; at page 0 depopulate it
                if chunk.is_page_empty(i as usize) && chunk.is_page_populated(i as usize) {
                    if end == -1 {
                        end = i;
                    }
                    if i > 0 {
                        i -= 1;
                        continue;
                    }
                    i -= 1;
                }
                // depopulate if there is an active range
                if end == -1 {
                    i -= 1;
                    continue;
                }
                let r = (i + 1) as usize..(end + 1) as usize;
                backing.depopulate(id, r.clone());
                self.chunk_depopulated(id, r.clone());
                freed_page_start = freed_page_start.min(r.start);
                freed_page_end = freed_page_end.max(r.end);
                end = -1;
                i -= 1;
            }
            // batch tlb flush per chunk to amortize cost
            if freed_page_start < freed_page_end {
                backing.post_unmap_tlb_flush(id, freed_page_start..freed_page_end);
            }
            let chunk = self.chunks[id].as_ref().unwrap();
            if reintegrate || chunk.free_bytes == self.slots.unit_size {
                self.reintegrate_chunk(id);
            } else {
                self.list.move_to(id, self.slots.sidelined_slot, false);
            }
        }
    }

    /// Linux `pcpu_balance_populated`: keep `PCPU_EMPTY_POP_PAGES_HIGH` empty populated pages
    /// for atomic allocations, populating the fullest chunks first and creating a chunk when
    /// none has unpopulated pages.
    pub fn balance_populated<Bk: PcpuBacking>(&mut self, backing: &mut Bk) {
        loop {
            let mut nr_to_pop: usize = if self.atomic_alloc_failed {
                self.atomic_alloc_failed = false;
                PCPU_EMPTY_POP_PAGES_HIGH as usize
            } else {
                (PCPU_EMPTY_POP_PAGES_HIGH - self.nr_empty_pop_pages)
                    .clamp(0, PCPU_EMPTY_POP_PAGES_HIGH) as usize
            };
            for slot in self.slots.size_to_slot(PAGE_SIZE)..=self.slots.free_slot {
                if nr_to_pop == 0 {
                    break;
                }
                let Some(id) = self.list.iter_slot(slot).find(|&id| {
                    let c = self.chunks[id].as_ref().unwrap();
                    c.nr_pages - c.nr_populated != 0
                }) else {
                    continue;
                };
                let mut from = 0;
                while let Some(r) = {
                    let c = self.chunks[id].as_ref().unwrap();
                    c.next_unpopulated_range(from, c.nr_pages)
                } {
                    let nr = r.len().min(nr_to_pop);
                    let pop = r.start..r.start + nr;
                    if backing.populate(id, pop.clone()) {
                        nr_to_pop -= nr;
                        self.chunk_populated(id, pop);
                    } else {
                        nr_to_pop = 0;
                    }
                    if nr_to_pop == 0 {
                        break;
                    }
                    from = r.end;
                }
            }
            if nr_to_pop == 0 {
                return;
            }
            // ran out of chunks to populate, create a new one and retry
            let id = self.next_chunk_id();
            match backing.create_chunk(id) {
                Some(chunk) => {
                    self.add_chunk(chunk, false);
                }
                None => return,
            }
        }
    }

    /// Linux `pcpu_balance_workfn`.
    pub fn balance_work<Bk: PcpuBacking>(&mut self, backing: &mut Bk) {
        self.balance_free(false, backing);
        self.reclaim_populated(backing);
        self.balance_populated(backing);
        self.balance_free(true, backing);
    }
}

impl PcpuPool {
    /// Verify every chunk ([`PcpuChunk::check_hints`]), the global counters and the lists.
    pub fn check(&self) -> Result<(), String> {
        let mut populated = 0usize;
        let mut empty = 0i64;
        for (id, chunk) in self.chunks.iter().enumerate() {
            let Some(chunk) = chunk else {
                if self.list.slot_of(id).is_some() {
                    return Err(format!("removed chunk {id} is still listed"));
                }
                continue;
            };
            chunk.check_hints().map_err(|e| format!("chunk {id}: {e}"))?;
            populated += chunk.nr_populated;
            let Some(slot) = self.list.slot_of(id) else {
                return Err(format!("chunk {id} is on no slot list"));
            };
            if self.list.is_isolated(id) {
                if slot != self.slots.to_depopulate_slot && slot != self.slots.sidelined_slot {
                    return Err(format!("isolated chunk {id} on slot {slot}"));
                }
            } else {
                empty += chunk.nr_empty_pop_pages as i64;
                if slot == self.slots.to_depopulate_slot || slot == self.slots.sidelined_slot {
                    return Err(format!("active chunk {id} on isolation slot {slot}"));
                }
            }
        }
        let listed: usize = (0..self.slots.nr_slots).map(|s| self.list.iter_slot(s).count()).sum();
        if listed != self.nr_chunks() {
            return Err(format!("{listed} listed chunks but {} chunks", self.nr_chunks()));
        }
        if populated != self.nr_populated {
            return Err(format!(
                "pcpu_nr_populated {} but chunks hold {populated}",
                self.nr_populated
            ));
        }
        if empty != self.nr_empty_pop_pages {
            return Err(format!(
                "pcpu_nr_empty_pop_pages {} but chunks hold {empty}",
                self.nr_empty_pop_pages
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    /// xorshift64* - deterministic randomness without extra crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A [`PcpuBacking`] that only records which pages are backed.
    #[derive(Default)]
    struct MockBacking {
        unit_size: usize,
        pages: BTreeSet<(ChunkId, usize)>,
        created: usize,
        destroyed: usize,
        flushes: usize,
        fail_populate: bool,
        max_chunks: Option<usize>,
    }

    impl MockBacking {
        fn new(unit_size: usize) -> Self {
            Self { unit_size, ..Default::default() }
        }
    }

    impl PcpuBacking for MockBacking {
        fn create_chunk(&mut self, _id: ChunkId) -> Option<PcpuChunk> {
            if let Some(max) = self.max_chunks {
                if self.created - self.destroyed >= max {
                    return None;
                }
            }
            self.created += 1;
            Some(PcpuChunk::new(self.unit_size, 0))
        }
        fn destroy_chunk(&mut self, id: ChunkId, chunk: PcpuChunk) {
            assert_eq!(chunk.nr_populated(), 0, "destroying a populated chunk");
            assert!(chunk.is_empty());
            assert!(!self.pages.iter().any(|&(c, _)| c == id));
            self.destroyed += 1;
        }
        fn populate(&mut self, id: ChunkId, pages: Range<usize>) -> bool {
            if self.fail_populate {
                return false;
            }
            for p in pages {
                assert!(self.pages.insert((id, p)), "page {p} of chunk {id} populated twice");
            }
            true
        }
        fn depopulate(&mut self, id: ChunkId, pages: Range<usize>) {
            for p in pages {
                assert!(self.pages.remove(&(id, p)), "page {p} of chunk {id} not populated");
            }
        }
        fn post_unmap_tlb_flush(&mut self, _id: ChunkId, _pages: Range<usize>) {
            self.flushes += 1;
        }
    }

    /// Live allocations per chunk: start -> end, with overlap detection.
    #[derive(Default)]
    struct Model {
        live: HashMap<ChunkId, BTreeMap<usize, usize>>,
        order: Vec<(ChunkId, usize)>,
    }

    impl Model {
        fn insert(&mut self, chunk: ChunkId, off: usize, size: usize) {
            let m = self.live.entry(chunk).or_default();
            if let Some((&s, &e)) = m.range(..=off).next_back() {
                assert!(e <= off, "chunk {chunk}: [{off}, +{size}) overlaps [{s}, {e})");
            }
            if let Some((&s, &e)) = m.range(off..).next() {
                assert!(off + size <= s, "chunk {chunk}: [{off}, +{size}) overlaps [{s}, {e})");
            }
            m.insert(off, off + size);
            self.order.push((chunk, off));
        }
        fn remove(&mut self, chunk: ChunkId, off: usize) -> usize {
            let e = self.live.get_mut(&chunk).unwrap().remove(&off).unwrap();
            e - off
        }
        fn used(&self, chunk: ChunkId) -> usize {
            self.live.get(&chunk).map_or(0, |m| m.iter().map(|(s, e)| e - s).sum())
        }
    }

    const UNIT: usize = 256 << 10;

    // --- helpers ------------------------------------------------------------------------------

    #[test]
    fn bitmap_helpers() {
        let mut m = vec![0u64; 4];
        bitmap_assign(&mut m, 3, 130, true);
        assert_eq!(find_next_bit(&m, 256, 0), 3);
        assert_eq!(find_next_zero_bit(&m, 256, 3), 133);
        assert_eq!(find_next_zero_bit(&m, 256, 0), 0);
        assert_eq!(find_next_bit(&m, 256, 133), 256);
        assert_eq!(find_next_bit(&m, 100, 200), 100);
        assert_eq!(find_last_bit_in(&m, 0, 256), Some(132));
        assert_eq!(find_last_bit_in(&m, 0, 3), None);
        assert_eq!(find_last_bit_in(&m, 64, 70), Some(69));
        assert_eq!(find_last_bit_in(&m, 133, 256), None);
        bitmap_assign(&mut m, 64, 64, false);
        assert_eq!(find_next_zero_bit(&m, 256, 3), 64);
        assert_eq!(find_next_bit(&m, 256, 64), 128);
        assert_eq!(find_last_bit_in(&m, 0, 128), Some(63));
        assert_eq!(m.iter().map(|w| w.count_ones()).sum::<u32>(), 130 - 64);
    }

    #[test]
    fn slots_match_linux() {
        assert_eq!(PcpuSlots::raw_size_to_slot(0), 1);
        assert_eq!(PcpuSlots::raw_size_to_slot(4), 1);
        assert_eq!(PcpuSlots::raw_size_to_slot(15), 1);
        assert_eq!(PcpuSlots::raw_size_to_slot(16), 2);
        assert_eq!(PcpuSlots::raw_size_to_slot(31), 2);
        assert_eq!(PcpuSlots::raw_size_to_slot(32), 3);
        assert_eq!(PcpuSlots::raw_size_to_slot(PAGE_SIZE), 10);
        let s = PcpuSlots::new(UNIT);
        assert_eq!(
            (s.sidelined_slot, s.free_slot, s.to_depopulate_slot, s.nr_slots),
            (17, 18, 19, 20)
        );
        assert_eq!(s.size_to_slot(UNIT), s.free_slot);
        assert_eq!(s.size_to_slot(UNIT - 4), 15);
        let mut c = PcpuChunk::new(UNIT, 0);
        assert_eq!(s.chunk_slot(&c), s.free_slot);
        c.alloc(4, 4).unwrap();
        assert_eq!(s.chunk_slot(&c), 15);
        // a full chunk goes to slot 0
        let mut c = PcpuChunk::new(PCPU_MIN_UNIT_SIZE, 0);
        for _ in 0..8 {
            c.alloc(PAGE_SIZE, PAGE_SIZE).unwrap();
        }
        assert_eq!(s.chunk_slot(&c), 0);
    }

    #[test]
    fn chunk_list_order_and_candidates() {
        let s = PcpuSlots::new(UNIT);
        let mut l = ChunkList::new(s);
        l.relocate(0, None, 5);
        l.relocate(1, None, 5); // new chunks go to the head
        l.relocate(2, None, 7);
        assert_eq!(l.iter_slot(5).collect::<Vec<_>>(), vec![1, 0]);
        l.relocate(2, Some(7), 5); // got fuller: tail
        assert_eq!(l.iter_slot(5).collect::<Vec<_>>(), vec![1, 0, 2]);
        l.relocate(1, Some(5), 6); // got emptier: head of the new slot
        l.relocate(3, None, 6);
        assert_eq!(l.iter_slot(6).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!(l.slot_of(2), Some(5));
        // candidates for a 64-byte request start at slot 4: slot 5 then 6
        let mut cur = l.candidates(64);
        let mut seen = Vec::new();
        while let Some((slot, id)) = cur.next(&l) {
            seen.push((slot, id));
            if id == 0 {
                l.move_to(0, 0, true); // moving the current chunk is safe
            }
        }
        assert_eq!(seen, vec![(5, 0), (5, 2), (6, 3), (6, 1)]);
        assert_eq!(l.first(0), Some(0));
        // isolation: relocate leaves isolated chunks alone
        assert!(l.isolate(3));
        assert!(!l.isolate(3));
        assert_eq!(l.slot_of(3), Some(s.to_depopulate_slot));
        l.relocate(3, Some(6), 9);
        assert_eq!(l.slot_of(3), Some(s.to_depopulate_slot));
        assert!(l.reintegrate(3, 9));
        assert_eq!(l.slot_of(3), Some(9));
        l.remove(3);
        assert_eq!(l.slot_of(3), None);
        assert!(l.is_slot_empty(9));
    }

    // --- single-chunk edge cases ----------------------------------------------------------------

    #[test]
    fn fresh_chunk_state() {
        let c = PcpuChunk::new(UNIT, 0);
        c.check_hints().unwrap();
        assert_eq!(c.free_bytes(), UNIT);
        assert_eq!(c.contig_hint(), UNIT);
        assert!(c.is_empty());
        assert_eq!(c.nr_populated(), 0);
        assert_eq!(c.nr_empty_pop_pages(), 0);
    }

    #[test]
    fn exact_page_and_block_spanning() {
        let mut c = PcpuChunk::new(UNIT, 0);
        assert_eq!(c.alloc(PAGE_SIZE, PAGE_SIZE), Some(0));
        c.check_hints().unwrap();
        assert_eq!(c.alloc(4, 4), Some(PAGE_SIZE));
        // spans pages 1..=3: starts right after the 4-byte area
        let off = c.alloc(3 * PAGE_SIZE, 4).unwrap();
        assert_eq!(off, PAGE_SIZE + 4);
        c.check_hints().unwrap();
        assert_eq!(c.free_bytes(), UNIT - 4 * PAGE_SIZE - 4);
        // an unaligned cross-page area, then free in the middle and merge across blocks
        let a = c.alloc(PAGE_SIZE + 100, 8).unwrap();
        let b = c.alloc(PAGE_SIZE, 4).unwrap();
        assert_eq!(a % 8, 0);
        c.check_hints().unwrap();
        assert_eq!(c.free(off), Ok(3 * PAGE_SIZE));
        c.check_hints().unwrap();
        assert_eq!(c.free(a), Ok(PAGE_SIZE + 100));
        c.check_hints().unwrap();
        assert_eq!(c.free(PAGE_SIZE), Ok(4));
        c.check_hints().unwrap();
        assert_eq!(c.free(0), Ok(PAGE_SIZE));
        c.check_hints().unwrap();
        assert_eq!(c.free(b), Ok(PAGE_SIZE));
        c.check_hints().unwrap();
        assert!(c.is_empty());
        assert_eq!(c.contig_hint(), UNIT);
    }

    #[test]
    fn align_equals_size_and_sizes_round_up() {
        let mut c = PcpuChunk::new(UNIT, 0);
        assert_eq!(c.alloc(1, 1), Some(0)); // 1 byte -> one 4-byte bit
        for shift in 1..=12 {
            let sz = 1usize << shift;
            let off = c.alloc(sz, sz).unwrap();
            assert_eq!(off % sz, 0, "size {sz}");
            c.check_hints().unwrap();
        }
        assert_eq!(c.free(0), Ok(4));
        assert_eq!(c.alloc(3, 2), Some(0));
        // invalid requests
        assert_eq!(c.alloc(0, 4), None);
        assert_eq!(c.alloc(8, 12), None);
        // like pcpu_alloc, alignments below 4 are raised to 4 first
        assert!(c.alloc(8, 3).is_some());
        assert_eq!(c.alloc(8, 2 * PAGE_SIZE), None);
        assert_eq!(c.alloc(UNIT + 4, 4), None);
        c.check_hints().unwrap();
    }

    #[test]
    fn full_chunk_returns_none() {
        let mut c = PcpuChunk::new(PCPU_MIN_UNIT_SIZE, 0);
        let mut offs = Vec::new();
        while let Some(off) = c.alloc(1000, 8) {
            offs.push(off);
        }
        c.check_hints().unwrap();
        assert!(c.free_bytes() < 1000);
        assert_eq!(c.alloc(1000, 8), None);
        // fill the crumbs with 4-byte areas until really full
        while c.alloc(4, 4).is_some() {}
        assert_eq!(c.free_bytes(), 0);
        assert_eq!(c.contig_hint(), 0);
        assert_eq!(c.alloc(4, 4), None);
        c.check_hints().unwrap();
        for off in offs {
            assert_eq!(c.free(off), Ok(1000));
        }
        c.check_hints().unwrap();
    }

    #[test]
    fn bad_frees_are_rejected() {
        let mut c = PcpuChunk::new(UNIT, 100);
        assert_eq!(c.free_bytes(), UNIT - 100);
        let a = c.alloc(64, 64).unwrap();
        assert_eq!(a, 128);
        assert!(c.free(a + 4).is_err(), "inside an allocation");
        assert!(c.free(a + 2).is_err(), "misaligned");
        assert!(c.free(a + 64).is_err(), "free space");
        assert!(c.free(0).is_err(), "static area");
        assert!(c.free(96).is_err(), "static area end");
        assert!(c.free(UNIT).is_err(), "beyond the unit");
        assert!(c.free(50 * PAGE_SIZE).is_err(), "never allocated");
        c.check_hints().unwrap();
        assert_eq!(c.free(a), Ok(64));
        assert!(c.free(a).is_err(), "double free");
        c.check_hints().unwrap();
        assert!(c.is_empty());
        // stale boundary bits in free space are not mistaken for allocations
        let x = c.alloc(40, 4).unwrap();
        c.free(x).unwrap();
        let y = c.alloc(8, 4).unwrap();
        assert_eq!(y, x);
        assert!(c.free(x + 40).is_err());
        assert_eq!(c.free(y), Ok(8));
        c.check_hints().unwrap();
    }

    #[test]
    fn static_reserve_and_first_chunk() {
        let c = PcpuChunk::new(UNIT, 3 * PAGE_SIZE + 12);
        c.check_hints().unwrap();
        assert_eq!(c.start_offset(), 3 * PAGE_SIZE + 12);
        assert_eq!(c.contig_hint(), UNIT - 3 * PAGE_SIZE - 12);
        assert!(c.is_empty());

        // Linux-style first chunk: static area ends 0x540 into a page, 20000 dynamic bytes
        let mut f = PcpuChunk::new_first_chunk(0x540, 20000);
        f.check_hints().unwrap();
        assert!(f.immutable());
        assert_eq!(f.nr_pages(), (0x540 + 20000usize).div_ceil(PAGE_SIZE));
        assert_eq!(f.free_bytes(), 20000);
        assert_eq!(f.nr_populated(), f.nr_pages());
        // all pages are populated but the first and last hold hidden parts
        assert_eq!(f.nr_empty_pop_pages(), f.nr_pages() as i32 - 2);
        let mut offs = Vec::new();
        while let Some(o) = f.alloc(100, 4) {
            assert!(o >= 0x540 && o + 100 <= 0x540 + 20000);
            offs.push(o);
        }
        assert_eq!(offs.len(), 200);
        assert!(f.free(0x540 + 20000).is_err());
        f.check_hints().unwrap();
        for o in offs {
            f.free(o).unwrap();
        }
        f.check_hints().unwrap();
        assert!(f.is_empty());
        assert_eq!(f.max_free_run(), 20000);
    }

    #[test]
    fn population_tracking() {
        let mut c = PcpuChunk::new(UNIT, 0);
        let off = c.alloc(2 * PAGE_SIZE, PAGE_SIZE).unwrap();
        assert_eq!(c.nr_empty_pop_pages(), -2);
        assert_eq!(c.pages_needing_population(off, 2 * PAGE_SIZE).collect::<Vec<_>>(), vec![0, 1]);
        c.mark_populated(1..2);
        assert_eq!(c.pages_needing_population(off, 2 * PAGE_SIZE).collect::<Vec<_>>(), vec![0]);
        assert_eq!(c.next_unpopulated_range(0, 2), Some(0..1));
        c.mark_populated(0..1);
        assert_eq!(c.nr_empty_pop_pages(), 0);
        c.check_hints().unwrap();
        // atomic (pop_only) allocations must stay in populated pages
        assert_eq!(c.alloc_ext(8, 4, true), None);
        c.mark_populated(5..7);
        let a = c.alloc_ext(PAGE_SIZE + 4, 4, true).unwrap();
        assert!(a >= 5 * PAGE_SIZE && a + PAGE_SIZE + 4 <= 7 * PAGE_SIZE);
        assert_eq!(c.alloc_ext(PAGE_SIZE, 4, true), None);
        c.check_hints().unwrap();
        c.free(a).unwrap();
        assert_eq!(c.nr_empty_pop_pages(), 2);
        c.depopulate(6);
        assert_eq!(c.populated_ranges().collect::<Vec<_>>(), vec![0..2, 5..6]);
        c.free(off).unwrap();
        assert_eq!(c.nr_empty_pop_pages(), 3);
        c.check_hints().unwrap();
    }

    // --- model tests ----------------------------------------------------------------------

    fn check_area(pool: &PcpuPool, area: &PcpuArea, size: usize, align: usize) {
        let chunk = pool.chunk(area.chunk).unwrap();
        assert_eq!(
            area.offset % align.max(PCPU_MIN_ALLOC_SIZE),
            0,
            "misaligned {area:?} align {align}"
        );
        assert_eq!(area.size, size.div_ceil(4) * 4);
        assert!(area.offset >= chunk.start_offset());
        assert!(area.offset + area.size <= chunk.unit_size(), "{area:?} outside the unit");
        for p in PcpuChunk::page_range(area.offset, area.size) {
            assert!(chunk.is_page_populated(p), "page {p} of {area:?} not populated");
        }
    }

    /// Linux's pcpu_alloc_test pattern at full scale: `nr` allocations of 1..=1024 bytes,
    /// align 2^[1,11], then free everything in random order.
    fn run_pcpu_alloc_test(
        nr: usize,
        seed: u64,
        check_every: usize,
        balance: bool,
    ) -> (usize, usize) {
        let mut rng = Rng(seed);
        let mut pool = PcpuPool::new(UNIT);
        let mut backing = MockBacking::new(UNIT);
        let mut model = Model::default();
        let mut ops = 0usize;
        for _ in 0..nr {
            let size = 1 + rng.below(1024) as usize;
            let align = 1usize << (1 + rng.below(11));
            let area = pool.alloc(size, align, false, &mut backing).expect("alloc failed");
            check_area(&pool, &area, size, align);
            model.insert(area.chunk, area.offset, area.size);
            ops += 1;
            if ops.is_multiple_of(check_every) {
                pool.chunk(area.chunk).unwrap().check_hints().unwrap();
            }
            if ops.is_multiple_of(5000) {
                pool.check().unwrap();
            }
            if balance && pool.below_low_watermark() && ops.is_multiple_of(97) {
                pool.balance_work(&mut backing);
                pool.check().unwrap();
            }
        }
        pool.check().unwrap();
        let peak_chunks = pool.nr_chunks();
        let peak_pages = pool.nr_populated();
        for id in pool.chunk_ids().collect::<Vec<_>>() {
            let c = pool.chunk(id).unwrap();
            assert_eq!(c.usable_bytes() - c.free_bytes(), model.used(id));
        }

        // free in random order
        let mut order = core::mem::take(&mut model.order);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (chunk, off) in order {
            let size = model.remove(chunk, off);
            let (freed, need_balance) = pool.free(chunk, off).unwrap();
            assert_eq!(freed, size);
            ops += 1;
            if ops.is_multiple_of(check_every) {
                pool.chunk(chunk).unwrap().check_hints().unwrap();
            }
            if balance && need_balance && ops.is_multiple_of(13) {
                pool.balance_work(&mut backing);
                pool.check().unwrap();
            }
        }
        pool.check().unwrap();
        for id in pool.chunk_ids().collect::<Vec<_>>() {
            let c = pool.chunk(id).unwrap();
            assert!(c.is_empty());
            assert_eq!(c.free_bytes(), UNIT);
            assert_eq!(c.contig_hint(), UNIT, "chunk {id} contig_hint after freeing everything");
            assert_eq!(c.nr_alloc(), 0);
            assert_eq!(pool.slots().chunk_slot(c), pool.slots().free_slot);
        }
        // the balance work releases all fully free chunks but one and their pages
        pool.balance_work(&mut backing);
        pool.balance_work(&mut backing);
        pool.check().unwrap();
        assert_eq!(pool.nr_chunks(), 1, "one free chunk is kept");
        assert_eq!(backing.created - backing.destroyed, pool.nr_chunks());
        assert_eq!(backing.pages.len(), pool.nr_populated());
        std::eprintln!(
            "pcpu_alloc_test nr={nr}: peak {peak_chunks} chunks, {peak_pages} populated pages/unit, \
             {} chunks created, {} destroyed, {} reclaim flushes, {} left",
            backing.created, backing.destroyed, backing.flushes, pool.nr_chunks()
        );
        (peak_chunks, backing.created)
    }

    #[test]
    fn pcpu_alloc_test_35000() {
        let (peak, created) = run_pcpu_alloc_test(35_000, 0x5eed_1234_abcd_0001, 50, false);
        // ~35000 * (512 + alignment padding) bytes of offset space in 256 KiB units
        assert!((70..=160).contains(&peak), "peak chunks {peak}");
        assert_eq!(created, peak);
    }

    #[test]
    fn pcpu_alloc_test_with_balance_work() {
        run_pcpu_alloc_test(12_000, 0x0dd_ba11, 25, true);
    }

    #[test]
    fn interleaved_alloc_free_with_full_checks() {
        let mut rng = Rng(42);
        let mut pool = PcpuPool::new(64 << 10);
        let mut backing = MockBacking::new(64 << 10);
        let mut live: Vec<PcpuArea> = Vec::new();
        let mut model = Model::default();
        for step in 0..20_000usize {
            if live.is_empty() || rng.below(100) < 55 {
                let max = if rng.below(10) == 0 { 6000 } else { 300 };
                let size = 1 + rng.below(max) as usize;
                let align = 1usize << rng.below(13);
                let area = pool.alloc(size, align, false, &mut backing).unwrap();
                check_area(&pool, &area, size, align);
                model.insert(area.chunk, area.offset, area.size);
                live.push(area);
            } else {
                let i = rng.below(live.len() as u64) as usize;
                let a = live.swap_remove(i);
                assert_eq!(model.remove(a.chunk, a.offset), a.size);
                assert_eq!(pool.free(a.chunk, a.offset).unwrap().0, a.size);
            }
            if step.is_multiple_of(20) {
                pool.check().unwrap();
            }
            if step.is_multiple_of(500) {
                pool.balance_work(&mut backing);
            }
        }
        pool.check().unwrap();
    }

    #[test]
    fn atomic_allocations_and_population_failure() {
        let mut pool = PcpuPool::new(64 << 10);
        let mut backing = MockBacking::new(64 << 10);
        // atomic with no chunk at all fails and asks the balance work for pages
        assert_eq!(pool.alloc(16, 8, true, &mut backing), None);
        pool.balance_work(&mut backing);
        pool.check().unwrap();
        assert_eq!(pool.nr_empty_pop_pages(), PCPU_EMPTY_POP_PAGES_HIGH);
        let a = pool.alloc(16, 8, true, &mut backing).unwrap();
        assert!(pool.chunk(a.chunk).unwrap().is_page_populated(a.offset / PAGE_SIZE));
        // a failing population frees the area again
        backing.fail_populate = true;
        assert_eq!(pool.alloc(4 * PAGE_SIZE, PAGE_SIZE, false, &mut backing), None);
        pool.check().unwrap();
        backing.fail_populate = false;
        let b = pool.alloc(4 * PAGE_SIZE, PAGE_SIZE, false, &mut backing).unwrap();
        pool.check().unwrap();
        pool.free(a.chunk, a.offset).unwrap();
        pool.free(b.chunk, b.offset).unwrap();
        assert!(pool.free(b.chunk, b.offset).is_err());
        assert!(pool.free(99, 0).is_err());
        pool.check().unwrap();
        // invalid requests
        assert_eq!(pool.search(0, 4, false), Err(PcpuAllocError::Invalid));
        assert_eq!(pool.search(PCPU_MIN_UNIT_SIZE + 1, 4, false), Err(PcpuAllocError::Invalid));
        assert_eq!(pool.search(8, 12, false), Err(PcpuAllocError::Invalid));
    }

    #[test]
    fn chunk_creation_failure_returns_none() {
        let mut pool = PcpuPool::new(PCPU_MIN_UNIT_SIZE);
        let mut backing = MockBacking::new(PCPU_MIN_UNIT_SIZE);
        backing.max_chunks = Some(2);
        let mut n = 0;
        while pool.alloc(PAGE_SIZE, PAGE_SIZE, false, &mut backing).is_some() {
            n += 1;
        }
        assert_eq!(n, 16);
        pool.check().unwrap();
    }

    #[test]
    fn first_chunk_in_pool() {
        let mut pool = PcpuPool::new(UNIT);
        let mut backing = MockBacking::new(UNIT);
        let first = PcpuChunk::new_first_chunk(0x7c0, 30000);
        let id = pool.add_chunk(first, true);
        assert_eq!(pool.nr_empty_pop_pages(), pool.chunk(id).unwrap().nr_empty_pop_pages() as i64);
        let mut areas = Vec::new();
        for i in 0..400 {
            let a = pool.alloc(1 + i % 300, 8, false, &mut backing).unwrap();
            areas.push(a);
        }
        assert_eq!(areas[0].chunk, id, "the first chunk serves first");
        assert!(areas.iter().any(|a| a.chunk != id), "then a new chunk is created");
        pool.check().unwrap();
        for a in areas {
            pool.free(a.chunk, a.offset).unwrap();
        }
        pool.balance_work(&mut backing);
        pool.check().unwrap();
        assert!(pool.chunk(id).is_some(), "the first chunk is never destroyed");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Alloc(usize, u32),
            Free(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (1usize..=1024, 1u32..=11).prop_map(|(s, a)| Op::Alloc(s, a)),
                1 => (1usize..=1024, 1u32..=12).prop_map(|(s, a)| Op::Alloc(s * 4, a)),
                3 => any::<usize>().prop_map(Op::Free),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn random_ops_keep_hints_consistent(ops in proptest::collection::vec(op(), 1..400)) {
                let unit = 64 << 10;
                let mut pool = PcpuPool::new(unit);
                let mut backing = MockBacking::new(unit);
                let mut model = Model::default();
                let mut live: Vec<PcpuArea> = Vec::new();
                for op in ops {
                    match op {
                        Op::Alloc(size, a) => {
                            let align = 1usize << a;
                            let area = pool.alloc(size, align, false, &mut backing).unwrap();
                            check_area(&pool, &area, size, align);
                            model.insert(area.chunk, area.offset, area.size);
                            live.push(area);
                        }
                        Op::Free(i) if !live.is_empty() => {
                            let a = live.swap_remove(i % live.len());
                            prop_assert_eq!(model.remove(a.chunk, a.offset), a.size);
                            prop_assert_eq!(pool.free(a.chunk, a.offset).unwrap().0, a.size);
                        }
                        Op::Free(_) => {}
                    }
                    if let Err(e) = pool.check() {
                        return Err(TestCaseError::fail(e));
                    }
                }
                for a in live.drain(..) {
                    pool.free(a.chunk, a.offset).unwrap();
                }
                pool.check().map_err(TestCaseError::fail)?;
                for id in pool.chunk_ids().collect::<Vec<_>>() {
                    let c = pool.chunk(id).unwrap();
                    prop_assert!(c.is_empty());
                    prop_assert_eq!(c.contig_hint(), unit);
                }
            }

            #[test]
            fn single_chunk_alloc_until_full(reqs in proptest::collection::vec((1usize..=2048, 0u32..=12), 1..300)) {
                let mut c = PcpuChunk::new(32 << 10, 0);
                let mut model = Model::default();
                let mut offs = Vec::new();
                for (size, a) in reqs {
                    let align = 1usize << a;
                    if let Some(off) = c.alloc(size, align) {
                        prop_assert_eq!(off % align.max(4), 0);
                        model.insert(0, off, size.div_ceil(4) * 4);
                        offs.push(off);
                    } else {
                        // Linux rejects on hints alone; it must at least never reject when
                        // the request fits the whole free space of an empty chunk
                        prop_assert!(!c.is_empty());
                    }
                    c.check_hints().map_err(TestCaseError::fail)?;
                }
                for off in offs {
                    c.free(off).unwrap();
                    c.check_hints().map_err(TestCaseError::fail)?;
                }
                prop_assert!(c.is_empty());
                prop_assert_eq!(c.contig_hint(), 32 << 10);
            }
        }
    }
}
