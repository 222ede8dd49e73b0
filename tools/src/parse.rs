//! Parser for test_vmalloc serial logs: our kernel's output (no timestamps, newest Linux
//! format plus `test_vmalloc: row|params|leak` lines) and Linux dmesg logs (optional
//! `[    8.402236] ` timestamps, with or without the `xfailed:` field).
//!
//! Grammar (after an optional dmesg timestamp and leading blanks are removed, trailing
//! blanks and `\r` ignored):
//!
//! ```text
//! Summary: <name> passed: <u> failed: <u> [xfailed: <u> ]repeat: <u> loops: <u> avg: <u> usec
//! All test took worker<u>=<u> cycles        (v5.x: All test took CPU<u>=<u> cycles)
//! test_vmalloc: row <name> p:<u> h:<0|1> l:<u>
//! test_vmalloc: params <key>=<value> ...
//! test_vmalloc: leak <name> free_pages <u>-><u> free_va <0xhex>-><0xhex> ok|LOST
//! test_vmalloc: setup <name> usec: <u>     (setup+teardown outside the timed loop, per repeat)
//! <u> passed, <u> failed
//! HOST: row <name> p:<u> h:<0|1> l:<u>      (written by `tvtool run` in row-per-boot mode)
//! HOST: qemu rc=<i> wall_s=<float>          (trailer written by `tvtool run` / run.sh)
//! ANCHOR: load <i>/<n>: tvload <module> <key>=<value> ...   (Linux anchor: params source)
//! ```
//!
//! A line that starts with `Summary:`, `All test took`, `test_vmalloc: row `,
//! `test_vmalloc: params `, `test_vmalloc: leak `, `test_vmalloc: setup `, `HOST: row ` or
//! `HOST: qemu rc=` and does not match its grammar is an error (file and line number). Every
//! other line is ignored.
//!
//! A `setup` line belongs to the Summary lines of the same test under the same row (and params
//! header); it may come before them (the kernel prints it after the test's `leak` line, the
//! Summary lines at the end of the worker). Such a Summary's value is
//! `avg - setup + setup x loop_scale` (`loop_scale` from the params header in force; none = no
//! change): the loops were scaled by `loop_scale`, the setup could not be.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Tests whose failure is expected (xfail in newest Linux). Used only for logs whose
/// Summary lines predate the `xfailed:` field.
pub const XFAIL_TESTS: &[&str] = &["align_shift_alloc_test", "no_block_alloc_test"];

/// Linux's test array, in index (= run_test_mask bit) order.
pub const TESTS: &[&str] = &[
    "fix_size_alloc_test",
    "full_fit_alloc_test",
    "long_busy_list_alloc_test",
    "random_size_alloc_test",
    "fix_align_alloc_test",
    "random_size_align_alloc_test",
    "align_shift_alloc_test",
    "pcpu_alloc_test",
    "kvfree_rcu_1_arg_vmalloc_test",
    "kvfree_rcu_2_arg_vmalloc_test",
    "vm_map_ram_test",
    "no_block_alloc_test",
    "vrealloc_test",
];

pub fn test_index(name: &str) -> Option<usize> {
    TESTS.iter().position(|t| *t == name)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    /// 1-based line number; 0 when the error is about the whole log.
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.msg)
        } else {
            write!(f, "{}: {}", self.file, self.msg)
        }
    }
}

impl std::error::Error for ParseError {}

/// A row declaration: which seed-table row the following Summary lines belong to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RowSpec {
    pub name: String,
    pub p: u64,
    pub h: u8,
    pub l: u64,
}

impl RowSpec {
    /// Parses `<name> p:<u> h:<0|1> l:<u>` (the text after `row `).
    pub fn parse(s: &str) -> Result<RowSpec, String> {
        let toks: Vec<&str> = s.split(' ').collect();
        if toks.len() != 4 {
            return Err(format!(
                "expected `<test_name> p:<n> h:<0|1> l:<loops>`, got {} fields",
                toks.len()
            ));
        }
        let name = ident(toks[0]).ok_or_else(|| format!("bad test name {:?}", toks[0]))?;
        let p = field_u64(toks[1], "p:")?;
        let h = field_u64(toks[2], "h:")?;
        if h > 1 {
            return Err(format!("h must be 0 or 1, got {h}"));
        }
        let l = field_u64(toks[3], "l:")?;
        Ok(RowSpec { name: name.to_string(), p, h: h as u8, l })
    }

    pub fn slug(&self) -> String {
        format!("{}-p{}-h{}-l{}", self.name, self.p, self.h, self.l)
    }
}

impl fmt::Display for RowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} p:{} h:{} l:{}", self.name, self.p, self.h, self.l)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub line: usize,
    pub name: String,
    pub passed: u64,
    pub failed: u64,
    /// None for kernels that predate the xfail change.
    pub xfailed: Option<u64>,
    pub repeat: u64,
    pub loops: u64,
    pub avg_usec: u64,
    /// Worker index from the `All test took worker<i>` line that closes this group.
    pub worker: Option<u64>,
    /// Row in force (kernel `row` line, else a `HOST: row` line).
    pub row: Option<RowSpec>,
    /// Index into `ParsedLog::params` of the header in force, if any.
    pub params: Option<usize>,
    /// Mean of the `test_vmalloc: setup` lines of this test in this row (usec per repeat).
    pub setup_usec: Option<f64>,
    /// `loop_scale` of the params header in force.
    pub loop_scale: Option<f64>,
}

impl Summary {
    /// True when the value is adjusted for the setup part (setup line and loop_scale present).
    pub fn setup_scaled(&self) -> bool {
        self.setup_usec.is_some() && self.loop_scale.is_some()
    }

    /// The row value in usec: `avg`, or with a setup line and a loop_scale
    /// `avg - setup + setup x loop_scale` (= loop_scale x the avg of the full-length test).
    pub fn value(&self) -> f64 {
        match (self.setup_usec, self.loop_scale) {
            (Some(su), Some(ls)) => self.avg_usec as f64 - su + su * ls,
            _ => self.avg_usec as f64,
        }
    }

    /// True when this line reports a failure that is not an expected one.
    pub fn unexpected_failure(&self) -> bool {
        match self.xfailed {
            Some(_) => self.failed > 0,
            None => self.failed > 0 && !XFAIL_TESTS.contains(&self.name.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerTotal {
    pub line: usize,
    /// "worker" (v6+) or "CPU" (v5.x).
    pub label: String,
    pub index: u64,
    pub cycles: u64,
    pub row: Option<RowSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Leak {
    pub line: usize,
    pub name: String,
    pub free_pages_before: u64,
    pub free_pages_after: u64,
    pub free_va_before: u64,
    pub free_va_after: u64,
    /// false when the line says LOST.
    pub ok: bool,
    pub row: Option<RowSpec>,
}

/// `test_vmalloc: setup <name> usec: <u>`: the setup+teardown time of a test outside its
/// timed loop (usec per repeat, the unit of Summary avg).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setup {
    pub line: usize,
    pub name: String,
    pub usec: u64,
    pub row: Option<RowSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    pub line: usize,
    /// "kernel" (`test_vmalloc: params`) or "anchor" (`ANCHOR: load ... tvload`).
    pub source: String,
    pub map: BTreeMap<String, String>,
    /// Keys in line order (for display).
    #[serde(skip)]
    pub order: Vec<String>,
}

impl Params {
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.map.get(key).and_then(|v| v.parse().ok())
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.map.get(key).and_then(|v| parse_bool(v))
    }
    /// `loop_scale` (the kernel prints `loop_scale=0.010000`); None when absent.
    pub fn loop_scale(&self) -> Option<f64> {
        self.map.get("loop_scale").and_then(|v| v.parse().ok())
    }
    /// `key=value ...` in line order.
    pub fn line_text(&self) -> String {
        let keys: Vec<&String> = if self.order.is_empty() {
            self.map.keys().collect()
        } else {
            self.order.iter().collect()
        };
        keys.iter().map(|k| format!("{k}={}", self.map[*k])).collect::<Vec<_>>().join(" ")
    }
    /// The kernel's `mm.*` switches in line order (the variant's name in `summary`).
    pub fn mm_switches(&self) -> Vec<String> {
        let keys: Vec<&String> = if self.order.is_empty() {
            self.map.keys().collect()
        } else {
            self.order.iter().collect()
        };
        keys.iter()
            .filter(|k| k.starts_with("mm."))
            .map(|k| format!("{k}={}", self.map[*k]))
            .collect()
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "Y" | "y" | "true" | "on" | "yes" => Some(true),
        "0" | "N" | "n" | "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostTrailer {
    pub line: usize,
    pub rc: i64,
    pub wall_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub line: usize,
    pub passed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParsedLog {
    pub file: String,
    pub rows: Vec<(usize, RowSpec)>,
    pub host_row: Option<RowSpec>,
    pub params: Vec<Params>,
    pub summaries: Vec<Summary>,
    pub workers: Vec<WorkerTotal>,
    pub leaks: Vec<Leak>,
    pub setups: Vec<Setup>,
    pub totals: Option<Totals>,
    pub host: Option<HostTrailer>,
    /// Problems found by `parse_log_lenient` (always empty from `parse_log`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl ParsedLog {
    /// True when any params header says icount=1.
    pub fn icount(&self) -> bool {
        self.params.iter().any(|p| p.get_bool("icount") == Some(true))
    }
}

fn ident(s: &str) -> Option<&str> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Some(s)
    } else {
        None
    }
}

fn uint(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn field_u64(tok: &str, prefix: &str) -> Result<u64, String> {
    let v =
        tok.strip_prefix(prefix).ok_or_else(|| format!("expected `{prefix}<n>`, got {tok:?}"))?;
    uint(v).ok_or_else(|| format!("`{prefix}` wants an unsigned integer, got {v:?}"))
}

fn hex(s: &str) -> Option<u64> {
    let h = s.strip_prefix("0x")?;
    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(h, 16).ok()
}

/// Removes a dmesg timestamp `[ <digits>.<digits>]` (and one following blank) if present.
pub fn strip_timestamp(line: &str) -> &str {
    let b = line.as_bytes();
    if b.first() != Some(&b'[') {
        return line;
    }
    let Some(close) = line.find(']') else {
        return line;
    };
    let inner = line[1..close].trim_start_matches(' ');
    let ok = match inner.split_once('.') {
        Some((a, f)) => uint(a).is_some() && uint(f).is_some(),
        None => false,
    };
    if !ok {
        return line;
    }
    let rest = &line[close + 1..];
    rest.strip_prefix(' ').unwrap_or(rest)
}

/// `Summary: <name> passed: <P> failed: <F> [xfailed: <X> ]repeat: <R> loops: <L> avg: <T> usec`
/// Returns the fields of the line; `line`, `worker`, `row` and `params` are left for the caller.
pub fn parse_summary(body: &str) -> Result<Summary, String> {
    let rest = body.strip_prefix("Summary: ").ok_or("expected `Summary: <name> ...`")?;
    let toks: Vec<&str> = rest.split(' ').collect();
    let name = toks
        .first()
        .and_then(|t| ident(t))
        .ok_or_else(|| format!("bad test name {:?}", toks.first().copied().unwrap_or("")))?;
    let with_x = toks.len() == 14;
    if toks.len() != 12 && !with_x {
        return Err(format!(
            "expected `Summary: <name> passed: P failed: F [xfailed: X ]repeat: R loops: L avg: T usec`, got {} fields",
            toks.len()
        ));
    }
    let mut keys: Vec<&str> = vec!["passed:", "failed:"];
    if with_x {
        keys.push("xfailed:");
    }
    keys.extend(["repeat:", "loops:", "avg:"]);
    let mut vals = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let kt = toks[1 + 2 * i];
        let vt = toks[2 + 2 * i];
        if kt != *k {
            return Err(format!("expected `{k}`, got {kt:?}"));
        }
        vals.push(uint(vt).ok_or_else(|| format!("`{k}` wants an unsigned integer, got {vt:?}"))?);
    }
    let last = toks[toks.len() - 1];
    if last != "usec" {
        return Err(format!("expected trailing `usec`, got {last:?}"));
    }
    let (xfailed, rest) = if with_x { (Some(vals[2]), &vals[3..]) } else { (None, &vals[2..]) };
    Ok(Summary {
        line: 0,
        name: name.to_string(),
        passed: vals[0],
        failed: vals[1],
        xfailed,
        repeat: rest[0],
        loops: rest[1],
        avg_usec: rest[2],
        worker: None,
        row: None,
        params: None,
        setup_usec: None,
        loop_scale: None,
    })
}

/// `All test took worker<i>=<n> cycles` (or `CPU<i>=<n>`).
pub fn parse_all_test(body: &str) -> Result<(String, u64, u64), String> {
    let rest = body
        .strip_prefix("All test took ")
        .ok_or("expected `All test took worker<i>=<n> cycles`")?;
    let (label, rest) = if let Some(r) = rest.strip_prefix("worker") {
        ("worker", r)
    } else if let Some(r) = rest.strip_prefix("CPU") {
        ("CPU", r)
    } else {
        return Err(format!("expected `worker<i>=<n> cycles`, got {rest:?}"));
    };
    let (idx, rest) = rest.split_once('=').ok_or("missing `=` after worker index")?;
    let (cyc, tail) = rest.split_once(' ').ok_or("missing ` cycles`")?;
    if tail != "cycles" {
        return Err(format!("expected trailing `cycles`, got {tail:?}"));
    }
    let idx = uint(idx).ok_or_else(|| format!("bad worker index {idx:?}"))?;
    let cyc = uint(cyc).ok_or_else(|| format!("bad cycle count {cyc:?}"))?;
    Ok((label.to_string(), idx, cyc))
}

/// `<name> free_pages <a>-><b> free_va <0x..>-><0x..> ok|LOST` (after `leak `).
fn parse_leak(rest: &str) -> Result<(String, u64, u64, u64, u64, bool), String> {
    let toks: Vec<&str> = rest.split(' ').collect();
    if toks.len() != 6 {
        return Err(format!(
            "expected `leak <name> free_pages <a>-><b> free_va <0xa>-><0xb> ok|LOST`, got {} fields",
            toks.len()
        ));
    }
    let name = ident(toks[0]).ok_or_else(|| format!("bad test name {:?}", toks[0]))?;
    if toks[1] != "free_pages" {
        return Err(format!("expected `free_pages`, got {:?}", toks[1]));
    }
    let (a, b) = toks[2].split_once("->").ok_or("free_pages wants `<a>-><b>`")?;
    let (a, b) = (
        uint(a).ok_or_else(|| format!("bad free_pages value {a:?}"))?,
        uint(b).ok_or_else(|| format!("bad free_pages value {b:?}"))?,
    );
    if toks[3] != "free_va" {
        return Err(format!("expected `free_va`, got {:?}", toks[3]));
    }
    let (c, d) = toks[4].split_once("->").ok_or("free_va wants `<0xa>-><0xb>`")?;
    let (c, d) = (
        hex(c).ok_or_else(|| format!("bad free_va value {c:?}"))?,
        hex(d).ok_or_else(|| format!("bad free_va value {d:?}"))?,
    );
    let ok = match toks[5] {
        "ok" => true,
        "LOST" => false,
        o => return Err(format!("expected `ok` or `LOST`, got {o:?}")),
    };
    Ok((name.to_string(), a, b, c, d, ok))
}

fn parse_kv(toks: &[&str]) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let mut map = BTreeMap::new();
    let mut order = vec![];
    for t in toks.iter().filter(|t| !t.is_empty()) {
        let (k, v) = t.split_once('=').ok_or_else(|| format!("expected key=value, got {t:?}"))?;
        if k.is_empty() {
            return Err(format!("empty key in {t:?}"));
        }
        if map.insert(k.to_string(), v.to_string()).is_none() {
            order.push(k.to_string());
        }
    }
    Ok((map, order))
}

/// `<name> usec: <u>` (after `setup `).
fn parse_setup(rest: &str) -> Result<(String, u64), String> {
    let toks: Vec<&str> = rest.split(' ').collect();
    if toks.len() != 3 {
        return Err(format!("expected `setup <test_name> usec: <u>`, got {} fields", toks.len()));
    }
    let name = ident(toks[0]).ok_or_else(|| format!("bad test name {:?}", toks[0]))?;
    if toks[1] != "usec:" {
        return Err(format!("expected `usec:`, got {:?}", toks[1]));
    }
    let u = uint(toks[2])
        .ok_or_else(|| format!("`usec:` wants an unsigned integer, got {:?}", toks[2]))?;
    Ok((name.to_string(), u))
}

fn parse_totals(body: &str) -> Option<(u64, u64)> {
    let (p, rest) = body.split_once(" passed, ")?;
    let f = rest.strip_suffix(" failed")?;
    Some((uint(p)?, uint(f)?))
}

/// Parses a whole log. `file` is used only in error messages. The first problem is an error.
pub fn parse_log(file: &str, text: &str) -> Result<ParsedLog, ParseError> {
    parse_impl(file, text, false)
}

/// Parses what can be parsed: malformed lines are skipped and every problem (including "no
/// Summary line") is listed in `errors` instead of ending the parse (`tvtool summary`).
pub fn parse_log_lenient(file: &str, text: &str) -> ParsedLog {
    match parse_impl(file, text, true) {
        Ok(l) => l,
        Err(e) => unreachable!("lenient parse returned {e}"),
    }
}

fn parse_impl(file: &str, text: &str, lenient: bool) -> Result<ParsedLog, ParseError> {
    let err = |line: usize, msg: String| ParseError { file: file.to_string(), line, msg };
    let mut log = ParsedLog {
        file: file.to_string(),
        rows: vec![],
        host_row: None,
        params: vec![],
        summaries: vec![],
        workers: vec![],
        leaks: vec![],
        setups: vec![],
        totals: None,
        host: None,
        errors: vec![],
    };
    // Strict: return the error. Lenient: note it and go on.
    macro_rules! bad {
        ($e:expr) => {{
            let e: ParseError = $e;
            if lenient {
                log.errors.push(e.to_string());
            } else {
                return Err(e);
            }
        }};
    }
    // Current kernel row: (line, spec, number of Summary lines seen under it).
    let mut cur_row: Option<(usize, RowSpec, usize)> = None;
    // Summaries waiting for their worker's `All test took` line.
    let mut pending: Vec<usize> = vec![];
    // Group of each Summary and setup line: (number of row lines so far, params in force).
    let mut sum_group: Vec<(usize, Option<usize>)> = vec![];
    let mut setup_group: Vec<(usize, Option<usize>)> = vec![];

    let close_row = |cur: &Option<(usize, RowSpec, usize)>| -> Result<(), ParseError> {
        if let Some((ln, spec, n)) = cur {
            if *n == 0 {
                return Err(err(*ln, format!("row `{spec}` has no Summary line (truncated run?)")));
            }
        }
        Ok(())
    };

    for (i, raw) in text.lines().enumerate() {
        let ln = i + 1;
        let body = strip_timestamp(raw.trim_end_matches(['\r', '\n'])).trim_start().trim_end();
        if body.starts_with("Summary:") {
            let mut sum = match parse_summary(body) {
                Ok(s) => s,
                Err(m) => {
                    bad!(err(ln, format!("malformed Summary line: {m}")));
                    continue;
                }
            };
            let name = sum.name.clone();
            let row = match &mut cur_row {
                Some((_, spec, n)) => {
                    if spec.name != name {
                        bad!(err(
                            ln,
                            format!("Summary for `{name}` under row `{spec}` (test name differs)"),
                        ));
                        continue;
                    }
                    *n += 1;
                    Some(spec.clone())
                }
                None => {
                    if let Some(h) = &log.host_row {
                        if h.name != name {
                            bad!(err(
                                ln,
                                format!("Summary for `{name}` in a boot for row `{h}` (test name differs)"),
                            ));
                            continue;
                        }
                    }
                    log.host_row.clone()
                }
            };
            pending.push(log.summaries.len());
            sum.line = ln;
            sum.row = row;
            sum.params = log.params.len().checked_sub(1);
            sum.loop_scale = sum.params.and_then(|p| log.params[p].loop_scale());
            sum_group.push((log.rows.len(), sum.params));
            log.summaries.push(sum);
        } else if body.starts_with("All test took") {
            let (label, idx, cycles) = match parse_all_test(body) {
                Ok(v) => v,
                Err(m) => {
                    bad!(err(ln, format!("malformed `All test took` line: {m}")));
                    continue;
                }
            };
            for &s in &pending {
                log.summaries[s].worker = Some(idx);
            }
            pending.clear();
            log.workers.push(WorkerTotal {
                line: ln,
                label,
                index: idx,
                cycles,
                row: cur_row.as_ref().map(|c| c.1.clone()).or_else(|| log.host_row.clone()),
            });
        } else if let Some(rest) = body.strip_prefix("test_vmalloc: row ") {
            let spec = match RowSpec::parse(rest) {
                Ok(s) => s,
                Err(m) => {
                    bad!(err(ln, format!("malformed row line: {m}")));
                    continue;
                }
            };
            if !pending.is_empty() {
                let s = &log.summaries[pending[0]];
                let e = err(
                    s.line,
                    format!("Summary for `{}` not followed by an `All test took` line before the next row", s.name),
                );
                bad!(e);
                pending.clear();
            }
            if let Err(e) = close_row(&cur_row) {
                bad!(e);
            }
            log.rows.push((ln, spec.clone()));
            cur_row = Some((ln, spec, 0));
        } else if let Some(rest) = body.strip_prefix("test_vmalloc: params ") {
            let toks: Vec<&str> = rest.split(' ').collect();
            let (map, order) = match parse_kv(&toks) {
                Ok(v) => v,
                Err(m) => {
                    bad!(err(ln, format!("malformed params line: {m}")));
                    continue;
                }
            };
            if let Some(v) = map.get("loop_scale") {
                if !v.parse::<f64>().is_ok_and(|x| x.is_finite() && x > 0.0) {
                    bad!(err(
                        ln,
                        format!("malformed params line: loop_scale={v} is not a number > 0"),
                    ));
                    continue;
                }
            }
            log.params.push(Params { line: ln, source: "kernel".into(), map, order });
        } else if let Some(rest) = body.strip_prefix("test_vmalloc: leak ") {
            let (name, a, b, c, d, ok) = match parse_leak(rest) {
                Ok(v) => v,
                Err(m) => {
                    bad!(err(ln, format!("malformed leak line: {m}")));
                    continue;
                }
            };
            log.leaks.push(Leak {
                line: ln,
                name,
                free_pages_before: a,
                free_pages_after: b,
                free_va_before: c,
                free_va_after: d,
                ok,
                row: cur_row.as_ref().map(|c| c.1.clone()).or_else(|| log.host_row.clone()),
            });
        } else if let Some(rest) = body.strip_prefix("test_vmalloc: setup ") {
            let (name, usec) = match parse_setup(rest) {
                Ok(v) => v,
                Err(m) => {
                    bad!(err(ln, format!("malformed setup line: {m}")));
                    continue;
                }
            };
            let row = cur_row.as_ref().map(|c| c.1.clone()).or_else(|| log.host_row.clone());
            if let Some(r) = &row {
                if r.name != name {
                    bad!(err(
                        ln,
                        format!("setup line for `{name}` under row `{r}` (test name differs)"),
                    ));
                    continue;
                }
            }
            setup_group.push((log.rows.len(), log.params.len().checked_sub(1)));
            log.setups.push(Setup { line: ln, name, usec, row });
        } else if let Some(rest) = body.strip_prefix("HOST: row ") {
            match RowSpec::parse(rest) {
                Ok(spec) => log.host_row = Some(spec),
                Err(m) => bad!(err(ln, format!("malformed HOST row line: {m}"))),
            }
        } else if let Some(rest) = body.strip_prefix("HOST: qemu rc=") {
            let parsed = (|| {
                let (rc, rest) = rest.split_once(' ')?;
                let wall = rest.strip_prefix("wall_s=")?;
                Some((rc.parse::<i64>().ok()?, wall.parse::<f64>().ok()?))
            })();
            match parsed {
                Some((rc, wall_s)) => {
                    log.host = Some(HostTrailer {
                        line: ln,
                        rc,
                        wall_s,
                    })
                }
                None => bad!(err(ln, format!("malformed HOST trailer: expected `HOST: qemu rc=<n> wall_s=<s>`, got {body:?}"))),
            }
        } else if let Some(rest) = body.strip_prefix("ANCHOR: load ") {
            // `ANCHOR: load 1/1: tvload /test_vmalloc.ko k=v ...` (Linux anchor /init).
            if let Some((_, after)) = rest.split_once(": tvload ") {
                let toks: Vec<&str> = after.split(' ').skip(1).collect();
                if let Ok((map, order)) = parse_kv(&toks) {
                    log.params.push(Params { line: ln, source: "anchor".into(), map, order });
                }
            }
        } else if let Some((p, f)) = parse_totals(body) {
            log.totals = Some(Totals { line: ln, passed: p, failed: f });
        }
    }
    if !pending.is_empty() {
        let s = &log.summaries[pending[0]];
        let e = err(
            s.line,
            format!(
                "Summary for `{}` not followed by an `All test took` line (truncated log?)",
                s.name
            ),
        );
        bad!(e);
    }
    if let Err(e) = close_row(&cur_row) {
        bad!(e);
    }
    // Setup lines -> the Summary lines of the same test, row and params header.
    for (si, st) in log.setups.iter().enumerate() {
        let matched = log
            .summaries
            .iter()
            .zip(&sum_group)
            .any(|(s, g)| s.name == st.name && *g == setup_group[si]);
        if !matched {
            let e = err(
                st.line,
                format!(
                    "setup line for `{}` has no Summary line of that test in the same row (truncated log?)",
                    st.name
                ),
            );
            bad!(e);
        }
    }
    for (k, g) in sum_group.iter().enumerate() {
        let us: Vec<f64> = log
            .setups
            .iter()
            .zip(&setup_group)
            .filter(|(st, sg)| st.name == log.summaries[k].name && *sg == g)
            .map(|(st, _)| st.usec as f64)
            .collect();
        if !us.is_empty() {
            log.summaries[k].setup_usec = Some(us.iter().sum::<f64>() / us.len() as f64);
        }
    }
    if log.summaries.is_empty() {
        let what = match &log.host_row {
            Some(r) => format!(
                "no Summary line in the log (expected row `{r}`; truncated or failed boot?)"
            ),
            None => "no Summary line in the log (truncated or failed boot?)".to_string(),
        };
        bad!(err(0, what));
    }
    Ok(log)
}

pub fn parse_file(path: &Path) -> Result<ParsedLog, ParseError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ParseError {
        file: name.clone(),
        line: 0,
        msg: e.to_string(),
    })?;
    // Serial logs can carry stray non-UTF-8 bytes (line noise); keep going lossily.
    let text = String::from_utf8_lossy(&bytes);
    parse_log(&name, &text)
}

/// The row key used to group samples across logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RowKey {
    pub name: String,
    pub p: Option<u64>,
    pub h: Option<u8>,
    pub l: Option<u64>,
    /// Extra distinguishing tag (e.g. `smp:4`), empty when none.
    pub tag: String,
}

impl RowKey {
    /// `fix_size_alloc_test: p:1, h:0, l:500000` (the seed's Result Class without the unit).
    pub fn label(&self) -> String {
        let mut s = self.name.clone();
        let mut parts = vec![];
        if let Some(p) = self.p {
            parts.push(format!("p:{p}"));
        }
        if let Some(h) = self.h {
            parts.push(format!("h:{h}"));
        }
        if let Some(l) = self.l {
            parts.push(format!("l:{l}"));
        }
        if !self.tag.is_empty() {
            parts.push(self.tag.clone());
        }
        if !parts.is_empty() {
            s.push_str(": ");
            s.push_str(&parts.join(", "));
        }
        s
    }

    /// Short label for the chart's x axis.
    pub fn short_label(&self) -> String {
        let mut s = self.name.strip_suffix("_test").unwrap_or(&self.name).to_string();
        if let (Some(p), Some(h)) = (self.p, self.h) {
            s.push_str(&format!(" p:{p} h:{h}"));
        }
        if !self.tag.is_empty() {
            s.push(' ');
            s.push_str(&self.tag);
        }
        s
    }

    pub fn from_row(r: &RowSpec, tag: &str) -> RowKey {
        RowKey {
            name: r.name.clone(),
            p: Some(r.p),
            h: Some(r.h),
            l: Some(r.l),
            tag: tag.to_string(),
        }
    }
}

/// Key of one Summary line: the row line if any, else test name + p/h/l from the params
/// header in force (module defaults for missing keys), else the test name alone.
pub fn row_key(log: &ParsedLog, s: &Summary, tag: &str) -> RowKey {
    if let Some(r) = &s.row {
        return RowKey::from_row(r, tag);
    }
    if let Some(pi) = s.params {
        let p = &log.params[pi];
        let nr_pages = p.get_u64("nr_pages").unwrap_or(0).max(1);
        let huge = p.get_bool("use_huge").unwrap_or(false) as u8;
        let loops = p.get_u64("test_loop_count").unwrap_or(1_000_000).max(1);
        return RowKey {
            name: s.name.clone(),
            p: Some(nr_pages),
            h: Some(huge),
            l: Some(loops),
            tag: tag.to_string(),
        };
    }
    RowKey { name: s.name.clone(), p: None, h: None, l: None, tag: tag.to_string() }
}

/// Tag derived from a log's path: a parent directory named `*-smp<N>` gives `smp:N`.
pub fn tag_from_path(path: &Path) -> String {
    if let Some(dir) = path.parent().and_then(|d| d.file_name()).and_then(|d| d.to_str()) {
        if let Some((_, n)) = dir.rsplit_once("-smp") {
            if uint(n).is_some() {
                return format!("smp:{n}");
            }
        }
    }
    String::new()
}
