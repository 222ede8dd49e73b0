//! The kernel: Linux-style memory management for bare-metal arm64.
//!
//! Portable logic (device tree, memblock, buddy and per-CPU page lists, page-table walker, KVA
//! allocator, bootargs) builds and is tested on the host with `cargo test`; architecture code
//! (`arch`, `console`, the boot flow in `kmain`) compiles only for `target_os = "none"`.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod bench;
pub mod config;
pub mod dt;
#[cfg(not(target_os = "none"))]
pub mod fuzz_targets;
pub mod ktest;
pub mod mm;
pub mod params;
pub mod ratelimit;

#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
mod kmain;
#[cfg(target_os = "none")]
pub mod percpu_defs;
#[cfg(target_os = "none")]
pub mod rcu;
#[cfg(target_os = "none")]
pub mod smp;

#[cfg(target_os = "none")]
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
