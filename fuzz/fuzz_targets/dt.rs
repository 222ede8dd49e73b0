//! Fuzz target `dt`: device-tree bytes -> BootInfo. The checks live in crates/fuzz-checks,
//! where `cargo test -p fuzz-checks` replays fuzz/corpus/dt/.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::dt(data));
