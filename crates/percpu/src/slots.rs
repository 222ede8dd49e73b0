//! Slots and chunk lists: `pcpu_size_to_slot`, `pcpu_chunk_slot`, `pcpu_chunk_lists[]`.

use alloc::vec;
use alloc::vec::Vec;

use crate::chunk::PcpuChunk;
use crate::{PCPU_MIN_ALLOC_SIZE, PCPU_SLOT_BASE_SHIFT};

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

/// Index of a chunk in a [`ChunkList`] / [`PcpuPool`](crate::PcpuPool).
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
