//! The `dt` target: arbitrary bytes as a device-tree blob through [`dt::parse`] and
//! [`dt::parse_lenient`]. Never a panic (an out-of-bounds slice index is one; under the fuzzer
//! AddressSanitizer catches raw out-of-bounds reads too), always `Ok` or an `Err` whose message
//! starts with "device tree: ", and every `BootInfo` it returns is one the boot can use without
//! further checks: sorted, merged, non-overflowing RAM and reservations, a console whose range
//! does not wrap, a totalsize inside the buffer. Bytes past totalsize are never read (the same
//! blob cut at totalsize parses the same), and the bootargs go through the cmdline checks.
use alloc::string::ToString;
use bootcfg::dt::{self, BootInfo, DtError};

pub(crate) fn check_info(data: &[u8], i: &BootInfo) {
    assert!(
        i.dtb_size >= 40 && i.dtb_size <= data.len() as u64,
        "dtb_size {} for {} bytes",
        i.dtb_size,
        data.len()
    );
    for m in &i.memory {
        assert!(m.size > 0, "empty memory range {m:x?}");
        assert!(m.base.checked_add(m.size).is_some(), "memory range {m:x?} wraps");
    }
    for w in i.memory.windows(2) {
        assert!(w[0].end() < w[1].base, "memory not sorted and merged: {:x?}", i.memory);
    }
    for r in &i.reserved {
        assert!(r.size > 0, "empty reservation {r:x?}");
        assert!(r.base.checked_add(r.size).is_some(), "reservation {r:x?} wraps");
    }
    if let Some(c) = &i.console {
        assert!(
            c.base.checked_add(c.size).is_some(),
            "console range {:#x}+{:#x} wraps",
            c.base,
            c.size
        );
        assert!(c.path.starts_with('/'), "console path {:?}", c.path);
    }
    // The command line the boot would read from this tree.
    super::cmdline::check(&i.bootargs);
}

/// Checks one input. Panics on a finding.
pub fn check(data: &[u8]) {
    let strict = dt::parse(data);
    let lenient = dt::parse_lenient(data);
    for e in [&strict, &lenient].into_iter().filter_map(|r| r.as_ref().err()) {
        let msg = e.to_string();
        assert!(msg.starts_with("device tree: ") && msg.len() > 13, "error message {msg:?}");
    }
    match (&strict, &lenient) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "strict and lenient parses differ");
            assert!(
                !a.memory.is_empty() && a.console.is_some(),
                "strict parse without memory or console"
            );
        }
        (Ok(_), Err(e)) => panic!("strict parse accepted what the lenient one refused: {e}"),
        (Err(e), Ok(i)) => {
            // Only the two strict-only rules may separate them.
            match e {
                DtError::NoMemory => assert!(i.memory.is_empty()),
                DtError::NoConsole { .. } => assert!(i.console.is_none() && !i.memory.is_empty()),
                other => panic!("strict parse failed with {other} where the lenient one succeeded"),
            }
        }
        (Err(a), Err(b)) => {
            if !matches!(a, DtError::NoMemory | DtError::NoConsole { .. }) {
                assert_eq!(a, b, "strict and lenient parses fail differently");
            }
        }
    }
    if let Ok(i) = &lenient {
        check_info(data, i);
    }
    // Nothing past the header's totalsize is looked at.
    if data.len() >= 8 {
        let total = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) as usize;
        if (40..data.len()).contains(&total) {
            assert_eq!(
                dt::parse_lenient(&data[..total]),
                lenient,
                "bytes past totalsize {total} changed the result"
            );
        }
    }
}
