//! Boot switches from /chosen/bootargs, checked strictly in the namespaces this kernel owns.
//!
//! Like Linux, parameters of other subsystems (`console=`, `root=`, `8250.nr_uarts=` that the Pi
//! firmware adds) are not errors: they are listed as ignored. Inside our namespaces (`mm.*`,
//! `test_vmalloc.*`, `ktest*`, `maxcpus`, `hz`, `nohz`, `printk.time`) an unknown name or a bad value is an error naming it,
//! and the kernel exits non-zero.
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// vfree's page release (`mm.vfree`): the seed patch (`Bulk`: free_pages_bulk over the
/// vm->pages array, high-order chunks through __free_contig_range) or the baseline (`Single`:
/// one __free_page per page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VfreeMode {
    Bulk,
    Single,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub vfree: VfreeMode,
    /// `mm.vmalloc_large_order`: vmalloc asks the buddy for the largest orders first (Linux
    /// after a06157804399) instead of order-0 bulk allocation.
    pub vmalloc_large_order: bool,
    /// `mm.pcp=off` disables the per-CPU page lists (everything through the zone lock).
    pub pcp: bool,
    /// `maxcpus=N`.
    pub maxcpus: Option<usize>,
    /// `hz=N`: tick frequency (Linux's CONFIG_HZ, a build option there; 250 as in arm64's
    /// defconfig). `hz=0` runs without a tick.
    pub hz: u32,
    /// `nohz=on|off`: idle CPUs stop their tick (Linux's boot parameter of the same name,
    /// CONFIG_NO_HZ_IDLE; on by default as there).
    pub nohz: bool,
    /// `printk.time=0|1`: console lines start with `[seconds.micros] ` (Linux's parameter;
    /// on by default, as CONFIG_PRINTK_TIME).
    pub printk_time: bool,
    /// `ktest` (all) or `ktest=FILTER`: run the in-kernel tests instead of the benchmark.
    pub ktest: Option<String>,
    /// `ktest.fault=null|stack|kfree`: a deliberate NULL read, unbounded recursion or double
    /// kfree after boot (checks the exception report, the overflow stack, the double-free report).
    pub ktest_fault: Option<String>,
    /// `bench=pagealloc`: the page-allocator micro-benchmark instead of test_vmalloc.
    pub bench: Option<String>,
    /// `test_vmalloc.*` pairs, validated by the benchmark's own parser.
    pub test_vmalloc: Vec<(String, Option<String>)>,
    /// Parameters of other subsystems, ignored.
    pub ignored: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vfree: VfreeMode::Bulk,
            vmalloc_large_order: true,
            pcp: true,
            maxcpus: None,
            hz: 250,
            nohz: true,
            printk_time: true,
            ktest: None,
            ktest_fault: None,
            bench: None,
            test_vmalloc: Vec::new(),
            ignored: Vec::new(),
        }
    }
}

fn need<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str, String> {
    v.ok_or_else(|| format!("boot parameter {key} needs a value"))
}

fn on_off(key: &str, v: Option<&str>) -> Result<bool, String> {
    match need(key, v)? {
        "on" | "1" | "y" | "yes" | "true" => Ok(true),
        "off" | "0" | "n" | "no" | "false" => Ok(false),
        other => Err(format!("bad value \"{other}\" for boot parameter {key}: expected on or off")),
    }
}

impl Config {
    /// Parses bootargs. Errors name the offending parameter.
    pub fn parse(bootargs: &str) -> Result<Config, String> {
        let mut c = Config::default();
        for p in crate::params::split(bootargs) {
            let key = p.key.replace('-', "_");
            let v = p.value;
            match key.as_str() {
                "mm.vfree" => {
                    c.vfree = match need(&key, v)? {
                        "bulk" => VfreeMode::Bulk,
                        "single" => VfreeMode::Single,
                        o => {
                            return Err(format!(
                        "bad value \"{o}\" for boot parameter mm.vfree: expected bulk or single"
                    ))
                        }
                    }
                }
                "mm.vmalloc_large_order" => c.vmalloc_large_order = on_off(&key, v)?,
                "mm.pcp" => c.pcp = on_off(&key, v)?,
                "maxcpus" => {
                    let s = need(&key, v)?;
                    let n: usize = s.parse().map_err(|_| {
                        format!("bad value \"{s}\" for boot parameter maxcpus: not a number")
                    })?;
                    if n == 0 {
                        return Err(
                            "bad value \"0\" for boot parameter maxcpus: at least 1".to_string()
                        );
                    }
                    c.maxcpus = Some(n);
                }
                "hz" => {
                    let s = need(&key, v)?;
                    c.hz = match s.parse::<u32>() {
                        Ok(n) if n <= 10_000 => n,
                        _ => {
                            return Err(format!(
                                "bad value \"{s}\" for boot parameter hz: expected 0..=10000"
                            ))
                        }
                    };
                }
                "nohz" => c.nohz = on_off(&key, v)?,
                "printk.time" => c.printk_time = on_off(&key, v)?,
                "ktest" => c.ktest = Some(v.unwrap_or("").to_string()),
                "ktest.fault" => {
                    let s = need(&key, v)?;
                    if s != "null" && s != "stack" && s != "kfree" {
                        return Err(format!("bad value \"{s}\" for boot parameter ktest.fault: expected null, stack or kfree"));
                    }
                    c.ktest_fault = Some(s.to_string());
                }
                "bench" => {
                    let s = need(&key, v)?;
                    if s != "pagealloc" {
                        return Err(format!(
                            "bad value \"{s}\" for boot parameter bench: expected pagealloc"
                        ));
                    }
                    c.bench = Some(s.to_string());
                }
                k if k.starts_with("test_vmalloc.") => {
                    c.test_vmalloc
                        .push((k["test_vmalloc.".len()..].to_string(), v.map(|s| s.to_string())));
                }
                k if k.starts_with("mm.")
                    || k.starts_with("ktest.")
                    || k.starts_with("kernel.")
                    || k.starts_with("bench.") =>
                {
                    return Err(format!("unknown boot parameter {k}"));
                }
                k => c.ignored.push(k.to_string()),
            }
        }
        Ok(c)
    }

    /// Every `mm.*` switch in effect, for the banner and the benchmark header.
    pub fn mm_switches(&self) -> String {
        format!(
            "mm.vfree={} mm.vmalloc_large_order={} mm.pcp={}",
            match self.vfree {
                VfreeMode::Bulk => "bulk",
                VfreeMode::Single => "single",
            },
            if self.vmalloc_large_order { "on" } else { "off" },
            if self.pcp { "on" } else { "off" }
        )
    }
}

/// What the boot does with the raw bytes of /chosen/bootargs: a line that is not UTF-8 or holds
/// control characters (other than the whitespace Linux's `next_arg()` splits on) is refused
/// whole, the message naming the byte offset and showing the bytes around it; otherwise it is
/// parsed by [`Config::parse`]. Every error is bad input (the kernel exits with status 2).
pub fn parse_bootargs(raw: &[u8]) -> Result<(&str, Config), String> {
    let s = crate::params::cmdline(raw)
        .map_err(|e| format!("{e}: {}", crate::params::excerpt(raw, e.offset())))?;
    Ok((s, Config::parse(s)?))
}

static CONFIG: spin::Once<Config> = spin::Once::new();

pub fn set(c: Config) {
    CONFIG.call_once(|| c);
}

/// The boot configuration (defaults before `set`).
pub fn get() -> &'static Config {
    static DEFAULT: spin::LazyLock<Config> = spin::LazyLock::new(Config::default);
    CONFIG.get().unwrap_or(&DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_switches() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.vfree, VfreeMode::Bulk);
        assert!(c.vmalloc_large_order);
        let c =
            Config::parse("mm.vfree=single mm.vmalloc-large-order=off maxcpus=2 ktest").unwrap();
        assert_eq!(c.vfree, VfreeMode::Single);
        assert!(!c.vmalloc_large_order);
        assert_eq!(c.maxcpus, Some(2));
        assert_eq!((c.hz, c.nohz), (250, true));
        assert_eq!(c.ktest.as_deref(), Some(""));
        assert_eq!(c.mm_switches(), "mm.vfree=single mm.vmalloc_large_order=off mm.pcp=on");
        let c = Config::parse("hz=1000 nohz=off").unwrap();
        assert_eq!((c.hz, c.nohz), (1000, false));
        assert!(Config::parse("hz=fast").unwrap_err().contains("hz"));
        assert!(Config::parse("hz=20000").is_err());
        assert!(Config::parse("nohz=maybe").unwrap_err().contains("nohz"));
        assert!(!Config::parse("printk.time=0").unwrap().printk_time);
        assert!(Config::parse("printk.time=y").unwrap().printk_time);
        assert!(Config::parse("printk.time=x").unwrap_err().contains("printk.time"));
    }

    #[test]
    fn foreign_parameters_are_ignored() {
        let c = Config::parse("console=ttyS0,115200 8250.nr_uarts=1 root=/dev/mmcblk0p2 rootwait")
            .unwrap();
        assert_eq!(c.ignored, ["console", "8250.nr_uarts", "root", "rootwait"]);
    }

    #[test]
    fn errors_name_the_parameter() {
        let e = Config::parse("mm.vfree=fast").unwrap_err();
        assert!(e.contains("mm.vfree") && e.contains("fast"), "{e}");
        let e = Config::parse("mm.frobnicate=1").unwrap_err();
        assert!(e.contains("unknown boot parameter mm.frobnicate"), "{e}");
        let e = Config::parse("maxcpus=two").unwrap_err();
        assert!(e.contains("maxcpus"), "{e}");
        assert!(Config::parse("maxcpus=0").is_err());
        assert!(Config::parse("mm.vfree").is_err());
    }

    #[test]
    fn bootargs_bytes_are_checked_before_parsing() {
        let (s, c) = parse_bootargs(b"mm.vfree=single\ttest_vmalloc.nr_threads=2\r\n").unwrap();
        assert_eq!(s, "mm.vfree=single\ttest_vmalloc.nr_threads=2\r\n");
        assert_eq!((c.vfree, c.test_vmalloc.len()), (VfreeMode::Single, 1));
        assert_eq!(parse_bootargs(b"").unwrap().1, Config::default());
        // Not UTF-8: refused whole, with the offset and the bytes around it; the valid
        // mm.vfree=single before it is not applied either.
        let e = parse_bootargs(b"mm.vfree=single test_vmalloc.nr_threads=1 \xff").unwrap_err();
        assert_eq!(
            e,
            "boot command line (/chosen/bootargs) refused: byte 0xff at offset 42 is not valid UTF-8; no \
             parameter of it was applied: \"...st_vmalloc.nr_threads=1 [\\xff]\""
        );
        let e = parse_bootargs(b"mm.vfree=single\x00mm.pcp=off").unwrap_err();
        assert!(
            e.contains("control character U+0000 at byte offset 15")
                && e.ends_with(r#""mm.vfree=single[\x00]mm.pcp=off""#),
            "{e}"
        );
        let e = parse_bootargs(b"\x1b[2Jktest").unwrap_err();
        assert!(e.contains("U+001B at byte offset 0"), "{e}");
        // A good line with a bad parameter still fails the usual way.
        assert_eq!(parse_bootargs(b"mm.bogus=1").unwrap_err(), "unknown boot parameter mm.bogus");
    }

    #[test]
    fn test_vmalloc_params_pass_through() {
        let c =
            Config::parse("test_vmalloc.nr_threads=4 test_vmalloc.sequential_test_order").unwrap();
        assert_eq!(c.test_vmalloc[0], ("nr_threads".to_string(), Some("4".to_string())));
        assert_eq!(c.test_vmalloc[1], ("sequential_test_order".to_string(), None));
    }
}
