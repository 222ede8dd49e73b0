//! `tvtool run`: boot every cell of a plan under QEMU (several in parallel), keep the raw
//! logs, check them, and write the comparison report.

use crate::compare::{self, VariantData};
use crate::parse::{self, ParsedLog};
use crate::plan::{self, Cell, Plan};
use crate::svg;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct RunOpts {
    pub out: PathBuf,
    pub jobs: usize,
    pub kernel: Option<String>,
    pub qemu: String,
    pub runs: Option<u32>,
    pub smoke: bool,
    pub dry_run: bool,
    /// Overrides the plan's `min_effect`.
    pub min_effect: Option<f64>,
    /// Append the run-to-run spread table (`compare::render_spread`) to the printed text.
    pub spread: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub variant: String,
    pub set: String,
    pub run: u32,
    pub smp: u32,
    pub log: String,
    pub rc: Option<i64>,
    pub timed_out: bool,
    pub wall_s: f64,
    /// Everything wrong with this cell (empty = ok).
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub plan: Plan,
    pub cells: Vec<CellResult>,
    pub failed_cells: usize,
    pub report: Option<compare::Report>,
}

/// How one QEMU boot ended.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Exit status (124 = timeout, 128+signal when killed by one); None when not started.
    pub rc: Option<i64>,
    pub timed_out: bool,
    pub wall_s: f64,
    pub spawn_error: Option<String>,
}

/// Boots one cell, writing OUT/<variant>/<set>/run<r>.log with HOST header and trailer lines.
fn boot(
    qemu: &str,
    args: &[String],
    log: &Path,
    cell: &Cell,
    plan: &Plan,
    timeout: Duration,
) -> Result<Boot> {
    let mut header = vec![format!(
        "tvtool plan={} variant={} set={} run={} smp={}",
        plan.name, cell.variant, cell.set, cell.run, cell.smp
    )];
    if let Some(r) = &cell.row {
        header.push(format!("row {r}"));
    }
    boot_logged(qemu, args, log, &header, timeout)
}

/// Runs `qemu args` with stdin null and stdout+stderr into `log`, killed after `timeout`.
/// The log starts with `HOST: <h>` for each header line and `HOST: cmd <command line>` (after
/// the first header line) and ends with the trailer `HOST: qemu rc=<rc> wall_s=<s>`.
pub fn boot_logged(
    qemu: &str,
    args: &[String],
    log: &Path,
    header: &[String],
    timeout: Duration,
) -> Result<Boot> {
    fs::create_dir_all(log.parent().unwrap())?;
    {
        let mut f = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let cmd: Vec<String> = std::iter::once(qemu)
            .chain(args.iter().map(|s| s.as_str()))
            .map(plan::shell_quote)
            .collect();
        for (i, h) in header.iter().enumerate() {
            writeln!(f, "HOST: {h}")?;
            if i == 0 {
                writeln!(f, "HOST: cmd {}", cmd.join(" "))?;
            }
        }
        if header.is_empty() {
            writeln!(f, "HOST: cmd {}", cmd.join(" "))?;
        }
    }
    let mut f = OpenOptions::new().append(true).open(log)?;
    let start = Instant::now();
    let child = Command::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f.try_clone()?)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot start {qemu}: {e}");
            writeln!(f, "HOST: {msg}")?;
            return Ok(Boot { rc: None, timed_out: false, wall_s: 0.0, spawn_error: Some(msg) });
        }
    };
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall_s = start.elapsed().as_secs_f64();
    let rc = if timed_out {
        124
    } else {
        status.code().map(|c| c as i64).unwrap_or_else(|| 128 + status.signal().unwrap_or(0) as i64)
    };
    // QEMU's last output may lack a newline.
    writeln!(f)?;
    if timed_out {
        writeln!(f, "HOST: timeout after {} s: killed", timeout.as_secs())?;
    }
    writeln!(f, "HOST: qemu rc={rc} wall_s={wall_s:.3}")?;
    Ok(Boot { rc: Some(rc), timed_out, wall_s, spawn_error: None })
}

/// Checks a parsed log against what the cell expects. Returns problems.
pub fn check_log(log: &ParsedLog, cell: &Cell) -> Vec<String> {
    let mut p = vec![];
    for s in &log.summaries {
        if s.unexpected_failure() {
            p.push(format!("line {}: {} reported failed: {}", s.line, s.name, s.failed));
        }
    }
    for l in &log.leaks {
        if !l.ok {
            p.push(format!(
                "line {}: leak check LOST for {} (free_pages {}->{}, free_va {:#x}->{:#x})",
                l.line,
                l.name,
                l.free_pages_before,
                l.free_pages_after,
                l.free_va_before,
                l.free_va_after
            ));
        }
    }
    if let Some(t) = &log.totals {
        if t.failed > 0 {
            p.push(format!("line {}: {} passed, {} failed", t.line, t.passed, t.failed));
        }
    }
    let seen_rows: BTreeSet<_> = log.rows.iter().map(|(_, r)| r.clone()).collect();
    for r in &cell.expect.rows {
        if !seen_rows.contains(r) {
            p.push(format!("expected row `{r}` missing"));
        }
    }
    let seen_tests: BTreeSet<&str> = log.summaries.iter().map(|s| s.name.as_str()).collect();
    for t in &cell.expect.tests {
        if !seen_tests.contains(t.as_str()) {
            p.push(format!("expected Summary for `{t}` missing"));
        }
    }
    if let Some(w) = cell.expect.workers {
        let seen: BTreeSet<u64> = log.workers.iter().map(|w| w.index).collect();
        if seen.len() as u64 != w {
            p.push(format!(
                "expected {w} worker(s), log has {} (`All test took` lines)",
                seen.len()
            ));
        }
    }
    p
}

pub fn run_plan(plan: &Plan, plan_text: &str, opts: &RunOpts) -> Result<(RunReport, String)> {
    let runs = if opts.smoke { 1 } else { opts.runs.unwrap_or(plan.runs) };
    let cells = plan::cells(plan, runs)?;
    let kernel = opts.kernel.clone().unwrap_or_else(|| plan.kernel.clone());
    if opts.dry_run {
        let mut s = String::new();
        for c in &cells {
            let args = plan::qemu_args(plan, &kernel, c);
            let cmd: Vec<String> = std::iter::once(opts.qemu.as_str())
                .chain(args.iter().map(|s| s.as_str()))
                .map(plan::shell_quote)
                .collect();
            s.push_str(&format!("# {}\n{}\n", c.rel_log(), cmd.join(" ")));
        }
        let rep = RunReport { plan: plan.clone(), cells: vec![], failed_cells: 0, report: None };
        return Ok((rep, s));
    }
    if !Path::new(&kernel).is_file() {
        anyhow::bail!("kernel image {kernel:?} not found (build it, or pass --kernel)");
    }
    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    fs::write(opts.out.join("plan.toml"), plan_text)?;
    let timeout = Duration::from_secs(plan.timeout_s);
    let jobs = opts.jobs.max(1).min(cells.len().max(1));
    let tty = std::io::stderr().is_terminal();
    let pb = ProgressBar::new(cells.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} cells {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    if !tty {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Result<Boot>)>();
    let mut boots: Vec<Option<Result<Boot>>> = (0..cells.len()).map(|_| None).collect();
    std::thread::scope(|sc| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (cells, next, kernel, plan) = (&cells, &next, &kernel, plan);
            sc.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= cells.len() {
                    break;
                }
                let c = &cells[i];
                let args = plan::qemu_args(plan, kernel, c);
                let log = opts.out.join(c.rel_log());
                let r = boot(&opts.qemu, &args, &log, c, plan, timeout);
                if tx.send((i, r)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut done = 0;
        for (i, r) in rx {
            done += 1;
            let c = &cells[i];
            let status = match &r {
                Ok(b) if b.timed_out => format!("TIMEOUT after {:.1}s", b.wall_s),
                Ok(b) if b.spawn_error.is_some() => b.spawn_error.clone().unwrap(),
                Ok(b) => format!("rc={} {:.1}s", b.rc.unwrap_or(-1), b.wall_s),
                Err(e) => format!("error: {e:#}"),
            };
            let line = format!("[{done}/{}] {} {}", cells.len(), c.rel_log(), status);
            if tty {
                pb.println(line);
            } else {
                eprintln!("{line}");
            }
            pb.set_message(c.rel_log());
            pb.inc(1);
            boots[i] = Some(r);
        }
    });
    pb.finish_and_clear();

    let variants = plan.variant_list();
    let mut data: Vec<VariantData> = variants.iter().map(|(v, _)| VariantData::new(v)).collect();
    let mut results = vec![];
    for (i, c) in cells.iter().enumerate() {
        let log_path = opts.out.join(c.rel_log());
        let mut res = CellResult {
            variant: c.variant.clone(),
            set: c.set.clone(),
            run: c.run,
            smp: c.smp,
            log: log_path.display().to_string(),
            rc: None,
            timed_out: false,
            wall_s: 0.0,
            problems: vec![],
        };
        match boots[i].take().unwrap() {
            Err(e) => res.problems.push(format!("boot error: {e:#}")),
            Ok(b) => {
                res.rc = b.rc;
                res.timed_out = b.timed_out;
                res.wall_s = b.wall_s;
                if let Some(e) = b.spawn_error {
                    res.problems.push(e);
                } else if b.timed_out {
                    res.problems.push(format!("timeout after {} s (killed)", plan.timeout_s));
                } else if b.rc != Some(0) {
                    res.problems.push(format!("qemu exited with rc={}", b.rc.unwrap_or(-1)));
                }
                match parse::parse_file(&log_path) {
                    Err(e) => res.problems.push(format!("parse: {e}")),
                    Ok(log) => {
                        res.problems.extend(check_log(&log, c));
                        if res.rc == Some(0) {
                            let vi = variants.iter().position(|(v, _)| *v == c.variant).unwrap();
                            data[vi].add_log(&log, &c.tag);
                        }
                    }
                }
            }
        }
        results.push(res);
    }
    for d in &mut data {
        d.icount |= plan.icount;
    }
    let failed_cells = results.iter().filter(|r| !r.problems.is_empty()).count();
    let min_effect =
        opts.min_effect.or(plan.min_effect).unwrap_or(crate::stats::DEFAULT_MIN_EFFECT);
    let report = if data.iter().any(|d| !d.samples.is_empty()) {
        Some(compare::build_report_with(&data, plan.pct_of, min_effect))
    } else {
        None
    };
    let mut text = String::new();
    if let Some(r) = &report {
        text = compare::render_text(r);
        if opts.spread {
            text.push('\n');
            text.push_str(&compare::render_spread(r));
        }
        fs::write(opts.out.join("report.svg"), svg::render(r))?;
        fs::write(opts.out.join("table.md"), compare::render_markdown(r))?;
    }
    let rep = RunReport { plan: plan.clone(), cells: results, failed_cells, report };
    fs::write(opts.out.join("report.json"), serde_json::to_string_pretty(&rep)?)?;
    Ok((rep, text))
}

/// Default output directory: out/<plan>-<UTC yyyymmdd-hhmmss>.
pub fn default_out(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // civil-from-days (Howard Hinnant)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    PathBuf::from(format!(
        "out/{name}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}
