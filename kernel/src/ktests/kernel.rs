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

crate::ktest!(memset_every_length_and_alignment, {
    // arch/aarch64/memset.S: overlapping head/tail stores and a 64-byte loop; check that every
    // byte of [off, off + len) is set and nothing around it is touched.
    unsafe extern "C" {
        fn memset(s: *mut u8, c: i32, n: usize) -> *mut u8;
    }
    let mut buf = [0u8; 512];
    let p = buf.as_mut_ptr();
    for off in 0..16usize {
        for len in 0..=300usize {
            for i in 0..buf.len() {
                // SAFETY: i < buf.len(); volatile so the compiler does not turn this into memset.
                unsafe { p.add(i).write_volatile(i as u8 ^ 0x5a) };
            }
            let c = (len as u8).wrapping_mul(7) | 1;
            // SAFETY: [off, off + len) lies inside `buf` (16 + 300 < 512).
            let r = unsafe { memset(p.add(off), c as i32 | 0x700, len) };
            crate::kassert!(r == p.wrapping_add(off), "memset returned {:p}", r);
            for i in 0..buf.len() {
                // SAFETY: i < buf.len().
                let v = unsafe { p.add(i).read_volatile() };
                let want = if (off..off + len).contains(&i) { c } else { i as u8 ^ 0x5a };
                crate::kassert!(v == want, "memset(off {off}, len {len}): byte {i} is {v:#x}");
            }
        }
    }
    Ok(())
});
