//! The kernel: boots, brings up every CPU, instantiates the mm crates on real memory, runs
//! test_vmalloc or the in-kernel tests, and reports over the serial console.
//!
//! Everything portable lives in crates/ and is tested on the host; this crate is the part that
//! only makes sense on the machine (`target_os = "none"`). Layers, lowest first; a module
//! uses only modules above it in this list (`scripts/modcycles.py` checks there are no cycles):
//!
//! | module | what |
//! |---|---|
//! | [`arch`] | aarch64: registers, barriers, exception vectors, IRQs, GICv2/v3, timer, idle, MMU bring-up, TLB ops, PSCI, semihosting |
//! | [`board`] | Raspberry Pi 4 specifics: GPIO pin functions, PM watchdog |
//! | [`percpu_defs`] | per-CPU variables (`define_per_cpu!`, TPIDR_EL1) |
//! | [`console`] | the serial console drivers and `print!` |
//! | [`ktest`] | the in-kernel test registry (`.ktest` linker section) |
//! | [`smp`] | secondary CPUs, cross-CPU calls, `cond_resched` |
//! | [`mm`] | the mm crates' kernel instances, vmalloc, kmalloc, boot setup |
//! | [`rcu`] | RCU grace periods, `call_rcu`, `kvfree_rcu` |
//! | [`tick`] | the per-CPU tick: RCU's clock hook, the vmstat work (`decay_pcp_high`) |
//! | [`bench`] | test_vmalloc and the page-allocator micro-benchmark |
//! | [`ktests`] | the in-kernel tests, one file per subsystem |
//! | `kmain` | the boot flow, stage by stage |
#![no_std]
#![cfg(target_os = "none")]

extern crate alloc;

pub mod arch;
pub mod bench;
pub mod board;
pub mod console;
mod kmain;
pub mod ktest;
mod ktests;
pub mod mm;
pub mod percpu_defs;
pub mod rcu;
pub mod smp;
pub mod tick;

pub use kmain::{kmain, secondary_main};

/// Exit statuses (semihosting SYS_EXIT): the kernel's contract with `make test` and the host tool.
pub const EXIT_OK: u32 = 0;
/// A test or benchmark check failed.
pub const EXIT_TEST_FAILED: u32 = 1;
/// Bad input: a malformed device tree, an unknown or bad boot parameter.
pub const EXIT_BAD_INPUT: u32 = 2;
/// An unexpected exception (the report precedes it).
pub const EXIT_EXCEPTION: u32 = 3;
/// A kernel panic.
pub const EXIT_PANIC: u32 = 4;
