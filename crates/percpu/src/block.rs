//! `struct pcpu_block_md`: the allocation hints of one bitmap block (or of a whole chunk).

use crate::bitmap::align_up;

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
    pub(crate) fn init(nr_bits: usize) -> Self {
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
    pub(crate) fn check_block_hint(&self, bits: usize, align: usize) -> bool {
        let start = self.contig_hint_start as usize;
        let bit_off = align_up(start, align) - start;
        bit_off + bits <= self.contig_hint as usize
    }

    /// Linux `pcpu_next_hint`: where to start scanning - past the scan hint if the request is
    /// larger than it and the contig hint lies after it, else `first_free`.
    pub(crate) fn next_hint(&self, alloc_bits: usize) -> usize {
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
    pub(crate) fn update(&mut self, start: i64, end: i64) {
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
