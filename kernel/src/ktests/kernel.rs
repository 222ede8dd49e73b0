//! The test registry and the heap themselves.
use alloc::vec::Vec;

crate::ktest!(ktest_registry_works, {
    crate::kassert!(!crate::ktest::registry().is_empty());
    Ok(())
});

crate::ktest!(heap_allocates, {
    let v: Vec<u64> = (0..1000).collect();
    crate::kassert_eq!(v.iter().sum::<u64>(), 499_500);
    Ok(())
});
