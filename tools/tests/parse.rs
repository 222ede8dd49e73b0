use std::path::Path;
use tvtool::parse::{self, parse_log, RowSpec};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name))
        .unwrap()
}

#[test]
fn ours_suite_format() {
    let log = parse_log("ours", &fixture("ours-seed-suite.log")).unwrap();
    assert_eq!(log.rows.len(), 3);
    assert_eq!(log.summaries.len(), 3);
    let s = &log.summaries[1];
    assert_eq!(s.name, "fix_size_alloc_test");
    assert_eq!(
        (s.passed, s.failed, s.xfailed, s.repeat, s.loops, s.avg_usec),
        (1, 0, Some(0), 1, 1000, 1730661)
    );
    assert_eq!(s.worker, Some(0));
    assert_eq!(
        s.row,
        Some(RowSpec { name: "fix_size_alloc_test".into(), p: 512, h: 1, l: 100000 })
    );
    assert_eq!(parse::row_key(&log, s, "").label(), "fix_size_alloc_test: p:512, h:1, l:100000");
    // params header
    assert_eq!(log.params.len(), 1);
    assert_eq!(log.params[0].map["mm.vfree"], "bulk");
    assert_eq!(log.params[0].map["timer_hz"], "62500000");
    assert!(log.icount());
    // leak lines: two ok, last LOST
    assert_eq!(log.leaks.len(), 3);
    assert!(log.leaks[0].ok && log.leaks[1].ok && !log.leaks[2].ok);
    assert_eq!(log.leaks[2].free_pages_before, 501234);
    assert_eq!(log.leaks[2].free_pages_after, 501230);
    assert_eq!(log.leaks[2].free_va_before, 0x7ffffe000000);
    assert_eq!(log.leaks[2].row.as_ref().unwrap().name, "vm_map_ram_test");
    let t = log.totals.as_ref().unwrap();
    assert_eq!((t.passed, t.failed), (3, 0));
    assert_eq!(log.host.as_ref().unwrap().rc, 0);
    assert_eq!(log.workers.len(), 3);
    assert_eq!(log.workers[1].cycles, 108166312);
}

#[test]
fn linux_6_12_with_timestamps_no_xfailed() {
    let log = parse_log("t1", &fixture("linux-6.12-t1-cortex-a72.log")).unwrap();
    assert_eq!(log.summaries.len(), 11);
    assert!(log
        .summaries
        .iter()
        .all(|s| s.xfailed.is_none() && s.worker == Some(0) && s.row.is_none()));
    assert_eq!(log.summaries[0].avg_usec, 190798);
    assert_eq!(log.summaries[0].line, 32);
    assert_eq!(log.summaries[10].name, "vm_map_ram_test");
    // align_shift failed: 1 is expected (xfail test, old format)
    let a = log.summaries.iter().find(|s| s.name == "align_shift_alloc_test").unwrap();
    assert_eq!((a.passed, a.failed), (0, 1));
    assert!(!a.unexpected_failure());
    assert!(log.summaries.iter().all(|s| !s.unexpected_failure()));
    assert_eq!(log.workers.len(), 1);
    assert_eq!(log.workers[0].cycles, 678068986);
    // the anchor's load line is the params source: key gets p/h/l (module defaults for p, h)
    assert_eq!(log.params[0].source, "anchor");
    assert_eq!(
        parse::row_key(&log, &log.summaries[0], "").label(),
        "fix_size_alloc_test: p:1, h:0, l:20000"
    );
    let h = log.host.as_ref().unwrap();
    assert_eq!(h.rc, 0);
    assert!((h.wall_s - 13.219248971).abs() < 1e-9);
    assert!(!log.icount());
}

#[test]
fn linux_two_workers() {
    let log = parse_log("t2", &fixture("linux-6.12-t2-max.log")).unwrap();
    assert_eq!(log.summaries.len(), 22);
    assert!(log.summaries[..11].iter().all(|s| s.worker == Some(0)));
    assert!(log.summaries[11..].iter().all(|s| s.worker == Some(1)));
    assert_eq!(log.workers.iter().map(|w| w.index).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(log.summaries[11].avg_usec, 302792);
}

#[test]
fn linux_newest_with_xfailed() {
    let log = parse_log("new", &fixture("linux-newest-xfailed.log")).unwrap();
    assert_eq!(log.summaries.len(), 3);
    assert_eq!(log.summaries[0].xfailed, Some(0));
    assert_eq!(log.summaries[1].xfailed, Some(1));
    assert_eq!(log.summaries[2].name, "no_block_alloc_test");
    assert!(log.summaries.iter().all(|s| !s.unexpected_failure()));
    // no params header, no row: key is the test name alone
    assert_eq!(parse::row_key(&log, &log.summaries[0], "").label(), "fix_size_alloc_test");
}

#[test]
fn failed_with_xfailed_field_is_a_failure() {
    let t = "Summary: align_shift_alloc_test passed: 0 failed: 1 xfailed: 0 repeat: 1 loops: 1 avg: 5 usec\nAll test took worker0=1 cycles\n";
    let log = parse_log("x", t).unwrap();
    assert!(log.summaries[0].unexpected_failure());
    let t = "Summary: fix_size_alloc_test passed: 0 failed: 1 repeat: 1 loops: 1 avg: 5 usec\nAll test took worker0=1 cycles\n";
    assert!(parse_log("x", t).unwrap().summaries[0].unexpected_failure());
}

#[test]
fn boot_noise_ignored_and_crlf() {
    let t = "booting...\r\n[    0.1] Memory Summary: 5 pages\r\nSummaryish noise\r\n[    8.402236] Summary: fix_size_alloc_test passed: 1 failed: 0 repeat: 1 loops: 20000 avg: 211190 usec\r\n[    8.5] All test took worker0=42 cycles\r\nrandom: crng init done\r\n";
    let log = parse_log("n", t).unwrap();
    assert_eq!(log.summaries.len(), 1);
    assert_eq!(log.summaries[0].avg_usec, 211190);
    assert_eq!(log.summaries[0].line, 4);
}

#[test]
fn timestamp_strip() {
    assert_eq!(parse::strip_timestamp("[    8.402236] Summary: x"), "Summary: x");
    assert_eq!(parse::strip_timestamp("[12345.000001] x"), "x");
    assert_eq!(parse::strip_timestamp("[ok] x"), "[ok] x");
    assert_eq!(parse::strip_timestamp("no ts"), "no ts");
}

fn err_of(t: &str) -> parse::ParseError {
    parse_log("bad.log", t).unwrap_err()
}

#[test]
fn malformed_summary_is_an_error_with_line_number() {
    let t = "boot\nnoise\nSummary: fix_size_alloc_test passed: x failed: 0 xfailed: 0 repeat: 1 loops: 100000 avg: 123456 usec\nAll test took worker0=1 cycles\n";
    let e = err_of(t);
    assert_eq!(e.line, 3);
    assert_eq!(e.file, "bad.log");
    let s = e.to_string();
    assert!(s.starts_with("bad.log:3: malformed Summary line"), "{s}");
    assert!(s.contains("`passed:` wants an unsigned integer"), "{s}");
    // other shapes
    for bad in [
        "Summary: fix_size_alloc_test passed: 1 failed: 0 repeat: 1 loops: 1 avg: 1 msec",
        "Summary: fix_size_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 1 avg: 1",
        "Summary: fix_size_alloc_test passed: 1 failed: 0 xfail: 0 repeat: 1 loops: 1 avg: 1 usec",
        "Summary: fix_size_alloc_test passed: 1 failed: -1 repeat: 1 loops: 1 avg: 1 usec",
        "Summary: fix_size_alloc_test  passed: 1 failed: 0 repeat: 1 loops: 1 avg: 1 usec",
        "Summary:",
        "Summary: bad-name passed: 1 failed: 0 repeat: 1 loops: 1 avg: 1 usec",
    ] {
        let e = err_of(&format!("x\n{bad}\nAll test took worker0=1 cycles\n"));
        assert_eq!(e.line, 2, "{bad}: {e}");
    }
}

#[test]
fn malformed_other_lines() {
    let ok = "Summary: fix_size_alloc_test passed: 1 failed: 0 repeat: 1 loops: 1 avg: 1 usec\n";
    let e = err_of(&format!("{ok}All test took worker0=abc cycles\n"));
    assert_eq!(e.line, 2);
    assert!(e.msg.contains("All test took"), "{e}");
    let e = err_of(&format!("{ok}All test took worker0=5\n"));
    assert_eq!(e.line, 2);
    let e = err_of("test_vmalloc: row fix_size_alloc_test p:1 h:2 l:5\n");
    assert_eq!(e.line, 1);
    assert!(e.msg.contains("malformed row line"), "{e}");
    let e = err_of("test_vmalloc: row fix_size_alloc_test p:1 h:0\n");
    assert_eq!(e.line, 1);
    let e = err_of(&format!("{ok}All test took worker0=1 cycles\ntest_vmalloc: leak fix_size_alloc_test free_pages 1->1 free_va 0x1->0x1 maybe\n"));
    assert_eq!(e.line, 3);
    assert!(e.msg.contains("malformed leak line"), "{e}");
    let e = err_of(&format!("{ok}All test took worker0=1 cycles\ntest_vmalloc: leak fix_size_alloc_test free_pages 1->1 free_va 1->1 ok\n"));
    assert_eq!(e.line, 3);
    let e =
        err_of(&format!("test_vmalloc: params a=1 loose\n{ok}All test took worker0=1 cycles\n"));
    assert_eq!(e.line, 1);
    assert!(e.msg.contains("malformed params line"), "{e}");
    let e = err_of(&format!("{ok}All test took worker0=1 cycles\nHOST: qemu rc=zero wall_s=1\n"));
    assert_eq!(e.line, 3);
}

#[test]
fn row_without_summary_is_an_error_naming_the_row() {
    let t = "test_vmalloc: row fix_size_alloc_test p:1 h:0 l:500000\nSummary: fix_size_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 5 avg: 9 usec\nAll test took worker0=1 cycles\ntest_vmalloc: row fix_size_alloc_test p:4 h:0 l:500000\nboot noise\n";
    let e = err_of(t);
    assert_eq!(e.line, 4);
    assert!(e.msg.contains("row `fix_size_alloc_test p:4 h:0 l:500000` has no Summary"), "{e}");
    // a row closed by the next row without a Summary
    let t2 = "test_vmalloc: row full_fit_alloc_test p:1 h:0 l:500000\ntest_vmalloc: row fix_size_alloc_test p:4 h:0 l:500000\nSummary: fix_size_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 5 avg: 9 usec\nAll test took worker0=1 cycles\n";
    let e = err_of(t2);
    assert_eq!(e.line, 1);
    assert!(e.msg.contains("full_fit_alloc_test"), "{e}");
}

#[test]
fn no_summary_is_an_error() {
    let e = err_of("[    0.000000] Booting Linux\nkernel panic\n");
    assert_eq!(e.line, 0);
    assert!(e.msg.contains("no Summary"), "{e}");
    let e = err_of(
        "HOST: row vm_map_ram_test p:1 h:0 l:500000\nboot\nHOST: qemu rc=124 wall_s=300.0\n",
    );
    assert!(e.msg.contains("vm_map_ram_test p:1 h:0 l:500000"), "{e}");
}

#[test]
fn summary_without_all_test_line_is_truncated() {
    let e = err_of("Summary: fix_size_alloc_test passed: 1 failed: 0 repeat: 1 loops: 1 avg: 1 usec\nSummary: vm_map_ram_test passed: 1 failed: 0 repeat: 1 loops: 1 avg: 1 usec\n");
    assert_eq!(e.line, 1);
    assert!(e.msg.contains("truncated"), "{e}");
}

#[test]
fn summary_under_wrong_row_is_an_error() {
    let e = err_of("test_vmalloc: row fix_size_alloc_test p:1 h:0 l:5\nSummary: vm_map_ram_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 1 avg: 1 usec\nAll test took worker0=1 cycles\n");
    assert_eq!(e.line, 2);
    let e = err_of("HOST: row fix_size_alloc_test p:1 h:0 l:5\nSummary: vm_map_ram_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 1 avg: 1 usec\nAll test took worker0=1 cycles\n");
    assert_eq!(e.line, 2);
}

#[test]
fn host_row_gives_the_key() {
    let t = "HOST: row fix_size_alloc_test p:512 h:1 l:100000\ntest_vmalloc: params nr_pages=512 use_huge=1 test_loop_count=1000\nSummary: fix_size_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 1000 avg: 77 usec\nAll test took worker0=1 cycles\n";
    let log = parse_log("h", t).unwrap();
    assert_eq!(
        parse::row_key(&log, &log.summaries[0], "").label(),
        "fix_size_alloc_test: p:512, h:1, l:100000"
    );
}

#[test]
fn params_header_gives_the_key() {
    let t = "test_vmalloc: params nr_threads=1 nr_pages=16 use_huge=Y test_loop_count=5000\nSummary: fix_size_alloc_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 5000 avg: 77 usec\nAll test took worker0=1 cycles\n";
    let log = parse_log("p", t).unwrap();
    assert_eq!(
        parse::row_key(&log, &log.summaries[0], "smp:4").label(),
        "fix_size_alloc_test: p:16, h:1, l:5000, smp:4"
    );
}

#[test]
fn old_cpu_label_accepted() {
    let log = parse_log("v5", "Summary: fix_size_alloc_test passed: 1 failed: 0 repeat: 1 loops: 1 avg: 1 usec\nAll test took CPU3=99 cycles\n").unwrap();
    assert_eq!(log.workers[0].label, "CPU");
    assert_eq!(log.summaries[0].worker, Some(3));
}

#[test]
fn tag_from_path() {
    assert_eq!(parse::tag_from_path(Path::new("out/base/all-smp4/run1.log")), "smp:4");
    assert_eq!(parse::tag_from_path(Path::new("out/base/suite-seed/run1.log")), "");
}
