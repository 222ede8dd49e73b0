//! `tvtool summary LOG` (what `make run` prints after QEMU exits).

use std::path::{Path, PathBuf};
use std::process::Command;

fn fx(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn summary(log: &Path, extra: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_tvtool"))
        .arg("summary")
        .arg(log)
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const SEED_ROWS: [&str; 19] = [
    "fix_align_alloc_test: p:1, h:0, l:500000",
    "fix_size_alloc_test: p:1, h:0, l:500000",
    "fix_size_alloc_test: p:4, h:0, l:500000",
    "fix_size_alloc_test: p:16, h:0, l:500000",
    "fix_size_alloc_test: p:16, h:1, l:500000",
    "fix_size_alloc_test: p:64, h:0, l:100000",
    "fix_size_alloc_test: p:64, h:1, l:100000",
    "fix_size_alloc_test: p:256, h:0, l:100000",
    "fix_size_alloc_test: p:256, h:1, l:100000",
    "fix_size_alloc_test: p:512, h:0, l:100000",
    "fix_size_alloc_test: p:512, h:1, l:100000",
    "full_fit_alloc_test: p:1, h:0, l:500000",
    "kvfree_rcu_1_arg_vmalloc_test: p:1, h:0, l:500000",
    "kvfree_rcu_2_arg_vmalloc_test: p:1, h:0, l:500000",
    "long_busy_list_alloc_test: p:1, h:0, l:500000",
    "pcpu_alloc_test: p:1, h:0, l:500000",
    "random_size_align_alloc_test: p:1, h:0, l:500000",
    "random_size_alloc_test: p:1, h:0, l:500000",
    "vm_map_ram_test: p:1, h:0, l:500000",
];

#[test]
fn make_run_seed_log_gives_the_19_rows_in_seed_order() {
    // a real `make run` log (default ARGS: seed suite, loop_scale 0.01, -smp 4, no icount)
    let (rc, out, err) = summary(&fx("ours-make-run-seed.log"), &["--qemu-rc", "0"]);
    assert_eq!(rc, 0, "{out}\n{err}");
    assert!(
        out.contains("| Benchmark       | Result Class                                             | mm.vfree=bulk mm.vmalloc_large_order=on mm.pcp=on |"),
        "{out}"
    );
    let mut at = 0;
    for r in SEED_ROWS {
        let needle = format!("| {r} (usec)");
        let i = out[at..]
            .find(&needle)
            .unwrap_or_else(|| panic!("{r} missing or out of order:\n{out}"));
        at += i + needle.len();
    }
    assert!(out.contains("| micromm/vmalloc | fix_align_alloc_test: p:1, h:0, l:500000 (usec)          | 126589.00 "), "{out}");
    assert!(out.contains("|                 | vm_map_ram_test: p:1, h:0, l:500000 (usec)               | 15172.00 "), "{out}");
    assert!(out.contains("19 rows"), "{out}");
    assert!(out.contains("loop_scale=0.010000"), "{out}");
    assert!(out.contains("Summary lines: 19, 19 without failure, 0 with failed > 0"), "{out}");
    assert!(out.contains("kernel: 19 passed, 0 failed"), "{out}");
    assert!(out.contains("leak lines: 19 ok, 0 LOST"), "{out}");
    assert!(out.contains("qemu: exit status 0\n"), "{out}");
    assert!(out.trim_end().ends_with("result: ok"), "{out}");
    assert!(!out.contains("icount"), "{out}");
}

#[test]
fn qemu_status_lost_leak_and_setup_rows() {
    let (rc, out, _) = summary(&fx("ours-make-run-seed.log"), &["--qemu-rc", "3"]);
    assert_eq!(rc, 1);
    assert!(out.contains("qemu: exit status 3 (the kernel failed or crashed)"), "{out}");
    assert!(out.contains("result: FAILED"), "{out}");
    let (_, out, _) = summary(&fx("ours-make-run-seed.log"), &["--qemu-rc", "124"]);
    assert!(out.contains("qemu: exit status 124 (timeout: killed)"), "{out}");
    // setup lines and a LOST leak line; the HOST trailer gives the rc
    let (rc, out, _) = summary(&fx("ours-setup-suite.log"), &[]);
    assert_eq!(rc, 1);
    assert!(
        out.contains("| full_fit_alloc_test: p:1, h:0, l:500000 (usec) *       | 10200.00 "),
        "{out}"
    );
    assert!(out.contains("rows marked * : setup scaled with the loops"), "{out}");
    assert!(out.contains("leak lines: 2 ok, 1 LOST: long_busy_list_alloc_test (line 14)"), "{out}");
    assert!(out.contains("setup lines: 2"), "{out}");
    assert!(out.contains("under -icount shift=0"), "{out}");
    assert!(out.contains("qemu: exit status 0\n"), "{out}");
}

#[test]
fn other_args_rows_or_counts_only() {
    // not the suite: the rows there are (from the params header), two workers averaged
    let (rc, out, _) = summary(&fx("linux-newest-xfailed.log"), &[]);
    assert!(out.contains("(usec)"), "{out}");
    assert!(out.contains("Summary lines: "), "{out}");
    let _ = rc;
    // kernel tests: no Summary line, only the counts
    let (rc, out, _) = summary(&fx("ours-ktest.log"), &["--qemu-rc", "0"]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("no test_vmalloc Summary line"), "{out}");
    assert!(out.contains("kernel: 3 passed, 0 failed"), "{out}");
    assert!(!out.contains("+----"), "{out}");
    assert!(!out.contains("log problem"), "{out}");
}

#[test]
fn truncated_log_prints_what_there_is() {
    let text = std::fs::read_to_string(fx("ours-make-run-seed.log")).unwrap();
    // cut in the middle of the pcpu row: after its row and leak lines
    let cut = text.find("Summary: pcpu_alloc_test").unwrap();
    let d = std::env::temp_dir().join(format!("tvtool-test-{}-trunc.log", std::process::id()));
    std::fs::write(&d, &text[..cut]).unwrap();
    let (rc, out, _) = summary(&d, &["--qemu-rc", "124"]);
    assert_eq!(rc, 1);
    assert!(out.contains("15 rows"), "{out}");
    assert!(out.contains("long_busy_list_alloc_test: p:1, h:0, l:500000 (usec)"), "{out}");
    assert!(!out.contains("| pcpu_alloc_test"), "{out}");
    assert!(out.contains("log problem: "), "{out}");
    assert!(out.contains("row `pcpu_alloc_test p:1 h:0 l:500000` has no Summary line"), "{out}");
    assert!(out.contains("kernel: no `N passed, M failed` line"), "{out}");
    assert!(out.contains("result: FAILED"), "{out}");
    // a malformed line is reported, the rest still shown
    std::fs::write(&d, text.replace("avg: 15172 usec", "avg: x usec")).unwrap();
    let (rc, out, _) = summary(&d, &[]);
    assert_eq!(rc, 1);
    assert!(out.contains("malformed Summary line"), "{out}");
    assert!(out.contains("18 rows"), "{out}");
    let _ = std::fs::remove_file(&d);
}

#[test]
fn missing_file_is_a_tool_error() {
    let (rc, _, err) = summary(Path::new("/nonexistent/run.log"), &[]);
    assert_eq!(rc, 2);
    assert!(err.contains("reading /nonexistent/run.log"), "{err}");
}
