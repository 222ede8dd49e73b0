//! Architecture code. Only AArch64 exists; generic code calls `crate::arch::...`.
pub mod aarch64;
pub use aarch64::*;
