use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tvtool::stats::{self, PctOf};
use tvtool::{compare, linux, parse, plan, run, smp, summary, svg};

/// Writes to stdout; a closed pipe (`tvtool parse ... | head`) ends the process quietly.
fn write_stdout(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing stdout: {e}");
        std::process::exit(2);
    }
}

macro_rules! outln {
    ($($t:tt)*) => { write_stdout(&format!("{}\n", format_args!($($t)*))) };
}

#[derive(Parser)]
#[command(
    name = "tvtool",
    version,
    about = "test_vmalloc benchmark host tool: parse logs, compare variants, run QEMU plans"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Parse serial logs; print one line per (row/test, worker).
    Parse {
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Print the parsed logs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare variants: per row n, mean, sd, 95% CI, % change vs base, (I)/(R) markers.
    Compare {
        /// Base: NAME=LOGDIR_OR_GLOB_OR_FILE (directories are searched for *.log).
        #[arg(long, value_name = "NAME=LOGS")]
        base: String,
        /// A variant: NAME=LOGDIR_OR_GLOB_OR_FILE (repeatable).
        #[arg(long, value_name = "NAME=LOGS", required = true)]
        variant: Vec<String>,
        /// Write all statistics as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write a grouped bar chart of % change.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Print a markdown table instead of the seed-shaped grid.
        #[arg(long)]
        markdown: bool,
        /// % change relative to the base mean (default) or the variant mean (speed-up - 1).
        #[arg(long, value_enum, default_value_t = PctOf::Variant)]
        pct_of: PctOf,
        /// Minimum effect in % of the base mean: a smaller |difference| is never marked
        /// (I)/(R), whatever the CIs say (0 = CIs alone).
        #[arg(long, value_name = "PCT", default_value_t = stats::DEFAULT_MIN_EFFECT)]
        min_effect: f64,
        /// Also print the run-to-run spread per row and variant (CV, CI half-width in %).
        #[arg(long)]
        spread: bool,
    },
    /// The table of one boot's log (as `make run` prints it): rows, pass/fail, leak lines.
    Summary {
        log: PathBuf,
        /// QEMU's exit status (make run passes it): non-zero makes the result FAILED.
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        qemu_rc: Option<i64>,
    },
    /// Boot every cell of a plan under QEMU, keep the logs, check them, print the table.
    Run {
        plan: PathBuf,
        /// Output directory (default out/<plan name>-<UTC timestamp>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Parallel QEMUs (default: number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Kernel image (overrides the plan's `kernel`).
        #[arg(long)]
        kernel: Option<String>,
        /// QEMU binary (default $TVTOOL_QEMU, else qemu-system-aarch64).
        #[arg(long)]
        qemu: Option<String>,
        /// Override the plan's `runs`.
        #[arg(long)]
        runs: Option<u32>,
        /// Quick check: one run per cell.
        #[arg(long)]
        smoke: bool,
        /// Print the QEMU command lines and exit.
        #[arg(long)]
        dry_run: bool,
        /// Minimum effect in % of the base mean for (I)/(R) (overrides the plan's `min_effect`).
        #[arg(long, value_name = "PCT")]
        min_effect: Option<f64>,
        /// Also print the run-to-run spread per row and variant (CV, CI half-width in %).
        #[arg(long)]
        spread: bool,
    },
    /// SMP scaling: N workers on -smp SMP and one worker on -smp N, N = 1, 2, 4 .. SMP;
    /// per-worker time relative to N = 1 with 95% CIs (report.md, report.json, smp.svg).
    Smp {
        plan: PathBuf,
        /// Largest -smp (overrides the plan's `smp`; 1..=64).
        #[arg(long)]
        smp: Option<u32>,
        /// Boots per configuration (overrides the plan's `runs`).
        #[arg(long)]
        runs: Option<u32>,
        /// test_loop_count = loops x this (overrides the plan's `loop_scale`).
        #[arg(long, value_name = "X")]
        loop_scale: Option<f64>,
        /// Per-boot timeout in seconds (overrides the plan's `timeout_s`).
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
        /// Output directory (default out/<plan name>-<UTC timestamp>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Kernel image (overrides the plan's `kernel`).
        #[arg(long)]
        kernel: Option<String>,
        /// QEMU binary (default $TVTOOL_QEMU, else qemu-system-aarch64).
        #[arg(long)]
        qemu: Option<String>,
        /// Print the QEMU command lines and exit.
        #[arg(long)]
        dry_run: bool,
        /// Do not boot: rebuild the report from the logs already in --out.
        #[arg(long, requires = "out")]
        report_only: bool,
    },
    /// Ours vs Linux 6.12 on the same QEMU (make bench-linux): the Linux row list, the report.
    #[command(subcommand)]
    Linux(linux::LinuxCmd),
}

#[allow(clippy::too_many_arguments)]
fn cmd_smp(
    plan_path: &std::path::Path,
    smp_max: Option<u32>,
    runs: Option<u32>,
    loop_scale: Option<f64>,
    timeout: Option<u64>,
    out: Option<PathBuf>,
    kernel: Option<String>,
    qemu: Option<String>,
    dry_run: bool,
    report_only: bool,
) -> Result<bool> {
    let text = std::fs::read_to_string(plan_path)
        .with_context(|| format!("reading {}", plan_path.display()))?;
    let mut p =
        smp::SmpPlan::parse(&text).with_context(|| format!("plan {}", plan_path.display()))?;
    if let Some(n) = smp_max {
        p.smp = n;
    }
    if let Some(r) = runs {
        p.runs = r;
    }
    if let Some(x) = loop_scale {
        p.loop_scale = x;
    }
    if let Some(t) = timeout {
        p.timeout_s = t;
    }
    p.validate()?;
    let opts = smp::exec::SmpOpts {
        out: out.unwrap_or_else(|| run::default_out(&p.name)),
        kernel,
        qemu: qemu
            .or_else(|| std::env::var("TVTOOL_QEMU").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "qemu-system-aarch64".into()),
        dry_run,
        report_only,
    };
    let (rep, text) = smp::exec::run_smp(&p, &opts)?;
    write_stdout(&text);
    if dry_run {
        return Ok(true);
    }
    let bad = rep.boots.iter().filter(|b| !b.problems.is_empty()).count();
    eprintln!(
        "{} boots, {} failed, {:.0} s; logs, report.md, report.json and smp.svg in {}",
        rep.boots.len(),
        bad,
        rep.wall_s,
        opts.out.display()
    );
    Ok(bad == 0)
}

fn cmd_parse(logs: &[PathBuf], json: bool) -> Result<bool> {
    let mut ok = true;
    let mut parsed = vec![];
    for p in logs {
        match parse::parse_file(p) {
            Ok(l) => parsed.push(l),
            Err(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&parsed)?);
        return Ok(ok);
    }
    for log in &parsed {
        let tag = parse::tag_from_path(std::path::Path::new(&log.file));
        for s in &log.summaries {
            let key = parse::row_key(log, s, &tag);
            let x = s.xfailed.map(|x| format!(" xfailed={x}")).unwrap_or_default();
            let w = s.worker.map(|w| w.to_string()).unwrap_or_else(|| "-".into());
            let setup = match (s.setup_usec, s.loop_scale) {
                (Some(su), Some(ls)) => {
                    format!(" setup_usec={su} loop_scale={ls} value={}", s.value())
                }
                (Some(su), None) => format!(" setup_usec={su}"),
                _ => String::new(),
            };
            outln!(
                "{}:{}: row=\"{}\" test={} worker={} passed={} failed={}{} repeat={} loops={} avg_usec={}{}{}",
                log.file,
                s.line,
                key.label(),
                s.name,
                w,
                s.passed,
                s.failed,
                x,
                s.repeat,
                s.loops,
                s.avg_usec,
                setup,
                if s.unexpected_failure() { " FAILED" } else { "" }
            );
        }
        for w in &log.workers {
            outln!("{}:{}: {}{} cycles={}", log.file, w.line, w.label, w.index, w.cycles);
        }
        for l in &log.leaks {
            outln!(
                "{}:{}: leak {} free_pages {}->{} free_va {:#x}->{:#x} {}",
                log.file,
                l.line,
                l.name,
                l.free_pages_before,
                l.free_pages_after,
                l.free_va_before,
                l.free_va_after,
                if l.ok { "ok" } else { "LOST" }
            );
        }
        for st in &log.setups {
            outln!("{}:{}: setup {} usec={}", log.file, st.line, st.name, st.usec);
        }
        for p in &log.params {
            outln!("{}:{}: params({}) {}", log.file, p.line, p.source, p.line_text());
        }
        if let Some(t) = &log.totals {
            outln!("{}:{}: totals {} passed, {} failed", log.file, t.line, t.passed, t.failed);
        }
        if let Some(h) = &log.host {
            outln!("{}:{}: host rc={} wall_s={}", log.file, h.line, h.rc, h.wall_s);
        }
    }
    Ok(ok)
}

#[allow(clippy::too_many_arguments)]
fn cmd_compare(
    base: &str,
    variants: &[String],
    json: Option<PathBuf>,
    svg_out: Option<PathBuf>,
    markdown: bool,
    pct_of: PctOf,
    min_effect: f64,
    spread: bool,
) -> Result<()> {
    let min_effect = compare::check_min_effect(min_effect)?;
    let mut data = vec![];
    let mut names = std::collections::BTreeSet::new();
    for spec in std::iter::once(&base.to_string()).chain(variants.iter()) {
        let (name, files) = compare::expand_source(spec)?;
        if !names.insert(name.clone()) {
            bail!("variant name {name:?} given twice");
        }
        data.push(compare::load_variant(&name, &files).with_context(|| format!("variant {name}"))?);
    }
    let r = compare::build_report_with(&data, pct_of, min_effect);
    if markdown {
        write_stdout(&compare::render_markdown(&r));
    } else {
        write_stdout(&compare::render_text(&r));
    }
    if spread {
        write_stdout("\n");
        write_stdout(&compare::render_spread(&r));
    }
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = svg_out {
        std::fs::write(&p, svg::render(&r)).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn real_main() -> Result<bool> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Parse { logs, json } => cmd_parse(&logs, json),
        Cmd::Linux(c) => linux::run(c),
        Cmd::Compare { base, variant, json, svg, markdown, pct_of, min_effect, spread } => {
            cmd_compare(&base, &variant, json, svg, markdown, pct_of, min_effect, spread)?;
            Ok(true)
        }
        Cmd::Smp {
            plan,
            smp,
            runs,
            loop_scale,
            timeout,
            out,
            kernel,
            qemu,
            dry_run,
            report_only,
        } => {
            cmd_smp(&plan, smp, runs, loop_scale, timeout, out, kernel, qemu, dry_run, report_only)
        }
        Cmd::Summary { log, qemu_rc } => {
            let bytes =
                std::fs::read(&log).with_context(|| format!("reading {}", log.display()))?;
            let text = String::from_utf8_lossy(&bytes);
            let parsed = parse::parse_log_lenient(&log.display().to_string(), &text);
            let (out, ok) = summary::render(&parsed, qemu_rc);
            write_stdout(&out);
            Ok(ok)
        }
        Cmd::Run {
            plan: plan_path,
            out,
            jobs,
            kernel,
            qemu,
            runs,
            smoke,
            dry_run,
            min_effect,
            spread,
        } => {
            if let Some(m) = min_effect {
                compare::check_min_effect(m)?;
            }
            let text = std::fs::read_to_string(&plan_path)
                .with_context(|| format!("reading {}", plan_path.display()))?;
            let p = plan::Plan::parse(&text)
                .with_context(|| format!("plan {}", plan_path.display()))?;
            let opts = run::RunOpts {
                out: out.unwrap_or_else(|| run::default_out(&p.name)),
                jobs: jobs.unwrap_or_else(|| {
                    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
                }),
                kernel,
                qemu: qemu
                    .or_else(|| std::env::var("TVTOOL_QEMU").ok().filter(|s| !s.is_empty()))
                    .unwrap_or_else(|| "qemu-system-aarch64".into()),
                runs,
                smoke,
                dry_run,
                min_effect,
                spread,
            };
            let (rep, table) = run::run_plan(&p, &text, &opts)?;
            if dry_run {
                write_stdout(&table);
                return Ok(true);
            }
            write_stdout(&table);
            let bad: Vec<_> = rep.cells.iter().filter(|c| !c.problems.is_empty()).collect();
            for c in &bad {
                for pr in &c.problems {
                    eprintln!("FAIL {}: {}", c.log, pr);
                }
            }
            let files = if rep.report.is_some() {
                "report.json, report.svg, table.md"
            } else {
                "report.json (no data for a table)"
            };
            eprintln!(
                "{} cells, {} failed; logs and {} in {}",
                rep.cells.len(),
                bad.len(),
                files,
                opts.out.display()
            );
            Ok(bad.is_empty())
        }
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
