//! The periodic tick (Linux kernel/time/tick-common.c + the work it drives) and the vmstat
//! work it schedules.
//!
//! Every online CPU takes a tick from its virtual timer at `hz` (250 by default, as arm64's
//! defconfig). The handler runs with interrupts masked and only sets flags (Linux's
//! update_process_times does little more: the work runs in softirq or workqueue context):
//!
//! - RCU's scheduler-clock hook (`rcu_sched_clock_irq`): a CPU that owes the running grace
//!   period a quiescent state gets NEED_RESCHED, so its next `cond_resched()` reports it;
//! - the vmstat work (Linux vmstat_update, every `sysctl_stat_interval` = 1 s per CPU):
//!   marked due, and run in process context at the CPU's next quiescent point, where it folds
//!   the CPU's counter differences and runs `decay_pcp_high` (`refresh_cpu_vm_stats`).
//!
//! Idle CPUs stop their tick (`nohz=on`, Linux CONFIG_NO_HZ_IDLE): nothing on an idle CPU
//! needs it here (RCU treats idle as an extended quiescent state, and callbacks ready after a
//! grace period come with a wake-up), so an idle CPU costs nothing until someone wakes it.
//! Linux's idle CPUs skip the vmstat work the same way (its shepherd only queues work for CPUs
//! whose counters changed). `nohz=off` keeps the tick on idle CPUs.
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::arch::{self, irq, timer};
use crate::smp;

static HZ: AtomicU64 = AtomicU64::new(0);

/// Per-CPU tick state.
pub struct TickState {
    /// Ticks taken (Linux: the timer interrupt's per-CPU count in /proc/interrupts).
    pub ticks: AtomicU64,
    /// Jiffy at which the vmstat work is next due.
    vmstat_next: AtomicU64,
    vmstat_due: AtomicBool,
    /// vmstat work runs, and those that lowered pcp high or freed pages.
    pub vmstat_runs: AtomicU64,
    pub decay_runs: AtomicU64,
}

crate::define_per_cpu! {
    pub static TICK: TickState = TickState {
        ticks: AtomicU64::new(0),
        vmstat_next: AtomicU64::new(0),
        vmstat_due: AtomicBool::new(false),
        vmstat_runs: AtomicU64::new(0),
        decay_runs: AtomicU64::new(0),
    };
}

/// The tick frequency in effect (0: no tick).
pub fn hz() -> u64 {
    HZ.load(Ordering::Relaxed)
}

/// Linux `jiffies`: ticks since the counter started (computed from the counter, so every CPU
/// agrees without one of them keeping it: what tick_do_update_jiffies64 does with NOHZ).
pub fn jiffies() -> u64 {
    match timer::period() {
        0 => 0,
        p => arch::cycles() / p,
    }
}

fn tick_handler(_intid: u32) {
    timer::program_next_tick();
    let t = TICK.this_cpu();
    t.ticks.fetch_add(1, Ordering::Relaxed);
    let j = jiffies();
    // Linux vmstat_update: once a second (sysctl_stat_interval = HZ) on every CPU.
    if j >= t.vmstat_next.load(Ordering::Relaxed) {
        t.vmstat_next.store(j + hz(), Ordering::Relaxed);
        t.vmstat_due.store(true, Ordering::Relaxed);
        smp::set_need_resched_local();
    }
    // rcu_sched_clock_irq: ask for the quiescent state this CPU owes.
    if crate::rcu::qs_owed_local() {
        smp::set_need_resched_local();
    }
}

/// Boot CPU: registers the tick on the virtual timer's interrupt `intid` at `hz` (0: none).
pub fn tick_init(intid: u32, hz: u32) -> Result<(), &'static str> {
    if hz == 0 {
        return Ok(());
    }
    irq::request_percpu_irq(intid, tick_handler)?;
    HZ.store(hz as u64, Ordering::Relaxed);
    timer::set_period(hz as u64);
    Ok(())
}

/// The deferred tick work of this CPU, in process context (the quiescent-point hook).
pub fn tick_work() {
    let t = TICK.this_cpu();
    if t.vmstat_due.load(Ordering::Relaxed) && t.vmstat_due.swap(false, Ordering::Relaxed) {
        vmstat_update();
    }
}

/// Linux vmstat_update -> refresh_cpu_vm_stats(true) on this CPU.
pub fn vmstat_update() {
    let t = TICK.this_cpu();
    t.vmstat_runs.fetch_add(1, Ordering::Relaxed);
    let (_, decaying) = crate::mm::page_alloc::refresh_cpu_vm_stats();
    if decaying {
        t.decay_runs.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every quiescent point runs (cond_resched's slow path, idle, wait loops): RCU's
/// quiescent state and callbacks, the tick's deferred work, and queued work items (the percpu
/// balance work): Linux's softirqs and kworkers, run where this kernel has a free moment.
pub fn quiescent_work() {
    crate::rcu::rcu_quiescent();
    tick_work();
    crate::mm::percpu::pcpu_balance_workfn();
}
