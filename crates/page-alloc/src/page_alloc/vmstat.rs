//! The allocator's counters (mm/vmstat.c over `PageAllocator`'s per-CPU array): event sums,
//! the NR_VMALLOC node counter, and a meminfo-style dump (`show_mem`, /proc/buddyinfo,
//! /proc/zoneinfo excerpts).
#![forbid(unsafe_code)]
use super::PageAllocator;
use crate::page::Page;
use crate::stat::{
    vm_event_name, EventIndex, NodeStatItem, PerCpuStats, VmEvent, NR_VM_EVENT_ITEMS,
};
use crate::zone::{WMARK_HIGH, WMARK_LOW, WMARK_MIN};
use core::fmt::{self, Write};
use mm_types::{MAX_PAGE_ORDER, PAGE_SIZE};

impl PageAllocator<'_> {
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
        self.node_stats.mod_node_page_state(&self.pcpu_stats[cpu], item, delta)
    }

    /// Linux `mod_node_page_state` (irq-safe without masking interrupts).
    #[inline]
    pub fn mod_node_page_state_irqsafe(&self, cpu: usize, item: NodeStatItem, delta: i32) {
        self.node_stats.mod_node_page_state_irqsafe(&self.pcpu_stats[cpu], item, delta)
    }

    /// `nr` calls of [`Self::mod_node_page_state_irqsafe`] in a row (Linux: one
    /// `mod_lruvec_page_state(page, item, delta)` per page of an array): each is its own
    /// update with its own threshold check and fold; the CPU's counter is looked up once.
    #[inline]
    pub fn mod_node_page_state_irqsafe_each(
        &self,
        cpu: usize,
        item: NodeStatItem,
        delta: i32,
        nr: usize,
    ) {
        let diff = &self.pcpu_stats[cpu];
        for _ in 0..nr {
            self.node_stats.mod_node_page_state_irqsafe(diff, item, delta);
        }
    }

    /// Linux `node_page_state` (global counter without the per-CPU deltas, may be off by up to
    /// nr_cpus * threshold).
    pub fn node_page_state(&self, item: NodeStatItem) -> i64 {
        self.node_stats.node_page_state(item)
    }

    /// Linux `node_page_state_snapshot`: including the per-CPU deltas.
    pub fn node_page_state_snapshot(&self, item: NodeStatItem) -> i64 {
        self.node_page_state(item)
            + self.pcpu_stats.iter().map(|s| s.node_diff(item) as i64).sum::<i64>()
    }

    /// Linux `refresh_cpu_vm_stats(do_pagesets = true)` for `cpu`, run by that CPU once a
    /// second from its vmstat work: folds its node-counter differences and decays its pcp
    /// `high` (`decay_pcp_high`). Returns (counters folded, whether pcp decay work remains).
    pub fn refresh_cpu_vm_stats(&self, cpu: usize) -> (usize, bool) {
        let folded = self.node_stats.fold(&self.pcpu_stats[cpu]);
        (folded, self.decay_pcp_high(cpu))
    }

    /// The NR_VMALLOC per-CPU fold threshold.
    pub fn stat_threshold(&self) -> i32 {
        self.node_stats.threshold()
    }

    /// Writes a meminfo/zoneinfo/buddyinfo-style report.
    pub fn show_mem(&self, w: &mut dyn Write) -> fmt::Result {
        let mm = &self.node.mem_map;
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
        for z in self.node.zones.iter() {
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
