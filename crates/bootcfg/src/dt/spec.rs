//! Numbers from the Devicetree Specification (v0.4, chapter 5: the flattened format).

/// `FDT_MAGIC` from libfdt/fdt.h, stored big-endian at offset 0.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Size of the version-17 header (`struct fdt_header`, ten big-endian u32s).
pub const HEADER_SIZE: usize = 40;
/// libfdt's FDT_MAX_DEPTH; also bounds our heap-allocated traversal stack.
pub const MAX_DEPTH: usize = 64;

pub(crate) const FDT_BEGIN_NODE: u32 = 1;
pub(crate) const FDT_END_NODE: u32 = 2;
pub(crate) const FDT_PROP: u32 = 3;
pub(crate) const FDT_NOP: u32 = 4;
pub(crate) const FDT_END: u32 = 9;
