//! The allocator core: pcpu_alloc / free_percpu / pcpu_balance_workfn without the memory side.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use mm_types::PAGE_SIZE;

use crate::chunk::{pcpu_request_bits, PcpuChunk};
use crate::slots::{ChunkId, ChunkList, PcpuSlots};
use crate::{
    PCPU_EMPTY_POP_PAGES_HIGH, PCPU_EMPTY_POP_PAGES_LOW, PCPU_MIN_ALLOC_SIZE, PCPU_MIN_UNIT_SIZE,
    PCPU_SLOT_FAIL_THRESHOLD,
};

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
    /// The `cond_resched()` of `pcpu_reclaim_populated` after each depopulated range and of
    /// `pcpu_balance_free` after each destroyed chunk: the balance work can run long, and in a
    /// non-preemptible kernel this is where its CPU reports RCU quiescent states meanwhile.
    fn cond_resched(&mut self) {}
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
    /// One lock's worth: the kernel runs the two halves under different locks, as Linux does
    /// ([`alloc_area`](Self::alloc_area) under pcpu_lock, the populating outside it).
    pub fn alloc<Bk: PcpuBacking>(
        &mut self,
        size: usize,
        align: usize,
        is_atomic: bool,
        backing: &mut Bk,
    ) -> Option<PcpuArea> {
        let area = self.alloc_area(size, align, is_atomic, backing)?;
        if !is_atomic {
            // populate if not all pages are already there
            let pages = PcpuChunk::page_range(area.offset, area.size);
            let mut from = pages.start;
            while let Some(r) = self.next_unpopulated(area.chunk, from, pages.end) {
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

    /// The first half of Linux `pcpu_alloc`, what it does under pcpu_lock: find an area (the
    /// chunk slots' search), creating chunks as needed (non-atomic only). The area's pages may
    /// still be unpopulated: see [`next_unpopulated`](Self::next_unpopulated).
    pub fn alloc_area<Bk: PcpuBacking>(
        &mut self,
        size: usize,
        align: usize,
        is_atomic: bool,
        backing: &mut Bk,
    ) -> Option<PcpuArea> {
        let mut fresh_chunks = 0;
        loop {
            match self.search(size, align, is_atomic) {
                Ok(area) => return Some(area),
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
        }
    }

    /// The next unpopulated page range of chunk `id` in `[from, end)` (Linux: the
    /// `for_each_clear_bitrange_from` over `chunk->populated` in `pcpu_alloc`).
    pub fn next_unpopulated(&self, id: ChunkId, from: usize, end: usize) -> Option<Range<usize>> {
        let chunk = self.chunks[id].as_ref().unwrap();
        let r = chunk.next_unpopulated_range(from, end)?;
        debug_assert!(!chunk.immutable);
        Some(r)
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
            backing.cond_resched();
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
                backing.cond_resched();
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
