//! Fuzz target `cmdline`: boot command-line bytes -> parameters and switches.
//! The checks live in crates/fuzz-checks, where `cargo test -p fuzz-checks` replays fuzz/corpus/cmdline/.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::cmdline(data));
