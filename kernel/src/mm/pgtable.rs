//! The kernel's page tables: the one instance of `mm_pgtable` over real memory (Linux:
//! init_mm's pgd, `swapper_pg_dir`), its table-page sources (the early pool, then the page
//! allocator), `init_mm.page_table_lock`, and paging_init's switch to the final tables.
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};

use super::page_alloc;
use crate::arch::{self, mmu, HwTlb, PAGE_OFFSET};
use bootcfg::dt::BootInfo;
use mm_pgtable::{MapFlags, PageProt, PageTable, PtMemory};
use mm_types::{GfpFlags, PAGE_SHIFT, PAGE_SIZE};

/// Page tables from the early pool in the image (before the page allocator exists).
pub struct EarlyPt;

// SAFETY: the tables it reaches are head.S's (TTBR1's boot root and its tables, in the image) and
// early-pool pages, all inside the image, which `table_va` reaches through the image mapping
// (RW data, 4 KiB-aligned pages); early-pool pages are zeroed statics handed out once each by an
// atomic bump and never freed or reused. It takes no populate lock: it is used only by the boot
// CPU before any secondary runs (mm_init, paging_init).
unsafe impl PtMemory for EarlyPt {
    fn table(&self, pa: u64) -> *mut [u64; 512] {
        mmu::table_va(pa) as *mut [u64; 512]
    }
    fn alloc_table(&mut self) -> Option<u64> {
        mmu::early_pool_alloc()
    }
    fn free_table(&mut self, _pa: u64) {
        // Early-pool pages are never reused (Linux: memblock page tables are never freed).
    }
}

/// Page tables from the page allocator (Linux: pte_alloc_kernel -> __get_free_page).
pub struct KernelPt;

// SAFETY: table pages are the current root (image or page-allocator page) and pages from
// alloc_table: order-0 pages from the page allocator with __GFP_ZERO (zeroed), owned by the page
// tables until free_table; `table_va` reaches image pages through the image mapping and all other
// RAM through the linear map, both RW and 4 KiB aligned. New tables are linked under
// PAGE_TABLE_LOCK (with_populate_lock), as the trait requires for concurrent mappers.
unsafe impl PtMemory for KernelPt {
    fn table(&self, pa: u64) -> *mut [u64; 512] {
        mmu::table_va(pa) as *mut [u64; 512]
    }
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = page_alloc::alloc_pages(GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO, 0)
            .map(|pfn| pfn << PAGE_SHIFT);
        if pa.is_some() {
            NR_PAGETABLE.fetch_add(1, Ordering::Relaxed);
        }
        pa
    }
    fn free_table(&mut self, pa: u64) {
        NR_PAGETABLE.fetch_sub(1, Ordering::Relaxed);
        page_alloc::__free_page(pa >> PAGE_SHIFT);
    }
    fn with_populate_lock(&mut self, f: &mut dyn FnMut()) {
        let _g = PAGE_TABLE_LOCK.lock();
        f()
    }
}

/// The kernel page tables once paging_init has switched every CPU to them: every table is
/// reached through the linear map (Linux `__va()`, one add), where [`KernelPt`] first asks
/// whether the table lies in the kernel image (the boot tables before the linear map existed).
/// For vmalloc and percpu mappings, which only run after paging_init. Allocation, freeing and
/// the populate lock are [`KernelPt`]'s.
pub struct LinearPt;

// SAFETY: as KernelPt's, and: paging_init maps every memory region of the boot info (all RAM,
// the kernel image and its early-pool tables included) RW into the linear map of the tables
// every CPU switches to, so `phys_to_virt` reaches every table page RW and 4 KiB aligned. This
// type is only used after that switch (vmalloc_init and percpu_init run after paging_init).
unsafe impl PtMemory for LinearPt {
    #[inline(always)]
    fn table(&self, pa: u64) -> *mut [u64; 512] {
        mmu::phys_to_virt(pa) as *mut [u64; 512]
    }
    fn alloc_table(&mut self) -> Option<u64> {
        KernelPt.alloc_table()
    }
    fn free_table(&mut self, pa: u64) {
        KernelPt.free_table(pa)
    }
    fn with_populate_lock(&mut self, f: &mut dyn FnMut()) {
        KernelPt.with_populate_lock(f)
    }
}

/// Linux init_mm.page_table_lock: held only while a new kernel table is linked in.
static PAGE_TABLE_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Kernel page-table pages taken from the page allocator (Linux: NR_KERNEL_PAGETABLE). Tables
/// for the vmalloc range are never freed (as in Linux), so leak checks count them separately.
static NR_PAGETABLE: AtomicU64 = AtomicU64::new(0);

pub fn nr_pagetable_pages() -> u64 {
    NR_PAGETABLE.load(Ordering::Relaxed)
}

/// The kernel's page tables (TTBR1).
pub fn kernel_pgtable() -> PageTable {
    // Linux init_mm.pgd: a memory load, not an MRS of TTBR1_EL1 (a QEMU helper call with an
    // access check). NEW_TTBR1 is the root every CPU runs on once paging_init switched.
    let r = NEW_TTBR1.load(Ordering::Relaxed);
    PageTable::from_root(if r != 0 { r } else { mmu::ttbr1() })
}

core::arch::global_asm!(
    // Switches TTBR1 to x0 going through the reserved (empty) table in x1, so no CPU ever
    // holds TLB entries from both the old and the new tables (break-before-make at the root;
    // Linux: cpu_replace_ttbr1 via the idmap). Runs from its identity-mapped physical address.
    ".section .text.replace_ttbr1, \"ax\"",
    ".global replace_ttbr1_phys",
    "replace_ttbr1_phys:",
    "msr ttbr1_el1, x1",
    "isb",
    "tlbi vmalle1",
    "dsb nsh",
    "isb",
    "msr ttbr1_el1, x0",
    "isb",
    "tlbi vmalle1",
    "dsb nsh",
    "isb",
    "ret",
    ".text",
);

static NEW_TTBR1: AtomicU64 = AtomicU64::new(0);
static ZERO_TABLE: AtomicU64 = AtomicU64::new(0);

/// Switches this CPU to the kernel tables built by paging_init.
pub fn cpu_replace_ttbr1() {
    unsafe extern "C" {
        fn replace_ttbr1_phys(new: u64, zero: u64);
    }
    let new = NEW_TTBR1.load(Ordering::Acquire);
    let zero = ZERO_TABLE.load(Ordering::Acquire);
    if new == 0 || mmu::ttbr1() == new {
        return;
    }
    let pa = mmu::kimage_va_to_pa(replace_ttbr1_phys as *const () as usize as u64);
    // SAFETY: `pa` (non-null) is the physical address of replace_ttbr1_phys, executable there
    // through the identity map in TTBR0 until cpu_drop_idmap. Only a CPU still on the old
    // tables gets here: the boot CPU in paging_init, before smp bring-up and so long before kmain
    // drops the idmap (secondaries start on the new TTBR1; once switched, the check above
    // returns). The routine touches no memory and only x0/x1, points TTBR1 at `new` (the same
    // kernel mappings, built by paging_init) through the zeroed table, and returns.
    let f: extern "C" fn(u64, u64) = unsafe { core::mem::transmute(pa as usize) };
    f(new, zero);
}

/// Drops the identity map (TTBR0) once no CPU needs it: an empty table, so stray user-range
/// accesses (NULL pointers) fault.
pub fn cpu_drop_idmap() {
    let zero = ZERO_TABLE.load(Ordering::Acquire);
    // SAFETY: `zero` is the zeroed table page paging_init allocated (kmain calls this after
    // paging_init, once every CPU is up and off the identity map); nothing the kernel runs
    // afterwards lives in the user range, so TTBR0 may map nothing. The TLB invalidation drops
    // the idmap's cached entries.
    unsafe {
        core::arch::asm!("msr ttbr0_el1, {}", "isb", "tlbi vmalle1", "dsb nsh", "isb", in(reg) zero, options(nostack));
    }
}

/// Linux paging_init/map_kernel: new kernel tables with the linear map (blocks) and the image
/// mapped with page granularity and W^X (text RX, rodata R, data RW+XN), leaving unmapped the
/// guard page below every stack; the fixmap carried over. Then every CPU switches to them.
pub fn paging_init(info: &BootInfo, guards: &[u64]) -> Result<(), String> {
    unsafe extern "C" {
        static _text: u8;
        static _etext: u8;
        static _erodata: u8;
        static _end: u8;
    }
    let (text, etext, erodata, end) = (
        (&raw const _text) as u64,
        (&raw const _etext) as u64,
        (&raw const _erodata) as u64,
        (&raw const _end) as u64,
    );
    let mut mem = KernelPt;
    let zero = mem.alloc_table().ok_or("paging_init: out of memory")?;
    let root = PageTable::new(&mut mem).ok_or("paging_init: out of memory")?;
    let mut tlb = HwTlb::new();
    let err = |what: &str, e: mm_pgtable::MapError| format!("paging_init: {what}: {e:?}");
    for m in &info.memory {
        root.map_range(
            &mut mem,
            &mut tlb,
            PAGE_OFFSET + m.base,
            m.base,
            m.size,
            PageProt::PAGE_KERNEL,
            MapFlags::BLOCK_PUD | MapFlags::BLOCK_PMD | MapFlags::CONT_PTE,
        )
        .map_err(|e| err("linear map", e))?;
    }
    let map = |mem: &mut KernelPt,
               tlb: &mut HwTlb,
               start: u64,
               stop: u64,
               prot: PageProt|
     -> Result<(), String> {
        if stop > start {
            root.map_range(
                mem,
                tlb,
                start,
                mmu::kimage_va_to_pa(start),
                stop - start,
                prot,
                MapFlags::CONT_PTE,
            )
            .map_err(|e| err("kernel image", e))?;
        }
        Ok(())
    };
    map(&mut mem, &mut tlb, text, etext, PageProt::PAGE_KERNEL_ROX)?;
    map(&mut mem, &mut tlb, etext, erodata, PageProt::PAGE_KERNEL_RO)?;
    // Data, bss, tables, stacks: RW + XN, minus the guard pages.
    let mut sorted: alloc::vec::Vec<u64> = guards.to_vec();
    sorted.sort_unstable();
    let mut at = erodata;
    for g in sorted {
        map(&mut mem, &mut tlb, at, g, PageProt::PAGE_KERNEL)?;
        at = g + PAGE_SIZE as u64;
    }
    map(&mut mem, &mut tlb, at, end, PageProt::PAGE_KERNEL)?;
    // The fixmap (UART, watchdog, spin-table slots): share the early tables' L0 entry.
    let old = mmu::ttbr1();
    let idx = ((arch::FIXMAP_START >> 39) & 511) as usize;
    // SAFETY: `old` is the live TTBR1 root (a head.S table, reached as EarlyPt's contract says)
    // and `root.root_pa` the new root from KernelPt::alloc_table (ours alone: not installed on
    // any CPU yet); idx < 512. Only the boot CPU runs (paging_init precedes smp bring-up), so
    // nothing writes the old entry meanwhile.
    unsafe {
        let e = (*EarlyPt.table(old))[idx];
        (*mem.table(root.root_pa))[idx] = e;
    }
    arch::dsb_ishst();
    arch::isb();
    ZERO_TABLE.store(zero, Ordering::Release);
    NEW_TTBR1.store(root.root_pa, Ordering::Release);
    cpu_replace_ttbr1();
    Ok(())
}
