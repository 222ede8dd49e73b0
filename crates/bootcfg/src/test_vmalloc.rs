//! test_vmalloc's module parameters (Linux lib/test_vmalloc.c, newest version) from
//! `test_vmalloc.*` boot parameters, plus the suite mode this kernel adds.
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// Linux's tests in index order: bit i of run_test_mask selects TESTS[i].
pub const TESTS: [(&str, bool /* xfail */); 13] = [
    ("fix_size_alloc_test", false),
    ("full_fit_alloc_test", false),
    ("long_busy_list_alloc_test", false),
    ("random_size_alloc_test", false),
    ("fix_align_alloc_test", false),
    ("random_size_align_alloc_test", false),
    ("align_shift_alloc_test", true),
    ("pcpu_alloc_test", false),
    ("kvfree_rcu_1_arg_vmalloc_test", false),
    ("kvfree_rcu_2_arg_vmalloc_test", false),
    ("vm_map_ram_test", false),
    ("no_block_alloc_test", true),
    ("vrealloc_test", false),
];

pub fn test_index(name: &str) -> Option<usize> {
    TESTS.iter().position(|(n, _)| *n == name)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// The 19 rows of the seed patch's table, one after another in one boot.
    Seed,
    /// test_vmalloc.sh's stress preset: nr_threads = online CPUs, test_repeat_count 20.
    Stress,
}

/// One row of a suite: test, p = nr_pages, h = use_huge, l = test_loop_count (before scaling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub test: usize,
    pub nr_pages: u32,
    pub use_huge: bool,
    pub loops: u32,
}

/// The seed table's rows (seed-vfree-patch.txt), in its order.
pub fn seed_rows() -> Vec<Row> {
    let r = |name: &str, p, h, l| Row {
        test: test_index(name).unwrap(),
        nr_pages: p,
        use_huge: h,
        loops: l,
    };
    let mut v = Vec::new();
    v.push(r("fix_align_alloc_test", 1, false, 500_000));
    for (p, h, l) in [
        (1, false, 500_000),
        (4, false, 500_000),
        (16, false, 500_000),
        (16, true, 500_000),
        (64, false, 100_000),
        (64, true, 100_000),
        (256, false, 100_000),
        (256, true, 100_000),
        (512, false, 100_000),
        (512, true, 100_000),
    ] {
        v.push(r("fix_size_alloc_test", p, h, l));
    }
    for name in [
        "full_fit_alloc_test",
        "kvfree_rcu_1_arg_vmalloc_test",
        "kvfree_rcu_2_arg_vmalloc_test",
        "long_busy_list_alloc_test",
        "pcpu_alloc_test",
        "random_size_align_alloc_test",
        "random_size_alloc_test",
        "vm_map_ram_test",
    ] {
        v.push(r(name, 1, false, 500_000));
    }
    v
}

#[derive(Clone, Debug, PartialEq)]
pub struct TvParams {
    pub nr_threads: u32,
    pub sequential_test_order: bool,
    pub test_repeat_count: u32,
    pub test_loop_count: u32,
    pub nr_pages: u32,
    pub use_huge: bool,
    pub run_test_mask: u32,
    pub nr_pcpu_objects: u32,
    pub suite: Option<Suite>,
    /// Loop counts of suite rows are multiplied by loop_scale_ppm / 1e6 (at least 1).
    pub loop_scale_ppm: u32,
    /// Seed of the workers' random generators (fixed, so A/B runs see the same sizes).
    pub seed: u64,
    /// Suite mode: each row starts cold (caches drained, a leak line per row; the default) or
    /// from the previous row's state (`rows=warm`: one leak line for the whole suite).
    pub warm_rows: bool,
}

impl Default for TvParams {
    fn default() -> Self {
        // Linux's defaults (newest): nr_threads 0 -> 1 worker, run_test_mask 7.
        TvParams {
            nr_threads: 1,
            sequential_test_order: false,
            test_repeat_count: 1,
            test_loop_count: 1_000_000,
            nr_pages: 1,
            use_huge: false,
            run_test_mask: 7,
            nr_pcpu_objects: 35_000,
            suite: None,
            loop_scale_ppm: 1_000_000,
            seed: 0x5eed_1234_abcd_0001,
            warm_rows: false,
        }
    }
}

/// Parses "0.01", "1", "1e-2"-free decimal fractions into parts per million.
fn parse_scale(key: &str, s: &str) -> Result<u32, String> {
    let bad = || {
        format!("bad value \"{s}\" for test_vmalloc.{key}: expected a decimal number in (0, 1000]")
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 6
    {
        return Err(bad());
    }
    let i: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| bad())? };
    let mut f: u64 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
    for _ in frac.len()..6 {
        f *= 10;
    }
    let ppm = i.checked_mul(1_000_000).and_then(|v| v.checked_add(f)).ok_or_else(bad)?;
    if ppm == 0 || ppm > 1_000_000_000 {
        return Err(bad());
    }
    Ok(ppm as u32)
}

impl TvParams {
    /// Applies `test_vmalloc.*` pairs (names without the prefix) with Linux's clamping rules;
    /// unknown names and bad values are errors naming the parameter.
    pub fn parse(pairs: &[(String, Option<String>)], online_cpus: u32) -> Result<TvParams, String> {
        let mut p = TvParams::default();
        let mut threads_given = false;
        let mut repeat_given = false;
        for (k, v) in pairs {
            let full = format!("test_vmalloc.{k}");
            let int = |v: &Option<String>| -> Result<i64, String> {
                crate::params::parse_int(&full, v.as_deref()).map_err(|e| e.to_string())
            };
            let boolean = |v: &Option<String>| -> Result<bool, String> {
                crate::params::parse_bool(&full, v.as_deref()).map_err(|e| e.to_string())
            };
            let in_u32 = |x: i64| -> Result<u32, String> {
                u32::try_from(x).map_err(|_| format!("bad value \"{x}\" for {full}: out of range"))
            };
            match k.as_str() {
                // Linux clamps nr_threads to [1, 65535] and <= 0 counts to 1.
                "nr_threads" => {
                    p.nr_threads = int(v)?.clamp(1, 65535) as u32;
                    threads_given = true;
                }
                "sequential_test_order" => p.sequential_test_order = boolean(v)?,
                "test_repeat_count" => {
                    p.test_repeat_count = int(v)?.max(1).min(u32::MAX as i64) as u32;
                    repeat_given = true;
                }
                "test_loop_count" => p.test_loop_count = int(v)?.max(1).min(u32::MAX as i64) as u32,
                "nr_pages" => p.nr_pages = in_u32(int(v)?)?.max(1),
                "use_huge" => p.use_huge = boolean(v)?,
                "run_test_mask" => p.run_test_mask = in_u32(int(v)?)?,
                "nr_pcpu_objects" => p.nr_pcpu_objects = in_u32(int(v)?)?.max(1),
                "suite" => {
                    p.suite = Some(match v.as_deref() {
                        Some("seed") => Suite::Seed,
                        Some("stress") => Suite::Stress,
                        other => {
                            return Err(format!(
                                "bad value \"{}\" for {full}: expected seed or stress",
                                other.unwrap_or("")
                            ))
                        }
                    })
                }
                "rows" => {
                    p.warm_rows = match v.as_deref() {
                        Some("cold") => false,
                        Some("warm") => true,
                        other => {
                            return Err(format!(
                                "bad value \"{}\" for {full}: expected cold or warm",
                                other.unwrap_or("")
                            ))
                        }
                    }
                }
                "loop_scale" => p.loop_scale_ppm = parse_scale(k, v.as_deref().unwrap_or(""))?,
                "seed" => {
                    p.seed =
                        crate::params::parse_uint(&full, v.as_deref()).map_err(|e| e.to_string())?
                }
                _ => return Err(format!("unknown boot parameter {full}")),
            }
        }
        if p.suite == Some(Suite::Stress) {
            if !threads_given {
                p.nr_threads = online_cpus.max(1);
            }
            if !repeat_given {
                p.test_repeat_count = 20;
            }
            p.run_test_mask = (1 << TESTS.len()) - 1;
        }
        if p.run_test_mask & ((1 << TESTS.len()) - 1) == 0 {
            return Err(format!(
                "test_vmalloc.run_test_mask={:#x} selects no test (bits 0..{})",
                p.run_test_mask,
                TESTS.len() - 1
            ));
        }
        Ok(p)
    }

    pub fn scaled(&self, loops: u32) -> u32 {
        ((loops as u64 * self.loop_scale_ppm as u64) / 1_000_000).max(1) as u32
    }

    /// The header line's parameter part.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "nr_threads={} sequential_test_order={} test_repeat_count={} test_loop_count={} nr_pages={} use_huge={} run_test_mask={} nr_pcpu_objects={}",
            self.nr_threads, self.sequential_test_order as u8, self.test_repeat_count, self.test_loop_count,
            self.nr_pages, self.use_huge as u8, self.run_test_mask, self.nr_pcpu_objects
        );
        if let Some(suite) = self.suite {
            s += &format!(
                " suite={} loop_scale={}.{:06}",
                if suite == Suite::Seed { "seed" } else { "stress" },
                self.loop_scale_ppm / 1_000_000,
                self.loop_scale_ppm % 1_000_000
            );
            if suite == Suite::Seed {
                s += if self.warm_rows { " rows=warm" } else { " rows=cold" };
            }
        }
        s += &format!(" seed={:#x}", self.seed);
        s.to_string()
    }
}

/// Linux's shuffle_array(): for i = n-1 down to 1, j uniform in [0, i) (strictly below i).
pub fn shuffle(order: &mut [usize], rng: &mut Rng) {
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u32) as usize;
        order.swap(i, j);
    }
}

/// xorshift64*: the workers' get_random_u32(), seeded per worker so runs repeat exactly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
    /// Uniform in [0, n) (Linux: get_random_u32_below).
    pub fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        ((self.next_u32() as u64 * n as u64) >> 32) as u32
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u32() as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        s.iter().map(|(k, v)| (k.to_string(), v.map(|x| x.to_string()))).collect()
    }

    #[test]
    fn defaults_are_linux() {
        let p = TvParams::parse(&[], 4).unwrap();
        assert_eq!(
            (p.nr_threads, p.test_loop_count, p.run_test_mask, p.nr_pcpu_objects),
            (1, 1_000_000, 7, 35_000)
        );
    }

    #[test]
    fn clamping_like_linux() {
        let p = TvParams::parse(
            &kv(&[
                ("nr_threads", Some("0")),
                ("test_repeat_count", Some("-3")),
                ("nr_pages", Some("0")),
            ]),
            4,
        )
        .unwrap();
        assert_eq!((p.nr_threads, p.test_repeat_count, p.nr_pages), (1, 1, 1));
    }

    #[test]
    fn errors_name_the_parameter() {
        let e = TvParams::parse(&kv(&[("nr_threads", Some("four"))]), 4).unwrap_err();
        assert!(e.contains("test_vmalloc.nr_threads"), "{e}");
        let e = TvParams::parse(&kv(&[("frob", Some("1"))]), 4).unwrap_err();
        assert_eq!(e, "unknown boot parameter test_vmalloc.frob");
        let e = TvParams::parse(&kv(&[("suite", Some("fast"))]), 4).unwrap_err();
        assert!(e.contains("test_vmalloc.suite"), "{e}");
        let e = TvParams::parse(&kv(&[("rows", Some("hot"))]), 4).unwrap_err();
        assert!(e.contains("test_vmalloc.rows"), "{e}");
        assert!(TvParams::parse(&kv(&[("rows", Some("warm"))]), 4).unwrap().warm_rows);
        let e = TvParams::parse(&kv(&[("loop_scale", Some("0"))]), 4).unwrap_err();
        assert!(e.contains("loop_scale"), "{e}");
        assert!(TvParams::parse(&kv(&[("run_test_mask", Some("0"))]), 4).is_err());
    }

    #[test]
    fn scale_and_presets() {
        let p = TvParams::parse(&kv(&[("suite", Some("seed")), ("loop_scale", Some("0.01"))]), 4)
            .unwrap();
        assert_eq!(p.loop_scale_ppm, 10_000);
        assert_eq!(p.scaled(500_000), 5_000);
        assert_eq!(p.scaled(10), 1);
        let p = TvParams::parse(&kv(&[("suite", Some("stress"))]), 4).unwrap();
        assert_eq!((p.nr_threads, p.test_repeat_count, p.run_test_mask), (4, 20, 8191));
    }

    #[test]
    fn seed_rows_match_the_table() {
        let rows = seed_rows();
        assert_eq!(rows.len(), 19);
        assert_eq!(rows.iter().filter(|r| r.test == 0).count(), 10);
        assert!(rows
            .iter()
            .all(|r| r.test == 0 || (r.nr_pages == 1 && !r.use_huge && r.loops == 500_000)));
    }

    #[test]
    fn shuffle_is_a_permutation_with_j_below_i() {
        let mut rng = Rng::new(42);
        let mut v: Vec<usize> = (0..13).collect();
        shuffle(&mut v, &mut rng);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..13).collect::<Vec<_>>());
        // Sattolo's variant (j < i) never leaves an element in place.
        assert!(v.iter().enumerate().all(|(i, &x)| i != x));
    }
}
