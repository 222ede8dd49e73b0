//! The Linux reference for the SMP scaling table: `results-smp-scaling-16vcpu.txt` (Linux
//! 6.12.117 under QEMU TCG on a 16-core host), rows
//! `| s<N>t<M> | <test> | <median> (<min>..<max>) | ... |` with one cell per run (`-` = not run).

use serde::Serialize;

/// One run's cell: median over workers (min..max), usec.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AnchorCell {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnchorRow {
    pub smp: u32,
    pub threads: u32,
    pub test: String,
    /// Runs that have a cell, in column order.
    pub runs: Vec<AnchorCell>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Anchor {
    pub file: String,
    /// The file's header lines (before the table).
    pub header: Vec<String>,
    pub rows: Vec<AnchorRow>,
}

/// The Linux figure for one of our points.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnchorPoint {
    /// `s4t4` etc.
    pub config: String,
    /// Per-run cells (median over workers) of that configuration, usec.
    pub medians: Vec<f64>,
    /// Mean of `medians`.
    pub mean: f64,
    /// The one-worker configuration the ratio is relative to (`s16t1`).
    pub base_config: String,
    pub base_medians: Vec<f64>,
    /// mean / mean of the base.
    pub ratio: f64,
    /// Over every (run, base run) pair: min(medians) / max(base), max(medians) / min(base).
    pub ratio_lo: f64,
    pub ratio_hi: f64,
}

fn config(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.strip_prefix('s')?.split_once('t')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn cell(s: &str) -> Option<AnchorCell> {
    let (m, rest) = s.split_once(" (")?;
    let (lo, hi) = rest.strip_suffix(')')?.split_once("..")?;
    Some(AnchorCell {
        median: m.trim().parse().ok()?,
        min: lo.trim().parse().ok()?,
        max: hi.trim().parse().ok()?,
    })
}

/// Parses the reference file; lines that are not table rows of that shape are header text
/// (before the table) or ignored.
pub fn parse(file: &str, text: &str) -> Anchor {
    let mut a = Anchor { file: file.to_string(), ..Default::default() };
    let mut in_table = false;
    for line in text.lines() {
        let t = line.trim();
        if !t.starts_with('|') {
            if !in_table && !t.is_empty() {
                a.header.push(t.to_string());
            }
            continue;
        }
        in_table = true;
        let cols: Vec<&str> = t.trim_matches('|').split('|').map(str::trim).collect();
        if cols.len() < 3 {
            continue;
        }
        let Some((smp, threads)) = config(cols[0]) else { continue };
        let runs: Vec<AnchorCell> = cols[2..].iter().filter_map(|c| cell(c)).collect();
        if runs.is_empty() {
            continue;
        }
        a.rows.push(AnchorRow { smp, threads, test: cols[1].to_string(), runs });
    }
    a
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

impl Anchor {
    fn row(&self, smp: u32, threads: u32, test: &str) -> Option<&AnchorRow> {
        self.rows.iter().find(|r| r.smp == smp && r.threads == threads && r.test == test)
    }

    /// Largest -smp with a one-worker row for `test` (`s16t1`): the base of the ratios.
    fn base(&self, test: &str) -> Option<&AnchorRow> {
        self.rows.iter().filter(|r| r.threads == 1 && r.test == test).max_by_key(|r| r.smp)
    }

    /// Linux's `s<n>t<n>` (n workers, one per CPU) relative to its one-worker base
    /// (`s<max>t1`); for n = 1 the base itself (ratio 1).
    pub fn workers_point(&self, test: &str, n: u32) -> Option<AnchorPoint> {
        let base = self.base(test)?;
        let row = if n == 1 { base } else { self.row(n, n, test)? };
        let medians: Vec<f64> = row.runs.iter().map(|c| c.median).collect();
        let base_medians: Vec<f64> = base.runs.iter().map(|c| c.median).collect();
        let fold = |v: &[f64], f: fn(f64, f64) -> f64, init: f64| v.iter().copied().fold(init, f);
        let (mlo, mhi) = (fold(&medians, f64::min, f64::INFINITY), fold(&medians, f64::max, 0.0));
        let (blo, bhi) =
            (fold(&base_medians, f64::min, f64::INFINITY), fold(&base_medians, f64::max, 0.0));
        let (ratio, ratio_lo, ratio_hi) = if n == 1 {
            (1.0, 1.0, 1.0)
        } else {
            (mean(&medians) / mean(&base_medians), mlo / bhi, mhi / blo)
        };
        Some(AnchorPoint {
            config: format!("s{}t{}", row.smp, row.threads),
            mean: mean(&medians),
            medians,
            base_config: format!("s{}t{}", base.smp, base.threads),
            base_medians,
            ratio,
            ratio_lo,
            ratio_hi,
        })
    }

    /// The largest -smp of the file (16).
    pub fn max_smp(&self) -> u32 {
        self.rows.iter().map(|r| r.smp).max().unwrap_or(0)
    }
}
