//! Running the SMP scaling boots (one QEMU at a time) and writing the report files.

use super::report::{self, BootResult, CellData, SmpReport};
use super::{anchor, cells, qemu_args, Series, SmpCell, SmpPlan};
use crate::plan::{self, Expect};
use crate::{parse, run};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct SmpOpts {
    pub out: PathBuf,
    pub kernel: Option<String>,
    pub qemu: String,
    pub dry_run: bool,
    /// Do not boot: aggregate the logs an earlier run left in `out`.
    pub report_only: bool,
}

/// What the log of a cell must contain: a Summary per test and `threads` workers.
fn expect(c: &SmpCell) -> plan::Cell {
    plan::Cell {
        variant: c.series.name().into(),
        set: format!("s{}t{}", c.smp, c.threads),
        row: None,
        smp: c.smp,
        run: c.run,
        append: c.append.clone(),
        tag: String::new(),
        expect: Expect { rows: vec![], tests: c.tests.clone(), workers: Some(c.threads as u64) },
    }
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd).args(args).output().ok()?;
    String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string())
}

fn host_cpu() -> Option<String> {
    let t = fs::read_to_string("/proc/cpuinfo").ok()?;
    t.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn loadavg() -> Option<String> {
    let t = fs::read_to_string("/proc/loadavg").ok()?;
    Some(t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

pub fn host_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Parses a finished boot's log into the cell's data and its problems.
pub fn check_cell(
    log_path: &Path,
    c: &SmpCell,
    rc: Option<i64>,
) -> (Option<CellData>, Vec<String>) {
    let mut problems = vec![];
    match rc {
        Some(0) => {}
        Some(124) => problems.push("timeout (killed)".to_string()),
        Some(rc) => problems.push(format!("qemu exited with rc={rc}")),
        None => problems.push("not booted".into()),
    }
    match parse::parse_file(log_path) {
        Err(e) => {
            problems.push(format!("parse: {e}"));
            (None, problems)
        }
        Ok(log) => {
            problems.extend(run::check_log(&log, &expect(c)));
            let data = (rc == Some(0)).then(|| report::cell_data(&log, c));
            (data, problems)
        }
    }
}

/// Runs (or, with `report_only`, re-reads) every boot of the plan and writes report.md,
/// report.json and smp.svg into `opts.out`. Returns the report and its markdown.
pub fn run_smp(plan: &SmpPlan, opts: &SmpOpts) -> Result<(SmpReport, String)> {
    let cells = cells(plan);
    let kernel = opts.kernel.clone().unwrap_or_else(|| plan.kernel.clone());
    if opts.dry_run {
        let mut s = String::new();
        for c in &cells {
            let cmd: Vec<String> = std::iter::once(opts.qemu.clone())
                .chain(qemu_args(plan, &kernel, c))
                .map(|a| plan::shell_quote(&a))
                .collect();
            s.push_str(&format!("# {}\n{}\n", c.rel_log(), cmd.join(" ")));
        }
        return Ok((empty_report(plan, &kernel), s));
    }
    if !opts.report_only && !Path::new(&kernel).is_file() {
        bail!("kernel image {kernel:?} not found (build it, or pass --kernel)");
    }
    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    fs::write(opts.out.join("plan.toml"), toml::to_string(plan)?)?;
    let load_before = loadavg();
    let timeout = Duration::from_secs(plan.timeout_s);
    let start = Instant::now();
    let mut boots = vec![];
    let mut data = vec![];
    for (i, c) in cells.iter().enumerate() {
        let args = qemu_args(plan, &kernel, c);
        let log = opts.out.join(c.rel_log());
        let cmd: Vec<String> = std::iter::once(opts.qemu.clone())
            .chain(args.iter().cloned())
            .map(|a| plan::shell_quote(&a))
            .collect();
        let (rc, wall_s) = if opts.report_only {
            let parsed = parse::parse_log_lenient(&log.display().to_string(), &read_lossy(&log));
            parsed.host.map(|h| (Some(h.rc), h.wall_s)).unwrap_or((None, 0.0))
        } else {
            let header = vec![format!(
                "tvtool smp plan={} series={} n={} smp={} nr_threads={} run={}",
                plan.name,
                c.series.name(),
                c.n,
                c.smp,
                c.threads,
                c.run
            )];
            let b = run::boot_logged(&opts.qemu, &args, &log, &header, timeout)?;
            if let Some(e) = &b.spawn_error {
                bail!("{e}");
            }
            (b.rc, b.wall_s)
        };
        let (d, problems) = check_cell(&log, c, rc);
        if !opts.report_only {
            eprintln!(
                "[{}/{}] {} rc={} {:.1}s{}",
                i + 1,
                cells.len(),
                c.rel_log(),
                rc.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                wall_s,
                if problems.is_empty() {
                    String::new()
                } else {
                    format!(" FAILED: {}", problems.join("; "))
                }
            );
        }
        data.extend(d);
        boots.push(BootResult {
            series: c.series,
            n: c.n,
            smp: c.smp,
            threads: c.threads,
            run: c.run,
            log: log.display().to_string(),
            cmd: cmd.join(" "),
            rc,
            wall_s,
            problems,
        });
    }
    let wall_s = if opts.report_only {
        boots.iter().map(|b| b.wall_s).sum()
    } else {
        start.elapsed().as_secs_f64()
    };
    let anchor = plan.anchor.as_ref().and_then(|f| {
        let t = fs::read_to_string(f).ok()?;
        Some(anchor::parse(f, &t))
    });
    let tests = vec![
        (Series::Workers, plan.workers_tests.clone()),
        (Series::Idle, plan.idle_tests.clone()),
    ];
    let series = report::aggregate(&data, plan.smp, &tests, anchor.as_ref());
    let rep = SmpReport {
        plan: plan.clone(),
        host_cores: host_cores(),
        host_cpu: host_cpu(),
        load_before,
        load_after: loadavg(),
        qemu_version: qemu_version(&opts.qemu),
        kernel,
        test_loop_count: plan.loop_count(),
        wall_s,
        ci_method: report::CI_METHOD.into(),
        series,
        anchor,
        boots,
    };
    let md = report::render_markdown(&rep);
    fs::write(opts.out.join("report.md"), &md)?;
    fs::write(opts.out.join("report.json"), serde_json::to_string_pretty(&rep)?)?;
    fs::write(opts.out.join("smp.svg"), super::chart::render(&rep))?;
    Ok((rep, md))
}

fn read_lossy(p: &Path) -> String {
    fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// First line of `qemu --version` when it names QEMU.
fn qemu_version(qemu: &str) -> Option<String> {
    first_line(qemu, &["--version"]).filter(|l| l.contains("QEMU"))
}

fn empty_report(plan: &SmpPlan, kernel: &str) -> SmpReport {
    SmpReport {
        plan: plan.clone(),
        host_cores: host_cores(),
        host_cpu: None,
        load_before: None,
        load_after: None,
        qemu_version: None,
        kernel: kernel.to_string(),
        test_loop_count: plan.loop_count(),
        wall_s: 0.0,
        ci_method: report::CI_METHOD.into(),
        series: vec![],
        anchor: None,
        boots: vec![],
    }
}
