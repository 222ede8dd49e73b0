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

use std::collections::BTreeMap;

use std::path::Path;

mod lex;
mod rowkey;
mod types;

use lex::{hex, ident, uint};

pub use rowkey::{row_key, tag_from_path, RowKey};
pub use types::*;

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
