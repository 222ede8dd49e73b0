//! Benchmarks run inside the kernel: Linux's test_vmalloc and a page-allocator micro-benchmark.
pub mod pagealloc;
pub mod test_vmalloc;
