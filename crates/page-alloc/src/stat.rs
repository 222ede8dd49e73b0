//! Counters: Linux's per-CPU vm events (include/linux/vm_event_item.h, mm/vmstat.c
//! `__count_vm_events`), node stats with per-CPU deltas folded at a threshold
//! (`__mod_node_page_state`; the threshold is `zone::calculate_normal_threshold`) used for
//! NR_VMALLOC, and the /proc/vmstat event names.
//!
//! Events are per CPU and written with plain load + store (Linux `__count_vm_events` is a
//! non-atomic per-CPU add too); a CPU only bumps its own counters. Readers sum all CPUs.
//! The allocator's accessors over its per-CPU array and the `show_mem` report are
//! `PageAllocator` methods (`page_alloc::vmstat`).
#![forbid(unsafe_code)]
use crate::zone::NR_PAGE_ORDERS;
use core::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering::Relaxed};

/// Event counters. `PgallocDma..PgallocNormal` and `Pgfree` are Linux's `PGALLOC_<zone>`
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

    /// This CPU's not yet folded difference of a node counter (`vm_node_stat_diff[item]`).
    #[inline]
    pub(crate) fn node_diff(&self, item: NodeStatItem) -> i32 {
        self.node_diff[item as usize].load(Relaxed)
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
    pub(crate) fn set_threshold(&self, t: i32) {
        self.threshold.store(t, Relaxed)
    }

    /// Linux `fold_diff` for one CPU's node counters (part of `refresh_cpu_vm_stats`): moves
    /// every not yet folded difference into the node counter. Returns how many were non-zero.
    pub(crate) fn fold(&self, diff: &PerCpuStats) -> usize {
        let mut changes = 0;
        for (g, d) in self.global.iter().zip(diff.node_diff.iter()) {
            let x = d.swap(0, Relaxed);
            if x != 0 {
                g.fetch_add(x as i64, Relaxed);
                changes += 1;
            }
        }
        changes
    }

    /// Linux `__mod_node_page_state` without memcg: adds `delta` to the difference kept in
    /// `diff` (the calling CPU's counters) and folds it into the node counter when it exceeds
    /// the threshold.
    #[inline]
    pub(crate) fn mod_node_page_state(&self, diff: &PerCpuStats, item: NodeStatItem, delta: i32) {
        let p = &diff.node_diff[item as usize];
        let mut x = p.load(Relaxed) + delta;
        let t = self.threshold.load(Relaxed);
        if x.abs() > t {
            self.global[item as usize].fetch_add(x as i64, Relaxed);
            x = 0;
        }
        p.store(x, Relaxed);
    }

    /// Linux `mod_node_page_state` on arm64 (HAVE_CMPXCHG_LOCAL, `mod_node_state`): the same
    /// update as a compare-and-swap loop on this CPU's difference, safe against an interrupt
    /// on this CPU (a fold from the tick) without masking interrupts.
    #[inline]
    pub(crate) fn mod_node_page_state_irqsafe(
        &self,
        diff: &PerCpuStats,
        item: NodeStatItem,
        delta: i32,
    ) {
        let p = &diff.node_diff[item as usize];
        let t = self.threshold.load(Relaxed);
        let mut o = p.load(Relaxed);
        loop {
            let mut n = o + delta;
            let mut z = 0;
            if n.abs() > t {
                z = n;
                n = 0;
            }
            match p.compare_exchange_weak(o, n, Relaxed, Relaxed) {
                Ok(_) => {
                    if z != 0 {
                        self.global[item as usize].fetch_add(z as i64, Relaxed);
                    }
                    return;
                }
                Err(cur) => o = cur,
            }
        }
    }

    /// Linux `node_page_state` (the node counter without the per-CPU differences).
    #[inline]
    pub(crate) fn node_page_state(&self, item: NodeStatItem) -> i64 {
        self.global[item as usize].load(Relaxed)
    }
}

impl Default for NodeStats {
    fn default() -> Self {
        Self::new()
    }
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
