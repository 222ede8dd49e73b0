//! Static per-CPU variables (Linux include/linux/percpu-defs.h, arm64 asm/percpu.h).
//!
//! `define_per_cpu!` places a variable in the `.data..percpu` section of the image. That section
//! is only a template: `mm::percpu::setup_per_cpu_areas` copies it into one unit per possible
//! CPU (the first chunk of the percpu allocator, in the linear map) and records each CPU's
//! distance from the template in `__per_cpu_offset[cpu]`. Every CPU keeps its own offset in
//! TPIDR_EL1, so `this_cpu` access is one `mrs` plus an add, and CPU n's copy of a variable is
//! `&VAR + __per_cpu_offset[n]` (per_cpu_ptr). Dynamic percpu pointers from `alloc_percpu` use
//! the same arithmetic.
//!
//! ```text
//!   image:  __per_cpu_start [ CPU_NUMBER | ... statics ... ] __per_cpu_end      (template)
//!   first chunk (linear map), one unit (PCPU_UNIT_SIZE) per CPU:
//!     unit 0: [ statics | dynamic area ........ ]  <- template + __per_cpu_offset[0]
//!     unit 1: [ statics | dynamic area ........ ]  <- template + __per_cpu_offset[1]
//! ```
//!
//! Before the areas exist TPIDR_EL1 is 0 (head.S), so the boot CPU uses the template itself.
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch;
use mm_types::NR_CPUS;

/// Linux `__per_cpu_offset[]`: written once by setup_per_cpu_areas, before secondaries start.
static PER_CPU_OFFSET: [AtomicUsize; NR_CPUS] = [const { AtomicUsize::new(0) }; NR_CPUS];

/// Linux `per_cpu_offset(cpu)`.
#[inline]
pub fn per_cpu_offset(cpu: usize) -> usize {
    PER_CPU_OFFSET[cpu].load(Ordering::Relaxed)
}

/// All CPUs' offsets (zone pcp pointers keep a copy).
pub fn per_cpu_offsets() -> [usize; NR_CPUS] {
    core::array::from_fn(per_cpu_offset)
}

/// Records CPU `cpu`'s offset (setup_per_cpu_areas only).
pub fn set_per_cpu_offset(cpu: usize, off: usize) {
    PER_CPU_OFFSET[cpu].store(off, Ordering::Release);
}

/// CPUs with a per-CPU area (Linux nr_cpu_ids); 1 until setup_per_cpu_areas (the template).
static NR_CPU_IDS: AtomicUsize = AtomicUsize::new(1);

pub fn nr_cpu_ids() -> usize {
    NR_CPU_IDS.load(Ordering::Relaxed)
}

pub fn set_nr_cpu_ids(n: usize) {
    NR_CPU_IDS.store(n, Ordering::Release);
}

/// [start, end) of the template section.
pub fn per_cpu_section() -> (usize, usize) {
    unsafe extern "C" {
        static __per_cpu_start: u8;
        static __per_cpu_end: u8;
    }
    ((&raw const __per_cpu_start) as usize, (&raw const __per_cpu_end) as usize)
}

/// A static per-CPU variable. Declare with [`define_per_cpu!`], never directly: the value only
/// works as a template in `.data..percpu`.
///
/// Access without `unsafe` is shared only, so no safe code can make two `&mut` to one copy:
/// - `Sync` contents (atomics, locks): [`PerCpu::this_cpu`], and another CPU's copy with
///   [`PerCpu::on`] / [`PerCpu::iter`];
/// - any contents, `Cell`/`RefCell` included: [`PerCpu::get_with`], this CPU's copy for as long
///   as an [`IrqGuard`](crate::arch::IrqGuard) keeps interrupts (the only other code that could
///   run on this CPU) off. Such contents are not `Sync`, so no other CPU can reach them safely;
/// - `Copy` values written only during setup (through the raw pointers): [`PerCpu::read`].
///
/// Raw pointers (`this_cpu_ptr`, `per_cpu_ptr`) are for unsafe code that upholds the same rules.
#[repr(transparent)]
pub struct PerCpu<T>(UnsafeCell<T>);

// SAFETY: each CPU's copy is reached safely either through `Sync` contents (`this_cpu`, `on`),
// or only by its own CPU with interrupts off (`get_with`), or read-only (`read`); the remaining
// accessors are raw pointers whose users take the responsibility.
unsafe impl<T> Sync for PerCpu<T> {}

impl<T> PerCpu<T> {
    pub const fn new(v: T) -> Self {
        PerCpu(UnsafeCell::new(v))
    }

    /// The template in the image's `.data..percpu` section (copied into every CPU's area by
    /// setup_per_cpu_areas; never written after that).
    pub fn template_ptr(&'static self) -> *const T {
        self.0.get()
    }

    /// Linux `per_cpu_ptr(&var, cpu)`.
    #[inline]
    pub fn per_cpu_ptr(&'static self, cpu: usize) -> *mut T {
        (self.0.get() as usize).wrapping_add(per_cpu_offset(cpu)) as *mut T
    }

    /// Linux `this_cpu_ptr(&var)`: TPIDR_EL1-relative. Stable for the caller's lifetime because
    /// nothing here migrates between CPUs (work is pinned; there is no preemption).
    #[inline(always)]
    pub fn this_cpu_ptr(&'static self) -> *mut T {
        (self.0.get() as usize).wrapping_add(arch::my_cpu_offset()) as *mut T
    }

    /// This CPU's copy while `guard` keeps interrupts off (Asterinas `CpuLocal::get_with`;
    /// Linux: this_cpu access inside local_irq_save). The reference cannot outlive the guard,
    /// and mutation goes through `Cell`/`RefCell` contents, so no `&mut` is ever aliased.
    #[inline(always)]
    pub fn get_with<'a>(&'static self, _guard: &'a arch::IrqGuard) -> &'a T {
        // SAFETY: this CPU's copy exists (per-CPU areas are set up before any CPU other than the
        // boot CPU runs, and the boot CPU uses the template until then); with interrupts off
        // nothing else runs on this CPU for 'a, and no other CPU reaches the copy safely (`on`
        // needs `Sync` contents, which make concurrent access their own business).
        unsafe { &*self.this_cpu_ptr() }
    }
}

impl<T: Sync> PerCpu<T> {
    /// This CPU's copy by shared reference, for per-CPU atomics and locks (Linux:
    /// `this_cpu_ptr` dereferenced).
    #[inline(always)]
    pub fn this_cpu(&'static self) -> &'static T {
        // SAFETY: shared access to `Sync` contents; the copy lives as long as the kernel.
        unsafe { &*self.this_cpu_ptr() }
    }

    /// CPU `cpu`'s copy by shared reference (`per_cpu(var, cpu)`): sound for `Sync` contents
    /// (locks, atomics), which is what remote access needs.
    #[inline]
    pub fn on(&'static self, cpu: usize) -> &'static T {
        assert!(cpu < nr_cpu_ids(), "per_cpu access for cpu {cpu} without a per-CPU area");
        // SAFETY: as for `this_cpu`; `cpu` has an area (checked above).
        unsafe { &*self.per_cpu_ptr(cpu) }
    }

    /// Every CPU's copy (`for_each_possible_cpu`).
    pub fn iter(&'static self) -> impl Iterator<Item = &'static T> {
        (0..nr_cpu_ids()).map(move |c| self.on(c))
    }
}

impl<T: Copy> PerCpu<T> {
    /// Linux `this_cpu_read` of a value set up once (`cpu_number`): one load, no guard. Safe
    /// code cannot write a `Copy` per-CPU value (`get_with` gives `&T`, and `Copy` contents
    /// have no interior mutability); the setup code that writes one through `per_cpu_ptr` does
    /// so before any reader runs.
    #[inline(always)]
    pub fn read(&'static self) -> T {
        // SAFETY: see above: no concurrent writer exists.
        unsafe { core::ptr::read_volatile(self.this_cpu_ptr()) }
    }
}

/// `define_per_cpu!(pub static NAME: T = init;)`: Linux DEFINE_PER_CPU.
#[macro_export]
macro_rules! define_per_cpu {
    ($(#[$m:meta])* $vis:vis static $name:ident : $t:ty = $init:expr;) => {
        $(#[$m])*
        #[unsafe(link_section = ".data..percpu")]
        $vis static $name: $crate::percpu_defs::PerCpu<$t> = $crate::percpu_defs::PerCpu::new($init);
    };
}

define_per_cpu! {
    /// Linux arm64 `cpu_number`: what smp_processor_id() reads.
    pub static CPU_NUMBER: usize = 0;
}

/// Linux `raw_smp_processor_id()` on arm64: this CPU's `cpu_number`.
#[inline(always)]
pub fn smp_processor_id() -> usize {
    CPU_NUMBER.read()
}
