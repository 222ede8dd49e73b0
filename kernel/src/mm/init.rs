//! Boot-time memory setup (Linux: mm_core_init and the arm64 bootmem_init path:
//! arm64_memblock_init, paging_init, free_area_init, memblock_free_all): memblock from the
//! device tree, the linear map, mem_map, the page allocator, the per-CPU areas.
use alloc::format;
use alloc::string::String;
use core::fmt::Write;

use super::page_alloc;
use super::pgtable::{kernel_pgtable, EarlyPt};
use crate::arch::{mmu, HwTlb, PAGE_OFFSET};
use bootcfg::dt::BootInfo;
use mm_page_alloc::page::Page;
use mm_page_alloc::page_alloc::{PageAllocConfig, PageAllocHooks, PageAllocator};
use mm_page_alloc::Memblock;
use mm_pgtable::{MapFlags, PageProt};
use mm_types::{PAGE_SHIFT, PAGE_SIZE};

/// What mm_init set up, for the banner.
pub struct MmSummary {
    pub mem_map_bytes: u64,
    pub nr_pages: u64,
    pub early_tables: usize,
    pub percpu: super::percpu::FirstChunk,
}

/// memblock -> linear map -> mem_map -> zones and buddy. `kimage` is the image's [start, end).
pub fn mm_init(
    info: &BootInfo,
    kimage: (u64, u64),
    nr_cpus: usize,
    pcp: bool,
) -> Result<MmSummary, String> {
    let mut mb = Memblock::new();
    for m in &info.memory {
        mb.add(m.base, m.size).map_err(|e| format!("memblock: {e}"))?;
    }
    mb.reserve(kimage.0, kimage.1 - kimage.0).map_err(|e| format!("memblock: {e}"))?;
    for r in &info.reserved {
        mb.reserve(r.base & !(PAGE_SIZE as u64 - 1), r.size + (r.base & (PAGE_SIZE as u64 - 1)))
            .map_err(|e| format!("memblock: {e}"))?;
    }

    // The linear map of all RAM, with 1 GiB / 2 MiB blocks where aligned.
    let pt = kernel_pgtable();
    let mut tlb = HwTlb::new();
    for m in &info.memory {
        pt.map_range(
            &mut EarlyPt,
            &mut tlb,
            PAGE_OFFSET + m.base,
            m.base,
            m.size,
            PageProt::PAGE_KERNEL,
            MapFlags::BLOCK_PUD | MapFlags::BLOCK_PMD | MapFlags::CONT_PTE,
        )
        .map_err(|e| format!("linear map of [{:#x}, {:#x}): {:?}", m.base, m.base + m.size, e))?;
    }

    // Per-CPU areas before anything else takes memblock memory (Linux: setup_per_cpu_areas
    // runs before mm_core_init); from here on smp_processor_id reads unit 0.
    let percpu = super::percpu::setup_per_cpu_areas(&mut mb, nr_cpus)?;

    // mem_map: one struct page per PFN from the first to the last byte of RAM (holes included).
    let min_pfn = mb.start_of_dram() >> PAGE_SHIFT;
    let max_pfn = mb.end_of_dram().div_ceil(PAGE_SIZE as u64);
    let n = (max_pfn - min_pfn) as usize;
    let bytes = (n * core::mem::size_of::<Page>()) as u64;
    let pa = mb
        .alloc(bytes.next_multiple_of(PAGE_SIZE as u64), PAGE_SIZE as u64)
        .ok_or_else(|| format!("memblock: no room for mem_map ({bytes} bytes)"))?;
    // Zeroed with DC ZVA (all-zero is a valid Page: every field is an atomic integer);
    // PageAllocator::new's memmap_init then writes each struct page once, as Linux's
    // memmap_init_range does. (Writing Page::new() here first cost 5 M instructions at 2 GiB.)
    page_alloc::zero_pages(pa >> PAGE_SHIFT, bytes.div_ceil(PAGE_SIZE as u64) as usize);
    // SAFETY: memblock handed out [pa, pa + bytes) to this call alone and keeps it reserved (the
    // page allocator built from `mb` below never frees it), so it lives for the rest of the
    // kernel's life; it is RAM, mapped RW by the linear map set up above, and page aligned (more
    // than Page needs). Every byte was just zeroed, a valid value for each of the n Pages, and
    // nothing writes the memory other than through the shared slice afterwards.
    let mem_map: &'static [Page] =
        unsafe { core::slice::from_raw_parts((PAGE_OFFSET + pa) as *const Page, n) };
    let cfg = PageAllocConfig {
        zone_dma_limit: info.dma_limit.map(|l| l - 1),
        nr_cpus,
        pcp_enabled: pcp,
        hooks: PageAllocHooks {
            zero: page_alloc::zero_pages,
            warn: page_alloc::warn,
            irq_save: page_alloc::zone_irq_save,
            irq_restore: page_alloc::zone_irq_restore,
        },
        ..PageAllocConfig::default()
    };
    let mut pa_ = PageAllocator::new(mem_map, min_pfn, &mb, &cfg).map_err(|e| format!("{e}"))?;
    // The zones' pcps move from their boot pagesets into the per-CPU areas.
    pa_.setup_per_cpu_pageset(
        percpu.nr_units,
        &crate::percpu_defs::per_cpu_offsets(),
        |size, align| Some(super::percpu::alloc_percpu(size, align)).filter(|&p| p != 0),
    )
    .map_err(|e| format!("setup_per_cpu_pageset: {e}"))?;
    page_alloc::init(pa_);
    Ok(MmSummary {
        mem_map_bytes: bytes,
        nr_pages: n as u64,
        early_tables: mmu::early_pool_used(),
        percpu,
    })
}

/// The meminfo-style dump (zones, buddyinfo, watermarks, pcp, struct page footprint).
pub fn show_mem(w: &mut dyn Write) {
    let _ = page_alloc::allocator().show_mem(w);
}
