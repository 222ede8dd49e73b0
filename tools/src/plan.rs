//! Benchmark plans (TOML) and their expansion into boot cells.

use crate::parse::{self, RowSpec};
use crate::stats::PctOf;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Smp {
    One(u32),
    Many(Vec<u32>),
}

impl Default for Smp {
    fn default() -> Self {
        Smp::One(1)
    }
}

impl Smp {
    pub fn values(&self) -> Vec<u32> {
        match self {
            Smp::One(n) => vec![*n],
            Smp::Many(v) => v.clone(),
        }
    }
}

fn d_kernel() -> String {
    "target/kernel8.img".into()
}
fn d_machine() -> String {
    "virt".into()
}
fn d_cpu() -> String {
    "cortex-a72".into()
}
fn d_mem() -> String {
    "2G".into()
}
fn d_timeout() -> u64 {
    300
}
fn d_runs() -> u32 {
    1
}
fn d_dtb() -> String {
    ".cache/bcm2711-rpi-4-b.dtb".into()
}

/// A plan file. Unknown keys are an error.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    /// Kernel image (relative paths: to the current directory). `--kernel` overrides.
    #[serde(default = "d_kernel")]
    pub kernel: String,
    /// "virt" (main path) or "raspi4b".
    #[serde(default = "d_machine")]
    pub machine: String,
    #[serde(default = "d_cpu")]
    pub cpu: String,
    /// One value, or a list: each value is its own set of cells (`{smp}` in args is replaced; `{run}` is the run number, 1..=runs).
    #[serde(default)]
    pub smp: Smp,
    #[serde(default = "d_mem")]
    pub mem: String,
    /// Adds `-icount shift=0`.
    #[serde(default)]
    pub icount: bool,
    #[serde(default = "d_timeout")]
    pub timeout_s: u64,
    #[serde(default = "d_runs")]
    pub runs: u32,
    /// Kernel args for every boot.
    #[serde(default)]
    pub common_args: String,
    /// Suite mode: adds `test_vmalloc.suite=<suite>` (+ `test_vmalloc.loop_scale=<x>`); one boot
    /// per run and variant; the kernel prints a `row` line before each row. `rows` (if given)
    /// are then the rows that must appear.
    #[serde(default)]
    pub suite: Option<String>,
    /// Loop scale: suite mode passes it to the kernel; row mode multiplies each row's `l`
    /// (the row keeps its nominal label).
    #[serde(default)]
    pub loop_scale: Option<f64>,
    /// Rows `"<test> p:<n> h:<0|1> l:<loops>"`. Without `suite` each row is its own boot.
    #[serde(default)]
    pub rows: Vec<String>,
    /// Variant name -> kernel args, in file order; the first is the base unless `base` is set.
    pub variants: toml::Table,
    #[serde(default)]
    pub base: Option<String>,
    /// Device tree for raspi4b.
    #[serde(default = "d_dtb")]
    pub dtb: String,
    /// Extra QEMU arguments (split on blanks).
    #[serde(default)]
    pub qemu_args: String,
    /// % change formula for the report (default "variant", the seed's).
    #[serde(default)]
    pub pct_of: PctOf,
    /// Minimum effect (% of the base mean) for (I)/(R); default
    /// `stats::DEFAULT_MIN_EFFECT`; `--min-effect` overrides.
    #[serde(default)]
    pub min_effect: Option<f64>,
}

impl Plan {
    pub fn load(path: &Path) -> Result<Plan> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Plan::parse(&text).with_context(|| format!("plan {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Plan> {
        let p: Plan = toml::from_str(text)?;
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<()> {
        if self.variants.is_empty() {
            bail!("[variants] is empty");
        }
        for (k, v) in &self.variants {
            if !v.is_str() {
                bail!("variant {k:?}: value must be a string of kernel args");
            }
            if k.is_empty() || k.contains('/') || k.contains('=') {
                bail!("bad variant name {k:?}");
            }
        }
        if let Some(b) = &self.base {
            if !self.variants.contains_key(b) {
                bail!("base {b:?} is not a variant");
            }
        }
        if self.runs == 0 {
            bail!("runs must be >= 1");
        }
        if self.smp.values().is_empty() || self.smp.values().contains(&0) {
            bail!("smp must be >= 1");
        }
        if let Some(s) = self.loop_scale {
            if s.is_nan() || s <= 0.0 {
                bail!("loop_scale must be > 0");
            }
        }
        if let Some(m) = self.min_effect {
            crate::compare::check_min_effect(m)?;
        }
        if !matches!(self.machine.as_str(), "virt" | "raspi4b") {
            bail!("machine must be \"virt\" or \"raspi4b\", got {:?}", self.machine);
        }
        for r in self.row_specs()? {
            if parse::test_index(&r.name).is_none() {
                bail!("row {r}: unknown test name (known: {})", parse::TESTS.join(", "));
            }
        }
        Ok(())
    }

    pub fn row_specs(&self) -> Result<Vec<RowSpec>> {
        self.rows
            .iter()
            .map(|r| RowSpec::parse(r.trim()).map_err(|e| anyhow::anyhow!("row {r:?}: {e}")))
            .collect()
    }

    /// Variants in order, base first.
    pub fn variant_list(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .variants
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect();
        if let Some(b) = &self.base {
            let i = v.iter().position(|(k, _)| k == b).unwrap();
            let e = v.remove(i);
            v.insert(0, e);
        }
        v
    }
}

/// What a cell's log must contain beyond "parses".
#[derive(Debug, Clone, Serialize, Default)]
pub struct Expect {
    /// Rows whose `row` line (suite mode) must be present.
    pub rows: Vec<RowSpec>,
    /// Tests that must have a Summary line (from run_test_mask in the args).
    pub tests: Vec<String>,
    /// Number of distinct workers expected (from nr_threads in the args).
    pub workers: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub variant: String,
    /// Directory name of the cell set: `suite-<name>`, a row slug, or `all` (+ `-smp<N>`).
    pub set: String,
    pub row: Option<RowSpec>,
    pub smp: u32,
    pub run: u32,
    pub append: String,
    /// Tag for the report's row keys (`smp:N` when the plan has several smp values).
    pub tag: String,
    pub expect: Expect,
}

impl Cell {
    pub fn rel_log(&self) -> String {
        format!("{}/{}/run{}.log", self.variant, self.set, self.run)
    }
}

fn join_args(parts: &[String]) -> String {
    parts.iter().flat_map(|p| p.split_whitespace()).collect::<Vec<_>>().join(" ")
}

/// Last `key=value` for `key` in a blank-separated argument string.
pub fn arg_value<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    args.split_whitespace().rev().find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

fn parse_mask(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// Expands a plan into cells, in execution order: run r of every variant before run r+1
/// (variants interleaved so that drift hits all of them alike).
pub fn cells(plan: &Plan, runs: u32) -> Result<Vec<Cell>> {
    let rows = plan.row_specs()?;
    let smps = plan.smp.values();
    let multi = smps.len() > 1;
    let variants = plan.variant_list();
    // (set name, row, row args)
    let mut sets: Vec<(String, Option<RowSpec>, String)> = vec![];
    if let Some(suite) = &plan.suite {
        let mut a = format!("test_vmalloc.suite={suite}");
        if let Some(s) = plan.loop_scale {
            a.push_str(&format!(" test_vmalloc.loop_scale={s}"));
        }
        sets.push((format!("suite-{suite}"), None, a));
    } else if !rows.is_empty() {
        for r in &rows {
            let idx = parse::test_index(&r.name).unwrap();
            let l = match plan.loop_scale {
                Some(s) => ((r.l as f64 * s).round() as u64).max(1),
                None => r.l,
            };
            let a = format!(
                "test_vmalloc.run_test_mask={} test_vmalloc.nr_pages={} test_vmalloc.use_huge={} test_vmalloc.test_loop_count={}",
                1u64 << idx,
                r.p,
                r.h,
                l
            );
            sets.push((r.slug(), Some(r.clone()), a));
        }
    } else {
        sets.push(("all".into(), None, String::new()));
    }
    let mut out = vec![];
    for run in 1..=runs {
        for &smp in &smps {
            for (set, row, row_args) in &sets {
                for (vname, vargs) in &variants {
                    let append =
                        join_args(&[plan.common_args.clone(), vargs.clone(), row_args.clone()])
                            .replace("{smp}", &smp.to_string())
                            .replace("{run}", &run.to_string());
                    let mut expect = Expect::default();
                    if plan.suite.is_some() {
                        expect.rows = rows.clone();
                    } else if row.is_none() {
                        if let Some(m) = arg_value(&append, "test_vmalloc.run_test_mask") {
                            let m = parse_mask(m)
                                .with_context(|| format!("bad run_test_mask {m:?}"))?;
                            expect.tests = parse::TESTS
                                .iter()
                                .enumerate()
                                .filter(|(i, _)| m & (1 << i) != 0)
                                .map(|(_, t)| t.to_string())
                                .collect();
                        }
                    }
                    if let Some(n) = arg_value(&append, "test_vmalloc.nr_threads") {
                        let n: u64 = n.parse().with_context(|| format!("bad nr_threads {n:?}"))?;
                        expect.workers = Some(n.max(1));
                    }
                    out.push(Cell {
                        variant: vname.clone(),
                        set: if multi { format!("{set}-smp{smp}") } else { set.clone() },
                        row: row.clone(),
                        smp,
                        run,
                        append,
                        tag: if multi { format!("smp:{smp}") } else { String::new() },
                        expect,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// QEMU virt's GICv2 serves at most 8 CPUs; above that the machine needs GICv3.
pub const GICV2_MAX_CPUS: u32 = 8;

/// `-M` value for QEMU virt with `smp` CPUs: `virt`, or `virt,gic-version=3` above 8 CPUs.
pub fn virt_machine(smp: u32) -> &'static str {
    if smp > GICV2_MAX_CPUS {
        "virt,gic-version=3"
    } else {
        "virt"
    }
}

/// QEMU arguments for one cell.
pub fn qemu_args(plan: &Plan, kernel: &str, cell: &Cell) -> Vec<String> {
    let mut a: Vec<String> = vec![];
    let mut push = |s: &str| a.push(s.to_string());
    if plan.machine == "raspi4b" {
        for s in ["-M", "raspi4b", "-m", &plan.mem, "-dtb", &plan.dtb] {
            push(s);
        }
        for s in ["-serial", "null", "-serial", "stdio", "-display", "none", "-monitor", "none"] {
            push(s);
        }
    } else {
        let smp = cell.smp.to_string();
        let m = virt_machine(cell.smp);
        for s in ["-M", m, "-cpu", &plan.cpu, "-smp", &smp, "-m", &plan.mem, "-nographic"] {
            push(s);
        }
    }
    for s in ["-no-reboot", "-semihosting", "-kernel", kernel, "-append", &cell.append] {
        push(s);
    }
    if plan.icount {
        push("-icount");
        push("shift=0");
    }
    for s in plan.qemu_args.split_whitespace() {
        push(s);
    }
    a
}

/// Quotes an argument for display in a shell command line.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=./:,+@%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
