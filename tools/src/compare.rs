//! Grouping of Summary samples by row and variant, and the comparison report (seed-shaped
//! text table, markdown, JSON).

use crate::parse::{self, ParsedLog, RowKey};
use crate::stats::{self, Marker, PctOf, Summary};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Samples of one variant: row key -> one value per log (mean of that log's Summary avgs for
/// the row: several workers or repeated loads in one boot give one sample).
#[derive(Debug, Clone, Default)]
pub struct VariantData {
    pub name: String,
    pub files: Vec<String>,
    /// Row values (`Summary::value`: avg, setup-scaled when the log has setup lines).
    pub samples: BTreeMap<RowKey, Vec<f64>>,
    /// Raw Summary avg per log (parallel to `samples`; absent = same as `samples`).
    pub raw: BTreeMap<RowKey, Vec<f64>>,
    /// Mean `test_vmalloc: setup` usec per log, None when that log has no setup line.
    pub setup: BTreeMap<RowKey, Vec<Option<f64>>>,
    /// Per log: was the value setup-scaled (setup line and loop_scale present)?
    pub scaled: BTreeMap<RowKey, Vec<bool>>,
    pub icount: bool,
}

impl VariantData {
    pub fn new(name: &str) -> Self {
        VariantData { name: name.to_string(), ..Default::default() }
    }

    /// Adds one parsed log; `tag` distinguishes cell sets (e.g. `smp:4`).
    pub fn add_log(&mut self, log: &ParsedLog, tag: &str) {
        let mut per_key: BTreeMap<RowKey, Vec<&parse::Summary>> = BTreeMap::new();
        for s in &log.summaries {
            per_key.entry(parse::row_key(log, s, tag)).or_default().push(s);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        for (k, v) in per_key {
            let vals: Vec<f64> = v.iter().map(|s| s.value()).collect();
            let raw: Vec<f64> = v.iter().map(|s| s.avg_usec as f64).collect();
            let setups: Vec<f64> = v.iter().filter_map(|s| s.setup_usec).collect();
            self.samples.entry(k.clone()).or_default().push(mean(&vals));
            self.raw.entry(k.clone()).or_default().push(mean(&raw));
            self.setup
                .entry(k.clone())
                .or_default()
                .push((!setups.is_empty()).then(|| mean(&setups)));
            self.scaled.entry(k).or_default().push(v.iter().any(|s| s.setup_scaled()));
        }
        self.icount |= log.icount();
        self.files.push(log.file.clone());
    }
}

/// Expands `NAME=LOGDIR_OR_GLOB_OR_FILE` into (name, files). Directories are searched
/// recursively for `*.log`.
pub fn expand_source(spec: &str) -> Result<(String, Vec<PathBuf>)> {
    let (name, src) = spec
        .split_once('=')
        .with_context(|| format!("expected NAME=LOGDIR_OR_GLOB, got {spec:?}"))?;
    if name.is_empty() {
        bail!("empty variant name in {spec:?}");
    }
    let p = Path::new(src);
    let mut files = vec![];
    if p.is_dir() {
        collect_logs(p, &mut files)?;
    } else if p.is_file() {
        files.push(p.to_path_buf());
    } else {
        for e in glob::glob(src).with_context(|| format!("bad glob {src:?}"))? {
            let e = e?;
            if e.is_dir() {
                collect_logs(&e, &mut files)?;
            } else {
                files.push(e);
            }
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        bail!("{name}: no log files match {src:?}");
    }
    Ok((name.to_string(), files))
}

fn collect_logs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            collect_logs(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "log") {
            out.push(p);
        }
    }
    Ok(())
}

/// Parses `files` into a VariantData (tag from each path's `*-smp<N>` parent dir).
pub fn load_variant(name: &str, files: &[PathBuf]) -> Result<VariantData> {
    let mut v = VariantData::new(name);
    let mut errors = vec![];
    for f in files {
        match parse::parse_file(f) {
            Ok(log) => v.add_log(&log, &parse::tag_from_path(f)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        bail!("{} log(s) failed to parse:\n  {}", errors.len(), errors.join("\n  "));
    }
    Ok(v)
}

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub variant: String,
    pub n: usize,
    pub mean: f64,
    pub sd: f64,
    pub ci_half: Option<f64>,
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
    pub samples: Vec<f64>,
    /// % change vs base (positive = faster); None for the base itself or without data.
    pub pct: Option<f64>,
    /// |base mean - variant mean| / base mean x 100 (compared with `min_effect`).
    pub effect_pct: Option<f64>,
    /// Marker from the CIs alone (before the min_effect threshold).
    pub marker_ci: Option<Marker>,
    /// Final marker: `marker_ci`, None when `effect_pct < min_effect`.
    pub marker: Option<Marker>,
    /// Raw Summary avg per log (usec; `samples` are the setup-scaled values when the row is).
    pub raw_samples: Vec<f64>,
    /// Mean `test_vmalloc: setup` usec per log (null: no setup line).
    pub setup_samples: Vec<Option<f64>>,
    /// % change interval from the Welch 95% CI of the difference (chart error bars).
    pub pct_lo: Option<f64>,
    pub pct_hi: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub key: RowKey,
    pub label: String,
    /// Values are `avg - setup + setup x loop_scale` (marked `*` in the table).
    pub setup_scaled: bool,
    /// Some logs of this row were setup-scaled and others not (mixed kernels?).
    pub setup_mixed: bool,
    /// One entry per variant, base first; None when that variant has no sample for the row.
    pub cells: Vec<Option<Cell>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub benchmark: String,
    pub base: String,
    pub variants: Vec<String>,
    pub unit: String,
    pub icount: bool,
    pub pct_of: PctOf,
    pub pct_formula: String,
    /// Minimum effect in % of the base mean: smaller differences are never marked.
    pub min_effect: f64,
    pub ci_method: String,
    pub rows: Vec<Row>,
    pub files: BTreeMap<String, Vec<String>>,
}

pub const BENCHMARK: &str = "micromm/vmalloc";

/// `build_report_with` and the default minimum effect (`stats::DEFAULT_MIN_EFFECT`).
pub fn build_report(data: &[VariantData], pct_of: PctOf) -> Report {
    build_report_with(data, pct_of, stats::DEFAULT_MIN_EFFECT)
}

/// Checks a `--min-effect` / `min_effect` value (percent, finite, >= 0).
pub fn check_min_effect(x: f64) -> Result<f64> {
    if !x.is_finite() || x < 0.0 {
        bail!("min_effect must be a percentage >= 0, got {x}");
    }
    Ok(x)
}

pub fn build_report_with(data: &[VariantData], pct_of: PctOf, min_effect: f64) -> Report {
    let mut keys: Vec<RowKey> = data.iter().flat_map(|d| d.samples.keys().cloned()).collect();
    keys.sort();
    keys.dedup();
    let mut rows = vec![];
    for key in keys {
        let sums: Vec<Option<Summary>> =
            data.iter().map(|d| d.samples.get(&key).and_then(|s| Summary::of(s))).collect();
        let base = sums[0];
        let mut cells = vec![];
        for (i, d) in data.iter().enumerate() {
            let Some(s) = sums[i] else {
                cells.push(None);
                continue;
            };
            let (pct, eff, mk_ci, mk, pi) = match (i, base) {
                (0, _) | (_, None) => (None, None, None, None, None),
                (_, Some(b)) => (
                    Some(stats::pct_change(b.mean, s.mean, pct_of)),
                    Some(stats::effect_pct(b.mean, s.mean)),
                    Some(stats::marker(&b, &s)),
                    Some(stats::marker_min(&b, &s, min_effect)),
                    stats::pct_interval(&b, &s, pct_of),
                ),
            };
            let samples = d.samples[&key].clone();
            let raw_samples = d.raw.get(&key).cloned().unwrap_or_else(|| samples.clone());
            let setup_samples =
                d.setup.get(&key).cloned().unwrap_or_else(|| vec![None; samples.len()]);
            cells.push(Some(Cell {
                variant: d.name.clone(),
                n: s.n,
                mean: s.mean,
                sd: s.sd,
                ci_half: s.ci_half,
                ci_lo: s.ci().map(|c| c.0),
                ci_hi: s.ci().map(|c| c.1),
                samples,
                pct,
                effect_pct: eff,
                marker_ci: mk_ci,
                marker: mk,
                raw_samples,
                setup_samples,
                pct_lo: pi.map(|p| p.0),
                pct_hi: pi.map(|p| p.1),
            }));
        }
        let flags: Vec<bool> =
            data.iter().flat_map(|d| d.scaled.get(&key).cloned().unwrap_or_default()).collect();
        let setup_scaled = flags.iter().any(|f| *f);
        rows.push(Row {
            label: key.label(),
            key,
            cells,
            setup_scaled,
            setup_mixed: setup_scaled && !flags.iter().all(|f| *f),
        });
    }
    Report {
        benchmark: BENCHMARK.to_string(),
        base: data[0].name.clone(),
        variants: data.iter().map(|d| d.name.clone()).collect(),
        unit: "usec".into(),
        icount: data.iter().any(|d| d.icount),
        pct_of,
        pct_formula: pct_of.formula().to_string(),
        min_effect,
        ci_method: "CI: Student t, two-sided, df = n-1".into(),
        rows,
        files: data.iter().map(|d| (d.name.clone(), d.files.clone())).collect(),
    }
}

/// Result Class: `<label> (usec)`, with a trailing ` *` when the row is setup-scaled.
pub fn class_label(r: &Report, row: &Row) -> String {
    let star = if row.setup_scaled { " *" } else { "" };
    format!("{} ({}){star}", row.label, r.unit)
}

fn cell_text(c: &Option<Cell>, is_base: bool) -> String {
    match c {
        None => "n/a".into(),
        Some(c) if is_base => format!("{:.2}", c.mean),
        Some(c) => match c.pct {
            Some(p) => format!("{}{:.2}%", c.marker.unwrap_or(Marker::None).text(), p),
            None => "n/a".into(),
        },
    }
}

/// Minimum widths (incl. the two padding blanks) of the value columns, as in the seed table.
const MIN_BASE_W: usize = 19;
const MIN_VARIANT_W: usize = 20;

/// The seed-shaped grid table (without footnotes).
pub fn render_grid(r: &Report) -> String {
    let classes: Vec<String> = r.rows.iter().map(|row| class_label(r, row)).collect();
    let mut cols: Vec<Vec<String>> = vec![];
    // column 0: Benchmark, 1: Result Class, 2..: variants
    let mut c0 = vec!["Benchmark".to_string()];
    c0.extend((0..r.rows.len()).map(|i| if i == 0 { r.benchmark.clone() } else { String::new() }));
    cols.push(c0);
    let mut c1 = vec!["Result Class".to_string()];
    c1.extend(classes);
    cols.push(c1);
    for (vi, v) in r.variants.iter().enumerate() {
        let mut c = vec![v.clone()];
        c.extend(r.rows.iter().map(|row| cell_text(&row.cells[vi], vi == 0)));
        cols.push(c);
    }
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let w = c.iter().map(|s| s.chars().count()).max().unwrap_or(0) + 2;
            match i {
                0 | 1 => w,
                2 => w.max(MIN_BASE_W),
                _ => w.max(MIN_VARIANT_W),
            }
        })
        .collect();
    let border = |ch: char| -> String {
        let mut s = String::from("+");
        for w in &widths {
            s.extend(std::iter::repeat_n(ch, *w));
            s.push('+');
        }
        s
    };
    let line = |ri: usize| -> String {
        let mut s = String::from("|");
        for (ci, c) in cols.iter().enumerate() {
            let t = &c[ri];
            s.push(' ');
            s.push_str(t);
            s.extend(std::iter::repeat_n(' ', widths[ci] - 1 - t.chars().count()));
            s.push('|');
        }
        s
    };
    let mut out = String::new();
    out.push_str(&border('-'));
    out.push('\n');
    out.push_str(&line(0));
    out.push('\n');
    out.push_str(&border('='));
    out.push('\n');
    for ri in 1..=r.rows.len() {
        out.push_str(&line(ri));
        out.push('\n');
    }
    out.push_str(&border('-'));
    out.push('\n');
    out
}

/// "runs: base n=6, patch n=6" (ranges when rows differ).
pub fn runs_line(r: &Report) -> String {
    let parts: Vec<String> = r
        .variants
        .iter()
        .enumerate()
        .map(|(vi, v)| {
            let ns: Vec<usize> =
                r.rows.iter().filter_map(|row| row.cells[vi].as_ref().map(|c| c.n)).collect();
            match (ns.iter().min(), ns.iter().max()) {
                (Some(a), Some(b)) if a == b => format!("{v} n={a}"),
                (Some(a), Some(b)) => format!("{v} n={a}..{b}"),
                _ => format!("{v} n=0"),
            }
        })
        .collect();
    format!("runs: {}", parts.join(", "))
}

pub fn footnotes(r: &Report) -> Vec<String> {
    let mut v = vec![
        format!("{} (one sample per boot log; several workers or loads of a row in one log are averaged)", runs_line(r)),
        format!(
            "{} = mean of Summary `avg` (usec, whole test); variant columns = % change vs {}, >0 is faster: {}",
            r.base, r.base, r.pct_formula
        ),
        format!(
            "(I)/(R) = significant Improvement/Regression: the variant's 95% CI of the mean lies entirely below/above the base's and the difference is at least the minimum effect (no marker: overlap, n < 2, or below it); {}",
            r.ci_method
        ),
        min_effect_note(r.min_effect),
    ];
    if r.rows.iter().any(|row| row.setup_scaled) {
        v.push(SETUP_NOTE.into());
        let mixed: Vec<&str> =
            r.rows.iter().filter(|row| row.setup_mixed).map(|row| row.label.as_str()).collect();
        if !mixed.is_empty() {
            v.push(format!(
                "WARNING: setup-scaled in some logs only (kernels differ?): {}",
                mixed.join("; ")
            ));
        }
    }
    if r.icount {
        v.push("under -icount shift=0 one usec = 1000 guest instructions".into());
    }
    v
}

/// The footnote of rows marked `*`.
pub const SETUP_NOTE: &str = "rows marked * : setup scaled with the loops (test_vmalloc: setup lines): value = avg - setup + setup x loop_scale";

/// "differences below 2.0% are never marked ..."
pub fn min_effect_note(min_effect: f64) -> String {
    if min_effect > 0.0 {
        let m = fmt_pct(min_effect);
        format!(
            "differences below {m}% are never marked (minimum effect: |base mean - variant mean| / base mean x 100 < {m}%; --min-effect)"
        )
    } else {
        "minimum effect 0: any CI separation is marked (--min-effect 0)".into()
    }
}

/// Table plus footnotes, as printed by `compare`/`run`.
pub fn render_text(r: &Report) -> String {
    let mut s = render_grid(r);
    for f in footnotes(r) {
        s.push_str(&f);
        s.push('\n');
    }
    s
}

/// GitHub-flavoured markdown table plus footnotes (and the grid in a text block).
pub fn render_markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!("| Benchmark | Result Class | {} |\n", r.variants.join(" | ")));
    s.push_str(&format!("|---|---|{}\n", "---:|".repeat(r.variants.len())));
    for (i, row) in r.rows.iter().enumerate() {
        let b = if i == 0 { r.benchmark.as_str() } else { "" };
        let vals: Vec<String> =
            row.cells.iter().enumerate().map(|(vi, c)| cell_text(c, vi == 0)).collect();
        s.push_str(&format!("| {} | {} | {} |\n", b, class_label(r, row), vals.join(" | ")));
    }
    s.push('\n');
    for f in footnotes(r) {
        s.push_str(&format!("- {f}\n"));
    }
    s.push_str("\n```text\n");
    s.push_str(&render_grid(r));
    s.push_str("```\n");
    s
}

/// `2.0`, `0.5`, `0.25`: one decimal unless more are needed.
pub fn fmt_pct(x: f64) -> String {
    let one = format!("{x:.1}");
    if one.parse::<f64>() == Ok(x) {
        one
    } else {
        format!("{x}")
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Run-to-run spread per row and variant (markdown): n, coefficient of variation of the
/// per-log values (sd / mean) and the 95% CI half-width as % of the mean; then medians.
/// Used to choose `--min-effect` from a wall-clock run (`make bench-wall`).
pub fn render_spread(r: &Report) -> String {
    let mut s = String::from("Run-to-run spread (CV = sample sd / mean of the per-boot values; CI = 95% CI half-width / mean):\n\n");
    s.push_str("| Result Class |");
    for v in &r.variants {
        s.push_str(&format!(" {v} n | {v} CV | {v} CI |"));
    }
    s.push('\n');
    s.push_str(&format!("|---|{}\n", "---:|---:|---:|".repeat(r.variants.len())));
    let mut cvs: Vec<Vec<f64>> = vec![vec![]; r.variants.len()];
    let mut cis: Vec<Vec<f64>> = vec![vec![]; r.variants.len()];
    let mut worst: Option<(f64, String)> = None;
    for row in &r.rows {
        s.push_str(&format!("| {} |", class_label(r, row)));
        for (vi, c) in row.cells.iter().enumerate() {
            match c {
                Some(c) if c.n >= 2 && c.mean != 0.0 => {
                    let cv = c.sd / c.mean.abs() * 100.0;
                    let ci = c.ci_half.unwrap_or(0.0) / c.mean.abs() * 100.0;
                    cvs[vi].push(cv);
                    cis[vi].push(ci);
                    if worst.as_ref().is_none_or(|w| cv > w.0) {
                        worst = Some((cv, format!("{} ({})", row.label, r.variants[vi])));
                    }
                    s.push_str(&format!(" {} | {cv:.2}% | {ci:.2}% |", c.n));
                }
                Some(c) => s.push_str(&format!(" {} | - | - |", c.n)),
                None => s.push_str(" 0 | - | - |"),
            }
        }
        s.push('\n');
    }
    s.push('\n');
    let mut all_cv = vec![];
    let mut all_ci = vec![];
    for (vi, v) in r.variants.iter().enumerate() {
        all_cv.extend(cvs[vi].iter().copied());
        all_ci.extend(cis[vi].iter().copied());
        if let (Some(a), Some(b)) = (median(&mut cvs[vi]), median(&mut cis[vi])) {
            s.push_str(&format!(
                "{v}: median CV {a:.2}%, median CI half-width {b:.2}% of the mean\n"
            ));
        }
    }
    if let (Some(a), Some(b)) = (median(&mut all_cv), median(&mut all_ci)) {
        s.push_str(&format!(
            "all rows and variants: median CV {a:.2}%, median CI half-width {b:.2}%"
        ));
        if let Some((w, name)) = worst {
            s.push_str(&format!(", largest CV {w:.2}% ({name})"));
        }
        s.push('\n');
    }
    s
}
