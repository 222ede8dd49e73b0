//! Aggregation of the `make bench-linux` boots and the report (markdown; the JSON is the
//! serialized `LinuxReport`).

use super::{scaled_loops, PCPU_OBJECTS};
use crate::parse::{self, ParsedLog, RowSpec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The targets: ours/Linux at most this in instructions per loop (every row) ...
pub const INSTR_TARGET: f64 = 0.2;
/// ... and at most this in wall-clock per loop (fix_size rows).
pub const WALL_TARGET: f64 = 0.3;

/// Log directories: icount at -smp 1 (instructions), icount at -smp 2 (instructions for the
/// ns/instr figure; optional), wall-clock at -smp 2.
pub const MODES: [&str; 3] = ["icount", "icount-smp2", "wall"];
const OPTIONAL_MODE: &str = "icount-smp2";
pub const SIDES: [&str; 2] = ["ours", "linux"];

#[derive(Debug, Clone, Serialize)]
pub struct Boot {
    pub mode: String,
    pub side: String,
    pub run: u32,
    pub log: String,
    /// QEMU's exit status from the `HOST: qemu rc=` trailer (124 = timeout).
    pub rc: Option<i64>,
    /// Host seconds for the whole boot.
    pub wall_s: Option<f64>,
    /// The QEMU command line (`HOST: qemu-system-...` header line).
    pub command: Option<String>,
    /// Our kernel's `test_vmalloc: params` header (first one).
    pub params: Option<String>,
    pub problems: Vec<String>,
}

/// One kernel's values of a row: per run, and their aggregate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    /// One value per boot that has the row (in run order).
    pub samples: Vec<f64>,
    pub mean: Option<f64>,
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Side {
    fn of(samples: Vec<f64>) -> Side {
        if samples.is_empty() {
            return Side::default();
        }
        let mut s = samples.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        let k = s.len() / 2;
        let median = if s.len() % 2 == 1 { s[k] } else { (s[k - 1] + s[k]) / 2.0 };
        Side {
            mean: Some(s.iter().sum::<f64>() / s.len() as f64),
            median: Some(median),
            min: s.first().copied(),
            max: s.last().copied(),
            samples,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    /// `<test> p:<n> h:<0|1> l:<nominal loops>` (the seed's row).
    pub row: String,
    pub test: String,
    pub p: u64,
    pub h: u8,
    pub nominal_loops: u64,
    /// Loops both kernels ran (nominal x loop scale).
    pub loops: u64,
    /// "loop", or "object" for pcpu_alloc_test (35000 objects whatever the loop count).
    pub per: String,
    /// Guest instructions per loop under -icount shift=0 (avg usec x 1000 / loops).
    pub instr_ours: Side,
    pub instr_linux: Side,
    /// ours mean / Linux mean.
    pub instr_ratio: Option<f64>,
    pub instr_over_target: bool,
    /// Wall-clock usec per loop (avg / loops).
    pub wall_ours: Side,
    pub wall_linux: Side,
    /// ours median / Linux median.
    pub wall_ratio: Option<f64>,
    /// The wall-clock target applies to fix_size rows.
    pub wall_target_applies: bool,
    pub wall_over_target: bool,
    /// Guest instructions per loop under -icount shift=0 at -smp 2 (the wall runs' CPU count).
    pub instr_smp2_ours: Side,
    pub instr_smp2_linux: Side,
    /// Wall ns per guest instruction: wall usec per loop (median) x 1000 / instructions per
    /// loop (mean) at -smp 2 when measured (`ns_basis` "smp2"), else at -smp 1 ("smp1").
    pub ns_basis: String,
    pub ns_per_instr_ours: Option<f64>,
    pub ns_per_instr_linux: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinuxReport {
    /// `host.txt`: key -> value (start, loadavg_before/after, nproc, cpu_model, qemu, linux, ...).
    pub host: BTreeMap<String, String>,
    pub loop_scale: f64,
    pub instr_target: f64,
    pub wall_target: f64,
    pub boots: Vec<Boot>,
    pub rows: Vec<RowResult>,
    /// Geometric means over the rows that have both values.
    pub geomean_instr_ratio: Option<f64>,
    pub geomean_wall_ratio: Option<f64>,
    pub problems: Vec<String>,
}

fn read_host(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// `run<r>.log` files of a directory, by run number.
fn run_logs(dir: &Path) -> Vec<(u32, std::path::PathBuf)> {
    let mut v: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let r = name.strip_prefix("run")?.strip_suffix(".log")?.parse().ok()?;
                    Some((r, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Parses one boot's log through `crate::parse` (strict first; on an error the lenient parse
/// keeps what it can and the errors become the boot's problems).
pub fn read_boot(mode: &str, side: &str, run: u32, path: &Path) -> (Boot, Option<ParsedLog>) {
    let name = path.display().to_string();
    let mut b = Boot {
        mode: mode.into(),
        side: side.into(),
        run,
        log: name.clone(),
        rc: None,
        wall_s: None,
        command: None,
        params: None,
        problems: vec![],
    };
    let bytes = match std::fs::read(path) {
        Ok(x) => x,
        Err(e) => {
            b.problems.push(format!("{name}: {e}"));
            return (b, None);
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    b.command = text
        .lines()
        .find_map(|l| l.strip_prefix("HOST: ").filter(|c| c.starts_with("qemu-system")))
        .map(str::to_string);
    let log = match parse::parse_log(&name, &text) {
        Ok(l) => l,
        Err(e) => {
            b.problems.push(e.to_string());
            parse::parse_log_lenient(&name, &text)
        }
    };
    match &log.host {
        Some(h) => {
            b.rc = Some(h.rc);
            b.wall_s = Some(h.wall_s);
            if h.rc == 124 {
                b.problems.push(format!("{name}: timed out (killed)"));
            } else if h.rc != 0 {
                b.problems.push(format!("{name}: QEMU exited with status {}", h.rc));
            }
        }
        None => b.problems.push(format!("{name}: no `HOST: qemu rc=` trailer (interrupted?)")),
    }
    b.params = log.params.iter().find(|p| p.source == "kernel").map(|p| p.line_text());
    for s in log.summaries.iter().filter(|s| s.unexpected_failure()) {
        b.problems.push(format!("{name}:{}: {} failed: {}", s.line, s.name, s.failed));
    }
    for l in log.leaks.iter().filter(|l| !l.ok) {
        b.problems.push(format!("{name}:{}: leak line of {} says LOST", l.line, l.name));
    }
    if let Some(t) = log.totals.as_ref().filter(|t| t.failed > 0) {
        b.problems.push(format!("{name}:{}: {} failed", t.line, t.failed));
    }
    (b, Some(log))
}

/// The per-loop value of `row` in one log (mean over its workers' Summary lines), None when
/// the row is missing. Checks the loop count against `loops`.
fn row_value(
    log: &ParsedLog,
    row: &RowSpec,
    loops: u64,
    problems: &mut Vec<String>,
) -> Option<f64> {
    let sums: Vec<_> = log.summaries.iter().filter(|s| s.row.as_ref() == Some(row)).collect();
    if sums.is_empty() {
        problems.push(format!("{}: no Summary line for row `{row}`", log.file));
        return None;
    }
    let mut v = 0.0;
    for s in &sums {
        if s.loops != loops {
            problems.push(format!(
                "{}:{}: row `{row}` ran {} loops, expected {loops}",
                log.file, s.line, s.loops
            ));
        }
        let div = if s.name == "pcpu_alloc_test" { PCPU_OBJECTS } else { s.loops.max(1) };
        v += s.avg_usec as f64 / div as f64;
    }
    Some(v / sums.len() as f64)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn geomean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let logs: Vec<f64> = v.filter(|x| *x > 0.0).map(f64::ln).collect();
    if logs.is_empty() {
        return None;
    }
    Some((logs.iter().sum::<f64>() / logs.len() as f64).exp())
}

/// Reads `out/{icount,wall}/{ours,linux}/run<r>.log` and `out/host.txt`.
pub fn collect(out: &Path, rows: &[RowSpec], loop_scale: f64) -> anyhow::Result<LinuxReport> {
    let host = read_host(&out.join("host.txt"));
    let mut boots = vec![];
    // (mode, side) -> parsed logs
    let mut logs: BTreeMap<(usize, usize), Vec<ParsedLog>> = BTreeMap::new();
    let mut problems = vec![];
    for (mi, mode) in MODES.iter().enumerate() {
        for (si, side) in SIDES.iter().enumerate() {
            let files = run_logs(&out.join(mode).join(side));
            if files.is_empty() && *mode != OPTIONAL_MODE {
                problems.push(format!("no {mode} logs of {side} in {}", out.display()));
            }
            for (r, f) in files {
                let (b, log) = read_boot(mode, side, r, &f);
                problems.extend(b.problems.iter().cloned());
                boots.push(b);
                if let Some(l) = log {
                    logs.entry((mi, si)).or_default().push(l);
                }
            }
        }
    }
    let mut results = vec![];
    for row in rows {
        let loops = scaled_loops(row.l, loop_scale);
        let mut side = |mi: usize, si: usize, k: f64| {
            let v = logs
                .get(&(mi, si))
                .map(|ls| {
                    ls.iter()
                        .filter_map(|l| row_value(l, row, loops, &mut problems))
                        .map(|x| x * k)
                        .collect()
                })
                .unwrap_or_default();
            Side::of(v)
        };
        // icount: 1 usec = 1000 guest instructions
        let (io, il) = (side(0, 0, 1000.0), side(0, 1, 1000.0));
        let (i2o, i2l) = (side(1, 0, 1000.0), side(1, 1, 1000.0));
        let (wo, wl) = (side(2, 0, 1.0), side(2, 1, 1.0));
        let smp2 = i2o.mean.is_some() && i2l.mean.is_some();
        let (no, nl) = if smp2 { (i2o.mean, i2l.mean) } else { (io.mean, il.mean) };
        let instr_ratio = ratio(io.mean, il.mean);
        let wall_ratio = ratio(wo.median, wl.median);
        let wall_target_applies = row.name == "fix_size_alloc_test";
        results.push(RowResult {
            row: row.to_string(),
            test: row.name.clone(),
            p: row.p,
            h: row.h,
            nominal_loops: row.l,
            loops,
            per: if row.name == "pcpu_alloc_test" { "object" } else { "loop" }.into(),
            instr_over_target: instr_ratio.is_some_and(|r| r > INSTR_TARGET),
            wall_over_target: wall_target_applies && wall_ratio.is_some_and(|r| r > WALL_TARGET),
            ns_basis: if smp2 { "smp2" } else { "smp1" }.into(),
            ns_per_instr_ours: ratio(wo.median.map(|w| w * 1000.0), no),
            ns_per_instr_linux: ratio(wl.median.map(|w| w * 1000.0), nl),
            instr_smp2_ours: i2o,
            instr_smp2_linux: i2l,
            instr_ours: io,
            instr_linux: il,
            instr_ratio,
            wall_ours: wo,
            wall_linux: wl,
            wall_ratio,
            wall_target_applies,
        });
    }
    Ok(LinuxReport {
        host,
        loop_scale,
        instr_target: INSTR_TARGET,
        wall_target: WALL_TARGET,
        boots,
        geomean_instr_ratio: geomean(results.iter().filter_map(|r| r.instr_ratio)),
        geomean_wall_ratio: geomean(results.iter().filter_map(|r| r.wall_ratio)),
        rows: results,
        problems,
    })
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn rat(v: Option<f64>, over: bool) -> String {
    match v {
        None => "-".into(),
        Some(x) => format!("{x:.3}{}", if over { " !" } else { "" }),
    }
}

fn host<'a>(r: &'a LinuxReport, k: &str) -> &'a str {
    r.host.get(k).map(String::as_str).unwrap_or("?")
}

fn row_label(r: &RowResult) -> String {
    let per = if r.per == "loop" { String::new() } else { format!(" (per {})", r.per) };
    format!("{} p:{} h:{}{per}", r.test, r.p, r.h)
}

pub fn render(r: &LinuxReport) -> String {
    let mut s = String::new();
    let first = |mode: &str, side: &str| {
        r.boots.iter().find(|b| b.mode == mode && b.side == side && b.command.is_some())
    };
    let runs = |mode: &str, side: &str| {
        r.boots.iter().filter(|b| b.mode == mode && b.side == side).count()
    };
    let _ = writeln!(s, "# make bench-linux: ours vs Linux 6.12 on the same QEMU\n");
    let _ = writeln!(
        s,
        "{}; host: {} cores, {}; {}; Linux {}. Boots took {} s.\n",
        host(r, "start"),
        host(r, "nproc"),
        host(r, "cpu_model"),
        host(r, "qemu"),
        host(r, "linux"),
        host(r, "boots_s"),
    );
    let _ = writeln!(
        s,
        "**Wall-clock numbers are noisy**: QEMU TCG on a shared {}-core host (other QEMUs and \
         builds may run at the same time); load average (1/5/15 min) before: {}, after: {}. \
         Instructions (-icount) do not depend on the host.\n",
        host(r, "nproc"),
        host(r, "loadavg_before"),
        host(r, "loadavg_after"),
    );
    let loops: Vec<String> = {
        let mut v: Vec<u64> = r.rows.iter().map(|x| x.loops).collect();
        v.sort_unstable();
        v.dedup();
        v.iter().rev().map(|x| x.to_string()).collect()
    };
    let _ = writeln!(
        s,
        "Both kernels: `{}` (command lines below), one worker (`nr_threads=1`), sequential \
         order, the same loop count per row: the seed's loops x {} ({}).\n",
        host(r, "guest"),
        r.loop_scale,
        loops.join(" / ")
    );
    let _ = writeln!(
        s,
        "- **instr/loop**: `-icount shift=0 -smp 1` (1 usec of guest time = 1000 guest \
         instructions), Summary avg x 1000 / loops, mean of {} boot(s) of ours and {} of Linux",
        runs("icount", "ours"),
        runs("icount", "linux")
    );
    let _ = writeln!(
        s,
        "- **wall us/loop**: `-smp 2`, no icount, Summary avg / loops, median of {} boots of ours \
         and {} of Linux, alternating (ours, Linux, ours, Linux, ...)",
        runs("wall", "ours"),
        runs("wall", "linux")
    );
    let smp2 = r.rows.iter().any(|x| x.ns_basis == "smp2");
    if smp2 {
        let _ = writeln!(
            s,
            "- **ns/instr**: wall us/loop x 1000 / instructions per loop at the same `-smp 2` \
             (`-icount shift=0 -smp 2`, {} boot(s) each: table below), per kernel",
            runs("icount-smp2", "ours").min(runs("icount-smp2", "linux"))
        );
    } else {
        let _ = writeln!(
            s,
            "- **ns/instr**: wall us/loop (-smp 2) x 1000 / instr/loop (-smp 1; no `-smp 2` \
             icount boots), per kernel"
        );
    }
    let _ = writeln!(
        s,
        "- `!`: above the issue's target, ours/Linux > {INSTR_TARGET} in instructions (every \
         row) or > {WALL_TARGET} in wall-clock (fix_size rows)\n"
    );
    let _ = writeln!(
        s,
        "| row | loops | ours instr/loop | Linux instr/loop | ours/Linux | ours wall us/loop | \
         Linux wall us/loop | ours/Linux | ours ns/instr | Linux ns/instr |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for x in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row_label(x),
            x.loops,
            num(x.instr_ours.mean),
            num(x.instr_linux.mean),
            rat(x.instr_ratio, x.instr_over_target),
            num(x.wall_ours.median),
            num(x.wall_linux.median),
            rat(x.wall_ratio, x.wall_over_target),
            num(x.ns_per_instr_ours),
            num(x.ns_per_instr_linux),
        );
    }
    let n_instr = r.rows.iter().filter(|x| x.instr_ratio.is_some()).count();
    let over_instr = r.rows.iter().filter(|x| x.instr_over_target).count();
    let n_wall = r.rows.iter().filter(|x| x.wall_target_applies && x.wall_ratio.is_some()).count();
    let over_wall = r.rows.iter().filter(|x| x.wall_over_target).count();
    let _ = writeln!(
        s,
        "\nGeometric mean of ours/Linux: instructions {} ({} rows), wall-clock {}. Above the \
         target: {over_instr} of {n_instr} rows in instructions (> {INSTR_TARGET}), \
         {over_wall} of {n_wall} fix_size rows in wall-clock (> {WALL_TARGET}).",
        rat(r.geomean_instr_ratio, false),
        n_instr,
        rat(r.geomean_wall_ratio, false),
    );
    if smp2 {
        render_smp2(r, &mut s);
    }
    render_runs(r, &mut s);
    let _ = writeln!(s, "\n## Command lines\n");
    for mode in MODES {
        for side in SIDES {
            if let Some(b) = first(mode, side) {
                let _ = writeln!(s, "- {mode}, {side}: `{}`", b.command.as_deref().unwrap_or(""));
            }
        }
    }
    if let Some(p) = r.boots.iter().find_map(|b| b.params.as_ref()) {
        let _ = writeln!(s, "- our kernel's params header: `{p}`");
    }
    render_notes(r, &mut s);
    if !r.problems.is_empty() {
        let _ = writeln!(s, "\n## Problems\n");
        for p in &r.problems {
            let _ = writeln!(s, "- {p}");
        }
    }
    s
}

/// Instructions per loop at -smp 1 and -smp 2 (the basis of ns/instr).
fn render_smp2(r: &LinuxReport, s: &mut String) {
    let _ = writeln!(
        s,
        "\n## Instructions per loop at -smp 1 and -smp 2 (-icount shift=0)\n\n\
         At -smp 2 the idle CPU's instructions (ticks, IPIs) count too, and some tests do more \
         work with more CPUs: full_fit's setup and the lazy-purge threshold (lazy_max_pages) \
         grow with fls(CPUs).\n\n\
         | row | ours -smp 1 | ours -smp 2 | Linux -smp 1 | Linux -smp 2 | ours/Linux -smp 2 |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    for x in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            row_label(x),
            num(x.instr_ours.mean),
            num(x.instr_smp2_ours.mean),
            num(x.instr_linux.mean),
            num(x.instr_smp2_linux.mean),
            rat(ratio(x.instr_smp2_ours.mean, x.instr_smp2_linux.mean), false),
        );
    }
}

/// Per-boot wall-clock values and the boots' host seconds.
fn render_runs(r: &LinuxReport, s: &mut String) {
    let n = r
        .rows
        .iter()
        .map(|x| x.wall_ours.samples.len().max(x.wall_linux.samples.len()))
        .max()
        .unwrap_or(0);
    if n > 1 {
        let _ = writeln!(s, "\n## Wall-clock us/loop per boot (-smp 2)\n");
        let mut head = String::from("| row |");
        let mut sep = String::from("|---|");
        for side in ["ours", "Linux"] {
            for i in 1..=n {
                let _ = write!(head, " {side} {i} |");
                sep.push_str("---:|");
            }
        }
        let _ = writeln!(s, "{head}\n{sep}");
        for x in &r.rows {
            let mut line = format!("| {} |", row_label(x));
            for side in [&x.wall_ours, &x.wall_linux] {
                for i in 0..n {
                    let _ = write!(line, " {} |", num(side.samples.get(i).copied()));
                }
            }
            let _ = writeln!(s, "{line}");
        }
    }
    let _ = writeln!(s, "\n## Boots\n\n| boot | rc | host s |\n|---|---:|---:|");
    for b in &r.boots {
        let _ = writeln!(
            s,
            "| {}/{}/run{} | {} | {} |",
            b.mode,
            b.side,
            b.run,
            b.rc.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
            b.wall_s.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into()),
        );
    }
}

fn render_notes(r: &LinuxReport, s: &mut String) {
    let settle = format!(
        "Linux loads the module once its uptime reaches {} s (`tvb.settle`): in its first ~2 s \
         after boot Linux 6.12 runs the same rows up to 2x slower, also in instructions (fix_size \
         p:1 8.4k -> 4.6k per loop, p:64 80k -> 40k, the same row before and after), a boot \
         transient unrelated to vmalloc's code; idle time costs no instructions under icount.",
        host(r, "settle")
    );
    let notes = [
        settle.as_str(),
        "Linux 6.12 predates large-order vmalloc pages (a06157804399) and the bulk vfree: it \
         allocates vmalloc pages at order 0 and frees them one by one. Ours runs its defaults \
         (`mm.vfree=bulk`, `mm.vmalloc_large_order=on`).",
        "Linux: Debian's arm64 6.12 kernel (generic config: PREEMPT_VOLUNTARY, KFENCE, memcg, \
         ...) with `init_on_alloc=0 nokaslr` (no page zeroing on allocation, no KASLR and \
         so no forced KPTI), as the anchor (shared/linux-anchor) measured it; test_vmalloc.ko \
         is built out of tree from the same version's lib/test_vmalloc.c \
         (scripts/linux-anchor/).",
        "Ours runs the seed suite in one boot, each row starting cold (caches and pcp lists \
         drained); Linux boots once and loads test_vmalloc.ko once per row, in the same order, \
         each load starting from the state the previous one left.",
        "pcpu_alloc_test ignores the loop count on both sides (35000 __alloc_percpu + \
         free_percpu): its figures are per object.",
        "full_fit_alloc_test and long_busy_list_alloc_test include their setup in avg on both \
         sides (full_fit: 2 x fls(CPUs) x 8192 one-page vmallocs, twice as many at -smp 2; \
         long_busy_list: 15000), so their per-loop figures carry setup / loops.",
        "Under -icount a Linux boot is not fully deterministic (timers, RCU, workqueues): \
         about 1-2% between boots. Ours repeats exactly (fixed seed).",
    ];
    let _ = writeln!(s, "\n## Notes\n");
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
}
