//! Fuzz target `kva`: operation sequence -> KVA allocator vs a model.
//! The checks live in crates/fuzz-checks, where `cargo test -p fuzz-checks` replays fuzz/corpus/kva/.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::kva(data));
