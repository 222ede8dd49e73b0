//! `tvtool summary LOG`: the table of one boot (what `make run` prints after QEMU exits):
//! one row per row key with this boot's value, the variant's `mm.*` switches as the column
//! name, then the pass/fail counts and the leak lines' verdicts.

use crate::compare::{self, VariantData};
use crate::parse::ParsedLog;
use crate::stats::PctOf;

/// The summary text and whether the boot looks good (no parse problem, no failed test, no
/// LOST leak line, a closing `N passed, 0 failed` line, `qemu_rc` 0 when given).
pub fn render(log: &ParsedLog, qemu_rc: Option<i64>) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let first_params = log.params.first();
    if !log.summaries.is_empty() {
        let name = first_params
            .map(|p| p.mm_switches().join(" "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "this boot".into());
        let mut v = VariantData::new(&name);
        v.add_log(log, "");
        let r = compare::build_report(&[v], PctOf::Base);
        out.push_str(&compare::render_grid(&r));
        let workers: std::collections::BTreeSet<u64> =
            log.summaries.iter().filter_map(|s| s.worker).collect();
        let mut first = format!(
            "one boot ({}): {} row{}, value = Summary avg (usec, whole test{})",
            log.file,
            r.rows.len(),
            if r.rows.len() == 1 { "" } else { "s" },
            if workers.len() > 1 {
                format!("; {} workers averaged", workers.len())
            } else {
                String::new()
            }
        );
        if let Some(ls) = first_params.and_then(|p| p.map.get("loop_scale")) {
            first.push_str(&format!(
                "; the kernel ran l x loop_scale={ls} loops (labels keep the nominal l)"
            ));
        }
        out.push_str(&first);
        out.push('\n');
        if r.rows.iter().any(|row| row.setup_scaled) {
            out.push_str(compare::SETUP_NOTE);
            out.push('\n');
        }
        if log.icount() {
            out.push_str("under -icount shift=0 one usec = 1000 guest instructions\n");
        }
    } else {
        out.push_str(&format!(
            "{}: no test_vmalloc Summary line (not a test_vmalloc run, or it did not finish)\n",
            log.file
        ));
    }
    if let Some(p) = first_params {
        out.push_str(&format!("params (line {}): {}\n", p.line, p.line_text()));
    }
    // Counts.
    let n = log.summaries.len();
    let bad: Vec<&str> =
        log.summaries.iter().filter(|s| s.unexpected_failure()).map(|s| s.name.as_str()).collect();
    let xf: u64 = log.summaries.iter().filter_map(|s| s.xfailed).sum();
    if n > 0 {
        out.push_str(&format!(
            "Summary lines: {n}, {} without failure, {} with failed > 0{}{}\n",
            n - bad.len(),
            bad.len(),
            if bad.is_empty() { String::new() } else { format!(" ({})", bad.join(", ")) },
            if xf > 0 { format!(", {xf} expected failures (xfailed)") } else { String::new() }
        ));
    }
    ok &= bad.is_empty();
    match &log.totals {
        Some(t) => {
            out.push_str(&format!("kernel: {} passed, {} failed\n", t.passed, t.failed));
            ok &= t.failed == 0;
        }
        None => {
            out.push_str("kernel: no `N passed, M failed` line (the boot did not finish?)\n");
            ok = false;
        }
    }
    let lost: Vec<String> = log
        .leaks
        .iter()
        .filter(|l| !l.ok)
        .map(|l| format!("{} (line {})", l.name, l.line))
        .collect();
    if !log.leaks.is_empty() {
        out.push_str(&format!(
            "leak lines: {} ok, {} LOST{}\n",
            log.leaks.len() - lost.len(),
            lost.len(),
            if lost.is_empty() { String::new() } else { format!(": {}", lost.join(", ")) }
        ));
    }
    ok &= lost.is_empty();
    if !log.setups.is_empty() {
        out.push_str(&format!("setup lines: {}\n", log.setups.len()));
    }
    // Parse problems, except "no Summary line" (already said above).
    let problems: Vec<&String> = log
        .errors
        .iter()
        .filter(|e| !(log.summaries.is_empty() && e.contains("no Summary line in the log")))
        .collect();
    for e in &problems {
        out.push_str(&format!("log problem: {e}\n"));
    }
    ok &= problems.is_empty();
    let rc = qemu_rc.or(log.host.as_ref().map(|h| h.rc));
    if let Some(rc) = rc {
        let what = match rc {
            0 => String::new(),
            124 => " (timeout: killed)".into(),
            _ => " (the kernel failed or crashed)".into(),
        };
        out.push_str(&format!("qemu: exit status {rc}{what}\n"));
        ok &= rc == 0;
    }
    out.push_str(if ok { "result: ok\n" } else { "result: FAILED\n" });
    (out, ok)
}
