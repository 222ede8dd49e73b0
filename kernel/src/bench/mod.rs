//! Benchmarks run inside the kernel.
pub mod params;
#[cfg(target_os = "none")]
pub mod test_vmalloc;

#[cfg(target_os = "none")]
pub mod pagealloc;
