//! MMU glue: address translation for the kernel image, the early table pool, the fixmap.
//!
//! head.S leaves TTBR1 mapping the image (2 MiB blocks) and a DTB window, and TTBR0 an identity
//! map of the image. Before the page allocator exists, new tables come from `EARLY_POOL`, a
//! static array inside the image (so its PA is image-relative); device registers are mapped
//! into the fixmap region one 4 KiB page at a time (Linux: early_fixmap / early_ioremap).
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{FIXMAP_START, KIMAGE_VADDR};

static KIMAGE_PA: AtomicU64 = AtomicU64::new(0);

pub fn set_kimage_pa(pa: u64) {
    KIMAGE_PA.store(pa, Ordering::Relaxed);
}

/// Physical address the image was loaded at (RAM base + 2 MiB).
pub fn kimage_pa() -> u64 {
    KIMAGE_PA.load(Ordering::Relaxed)
}

/// Physical address of a kernel-image virtual address.
pub fn kimage_va_to_pa(va: u64) -> u64 {
    va - KIMAGE_VADDR + kimage_pa()
}

/// Linear-map virtual address of any RAM physical address.
#[inline(always)]
pub fn phys_to_virt(pa: u64) -> u64 {
    pa + super::PAGE_OFFSET
}

#[inline(always)]
pub fn virt_to_phys(va: u64) -> u64 {
    if va >= KIMAGE_VADDR {
        kimage_va_to_pa(va)
    } else {
        va - super::PAGE_OFFSET
    }
}

pub const EARLY_POOL_PAGES: usize = 32;

#[repr(C, align(4096))]
struct Pool([[u64; 512]; EARLY_POOL_PAGES]);
static mut EARLY_POOL: Pool = Pool([[0; 512]; EARLY_POOL_PAGES]);
static EARLY_POOL_USED: AtomicUsize = AtomicUsize::new(0);

/// A zeroed table page from the early pool (its PA). None when exhausted.
pub fn early_pool_alloc() -> Option<u64> {
    let i = EARLY_POOL_USED.fetch_add(1, Ordering::Relaxed);
    if i >= EARLY_POOL_PAGES {
        return None;
    }
    // SAFETY: only the address of the pool page is taken (no reference); the index i was claimed
    // once by the atomic bump above, so no two callers get the same page.
    let va = unsafe { (&raw mut EARLY_POOL.0[i]) as u64 };
    Some(kimage_va_to_pa(va))
}

pub fn early_pool_used() -> usize {
    EARLY_POOL_USED.load(Ordering::Relaxed).min(EARLY_POOL_PAGES)
}

/// Range of the early pool, for memblock reservations (it lies inside the image anyway).
pub fn early_pool_range() -> (u64, u64) {
    let va = (&raw const EARLY_POOL) as u64;
    (kimage_va_to_pa(va), (EARLY_POOL_PAGES * 4096) as u64)
}

/// TTBR1_EL1 root table PA.
pub fn ttbr1() -> u64 {
    let v: u64;
    // SAFETY: reading TTBR1_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ttbr1_el1", out(reg) v, options(nomem, nostack)) };
    v & 0x0000_ffff_ffff_f000
}

/// Where a table page at `pa` can be read and written: inside the image (head.S tables, the
/// early pool) through the image mapping, anything else through the linear map.
pub fn table_va(pa: u64) -> u64 {
    unsafe extern "C" {
        static _text: u8;
        static _end: u8;
    }
    let base = kimage_pa();
    let end = base + ((&raw const _end) as u64 - (&raw const _text) as u64);
    if pa >= base && pa < end {
        pa - base + KIMAGE_VADDR
    } else {
        phys_to_virt(pa)
    }
}

const DESC_VALID: u64 = 1;
const DESC_TABLE: u64 = 3;
const PTE_PAGE: u64 = 3;
const PTE_AF: u64 = 1 << 10;
const PTE_PXN: u64 = 1 << 53;
const PTE_UXN: u64 = 1 << 54;
const ATTR_DEVICE_NGNRE: u64 = 4 << 2;

static FIXMAP_NEXT: AtomicU64 = AtomicU64::new(FIXMAP_START);

/// Maps `size` bytes of device registers at `pa` (Device-nGnRE, never executable) and returns
/// the virtual address of `pa`. Early boot only (uses the early pool for tables).
pub fn early_ioremap(pa: u64, size: u64) -> Option<u64> {
    let first = pa & !0xfff;
    let npages = (pa + size.max(1) - first).div_ceil(4096);
    let va0 = FIXMAP_NEXT.fetch_add(npages * 4096 + 4096, Ordering::Relaxed); // + unmapped gap
    for i in 0..npages {
        let va = va0 + i * 4096;
        let mut table = ttbr1();
        for level in 0..3 {
            let idx = ((va >> (39 - 9 * level)) & 511) as usize;
            let t = table_va(table) as *mut u64;
            // SAFETY: t is an early-pool table (table_va of a PA this walk allocated or read from a
            // valid table descriptor) and idx < 512.
            let e = unsafe { t.add(idx).read_volatile() };
            table = if e & DESC_VALID == 0 {
                let new = early_pool_alloc()?;
                // SAFETY: as above: an entry of a live early table, written before any walk can
                // need it (the DSB below publishes it).
                unsafe { t.add(idx).write_volatile(new | DESC_TABLE) };
                new
            } else {
                e & 0x0000_ffff_ffff_f000
            };
        }
        let idx = ((va >> 12) & 511) as usize;
        let t = table_va(table) as *mut u64;
        let pte = (first + i * 4096) | PTE_PAGE | PTE_AF | ATTR_DEVICE_NGNRE | PTE_PXN | PTE_UXN;
        // SAFETY: the last-level table was found or allocated by the walk above and idx < 512; the
        // fixmap range maps only device memory.
        unsafe { t.add(idx).write_volatile(pte) };
    }
    super::dsb_ishst();
    super::isb();
    Some(va0 + (pa - first))
}
