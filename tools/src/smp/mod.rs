//! `tvtool smp`: the SMP scaling benchmark (`make bench-smp`).
//!
//! Two series of wall-clock boots, one QEMU at a time, runs interleaved (run r of every
//! configuration before run r+1; run r uses `{run}` = r, e.g. as the random seed):
//!
//! - `workers`: `nr_threads = N` on `-smp SMP` for N = 1, 2, 4, ... up to SMP (and SMP itself
//!   when it is not a power of two): the per-worker time of each test relative to one worker.
//! - `idle`: `nr_threads = 1` on `-smp N` for the same N: one worker's time relative to
//!   `-smp 1`, i.e. what idle CPUs cost.
//!
//! A cell (configuration, run) is the median over the boot's workers of the test's Summary
//! `avg` (the Linux reference's "Cell = median over workers (min..max), per run"). A ratio is
//! the geometric mean over runs of cell(N, r) / cell(1, r) (same run r: paired), with the 95%
//! Student t interval of the log ratios, exponentiated.

pub mod anchor;
pub mod chart;
pub mod exec;
pub mod report;

use crate::parse;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

fn d_kernel() -> String {
    "target/kernel8.img".into()
}
fn d_cpu() -> String {
    "cortex-a72".into()
}
fn d_mem() -> String {
    "2G".into()
}
fn d_smp() -> u32 {
    4
}
fn d_runs() -> u32 {
    5
}
fn d_loops() -> u64 {
    20_000
}
fn d_one() -> f64 {
    1.0
}
fn d_timeout() -> u64 {
    900
}

/// Most CPUs the kernel brings up (NR_CPUS).
pub const MAX_SMP: u32 = 64;

/// An SMP scaling plan (`tools/plans/smp-scaling.toml`). Unknown keys are an error.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmpPlan {
    pub name: String,
    #[serde(default = "d_kernel")]
    pub kernel: String,
    #[serde(default = "d_cpu")]
    pub cpu: String,
    #[serde(default = "d_mem")]
    pub mem: String,
    /// `-M` value of every boot; None: `virt`, or `virt,gic-version=3` for every boot when
    /// `smp` is above 8 (GICv2 serves at most 8 CPUs).
    #[serde(default)]
    pub machine: Option<String>,
    /// Largest -smp (`--smp` overrides): N = 1, 2, 4, ... up to it.
    #[serde(default = "d_smp")]
    pub smp: u32,
    /// Boots per configuration (`--runs` overrides).
    #[serde(default = "d_runs")]
    pub runs: u32,
    /// test_loop_count before scaling (the Linux reference used 20000).
    #[serde(default = "d_loops")]
    pub loops: u64,
    /// test_loop_count = round(loops x loop_scale), at least 1 (`--loop-scale` overrides).
    #[serde(default = "d_one")]
    pub loop_scale: f64,
    /// Per boot; exceeded = killed, cell failed.
    #[serde(default = "d_timeout")]
    pub timeout_s: u64,
    /// Kernel args of every boot; `{run}` is the run number (1..=runs).
    #[serde(default)]
    pub common_args: String,
    /// Tests of the `workers` series (run in one boot, run_test_mask of them).
    pub workers_tests: Vec<String>,
    /// Tests of the `idle` series.
    pub idle_tests: Vec<String>,
    /// Linux reference table (results-smp-scaling-16vcpu.txt format); missing file = no column.
    #[serde(default)]
    pub anchor: Option<String>,
    /// Extra QEMU arguments (split on blanks).
    #[serde(default)]
    pub qemu_args: String,
}

impl SmpPlan {
    pub fn parse(text: &str) -> Result<SmpPlan> {
        let p: SmpPlan = toml::from_str(text)?;
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<()> {
        if self.smp == 0 || self.smp > MAX_SMP {
            bail!("smp must be 1..={MAX_SMP}, got {}", self.smp);
        }
        if self.runs == 0 {
            bail!("runs must be >= 1");
        }
        if self.loops == 0 {
            bail!("loops must be >= 1");
        }
        if !self.loop_scale.is_finite() || self.loop_scale <= 0.0 {
            bail!("loop_scale must be a number > 0, got {}", self.loop_scale);
        }
        for (what, tests) in
            [("workers_tests", &self.workers_tests), ("idle_tests", &self.idle_tests)]
        {
            if tests.is_empty() {
                bail!("{what} is empty");
            }
            for t in tests {
                if parse::test_index(t).is_none() {
                    bail!("{what}: unknown test {t:?} (known: {})", parse::TESTS.join(", "));
                }
            }
        }
        Ok(())
    }

    /// test_loop_count of every boot.
    pub fn loop_count(&self) -> u64 {
        ((self.loops as f64 * self.loop_scale).round() as u64).max(1)
    }

    /// `-M` value of every boot: the plan's `machine`, else `virt`, or `virt,gic-version=3`
    /// when the largest -smp is above 8 (GICv2's limit). One interrupt controller for all
    /// boots, so that no series changes machine between two of its points.
    pub fn machine(&self) -> String {
        match &self.machine {
            Some(m) => m.clone(),
            None => crate::plan::virt_machine(self.smp).to_string(),
        }
    }
}

/// N = 1, 2, 4, ... up to `max`, plus `max` when it is not a power of two.
pub fn ns(max: u32) -> Vec<u32> {
    let mut v = vec![];
    let mut n = 1;
    while n <= max {
        v.push(n);
        n *= 2;
    }
    if v.last() != Some(&max) {
        v.push(max);
    }
    v
}

/// run_test_mask of a list of tests (names checked by `SmpPlan::validate`).
pub fn mask(tests: &[String]) -> u64 {
    tests.iter().filter_map(|t| parse::test_index(t)).fold(0, |m, i| m | 1 << i)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Series {
    /// nr_threads = N on -smp SMP.
    Workers,
    /// nr_threads = 1 on -smp N.
    Idle,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::Workers, Series::Idle];

    pub fn name(self) -> &'static str {
        match self {
            Series::Workers => "workers",
            Series::Idle => "idle",
        }
    }

    /// (smp, nr_threads) of point N when the largest -smp is `max`.
    pub fn config(self, n: u32, max: u32) -> (u32, u32) {
        match self {
            Series::Workers => (max, n),
            Series::Idle => (n, 1),
        }
    }
}

/// One boot.
#[derive(Debug, Clone, Serialize)]
pub struct SmpCell {
    pub series: Series,
    /// The x value: workers (series workers) or CPUs (series idle).
    pub n: u32,
    pub smp: u32,
    pub threads: u32,
    pub run: u32,
    pub tests: Vec<String>,
    pub append: String,
}

impl SmpCell {
    /// `<series>/s<smp>t<threads>/run<r>.log` (the Linux reference's sNtM names).
    pub fn rel_log(&self) -> String {
        format!("{}/s{}t{}/run{}.log", self.series.name(), self.smp, self.threads, self.run)
    }
}

/// Every boot in execution order: run r of every configuration (workers series, then idle)
/// before run r+1.
pub fn cells(plan: &SmpPlan) -> Vec<SmpCell> {
    let mut out = vec![];
    let loops = plan.loop_count();
    for run in 1..=plan.runs {
        for series in Series::ALL {
            let tests = match series {
                Series::Workers => &plan.workers_tests,
                Series::Idle => &plan.idle_tests,
            };
            for n in ns(plan.smp) {
                let (smp, threads) = series.config(n, plan.smp);
                let append = format!(
                    "{} test_vmalloc.nr_threads={threads} test_vmalloc.run_test_mask={:#x} test_vmalloc.test_loop_count={loops}",
                    plan.common_args,
                    mask(tests)
                )
                .replace("{run}", &run.to_string())
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
                out.push(SmpCell { series, n, smp, threads, run, tests: tests.clone(), append });
            }
        }
    }
    out
}

/// QEMU arguments of one boot.
pub fn qemu_args(plan: &SmpPlan, kernel: &str, c: &SmpCell) -> Vec<String> {
    let mut a: Vec<String> = [
        "-M",
        &plan.machine(),
        "-cpu",
        &plan.cpu,
        "-smp",
        &c.smp.to_string(),
        "-m",
        &plan.mem,
        "-nographic",
        "-no-reboot",
        "-semihosting",
        "-kernel",
        kernel,
        "-append",
        &c.append,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(plan.qemu_args.split_whitespace().map(str::to_string));
    a
}
