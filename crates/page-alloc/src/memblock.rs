//! Boot-time physical memory map: Linux's memblock (mm/memblock.c).
//!
//! `memory` holds RAM (`memblock_add`), `reserved` what is in use (`memblock_reserve`). Both are
//! sorted arrays of non-overlapping regions in fixed storage (`INIT_MEMBLOCK_REGIONS` = 128 as
//! in Linux) so it works before any heap; running out of slots is an error, never a panic.
//! Overlapping or adjacent additions are merged, as Linux's `memblock_add_range` +
//! `memblock_merge_regions` do (there are no node ids or region flags here).
//! `alloc` mirrors `memblock_phys_alloc` (`memblock_find_in_range_node`, top-down by default,
//! never below PAGE_SIZE) and `free_ranges` mirrors `for_each_free_mem_range` with the
//! `PFN_UP(start)`/`PFN_DOWN(end)` rounding of `__free_memory_core`.
#![forbid(unsafe_code)]
use core::fmt;
use mm_types::PAGE_SIZE;

/// Slots per region array (Linux INIT_MEMBLOCK_REGIONS; Linux can double the array later, we
/// cannot).
pub const INIT_MEMBLOCK_REGIONS: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemblockRegion {
    pub base: u64,
    pub size: u64,
}

impl MemblockRegion {
    #[inline]
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemblockError {
    /// All `INIT_MEMBLOCK_REGIONS` slots of the named array are in use.
    TooManyRegions(&'static str),
}

impl fmt::Display for MemblockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemblockError::TooManyRegions(t) => {
                write!(f, "memblock: too many {} regions (max {})", t, INIT_MEMBLOCK_REGIONS)
            }
        }
    }
}

/// One region array (Linux `struct memblock_type`).
#[derive(Clone)]
pub struct MemblockType {
    name: &'static str,
    cnt: usize,
    regions: [MemblockRegion; INIT_MEMBLOCK_REGIONS],
}

impl MemblockType {
    const fn new(name: &'static str) -> Self {
        MemblockType {
            name,
            cnt: 0,
            regions: [MemblockRegion { base: 0, size: 0 }; INIT_MEMBLOCK_REGIONS],
        }
    }

    pub fn regions(&self) -> &[MemblockRegion] {
        &self.regions[..self.cnt]
    }

    pub fn total_size(&self) -> u64 {
        self.regions().iter().map(|r| r.size).sum()
    }

    /// Adds `[base, base+size)`, merging with every overlapping or adjacent region.
    fn add_range(&mut self, base: u64, size: u64) -> Result<(), MemblockError> {
        // Linux memblock_cap_size: clip at the end of the address space.
        let size = size.min(u64::MAX - base);
        if size == 0 {
            return Ok(());
        }
        let end = base + size;
        let regs = &self.regions[..self.cnt];
        // First region that ends at or after `base` (may merge), first that starts after `end`.
        let i = regs.partition_point(|r| r.end() < base);
        let j = regs.partition_point(|r| r.base <= end);
        if i == j {
            if self.cnt == INIT_MEMBLOCK_REGIONS {
                return Err(MemblockError::TooManyRegions(self.name));
            }
            self.regions.copy_within(i..self.cnt, i + 1);
            self.regions[i] = MemblockRegion { base, size };
            self.cnt += 1;
        } else {
            let nb = base.min(self.regions[i].base);
            let ne = end.max(self.regions[j - 1].end());
            self.regions[i] = MemblockRegion { base: nb, size: ne - nb };
            self.regions.copy_within(j..self.cnt, i + 1);
            self.cnt -= j - i - 1;
        }
        Ok(())
    }

    /// Removes `[base, base+size)` (Linux `memblock_remove_range`); splitting a region in two
    /// needs a free slot.
    fn remove_range(&mut self, base: u64, size: u64) -> Result<(), MemblockError> {
        let size = size.min(u64::MAX - base);
        if size == 0 {
            return Ok(());
        }
        let end = base + size;
        let regs = &self.regions[..self.cnt];
        let i = regs.partition_point(|r| r.end() <= base);
        let j = regs.partition_point(|r| r.base < end);
        if i == j {
            return Ok(());
        }
        let (first, last) = (self.regions[i], self.regions[j - 1]);
        let keep_left = (first.base < base)
            .then(|| MemblockRegion { base: first.base, size: base - first.base });
        let keep_right =
            (last.end() > end).then(|| MemblockRegion { base: end, size: last.end() - end });
        let new_n = keep_left.is_some() as usize + keep_right.is_some() as usize;
        let removed = j - i;
        if self.cnt - removed + new_n > INIT_MEMBLOCK_REGIONS {
            return Err(MemblockError::TooManyRegions(self.name));
        }
        // Move the tail to its final place, then write the kept pieces.
        let tail_dst = i + new_n;
        self.regions.copy_within(j..self.cnt, tail_dst);
        self.cnt = self.cnt - removed + new_n;
        for (k, r) in [keep_left, keep_right].into_iter().flatten().enumerate() {
            self.regions[i + k] = r;
        }
        Ok(())
    }

    fn contains(&self, addr: u64) -> bool {
        let regs = self.regions();
        let i = regs.partition_point(|r| r.end() <= addr);
        i < regs.len() && regs[i].base <= addr
    }
}

/// Linux `struct memblock`.
#[derive(Clone)]
pub struct Memblock {
    pub memory: MemblockType,
    pub reserved: MemblockType,
    /// Linux `memblock.bottom_up` (false: allocate from the top, the default).
    pub bottom_up: bool,
}

impl Default for Memblock {
    fn default() -> Self {
        Self::new()
    }
}

impl Memblock {
    pub const fn new() -> Self {
        Memblock {
            memory: MemblockType::new("memory"),
            reserved: MemblockType::new("reserved"),
            bottom_up: false,
        }
    }

    /// `memblock_add`: register RAM.
    pub fn add(&mut self, base: u64, size: u64) -> Result<(), MemblockError> {
        self.memory.add_range(base, size)
    }

    /// `memblock_remove`: forget RAM (e.g. `mem=`).
    pub fn remove(&mut self, base: u64, size: u64) -> Result<(), MemblockError> {
        self.memory.remove_range(base, size)
    }

    /// `memblock_reserve`: mark a range in use (any order, overlaps allowed).
    pub fn reserve(&mut self, base: u64, size: u64) -> Result<(), MemblockError> {
        self.reserved.add_range(base, size)
    }

    /// `memblock_phys_free`: give a reservation back.
    pub fn free(&mut self, base: u64, size: u64) -> Result<(), MemblockError> {
        self.reserved.remove_range(base, size)
    }

    /// `memblock_phys_mem_size`.
    pub fn phys_mem_size(&self) -> u64 {
        self.memory.total_size()
    }

    /// `memblock_reserved_size`.
    pub fn reserved_size(&self) -> u64 {
        self.reserved.total_size()
    }

    /// `memblock_start_of_DRAM` (0 without memory).
    pub fn start_of_dram(&self) -> u64 {
        self.memory.regions().first().map_or(0, |r| r.base)
    }

    /// `memblock_end_of_DRAM` (exclusive, 0 without memory).
    pub fn end_of_dram(&self) -> u64 {
        self.memory.regions().last().map_or(0, |r| r.end())
    }

    /// `memblock_is_memory`.
    pub fn is_memory(&self, addr: u64) -> bool {
        self.memory.contains(addr)
    }

    /// `memblock_is_reserved`.
    pub fn is_reserved(&self, addr: u64) -> bool {
        self.reserved.contains(addr)
    }

    /// Free bytes (memory minus reserved).
    pub fn free_size(&self) -> u64 {
        self.free_ranges_raw().map(|(s, e)| e - s).sum()
    }

    /// `memblock_phys_alloc(size, align)`: finds a free range (top-down unless `bottom_up`),
    /// never below PAGE_SIZE, reserves it and returns its base. `None` when nothing fits or the
    /// reserved array is full. `align` 0 means the cache line size (Linux SMP_CACHE_BYTES).
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 {
            return None;
        }
        let align = if align == 0 { 64 } else { align };
        assert!(align.is_power_of_two(), "memblock_alloc: align {:#x} not a power of two", align);
        let start = PAGE_SIZE as u64;
        let mut found = None;
        let mut try_range = |s: u64, e: u64| -> bool {
            let (s, e) = (s.max(start), e);
            if e <= s || e - s < size {
                return true;
            }
            let cand = if self.bottom_up {
                let c = s.checked_add(align - 1).map(|v| v & !(align - 1));
                match c {
                    Some(c) if c.checked_add(size).is_some_and(|ce| ce <= e) => c,
                    _ => return true,
                }
            } else {
                let c = (e - size) & !(align - 1);
                if c < s {
                    return true;
                }
                c
            };
            found = Some(cand);
            false
        };
        if self.bottom_up {
            for (s, e) in self.free_ranges_raw() {
                if !try_range(s, e) {
                    break;
                }
            }
        } else {
            self.for_each_free_range_rev(&mut try_range);
        }
        let base = found?;
        self.reserve(base, size).ok()?;
        Some(base)
    }

    /// Free ranges `(start, end)` in bytes, ascending, unrounded (Linux `for_each_free_mem_range`).
    pub fn free_ranges_raw(&self) -> FreeRanges<'_> {
        FreeRanges { mb: self, mi: 0, ri: 0, cur: None }
    }

    /// Free ranges rounded inwards to whole pages (`PFN_UP(start)`, `PFN_DOWN(end)`), empty ones
    /// skipped: what `memblock_free_all` hands to the buddy allocator. Byte addresses.
    pub fn free_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mask = PAGE_SIZE as u64 - 1;
        self.free_ranges_raw().filter_map(move |(s, e)| {
            let s = s.checked_add(mask)? & !mask;
            let e = e & !mask;
            (s < e).then_some((s, e))
        })
    }

    /// Free ranges from the top down; `f` returns false to stop.
    fn for_each_free_range_rev(&self, mut f: impl FnMut(u64, u64) -> bool) {
        let res = self.reserved.regions();
        for m in self.memory.regions().iter().rev() {
            let (ms, me) = (m.base, m.end());
            let mut cur_end = me;
            let mut k = res.partition_point(|r| r.base < me);
            while k > 0 && cur_end > ms {
                let r = res[k - 1];
                k -= 1;
                if r.end() <= ms {
                    break;
                }
                if r.end() < cur_end && !f(r.end().max(ms), cur_end) {
                    return;
                }
                cur_end = cur_end.min(r.base);
            }
            if cur_end > ms && !f(ms, cur_end) {
                return;
            }
        }
    }
}

/// Iterator over memory minus reserved (ascending), see `Memblock::free_ranges_raw`.
pub struct FreeRanges<'a> {
    mb: &'a Memblock,
    /// Current memory region and the first reserved region that may overlap it.
    mi: usize,
    ri: usize,
    /// Start of the part of memory region `mi` not yet returned.
    cur: Option<u64>,
}

impl Iterator for FreeRanges<'_> {
    type Item = (u64, u64);
    fn next(&mut self) -> Option<(u64, u64)> {
        let mem = self.mb.memory.regions();
        let res = self.mb.reserved.regions();
        while self.mi < mem.len() {
            let m = mem[self.mi];
            let cur = *self.cur.get_or_insert(m.base);
            if cur >= m.end() {
                self.mi += 1;
                self.cur = None;
                continue;
            }
            // Skip reserved regions that end before `cur`.
            while self.ri < res.len() && res[self.ri].end() <= cur {
                self.ri += 1;
            }
            if self.ri < res.len() && res[self.ri].base < m.end() {
                let r = res[self.ri];
                if r.base > cur {
                    self.cur = Some(r.end().min(m.end()));
                    return Some((cur, r.base));
                }
                // cur is inside r.
                self.cur = Some(r.end().min(m.end()));
                continue;
            }
            self.cur = Some(m.end());
            return Some((cur, m.end()));
        }
        None
    }
}

impl fmt::Debug for Memblock {
    /// Like Linux `memblock_dump_all`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "MEMBLOCK configuration:")?;
        writeln!(
            f,
            " memory size = {:#x} reserved size = {:#x}",
            self.phys_mem_size(),
            self.reserved_size()
        )?;
        for t in [&self.memory, &self.reserved] {
            writeln!(f, " {}.cnt  = {:#x}", t.name, t.cnt)?;
            for (i, r) in t.regions().iter().enumerate() {
                writeln!(
                    f,
                    " {}[{:#x}]\t[{:#018x}-{:#018x}], {:#x} bytes",
                    t.name,
                    i,
                    r.base,
                    r.end() - 1,
                    r.size
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn free(mb: &Memblock) -> Vec<(u64, u64)> {
        mb.free_ranges_raw().collect()
    }

    #[test]
    fn add_merges_and_reserve_overlaps() {
        let mut mb = Memblock::new();
        mb.add(0x4000_0000, 0x1000_0000).unwrap();
        mb.add(0x6000_0000, 0x1000_0000).unwrap();
        mb.add(0x5000_0000, 0x1000_0000).unwrap(); // fills the gap: one region
        assert_eq!(mb.memory.regions(), &[MemblockRegion { base: 0x4000_0000, size: 0x3000_0000 }]);
        mb.reserve(0x4020_0000, 0x10_0000).unwrap();
        mb.reserve(0x4028_0000, 0x10_0000).unwrap(); // overlapping
        mb.reserve(0x4000_0000, 0x1000).unwrap();
        assert_eq!(mb.reserved.regions().len(), 2);
        assert_eq!(mb.reserved_size(), 0x1000 + 0x18_0000);
        assert_eq!(free(&mb), [(0x4000_1000, 0x4020_0000), (0x4038_0000, 0x7000_0000)]);
        assert!(mb.is_reserved(0x4030_0000));
        assert!(!mb.is_reserved(0x4038_0000));
        assert_eq!(mb.start_of_dram(), 0x4000_0000);
        assert_eq!(mb.end_of_dram(), 0x7000_0000);
    }

    #[test]
    fn alloc_is_top_down_and_reserves() {
        let mut mb = Memblock::new();
        mb.add(0x4000_0000, 0x100_0000).unwrap();
        mb.reserve(0x40ff_f000, 0x1000).unwrap();
        let a = mb.alloc(0x3000, 0x1000).unwrap();
        assert_eq!(a, 0x40ff_c000);
        let b = mb.alloc(0x20_0000, 0x20_0000).unwrap();
        assert_eq!(b, 0x40c0_0000); // 0x40e0_0000 would overlap the reservations at the top
        assert!(mb.is_reserved(b) && mb.is_reserved(a));
        assert!(mb.alloc(0x200_0000, 0x1000).is_none());
        // Never below PAGE_SIZE.
        let mut mb = Memblock::new();
        mb.add(0, 0x3000).unwrap();
        assert_eq!(mb.alloc(0x1000, 0x1000), Some(0x2000));
        assert_eq!(mb.alloc(0x1000, 0x1000), Some(0x1000));
        assert_eq!(mb.alloc(0x1000, 0x1000), None);
    }

    #[test]
    fn free_ranges_are_page_rounded() {
        let mut mb = Memblock::new();
        mb.add(0x1000_0800, 0x10_0000).unwrap();
        mb.reserve(0x1000_5100, 0x10).unwrap();
        let v: Vec<_> = mb.free_ranges().collect();
        assert_eq!(v, [(0x1000_1000, 0x1000_5000), (0x1000_6000, 0x1010_0000)]);
    }

    #[test]
    fn overflow_is_an_error() {
        let mut mb = Memblock::new();
        for i in 0..INIT_MEMBLOCK_REGIONS as u64 {
            mb.reserve(i * 0x2000, 0x1000).unwrap();
        }
        assert_eq!(mb.reserve(0x1000_0000, 0x1000), Err(MemblockError::TooManyRegions("reserved")));
        // Merging into an existing region still works when full.
        mb.reserve(0x1000, 0x1000).unwrap();
        assert_eq!(mb.reserved.regions().len(), INIT_MEMBLOCK_REGIONS - 1);
        // Splitting needs a slot.
        mb.reserve(0x1000_0000, 0x1000).unwrap();
        assert!(mb.free(0x4000 + 0x100, 0x100).is_err());
        mb.free(0x4000, 0x1000).unwrap();
    }

    /// Reference model: a byte-granular set over a small address space.
    fn model(mem: &[(u64, u64)], res: &[(u64, u64)], freed: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut bits = [0u8; 512];
        for &(b, s) in mem {
            for a in b..(b + s).min(512) {
                bits[a as usize] |= 1;
            }
        }
        for &(b, s) in res {
            for a in b..(b + s).min(512) {
                bits[a as usize] |= 2;
            }
        }
        for &(b, s) in freed {
            for a in b..(b + s).min(512) {
                bits[a as usize] &= !2;
            }
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        for a in 0..512u64 {
            if bits[a as usize] == 1 {
                match out.last_mut() {
                    Some(l) if l.1 == a => l.1 = a + 1,
                    _ => out.push((a, a + 1)),
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn free_ranges_match_model(
            mem in proptest::collection::vec((0u64..480, 1u64..32), 0..10),
            res in proptest::collection::vec((0u64..480, 1u64..32), 0..10),
            freed in proptest::collection::vec((0u64..480, 1u64..32), 0..4),
        ) {
            let mut mb = Memblock::new();
            for &(b, s) in &mem { mb.add(b, s).unwrap(); }
            for &(b, s) in &res { mb.reserve(b, s).unwrap(); }
            for &(b, s) in &freed { mb.free(b, s).unwrap(); }
            // Sorted and non-overlapping, non-adjacent for memory.
            for t in [&mb.memory, &mb.reserved] {
                for w in t.regions().windows(2) { prop_assert!(w[0].end() < w[1].base); }
            }
            let expect = model(&mem, &res, &freed);
            prop_assert_eq!(free(&mb), expect.clone());
            let mut rev = Vec::new();
            mb.for_each_free_range_rev(|s, e| { rev.push((s, e)); true });
            rev.reverse();
            prop_assert_eq!(rev, expect);
        }
    }
}
