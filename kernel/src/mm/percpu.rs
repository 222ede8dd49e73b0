//! The dynamic percpu allocator (Linux mm/percpu.c): chunks of one unit per possible CPU in
//! vmalloc space, reserved top-down (pcpu_get_vm_areas), pages populated on demand, empty chunks
//! released by the balance work. The chunk-internal bitmap allocator and the chunk lists are
//! `percpu_alloc` (host-tested); this file supplies the memory (`PcpuBacking`).
//!
//! A percpu pointer is the address of its copy in unit 0; CPU n's copy is `ptr + n *
//! unit_size` (per_cpu_ptr). Differences from Linux: there is no embedded first chunk (the
//! static per-CPU data of this kernel is arrays indexed by CPU id), so every chunk is a
//! vmalloc chunk; the pool lock doubles as pcpu_alloc_mutex.
use alloc::collections::BTreeMap;
use core::ops::Range;

use super::gfp::GfpFlags;
use super::kva_glue as kva;
use super::percpu_alloc::{ChunkId, PcpuBacking, PcpuChunk, PcpuPool};
use super::pgtable::{flush_tlb_kernel_range, HwTlb, MapFlags, PageProt};
use super::setup::{kernel_pgtable, KernelPt};
use super::{kalloc, PAGE_SHIFT, PAGE_SIZE};
use crate::arch::{VMALLOC_END, VMALLOC_START};

/// Unit size: 32 pages per CPU, what Linux arm64 embeds on QEMU virt ("Embedded 32 pages/cpu").
pub const PCPU_UNIT_SIZE: usize = 32 * PAGE_SIZE;

struct State {
    pool: PcpuPool,
    /// Chunk base (unit 0) -> id, for free_percpu (Linux: pcpu_chunk_addr_search).
    by_base: BTreeMap<u64, ChunkId>,
    base_of: alloc::vec::Vec<u64>,
    nr_units: usize,
}

static PCPU: spin::Mutex<Option<State>> = spin::Mutex::new(None);

pub fn percpu_init(nr_units: usize) {
    *PCPU.lock() = Some(State { pool: PcpuPool::new(PCPU_UNIT_SIZE), by_base: BTreeMap::new(), base_of: alloc::vec::Vec::new(), nr_units });
}

struct Backing<'a> {
    by_base: &'a mut BTreeMap<u64, ChunkId>,
    base_of: &'a mut alloc::vec::Vec<u64>,
    nr_units: usize,
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
        let size = self.chunk_size();
        let base = kva::alloc_top_down(size, PCPU_UNIT_SIZE as u64, VMALLOC_START, VMALLOC_END)?;
        if self.base_of.len() <= id {
            self.base_of.resize(id + 1, 0);
        }
        self.base_of[id] = base;
        self.by_base.insert(base, id);
        Some(PcpuChunk::new(PCPU_UNIT_SIZE, 0))
    }

    fn destroy_chunk(&mut self, id: ChunkId, _chunk: PcpuChunk) {
        let base = self.base(id);
        self.by_base.remove(&base);
        self.base_of[id] = 0;
        kva::free_now(base, base + self.chunk_size());
    }

    fn populate(&mut self, id: ChunkId, pages: Range<usize>) -> bool {
        let base = self.base(id);
        for unit in 0..self.nr_units {
            for p in pages.clone() {
                let Some(pfn) = kalloc::alloc_pages(GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO, 0) else {
                    return false;
                };
                let va = base + (unit * PCPU_UNIT_SIZE + p * PAGE_SIZE) as u64;
                let mut tlb = HwTlb::new();
                let _g = super::vmalloc::pgtable_lock();
                let r = kernel_pgtable().map_pages(&mut KernelPt, &mut tlb, va, 1, |_| pfn << PAGE_SHIFT, PageProt::PAGE_KERNEL, PAGE_SHIFT, MapFlags::empty());
                if r.is_err() {
                    kalloc::__free_page(pfn);
                    return false;
                }
            }
        }
        true
    }

    fn depopulate(&mut self, id: ChunkId, pages: Range<usize>) {
        // Linux pcpu_depopulate_chunk: unmap, flush the TLB, and only then free the pages (a
        // stale TLB entry would otherwise let a later write to the re-populated address land
        // in a page already reused elsewhere).
        let base = self.base(id);
        let pt = kernel_pgtable();
        let mut pfns: alloc::vec::Vec<u64> = alloc::vec::Vec::with_capacity(pages.len() * self.nr_units);
        for unit in 0..self.nr_units {
            for p in pages.clone() {
                let va = base + (unit * PCPU_UNIT_SIZE + p * PAGE_SIZE) as u64;
                if let Some(t) = pt.walk(&KernelPt, va) {
                    let _ = pt.unmap_range(&mut KernelPt, va, PAGE_SIZE as u64);
                    pfns.push(t.pa >> PAGE_SHIFT);
                }
            }
        }
        flush_tlb_kernel_range(&mut HwTlb::new(), base, base + self.chunk_size());
        for pfn in pfns {
            kalloc::__free_page(pfn);
        }
    }

    fn post_unmap_tlb_flush(&mut self, id: ChunkId, _pages: Range<usize>) {
        let base = self.base(id);
        flush_tlb_kernel_range(&mut HwTlb::new(), base, base + self.chunk_size());
    }
}

/// __alloc_percpu(size, align): zeroed in every unit. Returns the unit-0 address, 0 on failure.
pub fn alloc_percpu(size: usize, align: usize) -> usize {
    let mut g = PCPU.lock();
    let Some(st) = g.as_mut() else { return 0 };
    let mut bk = Backing { by_base: &mut st.by_base, base_of: &mut st.base_of, nr_units: st.nr_units };
    let Some(area) = st.pool.alloc(size, align, false, &mut bk) else { return 0 };
    let base = bk.base(area.chunk) + area.offset as u64;
    for unit in 0..st.nr_units {
        unsafe { core::ptr::write_bytes((base + (unit * PCPU_UNIT_SIZE) as u64) as *mut u8, 0, size) };
    }
    if st.pool.below_low_watermark() {
        st.pool.balance_work(&mut bk);
    }
    base as usize
}

/// free_percpu(ptr).
pub fn free_percpu(ptr: usize) {
    if ptr == 0 {
        return;
    }
    let mut g = PCPU.lock();
    let Some(st) = g.as_mut() else { return };
    let addr = ptr as u64;
    let Some((&base, &id)) = st.by_base.range(..=addr).next_back() else {
        crate::println!("WARNING: free_percpu({:#x}): not a percpu address", addr);
        return;
    };
    match st.pool.free(id, (addr - base) as usize) {
        Ok((_, need_balance)) => {
            if need_balance {
                let mut bk = Backing { by_base: &mut st.by_base, base_of: &mut st.base_of, nr_units: st.nr_units };
                st.pool.balance_work(&mut bk);
            }
        }
        Err(e) => crate::println!("WARNING: free_percpu({:#x}): {}", addr, e),
    }
}

/// per_cpu_ptr(ptr, cpu).
pub fn per_cpu_ptr(ptr: usize, cpu: usize) -> *mut u8 {
    (ptr + cpu * PCPU_UNIT_SIZE) as *mut u8
}

/// Releases every fully free chunk (for leak checks; Linux keeps one spare).
pub fn percpu_shrink() {
    let mut g = PCPU.lock();
    let Some(st) = g.as_mut() else { return };
    let ids: alloc::vec::Vec<ChunkId> = st.pool.chunk_ids().filter(|&id| st.pool.chunk(id).is_some_and(|c| c.is_empty())).collect();
    let mut bk = Backing { by_base: &mut st.by_base, base_of: &mut st.base_of, nr_units: st.nr_units };
    for id in ids {
        let ranges: alloc::vec::Vec<Range<usize>> = st.pool.chunk(id).unwrap().populated_ranges().collect();
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
