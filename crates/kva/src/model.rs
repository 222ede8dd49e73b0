//! An independent model of the KVA free tree for the host tests and the `kva` fuzz target: a
//! BTreeMap of free ranges (start -> end) with u128 fit arithmetic, nothing shared with the
//! allocator it checks.
#![forbid(unsafe_code)]

use alloc::collections::BTreeMap;

#[derive(Default)]
pub struct FreeRanges {
    /// start -> end of each free range, merged.
    pub free: BTreeMap<u64, u64>,
}

impl core::ops::Deref for FreeRanges {
    type Target = BTreeMap<u64, u64>;
    fn deref(&self) -> &Self::Target {
        &self.free
    }
}

impl core::ops::DerefMut for FreeRanges {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.free
    }
}

impl FreeRanges {
    /// The free range holding `addr`.
    pub fn block_containing(&self, addr: u64) -> Option<(u64, u64)> {
        let (&s, &e) = self.free.range(..=addr).next_back()?;
        (addr < e).then_some((s, e))
    }

    /// Takes `[s, e)` out of the free range that holds it (panics if it is not free).
    pub fn carve(&mut self, s: u64, e: u64) {
        let (bs, be) = self.block_containing(s).expect("model: carving a range that is not free");
        assert!(e <= be, "model: carve beyond its block");
        self.free.remove(&bs);
        if bs < s {
            self.free.insert(bs, s);
        }
        if e < be {
            self.free.insert(e, be);
        }
    }

    /// Whether any part of `[s, e)` is free.
    pub fn overlaps(&self, s: u64, e: u64) -> bool {
        self.free.range(..e).next_back().is_some_and(|(_, &pe)| pe > s)
    }

    /// Gives `[s, e)` back, merging with its neighbours (panics if part of it is free).
    pub fn release(&mut self, mut s: u64, mut e: u64) {
        assert!(!self.overlaps(s, e), "model: releasing a range that is partly free");
        if let Some((&ps, &pe)) = self.free.range(..s).next_back() {
            if pe == s {
                self.free.remove(&ps);
                s = ps;
            }
        }
        if let Some(&ne) = self.free.get(&e) {
            self.free.remove(&e);
            e = ne;
        }
        self.free.insert(s, e);
    }

    /// Whether releasing `[s, e)` needs a new range (merges with neither side).
    pub fn release_needs_node(&self, s: u64, e: u64) -> bool {
        let prev = self.free.range(..s).next_back().is_some_and(|(_, &pe)| pe == s);
        !prev && !self.free.contains_key(&e)
    }
}

/// Aligned start if `[nva, nva+size)` fits in `[s, e)` at or after `vstart` (lowest fit).
pub fn model_fit(s: u64, e: u64, size: u64, align: u64, vstart: u64) -> Option<u64> {
    let base = s.max(vstart) as u128;
    let a = align as u128;
    let nva = base.div_ceil(a) * a;
    (nva + size as u128 <= e as u128).then_some(nva as u64)
}

/// Highest aligned start of `size` in `[s, e)` below `vend` and at or after `vstart`.
pub fn model_fit_top(s: u64, e: u64, size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
    let top = e.min(vend);
    if top < size {
        return None;
    }
    let nva = (top - size) / align * align;
    (nva >= s && nva >= vstart).then_some(nva)
}
