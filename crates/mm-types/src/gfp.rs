//! GFP flags: Linux include/linux/gfp_types.h (same names, same bit values) and `gfp_zone()`
//! from include/linux/gfp.h, plus the internal ALLOC_* flags of mm/internal.h and the
//! gfp -> alloc_flags helpers of mm/page_alloc.c (`alloc_flags_slowpath`,
//! `alloc_flags_nonblocking`, `__gfp_pfmemalloc_flags`).
//!
//! What each flag does here (see `PageAllocator::alloc_pages` for the whole path):
//! * `__GFP_DMA` / `__GFP_DMA32`: highest usable zone is ZONE_DMA / ZONE_DMA32 (`gfp_zone`);
//!   otherwise ZONE_NORMAL. The zonelist falls back from there to lower zones.
//! * `__GFP_ZERO`: the pages are cleared through the `zero` hook given at init.
//! * `__GFP_HIGH`: may dip below the min watermark by half (`ALLOC_MIN_RESERVE`).
//! * without `__GFP_DIRECT_RECLAIM` (GFP_ATOMIC, GFP_NOWAIT): non-blocking; GFP_ATOMIC
//!   (`__GFP_HIGH` and no direct reclaim) may dip a further quarter below (`ALLOC_NON_BLOCK`).
//!   No "reclaim": a failure is final.
//! * `__GFP_DIRECT_RECLAIM` (GFP_KERNEL): on failure we "reclaim" the only thing this kernel
//!   can reclaim: `drain_all_pages` (pages parked on every CPU's pcp lists go back to the
//!   buddy), then retry once. Linux would also run LRU reclaim, compaction and the OOM killer
//!   and loop; we have nothing of that to run, so we fail there.
//! * `__GFP_NORETRY`: for costly orders (> PAGE_ALLOC_COSTLY_ORDER) skips the drain/retry
//!   entirely, as Linux skips direct reclaim for costly NORETRY requests.
//! * `__GFP_NOWARN`: no "page allocation failure" warning line.
//! * `__GFP_NOFAIL`: after everything failed, one more attempt with `ALLOC_MIN_RESERVE` (what
//!   Linux does before looping forever); if that fails too we return None with a warning
//!   instead of hanging the machine (deviation).
//! * `__GFP_MEMALLOC` (unless `__GFP_NOMEMALLOC`): ignores watermarks (`ALLOC_NO_WATERMARKS`).
//! * `__GFP_COMP`: sets PG_HEAD on the head page (no compound tail metadata is kept).
//! * `__GFP_KSWAPD_RECLAIM`, `__GFP_IO`, `__GFP_FS`, `__GFP_RETRY_MAYFAIL`, `__GFP_MOVABLE`,
//!   `__GFP_RECLAIMABLE`, `__GFP_ACCOUNT`...: accepted and ignored (no kswapd, no
//!   filesystems, no migratetypes, no memcg).

bitflags::bitflags! {
    /// `gfp_t`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GfpFlags: u32 {
        const __GFP_DMA = 1 << 0;
        const __GFP_HIGHMEM = 1 << 1;
        const __GFP_DMA32 = 1 << 2;
        const __GFP_MOVABLE = 1 << 3;
        const __GFP_RECLAIMABLE = 1 << 4;
        const __GFP_HIGH = 1 << 5;
        const __GFP_IO = 1 << 6;
        const __GFP_FS = 1 << 7;
        const __GFP_ZERO = 1 << 8;
        const __GFP_DIRECT_RECLAIM = 1 << 10;
        const __GFP_KSWAPD_RECLAIM = 1 << 11;
        const __GFP_WRITE = 1 << 12;
        const __GFP_NOWARN = 1 << 13;
        const __GFP_RETRY_MAYFAIL = 1 << 14;
        const __GFP_NOFAIL = 1 << 15;
        const __GFP_NORETRY = 1 << 16;
        const __GFP_MEMALLOC = 1 << 17;
        const __GFP_COMP = 1 << 18;
        const __GFP_NOMEMALLOC = 1 << 19;
        const __GFP_HARDWALL = 1 << 20;
        const __GFP_THISNODE = 1 << 21;
        const __GFP_ACCOUNT = 1 << 22;

        const __GFP_RECLAIM = Self::__GFP_DIRECT_RECLAIM.bits() | Self::__GFP_KSWAPD_RECLAIM.bits();
        const GFP_ATOMIC = Self::__GFP_HIGH.bits() | Self::__GFP_KSWAPD_RECLAIM.bits();
        const GFP_KERNEL = Self::__GFP_RECLAIM.bits() | Self::__GFP_IO.bits() | Self::__GFP_FS.bits();
        const GFP_KERNEL_ACCOUNT = Self::GFP_KERNEL.bits() | Self::__GFP_ACCOUNT.bits();
        const GFP_NOWAIT = Self::__GFP_KSWAPD_RECLAIM.bits() | Self::__GFP_NOWARN.bits();
        const GFP_NOIO = Self::__GFP_RECLAIM.bits();
        const GFP_NOFS = Self::__GFP_RECLAIM.bits() | Self::__GFP_IO.bits();
        const GFP_USER = Self::GFP_KERNEL.bits() | Self::__GFP_HARDWALL.bits();
        const GFP_DMA = Self::__GFP_DMA.bits();
        const GFP_DMA32 = Self::__GFP_DMA32.bits();
        const GFP_HIGHUSER = Self::GFP_USER.bits() | Self::__GFP_HIGHMEM.bits();
    }
}

pub use GfpFlags as Gfp;

/// Zone indices (Linux `enum zone_type` on arm64 without HIGHMEM; ZONE_MOVABLE/DEVICE omitted).
pub const ZONE_DMA: usize = 0;
pub const ZONE_DMA32: usize = 1;
pub const ZONE_NORMAL: usize = 2;
pub const MAX_NR_ZONES: usize = 3;

/// Highest zone an allocation with these flags may use (Linux `gfp_zone`, GFP_ZONE_TABLE with
/// ZONE_DMA and ZONE_DMA32 configured and no HIGHMEM: `__GFP_HIGHMEM` and `__GFP_MOVABLE` alone
/// mean ZONE_NORMAL here since there is no ZONE_HIGHMEM/ZONE_MOVABLE). `__GFP_DMA|__GFP_DMA32`
/// is a BAD combination in Linux; we take the lower zone.
#[inline]
pub fn gfp_zone(gfp: GfpFlags) -> usize {
    if gfp.contains(GfpFlags::__GFP_DMA) {
        ZONE_DMA
    } else if gfp.contains(GfpFlags::__GFP_DMA32) {
        ZONE_DMA32
    } else {
        ZONE_NORMAL
    }
}

/// Internal allocation flags (mm/internal.h). The low two bits select the watermark.
pub type AllocFlags = u32;
pub const ALLOC_WMARK_MIN: AllocFlags = 0; // WMARK_MIN
pub const ALLOC_WMARK_LOW: AllocFlags = 1; // WMARK_LOW
pub const ALLOC_WMARK_HIGH: AllocFlags = 2; // WMARK_HIGH
pub const ALLOC_NO_WATERMARKS: AllocFlags = 0x04;
pub const ALLOC_WMARK_MASK: AllocFlags = ALLOC_NO_WATERMARKS - 1;
pub const ALLOC_OOM: AllocFlags = 0x08;
pub const ALLOC_NON_BLOCK: AllocFlags = 0x10;
pub const ALLOC_MIN_RESERVE: AllocFlags = 0x20;
pub const ALLOC_CPUSET: AllocFlags = 0x40;
pub const ALLOC_CMA: AllocFlags = 0x80;
pub const ALLOC_NOFRAGMENT: AllocFlags = 0x100;
pub const ALLOC_HIGHATOMIC: AllocFlags = 0x200;
pub const ALLOC_KSWAPD: AllocFlags = 0x800;
pub const ALLOC_RESERVES: AllocFlags =
    ALLOC_NON_BLOCK | ALLOC_MIN_RESERVE | ALLOC_HIGHATOMIC | ALLOC_OOM;

/// Linux `alloc_flags_nonblocking`.
#[inline]
pub fn alloc_flags_nonblocking(gfp: GfpFlags, order: u32) -> AllocFlags {
    if gfp.contains(GfpFlags::__GFP_DIRECT_RECLAIM) || gfp.contains(GfpFlags::__GFP_NOMEMALLOC) {
        return 0;
    }
    let mut f = ALLOC_NON_BLOCK;
    if order > 0 && gfp.contains(GfpFlags::__GFP_HIGH) {
        f |= ALLOC_HIGHATOMIC;
    }
    f
}

/// Linux `alloc_flags_slowpath` (no cpusets, CMA or RT tasks here).
#[inline]
pub fn alloc_flags_slowpath(gfp: GfpFlags, order: u32) -> AllocFlags {
    let mut f = ALLOC_WMARK_MIN;
    if gfp.contains(GfpFlags::__GFP_HIGH) {
        f |= ALLOC_MIN_RESERVE;
    }
    if gfp.contains(GfpFlags::__GFP_KSWAPD_RECLAIM) {
        f |= ALLOC_KSWAPD;
    }
    f | alloc_flags_nonblocking(gfp, order)
}

/// Linux `__gfp_pfmemalloc_flags` (only the gfp part: no PF_MEMALLOC tasks or OOM victims).
#[inline]
pub fn gfp_pfmemalloc_flags(gfp: GfpFlags) -> AllocFlags {
    if gfp.contains(GfpFlags::__GFP_NOMEMALLOC) {
        0
    } else if gfp.contains(GfpFlags::__GFP_MEMALLOC) {
        ALLOC_NO_WATERMARKS
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_values() {
        assert_eq!(GfpFlags::GFP_KERNEL.bits(), 0xcc0);
        assert_eq!(GfpFlags::GFP_ATOMIC.bits(), 0x820);
        assert_eq!(GfpFlags::GFP_NOWAIT.bits(), 0x2800);
        assert_eq!(GfpFlags::__GFP_ZERO.bits(), 0x100);
        assert_eq!(GfpFlags::__GFP_COMP.bits(), 0x40000);
        assert_eq!(gfp_zone(GfpFlags::GFP_KERNEL), ZONE_NORMAL);
        assert_eq!(gfp_zone(GfpFlags::GFP_KERNEL | GfpFlags::GFP_DMA), ZONE_DMA);
        assert_eq!(gfp_zone(GfpFlags::GFP_DMA32), ZONE_DMA32);
    }

    #[test]
    fn slowpath_flags() {
        let atomic = alloc_flags_slowpath(GfpFlags::GFP_ATOMIC, 0);
        assert_eq!(atomic & ALLOC_WMARK_MASK, ALLOC_WMARK_MIN);
        assert!(atomic & ALLOC_MIN_RESERVE != 0 && atomic & ALLOC_NON_BLOCK != 0);
        let kernel = alloc_flags_slowpath(GfpFlags::GFP_KERNEL, 0);
        assert_eq!(kernel & ALLOC_RESERVES, 0);
        let nowait = alloc_flags_slowpath(GfpFlags::GFP_NOWAIT, 0);
        assert_eq!(nowait & ALLOC_RESERVES, ALLOC_NON_BLOCK);
        assert_eq!(gfp_pfmemalloc_flags(GfpFlags::__GFP_MEMALLOC), ALLOC_NO_WATERMARKS);
    }
}
