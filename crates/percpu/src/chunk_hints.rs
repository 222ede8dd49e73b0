//! `struct pcpu_chunk`, continued: hint scanning and refresh (`pcpu_block_update_hint_alloc`,
//! `pcpu_block_update_hint_free`, `pcpu_chunk_refresh_hint`, ...), population bookkeeping
//! (`pcpu_chunk_populated` / `pcpu_chunk_depopulated`) and the consistency check.

use alloc::format;
use alloc::string::String;
use core::ops::Range;

use mm_types::PAGE_SIZE;

use crate::bitmap::{
    bitmap_assign, find_last_bit_in, find_next, find_next_bit, find_next_zero_bit, region_overlap,
    test_bit,
};
use crate::chunk::PcpuChunk;
use crate::{B, LINUX_FREE_CHUNK_HINT_QUIRK, PCPU_MIN_ALLOC_SIZE};

impl PcpuChunk {
    // --- hint maintenance -----------------------------------------------------------------

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

    /// Linux `pcpu_update_empty_pages` (chunk part; the global count is
    /// [`PcpuPool`](crate::PcpuPool)'s).
    fn update_empty_pages(&mut self, nr: i32) {
        self.nr_empty_pop_pages += nr;
    }

    /// Linux `pcpu_block_update_scan`: a free area skipped by the alloc scan (because of
    /// alignment) may deserve to be the block's scan hint; scan backwards for its real start.
    pub(crate) fn block_update_scan(&mut self, bit_off: usize, bits: usize) {
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
    pub(crate) fn block_update_hint_alloc(&mut self, bit_off: usize, bits: usize) {
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
    pub(crate) fn block_update_hint_free(&mut self, bit_off: usize, bits: usize) {
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
