//! The percpu allocator (Linux mm/percpu.c): the embedded first chunk, which holds every CPU's
//! copy of the static per-CPU section (`percpu_defs`) plus a dynamic area, then chunks of one
//! unit per possible CPU in vmalloc space, reserved top-down (pcpu_get_vm_areas), pages
//! populated on demand, empty chunks released by the balance work. The chunk-internal bitmap
//! allocator and the chunk lists are `mm_percpu` (crates/percpu, host-tested); this file supplies the
//! memory (`PcpuBacking`).
//!
//! Pointers follow Linux: a percpu pointer is its unit-0 address minus the first chunk's
//! distance from the static template (`pcpu_base_addr - __per_cpu_start`), so CPU n's copy is
//! `ptr + __per_cpu_offset[n]` for static and dynamic variables alike, and `this_cpu_ptr` is
//! `ptr + TPIDR_EL1`. Units are PCPU_UNIT_SIZE apart in every chunk (one group, as Linux's
//! embed allocator lays out a single-node machine). Two locks, as Linux: pcpu_alloc_mutex
//! around an allocation that may populate and around the balance work, and the pool's spinlock
//! (`PCPU`, Linux pcpu_lock) for the bitmaps and chunk lists only; free_percpu takes only the
//! latter. The balance work still holds `PCPU` while it depopulates (Linux drops pcpu_lock
//! there), so a free_percpu can wait behind it.
use alloc::collections::BTreeMap;
use core::ops::Range;

use crate::arch::HwTlb;
use crate::arch::{self, PAGE_OFFSET, VMALLOC_END, VMALLOC_START};
use crate::mm::kva::{self, KVa};
use crate::mm::page_alloc;
use crate::mm::pgtable::{kernel_pgtable, LinearPt};
use crate::percpu_defs;
use mm_page_alloc::Memblock;
use mm_percpu::{ChunkId, PcpuBacking, PcpuChunk, PcpuPool, PCPU_MIN_ALLOC_SIZE};
use mm_pgtable::{flush_tlb_kernel_range, MapFlags, PageProt};
use mm_types::gfp::GfpFlags;
use mm_types::NR_CPUS;
use mm_types::{PAGE_SHIFT, PAGE_SIZE};

/// Unit size: 32 pages per CPU, what Linux arm64 embeds on QEMU virt ("Embedded 32 pages/cpu").
pub const PCPU_UNIT_SIZE: usize = 32 * PAGE_SIZE;

struct State {
    pool: PcpuPool,
    /// Chunk base (unit 0) -> id, for free_percpu (Linux: pcpu_chunk_addr_search).
    by_base: BTreeMap<u64, ChunkId>,
    base_of: alloc::vec::Vec<u64>,
    /// The vmap area of each vmalloc chunk (None for the first chunk, in the linear map).
    vas: alloc::vec::Vec<Option<KVa>>,
    nr_units: usize,
    /// Linux `pcpu_base_addr - __per_cpu_start`: percpu pointer = unit-0 address - delta.
    delta: u64,
    /// vmalloc chunks may be created (after vmalloc_init; before, only the first chunk serves).
    vm_chunks: bool,
}

static PCPU: spin::Mutex<Option<State>> = spin::Mutex::new(None);

/// What setup_per_cpu_areas laid out, for the banner.
pub struct FirstChunk {
    pub base_pa: u64,
    pub static_size: usize,
    pub dyn_size: usize,
    pub unit_size: usize,
    pub nr_units: usize,
}

/// Linux setup_per_cpu_areas (pcpu_embed_first_chunk + pcpu_setup_first_chunk): one unit per
/// possible CPU, all in one memblock allocation in the linear map; each unit starts with a copy
/// of the static per-CPU section, the rest of the unit is the first chunk's dynamic area.
/// Records __per_cpu_offset[], writes each CPU's cpu_number and points this CPU's TPIDR_EL1 at
/// unit 0. Runs on the boot CPU before the page allocator takes over memblock and before any
/// secondary starts.
pub fn setup_per_cpu_areas(
    mb: &mut Memblock,
    nr_units: usize,
) -> Result<FirstChunk, alloc::string::String> {
    let nr_units = nr_units.clamp(1, NR_CPUS);
    let (start, end) = percpu_defs::per_cpu_section();
    let static_size = (end - start).next_multiple_of(PCPU_MIN_ALLOC_SIZE);
    if static_size + PAGE_SIZE > PCPU_UNIT_SIZE {
        return Err(alloc::format!("percpu: static section of {static_size} bytes does not fit a {PCPU_UNIT_SIZE}-byte unit"));
    }
    let bytes = (nr_units * PCPU_UNIT_SIZE) as u64;
    let pa = mb.alloc(bytes, PAGE_SIZE as u64).ok_or_else(|| {
        alloc::format!("percpu: memblock has no {bytes} bytes for the first chunk")
    })?;
    let base = PAGE_OFFSET + pa;
    for unit in 0..nr_units {
        let u = base as usize + unit * PCPU_UNIT_SIZE;
        // SAFETY: unit `unit` is [u, u + PCPU_UNIT_SIZE) inside the memblock allocation above,
        // handed to this call alone and mapped RW by the linear map (mm_init maps all RAM
        // first); the template [start, end) is the image's .data..percpu, end - start <=
        // static_size < PCPU_UNIT_SIZE, and it lies in the image (reserved in memblock), so it
        // does not overlap the unit. Only the boot CPU runs.
        unsafe {
            core::ptr::write_bytes(u as *mut u8, 0, PCPU_UNIT_SIZE);
            core::ptr::copy_nonoverlapping(start as *const u8, u as *mut u8, end - start);
        }
        percpu_defs::set_per_cpu_offset(unit, u.wrapping_sub(start));
        // SAFETY: with the offset just recorded, per_cpu_ptr(unit) is CPU_NUMBER's copy inside
        // the unit just filled (aligned: the unit is page aligned and the template 64-byte
        // aligned); no other CPU runs yet, so nothing else accesses it.
        unsafe { *percpu_defs::CPU_NUMBER.per_cpu_ptr(unit) = unit };
    }
    percpu_defs::set_nr_cpu_ids(nr_units);
    let delta = base.wrapping_sub(start as u64);
    let dyn_size = (PCPU_UNIT_SIZE - static_size) & !(PCPU_MIN_ALLOC_SIZE - 1);
    let mut pool = PcpuPool::new(PCPU_UNIT_SIZE);
    let id = pool.add_chunk(PcpuChunk::new_first_chunk(static_size, dyn_size), true);
    let mut by_base = BTreeMap::new();
    by_base.insert(base, id);
    let mut base_of = alloc::vec![0; id + 1];
    base_of[id] = base;
    let vas = (0..=id).map(|_| None).collect();
    *PCPU.lock() = Some(State { pool, by_base, base_of, vas, nr_units, delta, vm_chunks: false });
    // Linux smp_prepare_boot_cpu: set_my_cpu_offset(per_cpu_offset(smp_processor_id())).
    // SAFETY: this runs on the boot CPU, logical CPU 0, whose unit 0 was just set up:
    // per_cpu_offset(0) is this CPU's __per_cpu_offset, as set_my_cpu_offset requires.
    unsafe { arch::set_my_cpu_offset(percpu_defs::per_cpu_offset(0)) };
    Ok(FirstChunk {
        base_pa: pa,
        static_size: end - start,
        dyn_size,
        unit_size: PCPU_UNIT_SIZE,
        nr_units,
    })
}

/// Once vmalloc works: chunks beyond the first may be created in vmalloc space.
pub fn percpu_init() {
    if let Some(st) = PCPU.lock().as_mut() {
        st.vm_chunks = true;
    }
}

struct Backing<'a> {
    by_base: &'a mut BTreeMap<u64, ChunkId>,
    base_of: &'a mut alloc::vec::Vec<u64>,
    vas: &'a mut alloc::vec::Vec<Option<KVa>>,
    nr_units: usize,
    vm_chunks: bool,
}

impl Backing<'_> {
    fn chunk_size(&self) -> u64 {
        (self.nr_units * PCPU_UNIT_SIZE) as u64
    }
    fn base(&self, id: ChunkId) -> u64 {
        self.base_of[id]
    }
}

impl PcpuBacking for Backing<'_> {
    fn create_chunk(&mut self, id: ChunkId) -> Option<PcpuChunk> {
        if !self.vm_chunks {
            return None;
        }
        let size = self.chunk_size();
        let va = kva::alloc_top_down(size, PCPU_UNIT_SIZE as u64, VMALLOC_START, VMALLOC_END)?;
        let base = va.va_start();
        if self.base_of.len() <= id {
            self.base_of.resize(id + 1, 0);
            self.vas.resize_with(id + 1, || None);
        }
        self.base_of[id] = base;
        self.vas[id] = Some(va);
        self.by_base.insert(base, id);
        Some(PcpuChunk::new(PCPU_UNIT_SIZE, 0))
    }

    fn destroy_chunk(&mut self, id: ChunkId, _chunk: PcpuChunk) {
        let base = self.base(id);
        self.by_base.remove(&base);
        self.base_of[id] = 0;
        // Linux pcpu_destroy_chunk -> pcpu_free_vm_areas -> free_vm_area: the (depopulated,
        // unmapped, not flushed) range goes the lazy way, and the purge that hands it out again
        // flushes it with everything else it purges (usually one flush_tlb_all). Flushing the
        // chunk here, page by page, cost a broadcast TLBI per page: under QEMU's MTTCG each one
        // stops every vCPU, and the balance work of the stress preset's pcpu_alloc_test spent
        // seconds in it without a quiescent state.
        match self.vas[id].take() {
            Some(va) => super::vmap_area::free_vmap_area_noflush(va, kva::NO_NODE),
            None => crate::println!("percpu bug: chunk {id} at {base:#x} has no vmap area"),
        }
    }

    fn populate(&mut self, id: ChunkId, pages: Range<usize>) -> bool {
        populate_pages(self.base(id), self.nr_units, pages)
    }

    fn depopulate(&mut self, id: ChunkId, pages: Range<usize>) {
        // Linux pcpu_depopulate_chunk: unmap without flushing and free the pages; the caller
        // flushes once per chunk (pcpu_post_unmap_tlb_flush in pcpu_reclaim_populated, the
        // chunk-wide flush in destroy_chunk). A stale TLB entry until then is harmless: the
        // pages were empty, nobody dereferences percpu addresses there, and nothing can map
        // the addresses again before the flush (the pool lock is held throughout).
        let base = self.base(id);
        let pt = kernel_pgtable();
        for unit in 0..self.nr_units {
            for p in pages.clone() {
                let va = base + (unit * PCPU_UNIT_SIZE + p * PAGE_SIZE) as u64;
                if let Some(t) = pt.walk(&LinearPt, va) {
                    let _ = pt.unmap_range(&mut LinearPt, va, PAGE_SIZE as u64);
                    page_alloc::__free_page(t.pa >> PAGE_SHIFT);
                }
            }
        }
    }

    fn cond_resched(&mut self) {
        // Runs with pcpu_alloc_mutex and PCPU held (Linux drops pcpu_lock around the
        // depopulation): nothing a quiescent point runs takes them (the balance work itself
        // only tries the mutex).
        crate::smp::cond_resched();
    }

    fn post_unmap_tlb_flush(&mut self, id: ChunkId, pages: Range<usize>) {
        // Linux pcpu_post_unmap_tlb_flush: one range from the first unit's page_start to the
        // last unit's page_end (flush_tlb_kernel_range decides per page or everything).
        let base = self.base(id);
        let start = base + (pages.start * PAGE_SIZE) as u64;
        let end = base + ((self.nr_units - 1) * PCPU_UNIT_SIZE + pages.end * PAGE_SIZE) as u64;
        flush_tlb_kernel_range(&mut HwTlb::new(), start, end);
    }
}

/// Linux pcpu_populate_chunk: backs `pages` of every unit of the chunk at `base` with zeroed
/// pages. Runs without pcpu_lock (Linux: under pcpu_alloc_mutex only): the chunk's pages
/// range is this allocation's to fill, and depopulation (the balance work) needs the mutex too.
fn populate_pages(base: u64, nr_units: usize, pages: Range<usize>) -> bool {
    for unit in 0..nr_units {
        for p in pages.clone() {
            let Some(pfn) = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO, 0)
            else {
                return false;
            };
            let va = base + (unit * PCPU_UNIT_SIZE + p * PAGE_SIZE) as u64;
            let mut tlb = HwTlb::new();
            let r = kernel_pgtable().map_pages(
                &mut LinearPt,
                &mut tlb,
                va,
                1,
                |_| pfn << PAGE_SHIFT,
                PageProt::PAGE_KERNEL,
                PAGE_SHIFT,
                MapFlags::empty(),
            );
            if r.is_err() {
                page_alloc::__free_page(pfn);
                return false;
            }
        }
    }
    true
}

macro_rules! backing {
    ($st:expr) => {
        Backing {
            by_base: &mut $st.by_base,
            base_of: &mut $st.base_of,
            vas: &mut $st.vas,
            nr_units: $st.nr_units,
            vm_chunks: $st.vm_chunks,
        }
    };
}

/// Linux pcpu_alloc_mutex: serialises the allocations that may populate or create chunks and
/// the balance work, which depopulates and destroys them. A sleeping lock in Linux: its waiters
/// are off the CPU, in a quiescent state. Here a waiter spins, through cond_resched() (which
/// reports the quiescent state when a grace period asks for it), so grace periods go on
/// meanwhile (`pcpu_alloc_mutex_lock`). PCPU, the
/// pool's spinlock (Linux pcpu_lock), is taken under it for the bitmap and chunk-list work only,
/// so free_percpu never waits behind a populate.
static PCPU_ALLOC_MUTEX: spin::Mutex<()> = spin::Mutex::new(());

fn pcpu_alloc_mutex_lock() -> spin::MutexGuard<'static, ()> {
    crate::smp::might_sleep();
    loop {
        if let Some(g) = PCPU_ALLOC_MUTEX.try_lock() {
            return g;
        }
        while PCPU_ALLOC_MUTEX.is_locked() {
            // Does something only when asked to (a grace period waiting for this CPU, a
            // cross-CPU call): a sleeping waiter would not hold those up.
            crate::smp::cond_resched();
            core::hint::spin_loop();
        }
    }
}

/// The balance work is queued (Linux: pcpu_balance_work on system_wq).
static BALANCE_PENDING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Linux pcpu_schedule_balance_work: the work runs later, in process context, at this CPU's
/// next quiescent point (cond_resched, a wait loop, idle), as a kworker would when the
/// allocating task next gives up the CPU.
fn pcpu_schedule_balance_work() {
    if !BALANCE_PENDING.swap(true, core::sync::atomic::Ordering::AcqRel) {
        crate::smp::set_need_resched_local();
    }
}

/// Linux pcpu_balance_workfn, if queued: free surplus empty chunks, depopulate the chunks on
/// the to_depopulate list, refill the empty populated pages. Called from the quiescent-point
/// hook; if the pool lock is held here (a quiescent point inside the allocator), the work stays
/// queued.
pub fn pcpu_balance_workfn() {
    use core::sync::atomic::Ordering;
    if !BALANCE_PENDING.load(Ordering::Relaxed) {
        return;
    }
    // Linux pcpu_balance_workfn runs under pcpu_alloc_mutex; an allocation holding it (this
    // CPU's, passing a quiescent point, or another's) leaves the work queued.
    let Some(_m) = PCPU_ALLOC_MUTEX.try_lock() else { return };
    let Some(mut g) = PCPU.try_lock() else { return };
    if !BALANCE_PENDING.swap(false, Ordering::AcqRel) {
        return;
    }
    BALANCE_RUNS.fetch_add(1, Ordering::Relaxed);
    let Some(st) = g.as_mut() else { return };
    let mut bk = backing!(st);
    st.pool.balance_work(&mut bk);
}

static BALANCE_RUNS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Balance-work runs since boot.
pub fn balance_runs() -> u64 {
    BALANCE_RUNS.load(core::sync::atomic::Ordering::Relaxed)
}

/// __alloc_percpu(size, align): zeroed in every unit. Returns the percpu pointer (see the module
/// comment), 0 on failure.
pub fn alloc_percpu(size: usize, align: usize) -> usize {
    // Linux pcpu_alloc: pcpu_alloc_mutex (a sleeping lock, so might_sleep: a voluntary
    // preemption point, where queued work such as the balance work gets to run) ...
    let mutex = pcpu_alloc_mutex_lock();
    // ... then pcpu_lock to find the area (and create a chunk: ours needs only VA, so under the
    // lock; Linux creates it with the lock dropped) ...
    let (area, base, nr_units) = {
        let mut g = PCPU.lock();
        let Some(st) = g.as_mut() else { return 0 };
        let mut bk = backing!(st);
        let Some(area) = st.pool.alloc_area(size, align, false, &mut bk) else { return 0 };
        let base = bk.base(area.chunk);
        (area, base, st.nr_units)
    };
    // ... and populates the area's pages with pcpu_lock dropped, taking it again per range to
    // record them.
    let pages = PcpuChunk::page_range(area.offset, area.size);
    let mut from = pages.start;
    loop {
        let r = {
            let g = PCPU.lock();
            g.as_ref().unwrap().pool.next_unpopulated(area.chunk, from, pages.end)
        };
        let Some(r) = r else { break };
        let ok = populate_pages(base, nr_units, r.clone());
        let mut g = PCPU.lock();
        let st = g.as_mut().unwrap();
        if !ok {
            let _ = st.pool.free(area.chunk, area.offset);
            return 0;
        }
        st.pool.chunk_populated(area.chunk, r.clone());
        from = r.end;
    }
    let (delta, balance) = {
        let g = PCPU.lock();
        let st = g.as_ref().unwrap();
        (st.delta, st.vm_chunks && st.pool.below_low_watermark())
    };
    drop(mutex);
    if balance {
        pcpu_schedule_balance_work();
    }
    let addr = base + area.offset as u64;
    for unit in 0..nr_units {
        // SAFETY: the pool gave this call [offset, offset + size) of the chunk, populated in
        // every unit (first-chunk units are linear-map memory, vmalloc-chunk pages were mapped
        // by populate_pages above), and no one else has the new pointer yet (Linux zeroes it
        // after dropping its locks too).
        unsafe {
            core::ptr::write_bytes((addr + (unit * PCPU_UNIT_SIZE) as u64) as *mut u8, 0, size)
        };
    }
    addr.wrapping_sub(delta) as usize
}

/// free_percpu(ptr).
pub fn free_percpu(ptr: usize) {
    if ptr == 0 {
        return;
    }
    let mut g = PCPU.lock();
    let Some(st) = g.as_mut() else { return };
    let addr = (ptr as u64).wrapping_add(st.delta);
    let Some((&base, &id)) = st.by_base.range(..=addr).next_back() else {
        crate::println!("WARNING: free_percpu({:#x}): not a percpu address", addr);
        return;
    };
    match st.pool.free(id, (addr - base) as usize) {
        Ok((_, need_balance)) => {
            if need_balance && st.vm_chunks {
                pcpu_schedule_balance_work();
            }
        }
        Err(e) => crate::println!("WARNING: free_percpu({:#x}): {}", addr, e),
    }
}

/// Linux per_cpu_ptr(ptr, cpu).
#[inline]
pub fn per_cpu_ptr(ptr: usize, cpu: usize) -> *mut u8 {
    ptr.wrapping_add(percpu_defs::per_cpu_offset(cpu)) as *mut u8
}

/// Linux this_cpu_ptr(ptr): TPIDR_EL1-relative.
#[inline]
pub fn this_cpu_ptr(ptr: usize) -> *mut u8 {
    ptr.wrapping_add(arch::my_cpu_offset()) as *mut u8
}

/// The first chunk's unit for `cpu` as [start, end) linear addresses (tests).
pub fn first_chunk_unit(cpu: usize) -> (usize, usize) {
    let start = percpu_defs::per_cpu_section().0.wrapping_add(percpu_defs::per_cpu_offset(cpu));
    (start, start + PCPU_UNIT_SIZE)
}

/// Releases every fully free vmalloc chunk (for leak checks; Linux keeps one spare). The first
/// chunk is part of the image's memory map and never goes away.
pub fn percpu_shrink() {
    pcpu_balance_workfn();
    let _m = pcpu_alloc_mutex_lock();
    let mut g = PCPU.lock();
    let Some(st) = g.as_mut() else { return };
    let ids: alloc::vec::Vec<ChunkId> = st
        .pool
        .chunk_ids()
        .filter(|&id| st.pool.chunk(id).is_some_and(|c| c.is_empty() && !c.immutable()))
        .collect();
    let mut bk = backing!(st);
    for id in ids {
        let ranges: alloc::vec::Vec<Range<usize>> =
            st.pool.chunk(id).unwrap().populated_ranges().collect();
        for r in ranges {
            bk.depopulate(id, r.clone());
            st.pool.chunk_depopulated(id, r.clone());
            bk.post_unmap_tlb_flush(id, r);
        }
        if let Some(c) = st.pool.remove_chunk(id) {
            bk.destroy_chunk(id, c);
        }
    }
}
