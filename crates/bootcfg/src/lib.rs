//! Boot configuration, everything the kernel reads from outside before it does anything:
//! the device tree ([`dt`]: memory, reservations, CPUs, console, interrupt controller), the
//! command line ([`params`]: Linux's parsing rules), this kernel's switches ([`config`]),
//! test_vmalloc's module parameters ([`test_vmalloc`]), the rate limit for warnings
//! ([`ratelimit`]), and the Pi 4 console's baud divisor choice ([`uart`]). Pure logic: host-tested and fuzzed (crates/fuzz-checks).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod dt;
pub mod params;
pub mod ratelimit;
pub mod test_vmalloc;
pub mod uart;
