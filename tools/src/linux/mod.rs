//! `tvtool linux` (make bench-linux, scripts/bench-linux.sh): our kernel and Linux 6.12 side by
//! side on the same QEMU, per row of the seed suite.
//!
//! - `tvtool linux rows --plan P --loop-scale X`: the Linux /init's row list, one row a line:
//!   `NAME:MASK:P:H:LOOPS:NOMINAL` (MASK = the test's run_test_mask bit, LOOPS = NOMINAL x X
//!   as our kernel scales its suite rows).
//! - `tvtool linux report --out DIR --plan P --loop-scale X`: reads the boots' logs in
//!   `DIR/{icount,wall}/{ours,linux}/run<r>.log` (and `DIR/host.txt`, written by the script),
//!   writes `DIR/report.md` (also printed) and `DIR/report.json`.
//!
//! Both kernels' logs go through `crate::parse`: our kernel prints a `test_vmalloc: row` line
//! before each row of its suite, the Linux /init prints the same line before each module load.

pub mod report;

use crate::parse::{self, RowSpec};
use crate::plan::Plan;
use anyhow::{bail, Result};
use clap::Subcommand;
use std::path::PathBuf;

/// Linux's pcpu_alloc_test allocates and frees this many objects whatever the loop count
/// (6.12 hard-codes it; our kernel's `nr_pcpu_objects` defaults to it): its "per loop" figure
/// is per object.
pub const PCPU_OBJECTS: u64 = 35_000;

#[derive(Subcommand, Debug)]
pub enum LinuxCmd {
    /// Print the Linux /init's row list: NAME:MASK:P:H:LOOPS:NOMINAL per plan row.
    Rows {
        /// The seed plan (its `rows`).
        #[arg(long)]
        plan: PathBuf,
        /// Loops = the row's nominal loops x this (at least 1), as our kernel's loop_scale.
        #[arg(long, value_name = "X")]
        loop_scale: f64,
    },
    /// Build report.md (printed) and report.json from the logs in --out.
    Report {
        /// The directory scripts/bench-linux.sh filled.
        #[arg(long)]
        out: PathBuf,
        /// The seed plan (its `rows`, in its order).
        #[arg(long)]
        plan: PathBuf,
        /// The loop scale both kernels ran with.
        #[arg(long, value_name = "X")]
        loop_scale: f64,
    },
}

/// Runs a `tvtool linux` command; Ok(false) = the report found a problem (exit 1).
pub fn run(cmd: LinuxCmd) -> Result<bool> {
    match cmd {
        LinuxCmd::Rows { plan, loop_scale } => {
            let rows = plan_rows(&plan)?;
            let mut out = String::new();
            for r in &rows {
                out.push_str(&row_arg(r, loop_scale)?);
                out.push('\n');
            }
            print!("{out}");
            Ok(true)
        }
        LinuxCmd::Report { out, plan, loop_scale } => {
            let rows = plan_rows(&plan)?;
            check_scale(loop_scale)?;
            let rep = report::collect(&out, &rows, loop_scale)?;
            let md = report::render(&rep);
            std::fs::write(out.join("report.md"), &md)?;
            std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&rep)?)?;
            print!("{md}");
            for p in &rep.problems {
                eprintln!("PROBLEM: {p}");
            }
            eprintln!(
                "report.md and report.json in {}{}",
                out.display(),
                if rep.problems.is_empty() {
                    String::new()
                } else {
                    format!("; {} problem(s)", rep.problems.len())
                }
            );
            Ok(rep.problems.is_empty())
        }
    }
}

/// The plan's rows, in its order.
pub fn plan_rows(path: &std::path::Path) -> Result<Vec<RowSpec>> {
    let p = Plan::load(path)?;
    let rows = p.row_specs()?;
    if rows.is_empty() {
        bail!("plan {} has no rows", path.display());
    }
    Ok(rows)
}

fn check_scale(x: f64) -> Result<()> {
    if !(x.is_finite() && x > 0.0 && x <= 1000.0) {
        bail!("--loop-scale must be a number in (0, 1000], got {x}");
    }
    Ok(())
}

/// Loops of a row at a loop scale: `nominal x scale` in parts per million, at least 1 (the
/// kernel's `TvParams::scaled`).
pub fn scaled_loops(nominal: u64, scale: f64) -> u64 {
    let ppm = (scale * 1e6).round() as u64;
    (nominal * ppm / 1_000_000).max(1)
}

/// `NAME:MASK:P:H:LOOPS:NOMINAL` for the Linux /init.
pub fn row_arg(r: &RowSpec, scale: f64) -> Result<String> {
    check_scale(scale)?;
    let Some(i) = parse::test_index(&r.name) else {
        bail!("row {r}: unknown test");
    };
    Ok(format!("{}:{}:{}:{}:{}:{}", r.name, 1u64 << i, r.p, r.h, scaled_loops(r.l, scale), r.l))
}
