//! `test_vmalloc: setup <test> usec: <u>` lines: parsing, the setup-scaled row value
//! `avg - setup + setup x loop_scale`, the `*` mark and footnote, JSON.

use std::path::Path;
use std::process::Command;
use tvtool::compare::{self, VariantData};
use tvtool::parse::{self, parse_log};
use tvtool::stats::PctOf;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name))
        .unwrap()
}

fn err_of(t: &str) -> parse::ParseError {
    parse_log("x.log", t).unwrap_err()
}

const HDR: &str =
    "test_vmalloc: params nr_threads=1 suite=seed loop_scale=0.010000 seed=0x1 mm.vfree=single\n";

#[test]
fn setup_lines_parse_and_scale() {
    let log = parse_log("s", &fixture("ours-setup-suite.log")).unwrap();
    assert_eq!(log.setups.len(), 2);
    assert_eq!(log.setups[0].name, "full_fit_alloc_test");
    assert_eq!(log.setups[0].usec, 20000);
    assert_eq!(log.setups[0].line, 10);
    assert_eq!(log.setups[0].row.as_ref().unwrap().name, "full_fit_alloc_test");
    // dmesg timestamp accepted
    assert_eq!(log.setups[1].usec, 50000);
    let s = &log.summaries;
    assert_eq!(s[0].setup_usec, None);
    assert!(!s[0].setup_scaled());
    assert_eq!(s[0].value(), 4000.0);
    assert_eq!(s[1].setup_usec, Some(20000.0));
    assert_eq!(s[1].loop_scale, Some(0.01));
    assert!(s[1].setup_scaled());
    // 30000 - 20000 + 20000 x 0.01
    assert_eq!(s[1].avg_usec, 30000);
    assert!((s[1].value() - 10200.0).abs() < 1e-9);
    assert!((s[2].value() - (90000.0 - 50000.0 + 500.0)).abs() < 1e-9);
}

#[test]
fn no_loop_scale_no_adjustment() {
    let t = "test_vmalloc: params nr_threads=1 run_test_mask=2\n\
             test_vmalloc: setup full_fit_alloc_test usec: 700\n\
             Summary: full_fit_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 100 avg: 1000 usec\n\
             All test took worker0=1 cycles\n";
    let log = parse_log("x", t).unwrap();
    assert_eq!(log.summaries[0].setup_usec, Some(700.0));
    assert_eq!(log.summaries[0].loop_scale, None);
    assert!(!log.summaries[0].setup_scaled());
    assert_eq!(log.summaries[0].value(), 1000.0);
    let mut v = VariantData::new("a");
    v.add_log(&log, "");
    let r = compare::build_report(&[v], PctOf::Base);
    assert!(!r.rows[0].setup_scaled);
    assert!(!compare::render_text(&r).contains("rows marked *"));
}

#[test]
fn workers_setups_are_averaged_per_test() {
    // two workers (no row lines): setup lines of both come before the Summary lines
    let t = "test_vmalloc: params nr_threads=2 run_test_mask=6 loop_scale=0.5\n\
             test_vmalloc: setup full_fit_alloc_test usec: 100\n\
             test_vmalloc: setup long_busy_list_alloc_test usec: 1000\n\
             test_vmalloc: setup full_fit_alloc_test usec: 300\n\
             test_vmalloc: setup long_busy_list_alloc_test usec: 3000\n\
             Summary: full_fit_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 100 avg: 1000 usec\n\
             Summary: long_busy_list_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 100 avg: 10000 usec\n\
             All test took worker0=1 cycles\n\
             Summary: full_fit_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 100 avg: 1200 usec\n\
             Summary: long_busy_list_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 100 avg: 12000 usec\n\
             All test took worker1=1 cycles\n";
    let log = parse_log("x", t).unwrap();
    assert_eq!(log.summaries[0].setup_usec, Some(200.0));
    assert_eq!(log.summaries[1].setup_usec, Some(2000.0));
    let mut v = VariantData::new("a");
    v.add_log(&log, "");
    let r = compare::build_report(&[v], PctOf::Base);
    // row value: mean over workers of avg - setup + setup x 0.5 = 1100 - 200 + 100
    let ff = r.rows.iter().find(|r| r.key.name == "full_fit_alloc_test").unwrap();
    let c = ff.cells[0].as_ref().unwrap();
    assert!((c.mean - 1000.0).abs() < 1e-9, "{}", c.mean);
    assert_eq!(c.raw_samples, vec![1100.0]);
    assert_eq!(c.setup_samples, vec![Some(200.0)]);
}

#[test]
fn malformed_and_misplaced_setup_lines_are_errors() {
    let row = "test_vmalloc: row full_fit_alloc_test p:1 h:0 l:500000\n";
    let sum = "Summary: full_fit_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 5000 avg: 30000 usec\nAll test took worker0=1 cycles\n";
    for (bad, want) in [
        ("test_vmalloc: setup full_fit_alloc_test usec: x\n", "malformed setup line: `usec:` wants an unsigned integer"),
        ("test_vmalloc: setup full_fit_alloc_test 12\n", "malformed setup line: expected `setup <test_name> usec: <u>`"),
        ("test_vmalloc: setup full_fit_alloc_test usecs: 12\n", "malformed setup line: expected `usec:`"),
        ("test_vmalloc: setup full-fit usec: 12\n", "malformed setup line: bad test name"),
        ("test_vmalloc: setup long_busy_list_alloc_test usec: 12\n", "setup line for `long_busy_list_alloc_test` under row `full_fit_alloc_test p:1 h:0 l:500000`"),
    ] {
        let e = err_of(&format!("{HDR}{row}{bad}{sum}"));
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
    // a setup line whose Summary never comes (truncated after the leak/setup lines)
    let t = format!(
        "{HDR}{row}{sum}test_vmalloc: row long_busy_list_alloc_test p:1 h:0 l:500000\ntest_vmalloc: setup long_busy_list_alloc_test usec: 9\n"
    );
    let e = err_of(&t);
    assert!(
        e.to_string()
            .contains("row `long_busy_list_alloc_test p:1 h:0 l:500000` has no Summary line"),
        "{e}"
    );
    // without row lines: a setup line of a test that has no Summary at all
    let t = "test_vmalloc: params nr_threads=1 run_test_mask=3 loop_scale=0.5\n\
             test_vmalloc: setup full_fit_alloc_test usec: 9\n\
             Summary: fix_size_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 1 avg: 5 usec\n\
             All test took worker0=1 cycles\n";
    let e = err_of(t);
    assert_eq!(e.line, 2, "{e}");
    assert!(
        e.to_string().contains(
            "setup line for `full_fit_alloc_test` has no Summary line of that test in the same row"
        ),
        "{e}"
    );
    // bad loop_scale in the header
    let e = err_of(&format!("test_vmalloc: params loop_scale=abc\n{row}{sum}"));
    assert_eq!(e.line, 1);
    assert!(e.to_string().contains("loop_scale=abc is not a number"), "{e}");
}

#[test]
fn setup_does_not_leak_into_the_next_row_or_test() {
    // a setup line under row A does not touch row B's Summary of the same test
    let t = format!(
        "{HDR}test_vmalloc: row full_fit_alloc_test p:1 h:0 l:500000\n\
         test_vmalloc: setup full_fit_alloc_test usec: 100\n\
         Summary: full_fit_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 5000 avg: 1000 usec\n\
         All test took worker0=1 cycles\n\
         test_vmalloc: row full_fit_alloc_test p:4 h:0 l:500000\n\
         Summary: full_fit_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 5000 avg: 1000 usec\n\
         All test took worker0=1 cycles\n"
    );
    let log = parse_log("x", &t).unwrap();
    assert_eq!(log.summaries[0].setup_usec, Some(100.0));
    assert_eq!(log.summaries[1].setup_usec, None);
}

#[test]
fn table_marks_setup_rows_and_json_keeps_raw() {
    let base = parse_log("b", &fixture("ours-setup-suite.log")).unwrap();
    let mut b = VariantData::new("base");
    b.add_log(&base, "");
    b.add_log(&base, "");
    let mut p = VariantData::new("patch");
    p.add_log(&base, "");
    p.add_log(&base, "");
    let r = compare::build_report(&[b, p], PctOf::Base);
    let t = compare::render_text(&r);
    assert!(
        t.contains("| full_fit_alloc_test: p:1, h:0, l:500000 (usec) *       | 10200.00 "),
        "{t}"
    );
    assert!(
        t.contains("| long_busy_list_alloc_test: p:1, h:0, l:500000 (usec) * | 40500.00 "),
        "{t}"
    );
    assert!(
        t.contains("| fix_size_alloc_test: p:1, h:0, l:500000 (usec)         | 4000.00 "),
        "{t}"
    );
    assert!(
        t.contains("rows marked * : setup scaled with the loops (test_vmalloc: setup lines)"),
        "{t}"
    );
    assert!(!t.contains("WARNING"), "{t}");
    let md = compare::render_markdown(&r);
    assert!(md.contains("| full_fit_alloc_test: p:1, h:0, l:500000 (usec) * |"), "{md}");
    let j = serde_json::to_value(&r).unwrap();
    let ff = &j["rows"][1];
    assert_eq!(ff["label"], "full_fit_alloc_test: p:1, h:0, l:500000");
    assert_eq!(ff["setup_scaled"], true);
    assert_eq!(ff["cells"][0]["raw_samples"], serde_json::json!([30000.0, 30000.0]));
    assert_eq!(ff["cells"][0]["setup_samples"], serde_json::json!([20000.0, 20000.0]));
    assert_eq!(ff["cells"][0]["samples"], serde_json::json!([10200.0, 10200.0]));
    assert_eq!(j["rows"][0]["setup_scaled"], false);
    assert_eq!(j["rows"][0]["cells"][0]["setup_samples"], serde_json::json!([null, null]));
}

#[test]
fn mixed_logs_warn() {
    let with = parse_log("b", &fixture("ours-setup-suite.log")).unwrap();
    let without = parse_log(
        "o",
        &fixture("ours-setup-suite.log")
            .lines()
            .filter(|l| !l.contains("test_vmalloc: setup"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let mut b = VariantData::new("base");
    b.add_log(&without, "");
    let mut p = VariantData::new("patch");
    p.add_log(&with, "");
    let r = compare::build_report(&[b, p], PctOf::Base);
    let t = compare::render_text(&r);
    assert!(t.contains("WARNING: setup-scaled in some logs only"), "{t}");
    assert!(r.rows[1].setup_mixed);
}

#[test]
fn compare_and_parse_cli_show_setup() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ours-setup-suite.log");
    let f = f.to_str().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tvtool"))
        .args(["compare", "--base", &format!("a={f}"), "--variant", &format!("b={f}")])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(out.contains("l:500000 (usec) *"), "{out}");
    assert!(out.contains("rows marked * :"), "{out}");
    let o = Command::new(env!("CARGO_BIN_EXE_tvtool")).args(["parse", f]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("avg_usec=30000 setup_usec=20000 loop_scale=0.01 value=10200"), "{out}");
    assert!(out.contains(":10: setup full_fit_alloc_test usec=20000"), "{out}");
}
