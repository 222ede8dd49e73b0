//! Benchmarks run inside the kernel.
pub mod params;
// test_vmalloc driver: enabled with vmalloc

