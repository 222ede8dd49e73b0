//! Counters: Linux's per-CPU vm events (include/linux/vm_event_item.h, mm/vmstat.c
//! `__count_vm_events`), node stats with per-CPU deltas folded at a threshold
//! (`__mod_node_page_state`, `calculate_normal_threshold`) used for NR_VMALLOC, and a
//! meminfo-style dump (`show_mem`, /proc/buddyinfo, /proc/zoneinfo excerpts).
//!
//! Events are per CPU and written with plain load + store (Linux `__count_vm_events` is a
//! non-atomic per-CPU add too); a CPU only bumps its own counters. Readers sum all CPUs.
use crate::page::Page;
use crate::page_alloc::PageAllocator;
use crate::zone::{NR_PAGE_ORDERS, WMARK_HIGH, WMARK_LOW, WMARK_MIN};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering::Relaxed};
use mm_types::{MAX_PAGE_ORDER, PAGE_SIZE};

/// Event counters. `PgallocDma..PgallocNormal` and `Pgfree` are Linux's PGALLOC_<zone>
/// and PGFREE (pages); the others are ours (Linux has tracepoints there instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum VmEvent {
    /// PGALLOC_DMA: pages allocated from ZONE_DMA.
    PgallocDma = 0,
    PgallocDma32,
    PgallocNormal,
    /// PGFREE: pages freed (to a pcp list or the buddy).
    Pgfree,
    /// rmqueue_bulk calls (pcp refills) and the pages they moved.
    PcpRefill,
    PcpRefillPages,
    /// free_pcppages_bulk calls (pcp drains) and the pages they freed.
    PcpDrain,
    PcpDrainPages,
    /// zone->lock acquisitions.
    ZoneLock,
    /// pcp try_lock failures (fell back to the buddy).
    PcpTrylockFail,
    /// Allocations that returned None ("page allocation failure").
    AllocFail,
    /// drain_all_pages calls (our direct "reclaim").
    DrainAll,
    /// Allocations by order (blocks): PGALLOC_ORDER_0 + order.
    PgallocOrder0,
    /// Frees reaching the pcp/buddy by order (blocks): PGFREE_ORDER_0 + order.
    PgfreeOrder0 = VmEvent::PgallocOrder0 as usize + NR_PAGE_ORDERS,
}

pub const NR_VM_EVENT_ITEMS: usize = VmEvent::PgfreeOrder0 as usize + NR_PAGE_ORDERS;

const BASE_EVENT_NAMES: [&str; VmEvent::PgallocOrder0 as usize] = [
    "pgalloc_dma",
    "pgalloc_dma32",
    "pgalloc_normal",
    "pgfree",
    "pcp_refill",
    "pcp_refill_pages",
    "pcp_drain",
    "pcp_drain_pages",
    "zone_lock",
    "pcp_trylock_fail",
    "alloc_fail",
    "drain_all",
];

impl VmEvent {
    #[inline]
    pub fn pgalloc_zone(zone_idx: usize) -> usize {
        VmEvent::PgallocDma as usize + zone_idx
    }
    #[inline]
    pub fn pgalloc_order(order: u32) -> usize {
        VmEvent::PgallocOrder0 as usize + order as usize
    }
    #[inline]
    pub fn pgfree_order(order: u32) -> usize {
        VmEvent::PgfreeOrder0 as usize + order as usize
    }
}

/// Conversion so `count` takes either a `VmEvent` or a computed index.
pub trait EventIndex {
    fn index(self) -> usize;
}
impl EventIndex for VmEvent {
    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}
impl EventIndex for usize {
    #[inline]
    fn index(self) -> usize {
        self
    }
}

/// Name of event `i` as it would appear in /proc/vmstat.
pub fn vm_event_name(i: usize, buf: &mut [u8; 24]) -> &str {
    if i < BASE_EVENT_NAMES.len() {
        return BASE_EVENT_NAMES[i];
    }
    let (prefix, order) = if i < VmEvent::PgfreeOrder0 as usize {
        ("pgalloc_order_", i - VmEvent::PgallocOrder0 as usize)
    } else {
        ("pgfree_order_", i - VmEvent::PgfreeOrder0 as usize)
    };
    let mut n = 0;
    for b in prefix.bytes() {
        buf[n] = b;
        n += 1;
    }
    if order >= 10 {
        buf[n] = b'0' + (order / 10) as u8;
        n += 1;
    }
    buf[n] = b'0' + (order % 10) as u8;
    n += 1;
    core::str::from_utf8(&buf[..n]).unwrap_or("?")
}

/// Node stat items (Linux `enum node_stat_item`, the one we need).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum NodeStatItem {
    /// Pages allocated by vmalloc (Linux NR_VMALLOC).
    NrVmalloc = 0,
}
pub const NR_VM_NODE_STAT_ITEMS: usize = 1;

/// One CPU's counters, on their own cache lines.
#[repr(align(64))]
pub struct PerCpuStats {
    events: [AtomicU64; NR_VM_EVENT_ITEMS],
    /// `per_cpu_nodestats->vm_node_stat_diff`.
    node_diff: [AtomicI32; NR_VM_NODE_STAT_ITEMS],
}

impl PerCpuStats {
    pub fn new() -> Self {
        PerCpuStats {
            events: core::array::from_fn(|_| AtomicU64::new(0)),
            node_diff: core::array::from_fn(|_| AtomicI32::new(0)),
        }
    }

    /// `__count_vm_events(item, n)` on this CPU.
    #[inline]
    pub fn count(&self, item: impl EventIndex, n: u64) {
        let c = &self.events[item.index()];
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn get(&self, item: impl EventIndex) -> u64 {
        self.events[item.index()].load(Relaxed)
    }
}

impl Default for PerCpuStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Node counters (Linux `pgdat->vm_stat`) plus the fold threshold.
pub struct NodeStats {
    global: [AtomicI64; NR_VM_NODE_STAT_ITEMS],
    threshold: AtomicI32,
}

impl NodeStats {
    pub fn new() -> Self {
        NodeStats {
            global: core::array::from_fn(|_| AtomicI64::new(0)),
            threshold: AtomicI32::new(0),
        }
    }
    pub fn threshold(&self) -> i32 {
        self.threshold.load(Relaxed)
    }
    pub(super) fn set_threshold(&self, t: i32) {
        self.threshold.store(t, Relaxed)
    }
}

impl Default for NodeStats {
    fn default() -> Self {
        Self::new()
    }
}

impl<'m> PageAllocator<'m> {
    /// This CPU's counters.
    #[inline]
    pub fn events(&self, cpu: usize) -> &PerCpuStats {
        &self.pcpu_stats[cpu]
    }

    /// Sum of an event over all CPUs (Linux `sum_vm_event`).
    pub fn sum_vm_event(&self, item: impl EventIndex + Copy) -> u64 {
        self.pcpu_stats.iter().map(|s| s.get(item)).sum()
    }

    /// All events summed over CPUs.
    pub fn all_vm_events(&self) -> [u64; NR_VM_EVENT_ITEMS] {
        core::array::from_fn(|i| self.sum_vm_event(i))
    }

    /// Linux `__mod_node_page_state` / `mod_lruvec_page_state` without memcg: adds `delta` to
    /// this CPU's difference and folds it into the node counter when it exceeds the threshold.
    #[inline]
    pub fn mod_node_page_state(&self, cpu: usize, item: NodeStatItem, delta: i32) {
        let p = &self.pcpu_stats[cpu].node_diff[item as usize];
        let mut x = p.load(Relaxed) + delta;
        let t = self.node_stats.threshold.load(Relaxed);
        if x.abs() > t {
            self.node_stats.global[item as usize].fetch_add(x as i64, Relaxed);
            x = 0;
        }
        p.store(x, Relaxed);
    }

    /// Linux `node_page_state` (global counter without the per-CPU deltas, may be off by up to
    /// nr_cpus * threshold).
    pub fn node_page_state(&self, item: NodeStatItem) -> i64 {
        self.node_stats.global[item as usize].load(Relaxed)
    }

    /// Linux `node_page_state_snapshot`: including the per-CPU deltas.
    pub fn node_page_state_snapshot(&self, item: NodeStatItem) -> i64 {
        self.node_page_state(item)
            + self
                .pcpu_stats
                .iter()
                .map(|s| s.node_diff[item as usize].load(Relaxed) as i64)
                .sum::<i64>()
    }

    /// The NR_VMALLOC per-CPU fold threshold.
    pub fn stat_threshold(&self) -> i32 {
        self.node_stats.threshold()
    }

    /// Writes a meminfo/zoneinfo/buddyinfo-style report.
    pub fn show_mem(&self, w: &mut dyn Write) -> fmt::Result {
        let mm = &self.mem_map;
        let ram = self.totalram_pages();
        writeln!(
            w,
            "mem_map: PFN {:#x}-{:#x}, {} struct pages x {} bytes = {} KiB ({} bytes per 4 KiB page, {}.{:02}% of managed RAM)",
            mm.min_pfn(),
            mm.max_pfn(),
            mm.max_pfn() - mm.min_pfn(),
            core::mem::size_of::<Page>(),
            (mm.max_pfn() - mm.min_pfn()) * core::mem::size_of::<Page>() as u64 / 1024,
            core::mem::size_of::<Page>(),
            percent_x100(((mm.max_pfn() - mm.min_pfn()) * core::mem::size_of::<Page>() as u64) / PAGE_SIZE as u64, ram) / 100,
            percent_x100(((mm.max_pfn() - mm.min_pfn()) * core::mem::size_of::<Page>() as u64) / PAGE_SIZE as u64, ram) % 100,
        )?;
        writeln!(
            w,
            "MemTotal: {} kB  MemFree: {} kB  min_free_kbytes: {}  watermark_scale_factor: {}  cpus: {}",
            ram * 4,
            self.nr_free_pages_total() * 4,
            self.min_free_kbytes(),
            self.watermark_scale_factor(),
            self.nr_cpus()
        )?;
        for z in self.zones.iter() {
            if !z.populated() {
                writeln!(w, "Node 0, zone {:>8}  (empty)", z.name)?;
                continue;
            }
            writeln!(
                w,
                "Node 0, zone {:>8}  pfn [{:#x}-{:#x})  spanned {} present {} managed {} free {}",
                z.name,
                z.zone_start_pfn,
                z.zone_end_pfn(),
                z.spanned_pages,
                z.present_pages,
                z.managed_pages(),
                z.nr_free_pages()
            )?;
            writeln!(
                w,
                "        min {} low {} high {}  lowmem_reserve[{}, {}, {}]",
                z.wmark_pages(WMARK_MIN),
                z.wmark_pages(WMARK_LOW),
                z.wmark_pages(WMARK_HIGH),
                z.lowmem_reserve(0),
                z.lowmem_reserve(1),
                z.lowmem_reserve(2)
            )?;
            // /proc/buddyinfo line.
            write!(w, "Node 0, zone {:>8} ", z.name)?;
            for o in 0..=MAX_PAGE_ORDER {
                write!(w, "{:>7}", z.nr_free(o))?;
            }
            writeln!(w)?;
            writeln!(
                w,
                "        pagesets: batch {} high_min {} high_max {}",
                z.pageset_batch(),
                z.pageset_high_min(),
                z.pageset_high_max()
            )?;
            for cpu in 0..self.nr_cpus() {
                let p = self.pcp_snapshot(cpu, z.idx);
                writeln!(
                    w,
                    "          cpu {}: count {} high {} batch {}",
                    cpu, p.count, p.high, p.batch
                )?;
            }
        }
        writeln!(
            w,
            "nr_vmalloc {} (stat_threshold {})",
            self.node_page_state_snapshot(NodeStatItem::NrVmalloc),
            self.stat_threshold()
        )?;
        let ev = self.all_vm_events();
        let mut buf = [0u8; 24];
        let mut col = 0;
        for (i, v) in ev.iter().enumerate() {
            if *v == 0 && i >= VmEvent::PgallocOrder0 as usize {
                continue;
            }
            write!(w, "{} {}  ", vm_event_name(i, &mut buf), v)?;
            col += 1;
            if col % 6 == 0 {
                writeln!(w)?;
            }
        }
        if col % 6 != 0 {
            writeln!(w)?;
        }
        Ok(())
    }
}

fn percent_x100(part: u64, total: u64) -> u64 {
    (part * 10000).checked_div(total).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        let mut b = [0u8; 24];
        assert_eq!(vm_event_name(VmEvent::Pgfree as usize, &mut b), "pgfree");
        assert_eq!(vm_event_name(VmEvent::pgalloc_order(3), &mut b), "pgalloc_order_3");
        assert_eq!(vm_event_name(VmEvent::pgfree_order(10), &mut b), "pgfree_order_10");
        assert_eq!(NR_VM_EVENT_ITEMS, 12 + 2 * NR_PAGE_ORDERS);
    }
}
