//! Fuzz target `page_alloc`: operation sequence -> page allocator vs a model.
//! The checks live in crates/fuzz-checks, where `cargo test -p fuzz-checks` replays fuzz/corpus/page_alloc/.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::page_alloc(data));
