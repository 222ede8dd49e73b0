//! Fuzz target `kva`: operation sequence -> KVA allocator vs a model. The checks live in the kernel crate
//! (kernel/src/fuzz_targets/), where `cargo test -p kernel` replays fuzz/corpus/kva/.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kernel::fuzz_targets::kva(data));
