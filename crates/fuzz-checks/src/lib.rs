//! The checking logic of the fuzz targets (fuzz/, cargo-fuzz + libFuzzer), host builds only.
//!
//! Each target is one function taking arbitrary bytes that panics on a finding: the libFuzzer
//! binaries in fuzz/fuzz_targets/ only call it, and `cargo test -p fuzz-checks` (stable, no fuzzer)
//! replays every committed input in fuzz/corpus/<target>/ through the same function, so a
//! finding that was fixed stays fixed.
//!
//! | target | input | what is checked |
//! |---|---|---|
//! | [`dt`] | a device-tree blob | [`bootcfg::dt::parse`]: no panic, `Ok` or `Err`, a usable `BootInfo` |
//! | [`cmdline`] | /chosen/bootargs bytes | the byte check, split/lookup, value parsers, `Config`, `TvParams`: references and round trips |
//! | [`page_alloc`] | an operation sequence | the page allocator against a model, `verify()` after every step |
//! | [`kva`] | an operation sequence | the KVA free tree, busy/lazy trees and pools against a model |

extern crate alloc;

// Modules live in the type namespace, functions in the value namespace: `dt` is both.
mod cmdline;
pub(crate) mod dt;
mod kva;
mod page_alloc;

/// Device-tree bytes -> `BootInfo`.
pub fn dt(data: &[u8]) {
    dt::check(data)
}

/// Boot command-line bytes -> parameters and switches.
pub fn cmdline(data: &[u8]) {
    cmdline::check(data)
}

/// Operation sequence -> page allocator vs model.
pub fn page_alloc(data: &[u8]) {
    page_alloc::run(data)
}

/// Operation sequence -> KVA allocator vs model.
pub fn kva(data: &[u8]) {
    kva::run(data)
}

/// At most this many operations per input of the operation-sequence targets (keeps one
/// execution well under a millisecond).
const MAX_OPS: usize = 200;
/// Full structure checks every this many steps (and at the start and the end).
const FULL_EVERY: usize = 8;

/// A target's name and check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by its directory name under fuzz/corpus/ (and its cargo-fuzz target name).
pub const TARGETS: [Target; 4] =
    [("dt", dt), ("cmdline", cmdline), ("page_alloc", page_alloc), ("kva", kva)];

/// Reads an operation sequence: each call takes the next bytes, zeros once it runs out.
pub(crate) struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

#[cfg(test)]
mod tests;
