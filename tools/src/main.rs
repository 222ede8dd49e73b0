use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tvtool::stats::PctOf;
use tvtool::{compare, parse, plan, run, svg};

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
    },
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
            let x = s
                .xfailed
                .map(|x| format!(" xfailed={x}"))
                .unwrap_or_default();
            let w = s
                .worker
                .map(|w| w.to_string())
                .unwrap_or_else(|| "-".into());
            outln!(
                "{}:{}: row=\"{}\" test={} worker={} passed={} failed={}{} repeat={} loops={} avg_usec={}{}",
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
                if s.unexpected_failure() { " FAILED" } else { "" }
            );
        }
        for w in &log.workers {
            outln!(
                "{}:{}: {}{} cycles={}",
                log.file,
                w.line,
                w.label,
                w.index,
                w.cycles
            );
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
        for p in &log.params {
            let kv: Vec<String> = p.map.iter().map(|(k, v)| format!("{k}={v}")).collect();
            outln!(
                "{}:{}: params({}) {}",
                log.file,
                p.line,
                p.source,
                kv.join(" ")
            );
        }
        if let Some(t) = &log.totals {
            outln!(
                "{}:{}: totals {} passed, {} failed",
                log.file,
                t.line,
                t.passed,
                t.failed
            );
        }
        if let Some(h) = &log.host {
            outln!(
                "{}:{}: host rc={} wall_s={}",
                log.file,
                h.line,
                h.rc,
                h.wall_s
            );
        }
    }
    Ok(ok)
}

fn cmd_compare(
    base: &str,
    variants: &[String],
    json: Option<PathBuf>,
    svg_out: Option<PathBuf>,
    markdown: bool,
    pct_of: PctOf,
) -> Result<()> {
    let mut data = vec![];
    let mut names = std::collections::BTreeSet::new();
    for spec in std::iter::once(&base.to_string()).chain(variants.iter()) {
        let (name, files) = compare::expand_source(spec)?;
        if !names.insert(name.clone()) {
            bail!("variant name {name:?} given twice");
        }
        data.push(compare::load_variant(&name, &files).with_context(|| format!("variant {name}"))?);
    }
    let r = compare::build_report(&data, pct_of);
    if markdown {
        write_stdout(&compare::render_markdown(&r));
    } else {
        write_stdout(&compare::render_text(&r));
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
        Cmd::Compare {
            base,
            variant,
            json,
            svg,
            markdown,
            pct_of,
        } => {
            cmd_compare(&base, &variant, json, svg, markdown, pct_of)?;
            Ok(true)
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
        } => {
            let text = std::fs::read_to_string(&plan_path)
                .with_context(|| format!("reading {}", plan_path.display()))?;
            let p = plan::Plan::parse(&text)
                .with_context(|| format!("plan {}", plan_path.display()))?;
            let opts = run::RunOpts {
                out: out.unwrap_or_else(|| run::default_out(&p.name)),
                jobs: jobs.unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                }),
                kernel,
                qemu: qemu
                    .or_else(|| std::env::var("TVTOOL_QEMU").ok().filter(|s| !s.is_empty()))
                    .unwrap_or_else(|| "qemu-system-aarch64".into()),
                runs,
                smoke,
                dry_run,
            };
            let (rep, table) = run::run_plan(&p, &text, &opts)?;
            if dry_run {
                write_stdout(&table);
                return Ok(true);
            }
            write_stdout(&table);
            let bad: Vec<_> = rep
                .cells
                .iter()
                .filter(|c| !c.problems.is_empty())
                .collect();
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
