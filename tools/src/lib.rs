//! tvtool: host side of the in-kernel test_vmalloc benchmark (parse serial logs, compare
//! variants with confidence intervals, run plans of QEMU boots).

pub mod compare;
pub mod linux;
pub mod parse;
pub mod plan;
pub mod run;
pub mod smp;
pub mod stats;
pub mod summary;
pub mod svg;
