//! In-kernel tests: a registry in the `.ktest` linker section (stable Rust, like Asterinas'
//! ktest) and a runner printing one line per test and the closing `N passed, N failed`.
//!
//! A test returns `Err(message)` to fail; a panic inside a test is reported by the panic handler
//! (it ends the run, there is no unwinding). Tests run on the boot CPU unless they start work on
//! other CPUs themselves.
use alloc::string::String;

/// One registered test.
#[repr(C)]
pub struct KTest {
    pub name: &'static str,
    pub func: fn() -> Result<(), String>,
}

/// Registers `fn $name() -> Result<(), String>` as an in-kernel test (built for the target only).
#[macro_export]
macro_rules! ktest {
    ($name:ident, $body:block) => {
        #[cfg(target_os = "none")]
        fn $name() -> core::result::Result<(), alloc::string::String> $body
        #[cfg(target_os = "none")]
        const _: () = {
            #[used]
            #[unsafe(link_section = ".ktest")]
            static ENTRY: $crate::ktest::KTest = $crate::ktest::KTest {
                name: concat!(module_path!(), "::", stringify!($name)),
                func: $name,
            };
        };
    };
}

/// Fails the enclosing test with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! kassert {
    ($cond:expr) => {
        if !$cond {
            return Err(alloc::format!("assertion failed: {} ({}:{})", stringify!($cond), file!(), line!()));
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(alloc::format!("{} ({}:{})", format_args!($($arg)+), file!(), line!()));
        }
    };
}

#[macro_export]
macro_rules! kassert_eq {
    ($a:expr, $b:expr) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(alloc::format!(
                "{} == {} failed: {:?} != {:?} ({}:{})",
                stringify!($a),
                stringify!($b),
                a,
                b,
                file!(),
                line!()
            ));
        }
    }};
}

#[cfg(target_os = "none")]
pub fn registry() -> &'static [KTest] {
    // Linker symbols: only their addresses are used (never passed to or from C).
    #[allow(improper_ctypes)]
    unsafe extern "C" {
        static __ktest_start: KTest;
        static __ktest_end: KTest;
    }
    // SAFETY: the linker script brackets .ktest with these symbols; every entry between them is a
    // KTest placed by the ktest! macro (#[used] statics of that type), so the range is a valid
    // slice for the whole run.
    unsafe {
        let start = &raw const __ktest_start;
        let end = &raw const __ktest_end;
        let n = (end as usize - start as usize) / core::mem::size_of::<KTest>();
        core::slice::from_raw_parts(start, n)
    }
}

/// Runs every registered test whose name contains `filter` (comma-separated alternatives; all
/// when empty). Returns (passed, failed).
#[cfg(target_os = "none")]
pub fn run(filter: &str) -> (usize, usize) {
    let tests: alloc::vec::Vec<&KTest> = registry()
        .iter()
        .filter(|t| {
            filter.is_empty() || filter.split(',').any(|f| !f.is_empty() && t.name.contains(f))
        })
        .collect();
    crate::println!("running {} tests", tests.len());
    let (mut passed, mut failed) = (0, 0);
    for t in tests {
        crate::print!("test {} ... ", t.name);
        let start = crate::arch::cycles();
        match (t.func)() {
            Ok(()) => {
                passed += 1;
                let us = crate::arch::cycles_to_us(crate::arch::cycles() - start);
                crate::println!("ok ({} us)", us);
            }
            Err(msg) => {
                failed += 1;
                crate::println!("FAILED\n    {}", msg);
            }
        }
    }
    (passed, failed)
}
