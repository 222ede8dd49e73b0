//! The bookkeeping of lazily freed vmalloc space, as pure logic: Linux's `vmap_lazy_nr` and
//! its single `drain_vmap_work` (mm/vmalloc.c). vmalloc.rs drives it; the tests below check
//! the two protocols it exists for on every interleaving of a few CPUs, which QEMU cannot be
//! made to hit on demand.
//!
//! 1. A freed area is counted *before* it becomes visible to purges (`free_vmap_area_noflush`:
//!    `atomic_long_add_return(nr_lazy, &vmap_lazy_nr)` comes before the area is inserted into
//!    the lazy tree). A purge subtracts what it took; counted after insertion, a purge on
//!    another CPU could subtract pages that were never added and wrap the counter, and every
//!    freeing CPU would then see it above `lazy_max_pages` and purge.
//! 2. Crossing `lazy_max_pages` queues one drain however many CPUs cross it (Linux:
//!    `schedule_work(&drain_vmap_work)` on one work item); CPUs crossing while it is queued
//!    or running go on.
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct VmapLazy {
    nr: AtomicUsize,
    drain_pending: AtomicBool,
}

impl VmapLazy {
    pub const fn new() -> Self {
        VmapLazy { nr: AtomicUsize::new(0), drain_pending: AtomicBool::new(false) }
    }

    /// Pages lazily freed and not yet purged.
    pub fn nr(&self) -> usize {
        self.nr.load(Ordering::Acquire)
    }

    /// Counts `pages` of an area about to be made visible to purges; returns the new total.
    /// Call before inserting the area into a lazy tree.
    pub fn add(&self, pages: usize) -> usize {
        self.nr.fetch_add(pages, Ordering::AcqRel) + pages
    }

    /// Takes back an `add` whose area never became visible (its insertion failed).
    pub fn undo_add(&self, pages: usize) {
        self.nr.fetch_sub(pages, Ordering::AcqRel);
    }

    /// A purge took areas of `pages` pages from the lazy trees. `Err(previous)` when that is
    /// more than was counted (a protocol violation: the counter is clamped at 0, not wrapped).
    pub fn purged(&self, pages: usize) -> Result<(), usize> {
        let mut cur = self.nr.load(Ordering::Acquire);
        loop {
            let new = cur.saturating_sub(pages);
            match self.nr.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if cur >= pages => return Ok(()),
                Ok(_) => return Err(cur),
                Err(now) => cur = now,
            }
        }
    }

    /// `schedule_work(&drain_vmap_work)`: true when the caller queued it (and, with no
    /// workqueue, must run it now and then call [`Self::drain_done`]); false when a drain is
    /// already queued or running.
    pub fn queue_drain(&self) -> bool {
        !self.drain_pending.swap(true, Ordering::AcqRel)
    }

    /// The queued drain finished.
    pub fn drain_done(&self) {
        self.drain_pending.store(false, Ordering::Release);
    }
}

impl Default for VmapLazy {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// One step of a CPU in the model: a free is "count" + "insert" (in either order), a purge
    /// takes every inserted area and subtracts its pages.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Count(usize),
        Insert(usize),
        Purge,
    }

    /// How to take back one applied step.
    type Undo<'a> = Box<dyn Fn(&VmapLazy, &mut BTreeSet<usize>) + 'a>;

    /// Runs every interleaving of `cpus` (each a sequence of steps, order kept within a CPU)
    /// and returns whether any purge subtracted more than was counted.
    fn any_underflow(cpus: &[Vec<Step>]) -> bool {
        fn go(
            cpus: &[Vec<Step>],
            pos: &mut Vec<usize>,
            lazy: &VmapLazy,
            visible: &mut BTreeSet<usize>,
            pages: &[usize],
        ) -> bool {
            let mut progressed = false;
            for c in 0..cpus.len() {
                if pos[c] == cpus[c].len() {
                    continue;
                }
                progressed = true;
                let step = cpus[c][pos[c]];
                pos[c] += 1;
                // Apply, remembering how to undo.
                let (bad, undo): (bool, Undo<'_>) = match step {
                    Step::Count(a) => {
                        lazy.add(pages[a]);
                        (
                            false,
                            Box::new(move |l: &VmapLazy, _: &mut BTreeSet<usize>| {
                                l.undo_add(pages[a])
                            }),
                        )
                    }
                    Step::Insert(a) => {
                        visible.insert(a);
                        (
                            false,
                            Box::new(move |_: &VmapLazy, v: &mut BTreeSet<usize>| {
                                v.remove(&a);
                            }),
                        )
                    }
                    Step::Purge => {
                        let taken: Vec<usize> = visible.iter().copied().collect();
                        let sum: usize = taken.iter().map(|&a| pages[a]).sum();
                        let before = lazy.nr();
                        let bad = lazy.purged(sum).is_err();
                        visible.clear();
                        (
                            bad,
                            Box::new(move |l: &VmapLazy, v: &mut BTreeSet<usize>| {
                                l.nr.store(before, Ordering::SeqCst);
                                v.extend(taken.iter().copied());
                            }),
                        )
                    }
                };
                let found = bad || go(cpus, pos, lazy, visible, pages);
                undo(lazy, visible);
                pos[c] -= 1;
                if found {
                    return true;
                }
            }
            let _ = progressed;
            false
        }
        let n_areas = cpus
            .iter()
            .flatten()
            .filter_map(|s| if let Step::Count(a) = s { Some(*a + 1) } else { None })
            .max()
            .unwrap_or(0);
        let pages: Vec<usize> = (0..n_areas).map(|a| a + 2).collect();
        go(cpus, &mut vec![0; cpus.len()], &VmapLazy::new(), &mut BTreeSet::new(), &pages)
    }

    fn free(area: usize, count_first: bool) -> Vec<Step> {
        if count_first {
            vec![Step::Count(area), Step::Insert(area)]
        } else {
            vec![Step::Insert(area), Step::Count(area)]
        }
    }

    // Linux's order (count, then insert): no interleaving of two freeing CPUs and a purging
    // CPU ever subtracts what was not counted.
    #[test]
    fn counting_before_insertion_never_underflows() {
        let mut a = free(0, true);
        a.extend(free(1, true));
        let b = free(2, true);
        let c = vec![Step::Purge, Step::Purge];
        assert!(!any_underflow(&[a, b, c]));
    }

    // The order this kernel had (insert, then count): some interleaving underflows. This is
    // the failure the fix removes; QEMU never hit it in 3 runs of the ktest stress.
    #[test]
    fn counting_after_insertion_can_underflow() {
        let a = free(0, false);
        let c = vec![Step::Purge];
        assert!(any_underflow(&[a, c]));
    }

    #[test]
    fn purged_reports_and_clamps_an_underflow() {
        let l = VmapLazy::new();
        l.add(3);
        assert_eq!(l.purged(5), Err(3));
        assert_eq!(l.nr(), 0);
        l.add(4);
        assert_eq!(l.purged(4), Ok(()));
        assert_eq!(l.nr(), 0);
    }

    // However many CPUs cross the limit at once, one drain is queued until it is done.
    #[test]
    fn one_drain_at_a_time_across_threads() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let l = Arc::new(VmapLazy::new());
        let running = Arc::new(AtomicUsize::new(0));
        let max_running = Arc::new(AtomicUsize::new(0));
        let drains = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, running, max_running, drains) =
                    (l.clone(), running.clone(), max_running.clone(), drains.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if l.queue_drain() {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            max_running.fetch_max(now, Ordering::SeqCst);
                            drains.fetch_add(1, Ordering::SeqCst);
                            std::hint::spin_loop();
                            running.fetch_sub(1, Ordering::SeqCst);
                            l.drain_done();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(max_running.load(Ordering::SeqCst), 1, "two drains ran at once");
        assert!(drains.load(Ordering::SeqCst) >= 1);
        // Queued and not done: nobody else may queue.
        assert!(l.queue_drain());
        assert!(!l.queue_drain());
        l.drain_done();
        assert!(l.queue_drain());
    }
}
