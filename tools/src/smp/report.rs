//! Aggregation of the SMP scaling boots (per-worker time, ratio to N = 1 with a 95% CI) and
//! the report (markdown; the JSON is the serialized `SmpReport`).

use super::anchor::{Anchor, AnchorPoint};
use super::{ns, Series, SmpCell};
use crate::parse::ParsedLog;
use crate::stats::Summary;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The per-worker times of one boot.
#[derive(Debug, Clone, Serialize)]
pub struct CellData {
    pub series: Series,
    pub n: u32,
    pub smp: u32,
    pub threads: u32,
    pub run: u32,
    /// Test -> Summary `avg` (usec) of each worker that printed one, in worker order.
    pub workers: BTreeMap<String, Vec<f64>>,
}

/// The Summary `avg` of every worker for the cell's tests (other tests are ignored).
pub fn cell_data(log: &ParsedLog, cell: &SmpCell) -> CellData {
    let mut per: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for s in &log.summaries {
        if cell.tests.contains(&s.name) {
            per.entry(s.name.clone()).or_default().push((s.worker.unwrap_or(0), s.avg_usec as f64));
        }
    }
    let workers = per
        .into_iter()
        .map(|(t, mut v)| {
            v.sort_by_key(|x| x.0);
            (t, v.into_iter().map(|x| x.1).collect())
        })
        .collect();
    CellData {
        series: cell.series,
        n: cell.n,
        smp: cell.smp,
        threads: cell.threads,
        run: cell.run,
        workers,
    }
}

/// Median of a non-empty slice (mean of the two middle values for an even length).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let k = s.len() / 2;
    if s.len() % 2 == 1 {
        s[k]
    } else {
        (s[k - 1] + s[k]) / 2.0
    }
}

/// One run's cell: median over the boot's workers (min..max).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunCell {
    pub run: u32,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub workers: usize,
}

/// Geometric mean of ratios with the 95% t interval of their logs (None for n < 2), exp'd.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    pub n: usize,
    pub geo_mean: f64,
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
}

impl Ratio {
    pub fn of(ratios: &[f64]) -> Option<Ratio> {
        let logs: Vec<f64> = ratios.iter().filter(|r| **r > 0.0).map(|r| r.ln()).collect();
        if logs.len() != ratios.len() {
            return None;
        }
        let s = Summary::of(&logs)?;
        let ci = s.ci().map(|(a, b)| (a.exp(), b.exp()));
        Some(Ratio {
            n: s.n,
            geo_mean: s.mean.exp(),
            ci_lo: ci.map(|c| c.0),
            ci_hi: ci.map(|c| c.1),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub n: u32,
    pub smp: u32,
    pub threads: u32,
    /// Runs whose boot printed the test for every worker.
    pub cells: Vec<RunCell>,
    /// Median over runs of the cells' medians (usec).
    pub time: Option<f64>,
    /// Smallest / largest single worker over all runs.
    pub worker_min: Option<f64>,
    pub worker_max: Option<f64>,
    /// cell(N, r) / cell(1, r) for each run r present at both.
    pub ratios: Vec<f64>,
    pub ratio: Option<Ratio>,
    /// Linux 6.12 on a 16-core host, where it has this N (workers series only).
    pub linux: Option<AnchorPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub test: String,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesReport {
    pub series: Series,
    pub title: String,
    /// What N is: "workers" or "CPUs".
    pub x_label: String,
    pub lines: Vec<Line>,
}

pub fn series_title(s: Series, smp: u32) -> String {
    match s {
        Series::Workers => format!(
            "N workers, one per CPU, on -smp {smp} (nr_threads = N): per-worker time relative to 1 worker"
        ),
        Series::Idle => "one worker on -smp N (nr_threads = 1): its time relative to -smp 1 (what idle CPUs cost)".into(),
    }
}

/// Builds the two series from the boots' data. `threads` of a cell must be its worker count:
/// a run whose boot lacks a worker's Summary for a test is left out of that test's point.
pub fn aggregate(
    data: &[CellData],
    smp: u32,
    tests: &[(Series, Vec<String>)],
    anchor: Option<&Anchor>,
) -> Vec<SeriesReport> {
    let mut out = vec![];
    for (series, list) in tests {
        let mut lines = vec![];
        for test in list {
            let cells_at = |n: u32| -> Vec<RunCell> {
                let mut v: Vec<RunCell> = data
                    .iter()
                    .filter(|d| d.series == *series && d.n == n)
                    .filter_map(|d| {
                        let w = d.workers.get(test)?;
                        (w.len() == d.threads as usize && !w.is_empty()).then(|| RunCell {
                            run: d.run,
                            median: median(w),
                            min: w.iter().copied().fold(f64::INFINITY, f64::min),
                            max: w.iter().copied().fold(0.0, f64::max),
                            workers: w.len(),
                        })
                    })
                    .collect();
                v.sort_by_key(|c| c.run);
                v
            };
            let base = cells_at(1);
            let mut points = vec![];
            for n in ns(smp) {
                let (psmp, threads) = series.config(n, smp);
                let cells = cells_at(n);
                let ratios: Vec<f64> = cells
                    .iter()
                    .filter_map(|c| {
                        let b = base.iter().find(|b| b.run == c.run)?;
                        (b.median > 0.0).then(|| c.median / b.median)
                    })
                    .collect();
                let meds: Vec<f64> = cells.iter().map(|c| c.median).collect();
                let linux = match (series, anchor) {
                    (Series::Workers, Some(a)) => a.workers_point(test, n),
                    _ => None,
                };
                points.push(Point {
                    n,
                    smp: psmp,
                    threads,
                    time: (!meds.is_empty()).then(|| median(&meds)),
                    worker_min: cells.iter().map(|c| c.min).reduce(f64::min),
                    worker_max: cells.iter().map(|c| c.max).reduce(f64::max),
                    ratio: Ratio::of(&ratios),
                    ratios,
                    cells,
                    linux,
                });
            }
            lines.push(Line { test: test.clone(), points });
        }
        out.push(SeriesReport {
            series: *series,
            title: series_title(*series, smp),
            x_label: match series {
                Series::Workers => "workers".into(),
                Series::Idle => "CPUs".into(),
            },
            lines,
        });
    }
    out
}

/// Everything `make bench-smp` writes to report.json.
#[derive(Debug, Clone, Serialize)]
pub struct SmpReport {
    pub plan: super::SmpPlan,
    /// `nproc` of the host that ran QEMU.
    pub host_cores: usize,
    pub host_cpu: Option<String>,
    pub load_before: Option<String>,
    pub load_after: Option<String>,
    pub qemu_version: Option<String>,
    pub kernel: String,
    pub test_loop_count: u64,
    pub wall_s: f64,
    pub ci_method: String,
    pub series: Vec<SeriesReport>,
    pub anchor: Option<Anchor>,
    pub boots: Vec<BootResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootResult {
    pub series: Series,
    pub n: u32,
    pub smp: u32,
    pub threads: u32,
    pub run: u32,
    pub log: String,
    pub cmd: String,
    pub rc: Option<i64>,
    pub wall_s: f64,
    pub problems: Vec<String>,
}

pub const CI_METHOD: &str = "ratio = geometric mean over runs r of cell(N, r) / cell(1, r); 95% CI = exp(Student t interval of the log ratios, df = runs - 1)";

/// `Linux 6.12 ...` when the reference has the point.
fn linux_text(p: &AnchorPoint) -> String {
    if p.config == p.base_config {
        return format!("{}: {:.0} usec (base)", p.config, p.mean);
    }
    format!(
        "{}: {:.0} usec, {:.2}x {} (pairs {:.2}-{:.2})",
        p.config, p.mean, p.ratio, p.base_config, p.ratio_lo, p.ratio_hi
    )
}

fn ratio_text(r: &Option<Ratio>) -> String {
    match r {
        None => "n/a".into(),
        Some(r) => match (r.ci_lo, r.ci_hi) {
            (Some(a), Some(b)) => format!("{:.2} [{a:.2}, {b:.2}]", r.geo_mean),
            _ => format!("{:.2}", r.geo_mean),
        },
    }
}

fn opt0(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "n/a".into())
}

/// The compact table of one series: per test, 1 = absolute time, N > 1 = ratio [95% CI];
/// then Linux's ratio at every N it shares with this series (workers series).
pub fn render_ratio_table(s: &SeriesReport) -> String {
    let Some(first) = s.lines.first() else { return String::new() };
    let xs: Vec<u32> = first.points.iter().map(|p| p.n).collect();
    let linux_ns: Vec<u32> = xs
        .iter()
        .copied()
        .filter(|n| {
            *n > 1
                && s.lines.iter().any(|l| l.points.iter().any(|p| p.n == *n && p.linux.is_some()))
        })
        .collect();
    let unit = if s.series == Series::Workers { "N=" } else { "-smp " };
    let mut h = format!("| test | {unit}1: usec |");
    for n in &xs[1..] {
        let _ = write!(h, " {unit}{n}: ratio [95% CI] |");
    }
    for n in &linux_ns {
        let _ = write!(h, " Linux 6.12 (16-core host) s{n}t{n} / s16t1 |");
    }
    let mut out = format!("{h}\n|---|{}\n", "---:|".repeat(xs.len() + linux_ns.len()));
    for l in &s.lines {
        let _ = write!(out, "| {} | {} |", l.test, opt0(l.points[0].time));
        for p in &l.points[1..] {
            let _ = write!(out, " {} |", ratio_text(&p.ratio));
        }
        for n in &linux_ns {
            let t = l.points.iter().find(|p| p.n == *n).and_then(|p| p.linux.as_ref());
            let _ = write!(
                out,
                " {} |",
                t.map(|a| format!("{:.2} ({:.2}-{:.2})", a.ratio, a.ratio_lo, a.ratio_hi))
                    .unwrap_or_else(|| "-".into())
            );
        }
        out.push('\n');
    }
    out
}

/// One line per test and N: time, worker range, ratio, CI, runs, Linux.
pub fn render_detail_table(s: &SeriesReport) -> String {
    let linux = s.series == Series::Workers;
    let mut out = String::from(
        "| test | N | -smp | nr_threads | per-worker usec (median of runs) | workers min..max | ratio to N=1 | 95% CI | runs |",
    );
    out.push_str(if linux { " Linux 6.12, 16-core host |\n" } else { "\n" });
    out.push_str("|---|---:|---:|---:|---:|---|---:|---|---:|");
    out.push_str(if linux { "---|\n" } else { "\n" });
    for l in &s.lines {
        for (i, p) in l.points.iter().enumerate() {
            let (ratio, ci) = match &p.ratio {
                None => ("n/a".to_string(), "-".to_string()),
                Some(r) => (
                    format!("{:.2}", r.geo_mean),
                    match (r.ci_lo, r.ci_hi) {
                        (Some(a), Some(b)) if p.n > 1 => format!("{a:.2}-{b:.2}"),
                        _ => "-".into(),
                    },
                ),
            };
            let _ = write!(
                out,
                "| {} | {} | {} | {} | {} | {}..{} | {ratio} | {ci} | {} |",
                if i == 0 { l.test.as_str() } else { "" },
                p.n,
                p.smp,
                p.threads,
                opt0(p.time),
                opt0(p.worker_min),
                opt0(p.worker_max),
                p.cells.len()
            );
            if linux {
                let t = p.linux.as_ref().map(linux_text).unwrap_or_else(|| "-".into());
                let _ = write!(out, " {t} |");
            }
            out.push('\n');
        }
    }
    out
}

/// Linux's whole table as ratios (s<N>t<N> vs its one-worker base), always shown.
pub fn render_anchor(a: &Anchor, tests: &[String]) -> String {
    let mut configs: Vec<u32> =
        a.rows.iter().filter(|r| r.threads == r.smp && r.threads > 1).map(|r| r.threads).collect();
    configs.sort();
    configs.dedup();
    let base = format!("s{}t1", a.max_smp());
    let mut out = format!("| test (Linux 6.12, 16-core host) | {base} usec (per run) |");
    for n in &configs {
        let _ = write!(out, " s{n}t{n} usec | s{n}t{n} / {base} |");
    }
    let _ = writeln!(out, "\n|---|---:|{}", "---:|---|".repeat(configs.len()));
    for t in tests {
        let Some(b) = a.workers_point(t, 1) else { continue };
        let runs: Vec<String> = b.medians.iter().map(|m| format!("{m:.0}")).collect();
        let _ = write!(out, "| {t} | {} |", runs.join(", "));
        for n in &configs {
            match a.workers_point(t, *n) {
                Some(p) => {
                    let _ = write!(
                        out,
                        " {:.0} | {:.2} ({:.2}-{:.2}) |",
                        p.mean, p.ratio, p.ratio_lo, p.ratio_hi
                    );
                }
                None => out.push_str(" - | - |"),
            }
        }
        out.push('\n');
    }
    out
}

/// The whole report (report.md; stdout prints the same).
pub fn render_markdown(r: &SmpReport) -> String {
    let p = &r.plan;
    let mut o = String::new();
    let _ = writeln!(o, "# SMP scaling: test_vmalloc per-worker time ({}, wall clock)\n", p.name);
    let cpu = r.host_cpu.as_deref().map(|c| format!(", {c}")).unwrap_or_default();
    let _ = writeln!(
        o,
        "- host: {} cores (nproc){cpu}; load average before: {}, after: {}",
        r.host_cores,
        r.load_before.as_deref().unwrap_or("?"),
        r.load_after.as_deref().unwrap_or("?")
    );
    let machine = match (&p.machine, p.smp > crate::plan::GICV2_MAX_CPUS) {
        (None, true) => {
            format!("{} (GICv3 for every boot: GICv2 serves at most 8 CPUs)", p.machine())
        }
        _ => p.machine(),
    };
    let _ = writeln!(
        o,
        "- QEMU: {} (TCG); -M {machine} -cpu {} -m {}; kernel {}",
        r.qemu_version.as_deref().unwrap_or("version unknown"),
        p.cpu,
        p.mem,
        r.kernel
    );
    let _ = writeln!(
        o,
        "- every boot: `{} test_vmalloc.test_loop_count={}` (loops {} x loop_scale {}; nr_pages=1, use_huge=0), `{{run}}` = run number",
        p.common_args, r.test_loop_count, p.loops, p.loop_scale
    );
    let xs: Vec<String> = ns(p.smp).iter().map(|n| n.to_string()).collect();
    let _ = writeln!(
        o,
        "- N = {}; {} runs per configuration, interleaved (run r of every configuration before run r+1), one QEMU at a time; {} boots in {:.0} s",
        xs.join(", "),
        p.runs,
        r.boots.len(),
        r.wall_s
    );
    let _ = writeln!(o, "- cell = median over the boot's workers of the test's Summary `avg` (usec, all loops of one repeat); time = median over runs of the cells; {}", r.ci_method);
    let _ = writeln!(o, "- one worker prints leak lines: the kernel settles (RCU barrier, cache shrink, pcp drain) before and after each test, outside the timed loop; with several workers it does not, so an N = 1 test starts from drained caches and an N > 1 test from the previous test's state");
    if (p.smp as usize) > r.host_cores {
        let _ = writeln!(
            o,
            "- **this host has {} cores, fewer than N = {} vCPUs: where N > {} the N-worker series measures host contention (vCPU threads time-sharing the host's cores), not the kernel.** The one-worker series runs one busy vCPU whatever N is.",
            r.host_cores, p.smp, r.host_cores
        );
    } else {
        let _ = writeln!(o, "- this host has {} cores, N <= {}: every vCPU can have its own host core (QEMU's I/O thread and other processes still share them)", r.host_cores, r.host_cores);
    }
    o.push('\n');
    for s in &r.series {
        let _ = writeln!(o, "## {}\n", s.title);
        o.push_str(&render_ratio_table(s));
        o.push('\n');
        o.push_str(&render_detail_table(s));
        o.push('\n');
        if s.series == Series::Idle {
            o.push_str("The Linux reference has no one-worker-on-N-CPUs series (only s16t1).\n\n");
        }
    }
    match &r.anchor {
        Some(a) if !a.rows.is_empty() => {
            let _ =
                writeln!(o, "## Linux 6.12 reference: a 16-core host, not this one ({})\n", a.file);
            for h in &a.header {
                let _ = writeln!(o, "> {h}");
            }
            o.push('\n');
            o.push_str(&render_anchor(a, &p.workers_tests));
            let _ = writeln!(o, "\nratio = mean of the run cells / mean of the s16t1 run cells (range over every pair of runs); Linux's N-worker configurations are s<N>t<N> (-smp N), its base s16t1; ours are -smp {} throughout the workers series and -smp 1 .. -smp {} in the one-worker series.\n", p.smp, p.smp);
        }
        Some(a) => {
            let _ = writeln!(o, "(no Linux reference: {} has no table rows)\n", a.file);
        }
        None => match &p.anchor {
            Some(f) => {
                let _ = writeln!(o, "(no Linux reference: cannot read {f})\n");
            }
            None => o.push_str("(no Linux reference: the plan has no `anchor`)\n\n"),
        },
    }
    let walls = wall_by_config(&r.boots);
    for series in Series::ALL {
        let parts: Vec<String> = walls
            .iter()
            .filter(|((s, _), _)| *s == series)
            .map(|((_, n), w)| {
                let (smp, t) = series.config(*n, p.smp);
                format!("s{smp}t{t} {w:.1}")
            })
            .collect();
        if !parts.is_empty() {
            let _ = writeln!(
                o,
                "boot wall-clock seconds, median of runs ({}): {}",
                series.name(),
                parts.join(", ")
            );
        }
    }
    o.push('\n');
    let bad: Vec<&BootResult> = r.boots.iter().filter(|b| !b.problems.is_empty()).collect();
    if !bad.is_empty() {
        let _ = writeln!(o, "## Failed boots ({} of {})\n", bad.len(), r.boots.len());
        for b in bad {
            let _ = writeln!(o, "- {}: {}", b.log, b.problems.join("; "));
        }
        o.push('\n');
    }
    o
}

/// Per (series, N): the median wall-clock seconds of its boots (for the progress summary).
pub fn wall_by_config(boots: &[BootResult]) -> BTreeMap<(Series, u32), f64> {
    let mut m: BTreeMap<(Series, u32), Vec<f64>> = BTreeMap::new();
    for b in boots {
        m.entry((b.series, b.n)).or_default().push(b.wall_s);
    }
    m.into_iter().map(|(k, v)| (k, median(&v))).collect()
}
