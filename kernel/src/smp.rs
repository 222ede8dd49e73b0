//! SMP: bringing up the CPUs the device tree lists (PSCI CPU_ON or spin table), per-CPU stacks
//! with a guard page, cross-CPU calls through per-CPU mailboxes, and a barrier.
//!
//! There is no scheduler: each CPU runs one flow of control and polls its mailbox at quiescent
//! points (`cond_resched()` when its per-CPU NEED_RESCHED flag is set, every wait loop) and in
//! its idle loop. Setting another CPU's NEED_RESCHED sends it a wake-up IPI (Linux
//! smp_send_reschedule), whose only effect is to end its sleep: the work itself runs in process
//! context at its next quiescent point (interrupt handlers only set flags, so they never need a
//! lock). TLB maintenance uses broadcast `tlbi ...is`, so it needs no IPI.
use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::arch;
use crate::println;
use bootcfg::dt::{BootInfo, EnableMethod};
use mm_types::NR_CPUS;

/// Per-CPU kernel stacks: a guard page (left unmapped once the image is mapped with page
/// granularity) below each 64 KiB stack.
pub const STACK_SIZE: usize = 64 * 1024;
const SLOT: usize = STACK_SIZE + 4096;
#[repr(C, align(4096))]
struct Stacks([[u8; SLOT]; NR_CPUS]);
#[unsafe(link_section = ".bss.stacks")]
static mut STACKS: Stacks = Stacks([[0; SLOT]; NR_CPUS]);

/// Guard page and stack range [lo, hi) of `cpu`'s stack (virtual).
pub fn stack_range(cpu: usize) -> (u64, u64, u64) {
    // SAFETY: only the address of a stack slot is taken, no reference; cpu < NR_CPUS (array bound
    // checked).
    let base = unsafe { (&raw const STACKS.0[cpu]) as u64 };
    (base, base + 4096, base + SLOT as u64)
}

/// A secondary could not set up its GIC interface (it parks; bring_up reports it).
static CPU_INIT_FAILED: AtomicBool = AtomicBool::new(false);
static ONLINE: [AtomicBool; NR_CPUS] = [const { AtomicBool::new(false) }; NR_CPUS];
static NR_ONLINE: AtomicUsize = AtomicUsize::new(1);
static MPIDR: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(u64::MAX) }; NR_CPUS];

/// Linux `num_online_cpus()`: a plain read (lazy_max_pages calls it on every vfree). Code that
/// waits for a CPU to come online reads `cpu_online()`, which orders what it wrote.
pub fn num_online_cpus() -> usize {
    NR_ONLINE.load(Ordering::Relaxed)
}

pub fn cpu_online(cpu: usize) -> bool {
    cpu < NR_CPUS && ONLINE[cpu].load(Ordering::Acquire)
}

pub fn online_cpus() -> impl Iterator<Item = usize> {
    (0..NR_CPUS).filter(|&c| cpu_online(c))
}

pub fn cpu_mpidr(cpu: usize) -> u64 {
    MPIDR[cpu].load(Ordering::Relaxed)
}

/// A pending cross-CPU call: a pointer to the caller's closure (alive until `done` is set).
struct Mailbox {
    func: AtomicPtr<Call>,
}
struct Call {
    f: *const (dyn Fn() + Sync),
    done: AtomicBool,
}
static MAILBOX: [Mailbox; NR_CPUS] =
    [const { Mailbox { func: AtomicPtr::new(core::ptr::null_mut()) } }; NR_CPUS];

crate::define_per_cpu! {
    /// Work is due on this CPU at its next quiescent point: a cross-CPU call waits in its
    /// mailbox, RCU wants a quiescent state from it, or its RCU callbacks are ready (Linux:
    /// TIF_NEED_RESCHED set by the IPI/tick, and rcu_data.rcu_urgent_qs). Set by anyone with
    /// [`set_need_resched`]; cleared only by its own CPU.
    static NEED_RESCHED: AtomicBool = AtomicBool::new(false);
}

/// Marks work due on `cpu` and wakes it (Linux resched_curr -> smp_send_reschedule).
pub fn set_need_resched(cpu: usize) {
    NEED_RESCHED.on(cpu).store(true, Ordering::Release);
    if cpu != crate::percpu_defs::smp_processor_id() {
        arch::idle::kick_cpu(cpu);
    }
}

/// Wakes every CPU waiting in a wait loop (not those in their idle loop): what a change others
/// may be waiting for (a barrier, a finished call, a grace period's end) is followed by.
#[inline]
pub fn wake_waiters() {
    arch::idle::sev(crate::percpu_defs::smp_processor_id());
}

/// Marks work due on this CPU.
pub fn set_need_resched_local() {
    NEED_RESCHED.this_cpu().store(true, Ordering::Release);
}

/// Runs a pending request for this CPU, if any. Called at quiescent points and in idle.
pub fn poll_mailbox() {
    let cpu = crate::percpu_defs::smp_processor_id();
    let p = MAILBOX[cpu].func.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !p.is_null() {
        // SAFETY: p was published in MAILBOX by call_on_cpu, whose Call lives on the caller's stack
        // until it sees done (set below, after the last use).
        let call = unsafe { &*p };
        // SAFETY: call.f points at the caller's closure, alive for the same reason (call_on_cpu
        // waits for done); it is Sync, so running it here is allowed.
        unsafe { (*call.f)() };
        call.done.store(true, Ordering::Release);
        wake_waiters();
    }
}

/// Linux's cond_resched() on a non-preemptible kernel: a test of one per-CPU flag, and the
/// work only when the flag says some is due (serving a cross-CPU call, reporting an RCU
/// quiescent state, running ready RCU callbacks). Linux's fast path is the same shape:
/// `should_resched()` (a thread-flag test) and `rcu_all_qs()` (a per-CPU flag test). No lock
/// and no atomic read-modify-write unless work is due.
#[inline]
pub fn cond_resched() {
    if NEED_RESCHED.this_cpu().load(Ordering::Relaxed) {
        cond_resched_slow();
    }
}

/// Linux's might_sleep() as the Debian 6.12 kernel we compare with builds it
/// (CONFIG_PREEMPT_VOLUNTARY=y without PREEMPT_DYNAMIC: `might_resched()` is `__cond_resched()`),
/// so a cond_resched(). Linux calls it at the start of alloc_vmap_area, vfree, vmap, vunmap,
/// vm_unmap_ram and the headless kvfree_rcu; in a non-preemptible kernel these are where a CPU
/// looping over those APIs reports its RCU quiescent states. A loop that reaches none (a
/// vm_map_ram / vm_unmap_ram loop did) holds up every grace period for as long as it runs.
#[inline]
pub fn might_sleep() {
    cond_resched();
}

/// Linux's might_alloc(): might_sleep() when `gfp` may block (`__GFP_DIRECT_RECLAIM`: GFP_KERNEL,
/// not GFP_NOWAIT or GFP_ATOMIC).
#[inline]
pub fn might_alloc(gfp: mm_types::gfp::GfpFlags) {
    if gfp.contains(mm_types::gfp::GfpFlags::__GFP_DIRECT_RECLAIM) {
        might_sleep();
    }
}

#[cold]
#[inline(never)]
fn cond_resched_slow() {
    // An RMW (acquire) pairs with set_need_resched's release store: what the setter posted
    // before setting the flag (a mailbox call, a grace-period start) is visible below. A flag
    // set again after this point is seen at the next cond_resched.
    if NEED_RESCHED.this_cpu().swap(false, Ordering::AcqRel) {
        poll_mailbox();
        quiescent_hook();
    }
}

static QS_HOOK: spin::Once<fn()> = spin::Once::new();

/// Registers what runs at each quiescent point (RCU).
pub fn set_quiescent_hook(f: fn()) {
    QS_HOOK.call_once(|| f);
}

fn quiescent_hook() {
    if let Some(f) = QS_HOOK.get() {
        f();
    }
}

/// Sleeps until a wake-up (`wake_waiters`, `set_need_resched`) or an interrupt, unless work
/// is already due on this CPU or a wake-up came since the last wait. Every wait loop sleeps
/// through here: a CPU that asked itself for work (a grace period it started, which it owes a
/// quiescent state) must not sleep on it, since no other CPU will wake it for that; work set
/// by another CPU comes with a kick, which ends the sleep.
pub fn wait_for_event() {
    arch::idle::wait(|| NEED_RESCHED.this_cpu().load(Ordering::Acquire));
}

/// What a quiescent point does (idle loops, wait loops that must not sleep
/// owing work): serve the mailbox and report to RCU.
pub fn quiescent_point() {
    NEED_RESCHED.this_cpu().store(false, Ordering::Relaxed);
    poll_mailbox();
    quiescent_hook();
}

/// Runs `f` on `cpu` and waits for it (Linux: smp_call_function_single(..., wait = 1)).
pub fn call_on_cpu(cpu: usize, f: &(dyn Fn() + Sync)) {
    if cpu == crate::percpu_defs::smp_processor_id() {
        f();
        return;
    }
    assert!(cpu_online(cpu), "call_on_cpu: cpu {cpu} is offline");
    // Erase the borrow's lifetime: we wait for `done` before returning.
    let fptr: *const (dyn Fn() + Sync) =
        // SAFETY: call_on_cpu does not return before the target CPU set done, after its last use of
        // f, so the reference never outlives the borrow.
        unsafe { core::mem::transmute::<&(dyn Fn() + Sync), &'static (dyn Fn() + Sync)>(f) };
    let call = Call { f: fptr, done: AtomicBool::new(false) };
    let p = &call as *const Call as *mut Call;
    while MAILBOX[cpu]
        .func
        .compare_exchange(core::ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        quiescent_point();
        wait_for_event();
    }
    set_need_resched(cpu);
    while !call.done.load(Ordering::Acquire) {
        quiescent_point();
        wait_for_event();
    }
}

/// Runs `f` on every online CPU (this one included) and waits for all (Linux: on_each_cpu).
pub fn on_each_cpu(f: &(dyn Fn() + Sync)) {
    let me = crate::percpu_defs::smp_processor_id();
    for cpu in online_cpus() {
        if cpu != me {
            call_on_cpu(cpu, f);
        }
    }
    f();
}

/// A reusable sense-reversing barrier for `n` CPUs. While waiting, a CPU serves its mailbox and
/// reports RCU quiescent states (a CPU that sleeps owing one would stall every grace period).
pub struct Barrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    pub const fn new(n: usize) -> Self {
        Barrier { n, count: AtomicUsize::new(0), generation: AtomicUsize::new(0) }
    }
    pub fn wait(&self) {
        let gen = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            wake_waiters();
        } else {
            while self.generation.load(Ordering::Acquire) == gen {
                quiescent_point();
                wait_for_event();
            }
        }
    }
}

/// Work handed to a secondary CPU to run instead of idling (tests, benchmark workers).
static WORK: [AtomicPtr<Box<dyn Fn() + Send + Sync>>; NR_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; NR_CPUS];

/// Idle loop of a CPU: serve mailboxes and handed-over work, else sleep (WFI with the tick
/// stopped under `nohz`, counted as an RCU extended quiescent state); only a kick addressed to
/// this CPU or an interrupt wakes it.
pub fn idle() -> ! {
    let cpu = crate::percpu_defs::smp_processor_id();
    loop {
        quiescent_point();
        let w = WORK[cpu].swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !w.is_null() {
            // SAFETY: w came from Box::into_raw in start_work and the swap took it out of WORK, so
            // this CPU is its only owner.
            let b = unsafe { Box::from_raw(w) };
            b();
            continue;
        }
        arch::idle::idle_sleep(cpu, || {
            NEED_RESCHED.this_cpu().load(Ordering::Acquire)
                || !WORK[cpu].load(Ordering::Acquire).is_null()
        });
    }
}

/// Brings up every CPU the device tree lists, up to `maxcpus`. Returns the number online.
pub fn bring_up(info: &BootInfo, maxcpus: Option<usize>) -> usize {
    let me = arch::mpidr();
    let limit = maxcpus.unwrap_or(NR_CPUS).min(NR_CPUS);
    ONLINE[0].store(true, Ordering::Release);
    MPIDR[0].store(me, Ordering::Relaxed);
    arch::idle::mark_online(0);
    let mut next = 1;
    for cpu in &info.cpus {
        if cpu.mpidr == me {
            continue;
        }
        if next >= limit {
            println!("smp: cpu mpidr {:#x} not started (maxcpus={})", cpu.mpidr, limit);
            continue;
        }
        match boot_secondary(next, cpu.mpidr, &cpu.enable) {
            Ok(()) => next += 1,
            Err(BootError::NotStarted(e)) => {
                println!("smp: cpu mpidr {:#x} failed to come online: {}", cpu.mpidr, e)
            }
            Err(BootError::Late(e)) => {
                // It was started and may still arrive (a spin-table CPU cannot be called
                // back): its logical id stays taken, and it parks if it ever comes up.
                ABANDONED[next].store(true, Ordering::Release);
                println!("smp: cpu mpidr {:#x} failed to come online: {}", cpu.mpidr, e);
                next += 1;
            }
        }
    }
    NR_ONLINE.load(Ordering::Acquire)
}

enum BootError {
    /// The CPU was never started (PSCI refused, no method): its logical id can be reused.
    NotStarted(alloc::string::String),
    /// Started but not online in time (Linux: "failed to come online" after 5 s).
    Late(alloc::string::String),
}

impl From<&str> for BootError {
    fn from(s: &str) -> Self {
        BootError::NotStarted(s.into())
    }
}
impl From<alloc::string::String> for BootError {
    fn from(s: alloc::string::String) -> Self {
        BootError::NotStarted(s)
    }
}

/// Logical ids given to CPUs that did not come online in time: if one arrives late, it parks.
static ABANDONED: [AtomicBool; NR_CPUS] = [const { AtomicBool::new(false) }; NR_CPUS];

fn boot_secondary(cpu: usize, mpidr: u64, method: &EnableMethod) -> Result<(), BootError> {
    use crate::arch::smp::secondary_boot_data as data;
    unsafe extern "C" {
        fn secondary_entry();
        static mut secondary_boot_data_pa_ptr: u64;
    }
    let (_, _, top) = stack_range(cpu);
    let ttbr0: u64;
    // SAFETY: reading TTBR0_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ttbr0_el1", out(reg) ttbr0) };
    // SAFETY: secondary_boot_data and its PA pointer are written only here, by the boot CPU, before
    // the secondary they describe is started (and one secondary at a time), so there is no
    // concurrent access; the cache maintenance makes them visible to a CPU with caches off.
    unsafe {
        let d = &raw mut data;
        (*d).ttbr0 = ttbr0;
        (*d).ttbr1 = arch::mmu::ttbr1();
        (*d).stack_top = top;
        (*d).cpu = cpu as u64;
        let pp = &raw mut secondary_boot_data_pa_ptr;
        *pp = arch::mmu::kimage_va_to_pa(d as u64);
        // The secondary reads both with its MMU and caches off.
        arch::dcache_clean_inval_poc(
            d as u64,
            core::mem::size_of::<arch::smp::SecondaryBootData>() as u64,
        );
        arch::dcache_clean_inval_poc(pp as u64, 8);
    }
    MPIDR[cpu].store(mpidr, Ordering::Relaxed);
    let entry_pa = arch::mmu::kimage_va_to_pa(secondary_entry as *const () as usize as u64);
    match method {
        EnableMethod::Psci => {
            let r = arch::psci::call(arch::psci::CPU_ON_64, mpidr, entry_pa, 0)
                .ok_or("enable-method psci but no /psci conduit")?;
            if r != 0 {
                return Err(alloc::format!(
                    "PSCI CPU_ON returned {} ({})",
                    r,
                    arch::psci::error_name(r)
                )
                .into());
            }
        }
        EnableMethod::SpinTable { release_addr } => {
            // Device mapping: the write reaches memory without cache maintenance.
            let va = arch::mmu::early_ioremap(*release_addr, 8)
                .ok_or("no page table for the release address")?;
            // SAFETY: va maps the spin-table release address (early_ioremap above, device memory);
            // writing the entry PA there is the spin-table protocol.
            unsafe { core::ptr::write_volatile(va as *mut u64, entry_pa) };
            arch::dsb_sy();
            arch::sev_raw();
        }
        other => return Err(alloc::format!("unsupported enable-method {:?}", other).into()),
    }
    // Wait up to 5 s (counter time; Linux's __cpu_up waits 5 s too) for the CPU to report
    // online. Under TCG on a busy host a secondary can take well over a second.
    let start = arch::cycles();
    while !ONLINE[cpu].load(Ordering::Acquire) {
        if CPU_INIT_FAILED.swap(false, Ordering::AcqRel) {
            return Err(BootError::Late("no GIC redistributor/CPU interface for it".into()));
        }
        if arch::cycles() - start > 5 * arch::timer_hz() {
            return Err(BootError::Late("timed out after 5 s".into()));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// First Rust code of a secondary CPU, with the MMU on and its own stack.
pub fn secondary_start(cpu: usize) -> ! {
    // Before anything reads smp_processor_id (a per-CPU variable).
    // SAFETY: per_cpu_offset(cpu) is this CPU's offset (setup_per_cpu_areas wrote it before
    // secondaries start).
    unsafe { arch::set_my_cpu_offset(crate::percpu_defs::per_cpu_offset(cpu)) };
    arch::exception::install_vectors();
    let (_, lo, hi) = stack_range(cpu);
    arch::exception::set_kernel_stack(lo, hi);
    // This CPU's GIC interface, then its tick, then interrupts on (Linux secondary_start_kernel:
    // notify_cpu_starting sets up the per-CPU irqchip and timer, then local_irq_enable). A CPU
    // whose interface cannot be set up stays offline: it could not be woken.
    let irqs = arch::gic::present();
    if ABANDONED[cpu].load(Ordering::Acquire) {
        loop {
            arch::wfe_raw();
        }
    }
    if irqs && !arch::gic::cpu_init(cpu, arch::irq::enabled_mask()) {
        CPU_INIT_FAILED.store(true, Ordering::Release);
        loop {
            arch::wfe_raw();
        }
    }
    arch::timer::program_next_tick();
    arch::idle::mark_online(cpu);
    ONLINE[cpu].store(true, Ordering::Release);
    NR_ONLINE.fetch_add(1, Ordering::AcqRel);
    if irqs {
        arch::local_irq_enable();
    }
    idle()
}

/// Runs `f` on `cpu` asynchronously (the CPU picks it up in its idle loop).
pub fn start_work(cpu: usize, f: Box<dyn Fn() + Send + Sync>) {
    let p = Box::into_raw(Box::new(f));
    while WORK[cpu]
        .compare_exchange(core::ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        quiescent_point();
    }
    arch::idle::kick_cpu(cpu);
}
