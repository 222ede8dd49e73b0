//! RCU for a kernel without preemption or a scheduler, and kvfree_rcu on top of it.
//!
//! Read-side sections only mark the CPU (nesting count); a CPU passes a quiescent state at every
//! `cond_resched()` and in its idle loop while not inside a read-side section. A grace period
//! ends when every CPU online at its start has passed one. Callbacks run on the CPU that queued
//! them, at its next quiescent point after their grace period (Linux: rcu_core from softirq).
//!
//! kvfree_rcu batches pointers per CPU in page-sized blocks (Linux: kvfree_rcu_bulk_data, about
//! 500 pointers per page); a full block is queued behind a grace period and then each pointer is
//! vfree'd; the block's page is then kept as a spare (up to rcu_min_cached_objs = 5 per CPU).
//! A new block comes from the spares, else (one-argument form only: Linux's `can_alloc = !head`)
//! from the page allocator. The one-argument form falls back to synchronize_rcu() + vfree when
//! no block page can be had; the two-argument form, which may not allocate, falls back to
//! call_rcu() on the embedded rcu_head and asks for the spares to be refilled at the CPU's next
//! quiescent point (Linux: run_page_cache_worker).
use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::arch;
use crate::smp;

/// Linux's struct rcu_head: embedded in an object, queued by call_rcu.
#[repr(C)]
pub struct RcuHead {
    next: *mut RcuHead,
    func: Option<unsafe fn(*mut RcuHead)>,
}

impl Default for RcuHead {
    fn default() -> Self {
        Self::new()
    }
}

impl RcuHead {
    pub const fn new() -> Self {
        RcuHead { next: core::ptr::null_mut(), func: None }
    }
}

/// Latest grace period started / completed (Linux: rcu_state.gp_seq).
static GP_SEQ: AtomicU64 = AtomicU64::new(0);
static GP_DONE: AtomicU64 = AtomicU64::new(0);
/// CPUs that still owe a quiescent state for the running grace period.
static QS_MASK: AtomicU64 = AtomicU64::new(0);
/// A grace period was requested while one was running: start another when it ends.
static NEED_GP: AtomicBool = AtomicBool::new(false);
static GP_LOCK: spin::Mutex<()> = spin::Mutex::new(());
crate::define_per_cpu! {
    /// rcu_read_lock nesting of this CPU (per-CPU, like Linux's rcu_data).
    static NESTING: AtomicU32 = AtomicU32::new(0);
}
crate::define_per_cpu! {
    /// Set while a CPU runs its callbacks: a callback that reaches cond_resched() (vfree does,
    /// per page, in the baseline) must not start on the next batch in a nested frame (Linux
    /// runs them in their own context, so there is no nesting).
    static IN_CALLBACKS: AtomicBool = AtomicBool::new(false);
}

/// When the running grace period started (timer ticks), the longest one so far and the CPU
/// whose quiescent state ended it (statistics: a long grace period is what makes kvfree_rcu's
/// pending memory grow).
static GP_START: AtomicU64 = AtomicU64::new(0);
static GP_LONGEST: AtomicU64 = AtomicU64::new(0);
static GP_LONGEST_LAST_CPU: AtomicUsize = AtomicUsize::new(0);

/// The state of grace periods, for reports.
pub struct GpStats {
    pub completed: u64,
    /// Timer ticks the running grace period has lasted (0: none running).
    pub running_for: u64,
    /// CPUs that still owe it a quiescent state.
    pub waiting_for: u64,
    pub longest: u64,
    pub longest_ended_by: usize,
}

pub fn gp_stats() -> GpStats {
    let done = GP_DONE.load(Ordering::Acquire);
    let running = GP_SEQ.load(Ordering::Acquire) != done;
    GpStats {
        completed: done,
        running_for: if running {
            arch::cycles().saturating_sub(GP_START.load(Ordering::Relaxed))
        } else {
            0
        },
        waiting_for: if running { QS_MASK.load(Ordering::Relaxed) } else { 0 },
        longest: GP_LONGEST.load(Ordering::Relaxed),
        longest_ended_by: GP_LONGEST_LAST_CPU.load(Ordering::Relaxed),
    }
}

/// Grace periods completed since boot (for tests and statistics).
pub fn completed() -> u64 {
    GP_DONE.load(Ordering::Acquire)
}

enum Callback {
    /// rcu_heads linked through their `next` field, first to last: the callbacks queued on
    /// this CPU behind one grace period are one entry, so call_rcu never allocates (Linux's
    /// callback lists are intrusive too).
    Heads {
        first: *mut RcuHead,
        last: *mut RcuHead,
    },
    Bulk(*mut BulkBlock),
}
// SAFETY: the raw pointers are rcu_heads and block pages handed to RCU by their owners (call_rcu's
// contract, kvfree_rcu's blocks); whichever CPU runs the callback owns them from then on, so moving
// a Callback between CPUs moves that ownership.
unsafe impl Send for Callback {}

struct CpuQueue {
    /// (grace period that must complete, callback), in queueing order.
    ready: VecDeque<(u64, Callback)>,
    /// kvfree_rcu block being filled.
    bulk: *mut BulkBlock,
    /// Spare block pages (Linux: krcp->bkvcache, at most rcu_min_cached_objs): a freed block's
    /// page goes here, and the two-argument kvfree_rcu, which may not allocate, takes from it.
    cache: [*mut BulkBlock; RCU_MIN_CACHED_OBJS],
    nr_cached: usize,
    /// The cache ran dry for a kvfree_rcu that could not allocate: refill it at the next
    /// quiescent point (Linux: run_page_cache_worker -> fill_page_cache_func).
    refill: bool,
}
// SAFETY: as for Callback: the queue's pointers (block, spare pages) are owned by the queue and
// used only under its lock.
unsafe impl Send for CpuQueue {}

/// Linux rcu_min_cached_objs: spare block pages kept per CPU.
const RCU_MIN_CACHED_OBJS: usize = 5;

crate::define_per_cpu! {
    /// Callbacks of this CPU (Linux: rcu_data's segmented callback list and krc's blocks).
    static QUEUES: spin::Mutex<CpuQueue> = spin::Mutex::new(CpuQueue {
        ready: VecDeque::new(),
        bulk: core::ptr::null_mut(),
        cache: [core::ptr::null_mut(); RCU_MIN_CACHED_OBJS],
        nr_cached: 0,
        refill: false,
    });
}
crate::define_per_cpu! {
    /// Callbacks queued or running, per CPU. A callback leaves its queue before it runs (outside
    /// the queue lock), so an empty queue does not mean its callbacks are done: rcu_barrier
    /// waits for these counts (Linux gets the same guarantee by entraining a callback behind the
    /// rest).
    static PENDING: AtomicUsize = AtomicUsize::new(0);
}

/// Callbacks queued or running on all CPUs (leak reports).
pub fn nr_pending() -> usize {
    PENDING.iter().map(|p| p.load(Ordering::Acquire)).sum()
}

/// Queues `cb` on this CPU behind grace period `target`. A single rcu_head joins the last
/// entry when that is a head list for the same grace period (targets never decrease).
fn enqueue(target: u64, cb: Callback) {
    let mut q = QUEUES.this_cpu().lock();
    PENDING.this_cpu().fetch_add(1, Ordering::AcqRel);
    if let Callback::Heads { first, .. } = cb {
        if let Some((t, Callback::Heads { last, .. })) = q.ready.back_mut() {
            if *t == target {
                // SAFETY: `last` is a queued head, alive until its callback runs; `first` is
                // the new head (next already null).
                unsafe { (**last).next = first };
                *last = first;
                return;
            }
        }
    }
    q.ready.push_back((target, cb));
}

/// Marks the start of a read-side critical section on this CPU.
pub fn rcu_read_lock() {
    NESTING.this_cpu().fetch_add(1, Ordering::Acquire);
}

pub fn rcu_read_unlock() {
    NESTING.this_cpu().fetch_sub(1, Ordering::Release);
}

/// The online CPUs as a mask (kept by `arch::idle` for its wake-ups: one load, not a scan of
/// the NR_CPUS online flags on every grace-period start).
fn online_mask() -> u64 {
    arch::idle::online_mask()
}

/// The CPUs a new grace period waits for: online and not in the idle loop. A CPU sleeping in
/// its idle loop is in an extended quiescent state (Linux: RCU's dynticks-idle), so it is
/// neither waited for nor woken; one that leaves idle afterwards starts its readers after the
/// grace period began, so they cannot hold what it protects (`idle_mask_sync` is a full RMW,
/// pairing with the idle exit's).
fn gp_mask() -> u64 {
    online_mask() & !arch::idle::idle_mask_sync()
}

/// Whether this CPU owes the running grace period a quiescent state (the tick's
/// rcu_sched_clock_irq check; atomics only, safe in an interrupt handler).
pub fn qs_owed_local() -> bool {
    let cpu = crate::percpu_defs::smp_processor_id();
    QS_MASK.load(Ordering::Relaxed) & (1 << cpu) != 0
}

/// A grace period started: every CPU in `mask` owes a quiescent state, so its next
/// cond_resched() must take the slow path (Linux: the GP kthread and the tick set
/// rcu_urgent_qs / need_resched on CPUs that hold up a grace period).
fn gp_started(mask: u64) {
    for cpu in 0..64 {
        if mask & (1 << cpu) != 0 {
            smp::set_need_resched(cpu);
        }
    }
}

/// A grace period ended: CPUs with callbacks run them at their next quiescent point (Linux:
/// rcu_core raised from the tick once callbacks are ready).
fn gp_ended() {
    for cpu in smp::online_cpus() {
        if PENDING.on(cpu).load(Ordering::Acquire) != 0 {
            smp::set_need_resched(cpu);
        }
    }
}

/// Returns the grace period whose end guarantees that every reader running now has finished,
/// starting one if none is running (Linux: get_state_synchronize_rcu + start_poll).
fn request_gp() -> u64 {
    let _g = GP_LOCK.lock();
    let seq = GP_SEQ.load(Ordering::Acquire);
    if GP_DONE.load(Ordering::Acquire) == seq {
        // Idle: start grace period seq+1 now.
        let mask = gp_mask();
        QS_MASK.store(mask, Ordering::Release);
        GP_START.store(arch::cycles(), Ordering::Relaxed);
        GP_SEQ.store(seq + 1, Ordering::Release);
        gp_started(mask);
        seq + 1
    } else {
        // A grace period is running; readers may have started before it ended: need the next.
        NEED_GP.store(true, Ordering::Release);
        seq + 1
    }
}

/// Reports a quiescent state for this CPU (`cpu`) if it is outside any read-side section.
fn note_qs(cpu: usize) {
    debug_assert_eq!(cpu, crate::percpu_defs::smp_processor_id());
    if NESTING.this_cpu().load(Ordering::Acquire) != 0 {
        return;
    }
    let bit = 1u64 << cpu;
    if QS_MASK.load(Ordering::Acquire) & bit == 0 {
        return;
    }
    let prev = QS_MASK.fetch_and(!bit, Ordering::AcqRel);
    if prev & bit != 0 && prev & !bit == 0 {
        // Last CPU: the grace period is over.
        let _g = GP_LOCK.lock();
        let seq = GP_SEQ.load(Ordering::Acquire);
        let now = arch::cycles();
        let took = now.saturating_sub(GP_START.load(Ordering::Relaxed));
        if took > GP_LONGEST.load(Ordering::Relaxed) {
            GP_LONGEST.store(took, Ordering::Relaxed);
            GP_LONGEST_LAST_CPU.store(cpu, Ordering::Relaxed);
        }
        GP_DONE.store(seq, Ordering::Release);
        if NEED_GP.swap(false, Ordering::AcqRel) {
            let mask = gp_mask();
            QS_MASK.store(mask, Ordering::Release);
            GP_START.store(now, Ordering::Relaxed);
            GP_SEQ.store(seq + 1, Ordering::Release);
            gp_started(mask);
        }
        gp_ended();
        crate::smp::wake_waiters();
    }
}

/// The quiescent-point hook (cond_resched, idle): report a quiescent state and run this CPU's
/// callbacks whose grace period has ended.
pub fn rcu_quiescent() {
    let cpu = crate::percpu_defs::smp_processor_id();
    note_qs(cpu);
    if NESTING.this_cpu().load(Ordering::Relaxed) != 0 {
        // Inside a read-side section: the quiescent state is still owed; ask again at the
        // next cond_resched (after rcu_read_unlock).
        if QS_MASK.load(Ordering::Acquire) & (1 << cpu) != 0 {
            smp::set_need_resched_local();
        }
        return;
    }
    if IN_CALLBACKS.this_cpu().swap(true, Ordering::Acquire) {
        return;
    }
    let done = GP_DONE.load(Ordering::Acquire);
    let mut ran = false;
    loop {
        let cb = {
            let mut q = QUEUES.this_cpu().lock();
            match q.ready.front() {
                Some((target, _)) if *target <= done => q.ready.pop_front().map(|(_, cb)| cb),
                _ => None,
            }
        };
        match cb {
            Some(Callback::Heads { first, .. }) => {
                let mut h = first;
                while !h.is_null() {
                    // SAFETY: queued heads stay valid until their callback runs; `next` is read
                    // before the callback, which may free the object holding the head.
                    unsafe {
                        let next = (*h).next;
                        if let Some(f) = (*h).func {
                            f(h);
                        }
                        h = next;
                    }
                    PENDING.this_cpu().fetch_sub(1, Ordering::AcqRel);
                }
            }
            Some(Callback::Bulk(b)) => {
                // SAFETY: a full or flushed block queued behind its grace period.
                unsafe { free_bulk_block(b) };
                PENDING.this_cpu().fetch_sub(1, Ordering::AcqRel);
            }
            None => break,
        }
        ran = true;
    }
    IN_CALLBACKS.this_cpu().store(false, Ordering::Release);
    fill_page_cache();
    if ran {
        // rcu_barrier() may be waiting for this queue to drain.
        crate::smp::wake_waiters();
    }
}

/// Queues `func(head)` to run after a grace period (Linux: call_rcu).
///
/// # Safety
/// `head` must stay valid until `func` runs; `func` must be safe to call with it.
pub unsafe fn call_rcu(head: *mut RcuHead, func: unsafe fn(*mut RcuHead)) {
    // SAFETY: head is valid until func runs (this fn's contract) and not yet queued, so nothing
    // else reads it.
    unsafe {
        (*head).func = Some(func);
        (*head).next = core::ptr::null_mut();
    }
    let target = request_gp();
    enqueue(target, Callback::Heads { first: head, last: head });
}

/// Waits for a full grace period (Linux: synchronize_rcu). Must not be called inside a
/// read-side section.
pub fn synchronize_rcu() {
    let target = request_gp();
    let cpu = crate::percpu_defs::smp_processor_id();
    while GP_DONE.load(Ordering::Acquire) < target {
        // Clears this CPU's NEED_RESCHED before reporting, so a grace period this CPU starts
        // below leaves it set and wait_for_event does not sleep owing its quiescent state.
        smp::quiescent_point();
        let done = GP_DONE.load(Ordering::Acquire);
        if done >= target {
            break;
        }
        if done == GP_SEQ.load(Ordering::Acquire) {
            request_gp();
            note_qs(cpu);
            continue;
        }
        smp::wait_for_event();
    }
}

/// Waits until every callback queued so far (and every kvfree_rcu pointer) has been run
/// (Linux: rcu_barrier + kvfree_rcu_barrier).
pub fn rcu_barrier() {
    smp::on_each_cpu(&flush_bulk);
    loop {
        // Keep the machinery moving while waiting: a grace period must be running for the
        // queued callbacks (requested before this CPU reports its own quiescent state, so it
        // never sleeps owing one), this CPU runs its ready callbacks, and only then is the
        // condition checked (checking first and sleeping after running the last callbacks
        // would wait for a wake-up nobody sends).
        let busy = QUEUES.iter().any(|q| !q.lock().ready.is_empty());
        if busy && GP_DONE.load(Ordering::Acquire) == GP_SEQ.load(Ordering::Acquire) {
            request_gp();
        }
        smp::quiescent_point();
        if PENDING.iter().all(|p| p.load(Ordering::Acquire) == 0) {
            break;
        }
        crate::smp::wake_waiters();
        smp::wait_for_event();
    }
}

/// Pointers per page-sized block (Linux: KVFREE_BULK_MAX_ENTR).
const BULK_ENTRIES: usize = (mm_types::PAGE_SIZE - 16) / 8;

#[repr(C)]
struct BulkBlock {
    nr: usize,
    _pad: usize,
    ptrs: [*mut u8; BULK_ENTRIES],
}
const _: () = assert!(core::mem::size_of::<BulkBlock>() == mm_types::PAGE_SIZE);

/// After its grace period: vfree every pointer of the block, then keep its page as a spare if
/// the cache has room (Linux: kvfree_rcu_bulk + put_cached_bnode), else free it.
///
/// # Safety
/// `b` is a block page queued by add_ptr_to_bulk whose grace period has ended; the caller
/// owns it (it was taken off its queue) and nobody uses it afterwards.
unsafe fn free_bulk_block(b: *mut BulkBlock) {
    // SAFETY: b is a block page filled by add_ptr_to_bulk whose grace period has ended
    // (free_bulk_block's contract): nr entries are vmalloc pointers no reader can still hold, and
    // this CPU owns the page.
    unsafe {
        for i in 0..(*b).nr {
            crate::mm::vmalloc::vfree((*b).ptrs[i]);
        }
    }
    let mut q = QUEUES.this_cpu().lock();
    if q.nr_cached < RCU_MIN_CACHED_OBJS {
        let n = q.nr_cached;
        q.cache[n] = b;
        q.nr_cached += 1;
        return;
    }
    drop(q);
    crate::mm::page_alloc::free_page_va(b as *mut u8);
}

/// Gfp of a block page (Linux: GFP_KERNEL | __GFP_NORETRY | __GFP_NOMEMALLOC | __GFP_NOWARN).
fn bnode_gfp() -> mm_types::gfp::GfpFlags {
    use mm_types::gfp::GfpFlags as G;
    G::GFP_KERNEL | G::__GFP_NORETRY | G::__GFP_NOMEMALLOC | G::__GFP_NOWARN
}

/// Refills this CPU's spare-page cache if a kvfree_rcu asked for it (Linux:
/// fill_page_cache_func, run from a work item; here from the CPU's next quiescent point).
fn fill_page_cache() {
    let q = QUEUES.this_cpu();
    if !q.lock().refill {
        return;
    }
    loop {
        {
            let mut g = q.lock();
            if g.nr_cached >= RCU_MIN_CACHED_OBJS {
                g.refill = false;
                return;
            }
        }
        let page = crate::mm::page_alloc::alloc_page_va(bnode_gfp());
        let mut g = q.lock();
        if page.is_null() {
            g.refill = false;
            return;
        }
        let n = g.nr_cached;
        if n >= RCU_MIN_CACHED_OBJS {
            drop(g);
            crate::mm::page_alloc::free_page_va(page);
            return;
        }
        g.cache[n] = page as *mut BulkBlock;
        g.nr_cached += 1;
    }
}

/// Frees every CPU's spare block pages (Linux: kfree_rcu_shrink_scan's drain_page_cache).
/// Returns the number of pages freed.
pub fn kvfree_rcu_shrink() -> usize {
    let mut freed = 0;
    for q in QUEUES.iter() {
        loop {
            let page = {
                let mut g = q.lock();
                if g.nr_cached == 0 {
                    break;
                }
                g.nr_cached -= 1;
                let n = g.nr_cached;
                core::mem::replace(&mut g.cache[n], core::ptr::null_mut())
            };
            crate::mm::page_alloc::free_page_va(page as *mut u8);
            freed += 1;
        }
    }
    freed
}

/// Queues this CPU's partly filled block behind a grace period.
pub(crate) fn flush_bulk() {
    let mut q = QUEUES.this_cpu().lock();
    let b = core::mem::replace(&mut q.bulk, core::ptr::null_mut());
    drop(q);
    if !b.is_null() {
        let target = request_gp();
        enqueue(target, Callback::Bulk(b));
    }
}

/// Adds `ptr` to this CPU's block; false when no block page could be had (Linux:
/// add_ptr_to_bulk_krc_lock). A new block comes from the spare-page cache, else, only when
/// `can_alloc` (the one-argument form, which may sleep), from the page allocator.
fn add_ptr_to_bulk(ptr: *mut u8, can_alloc: bool) -> bool {
    let mut q = QUEUES.this_cpu().lock();
    if q.bulk.is_null() {
        let page = if q.nr_cached > 0 {
            q.nr_cached -= 1;
            let n = q.nr_cached;
            core::mem::replace(&mut q.cache[n], core::ptr::null_mut()) as *mut u8
        } else if can_alloc {
            crate::mm::page_alloc::alloc_page_va(bnode_gfp())
        } else {
            core::ptr::null_mut()
        };
        if page.is_null() {
            return false;
        }
        q.bulk = page as *mut BulkBlock;
        // SAFETY: page is a whole page this CPU just took (spare cache or page allocator), sized as
        // a BulkBlock (asserted above), under the queue lock.
        unsafe { (*q.bulk).nr = 0 };
    }
    let b = q.bulk;
    // SAFETY: q.bulk is this CPU's current block (non-null here), owned by the queue whose lock q
    // holds; nr < BULK_ENTRIES before the push (a full block is queued and replaced at once below).
    unsafe {
        (*b).ptrs[(*b).nr] = ptr;
        (*b).nr += 1;
        if (*b).nr == BULK_ENTRIES {
            q.bulk = core::ptr::null_mut();
            drop(q);
            let target = request_gp();
            enqueue(target, Callback::Bulk(b));
        }
    }
    true
}

/// kvfree_rcu_mightsleep(ptr): vfree `ptr` after a grace period.
pub fn kvfree_rcu_mightsleep(ptr: *mut u8) {
    // Linux kvfree_call_rcu: `if (!head) might_sleep();`
    smp::might_sleep();
    if ptr.is_null() {
        return;
    }
    if !add_ptr_to_bulk(ptr, true) {
        synchronize_rcu();
        crate::mm::vmalloc::vfree(ptr);
    }
}

/// The callback of kvfree_rcu's two-argument fallback.
///
/// # Safety
/// `head` is the rcu_head at the start of a vmalloc'ed object whose grace period has ended.
unsafe fn vfree_rcu_head(head: *mut RcuHead) {
    // The rcu_head is the first field of the vmalloc'ed object (its offset is 0 in
    // test_vmalloc's struct); vfree accepts any address inside the area's first page.
    crate::mm::vmalloc::vfree(head as *mut u8);
}

/// kvfree_rcu(ptr, rhf): vfree `ptr` after a grace period, `head` embedded in the object.
///
/// # Safety
/// `head` must point into the object at `ptr`, at its start.
pub unsafe fn kvfree_rcu(ptr: *mut u8, head: *mut RcuHead) {
    if ptr.is_null() {
        return;
    }
    if !add_ptr_to_bulk(ptr, false) {
        // Linux: run_page_cache_worker, then the object goes on krcp->head, freed after a
        // grace period through its embedded rcu_head.
        QUEUES.this_cpu().lock().refill = true;
        smp::set_need_resched_local();
        // SAFETY: head is embedded in the object at ptr (this fn's contract) and lives until
        // vfree_rcu_head frees the object after the grace period.
        unsafe { call_rcu(head, vfree_rcu_head) };
    }
}

/// Whether this CPU holds callbacks whose grace period has ended but which have not run yet
/// (for the tests: a callback must not run while a reader is inside).
pub(crate) fn local_ready_callbacks() -> bool {
    !QUEUES.this_cpu().lock().ready.is_empty()
}
