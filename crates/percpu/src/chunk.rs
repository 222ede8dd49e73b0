//! `struct pcpu_chunk`: construction, accessors, and the allocation and free paths
//! (`pcpu_find_block_fit`, `pcpu_alloc_area`, `pcpu_free_area`). The hint maintenance,
//! population bookkeeping and verification are in `chunk_hints`.

use alloc::vec;
use alloc::vec::Vec;

use mm_types::PAGE_SIZE;

use crate::bitmap::{
    align_up, bitmap_assign, bits_to_words, find_next_bit, find_next_zero_bit, set_bit, test_bit,
};
use crate::block::PcpuBlockMd;
use crate::{B, PCPU_MIN_ALLOC_SHIFT, PCPU_MIN_ALLOC_SIZE};

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
    pub(crate) nr_pages: usize,
    /// Bytes hidden at the start (Linux `start_offset`; the static area of the first chunk).
    pub(crate) start_offset: usize,
    /// Bytes hidden at the end (Linux `end_offset`).
    pub(crate) end_offset: usize,
    pub(crate) alloc_map: Vec<u64>,
    pub(crate) bound_map: Vec<u64>,
    pub(crate) md_blocks: Vec<PcpuBlockMd>,
    pub(crate) chunk_md: PcpuBlockMd,
    pub(crate) free_bytes: usize,
    pub(crate) populated: Vec<u64>,
    pub(crate) nr_populated: usize,
    pub(crate) nr_empty_pop_pages: i32,
    pub(crate) immutable: bool,
    pub(crate) nr_alloc: usize,
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
    pub(crate) fn map_bits(&self) -> usize {
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
    /// is the caller's: see [`ChunkList::relocate`](crate::ChunkList::relocate) /
    /// [`PcpuPool`](crate::PcpuPool).)
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
}
