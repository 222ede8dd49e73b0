//! `tvtool linux` (make bench-linux): the Linux /init's row list, and the report from small
//! synthetic logs of both kernels (ours: suite rows; Linux: /init row lines + dmesg Summary).

use std::path::{Path, PathBuf};
use std::process::Command;
use tvtool::linux::report::{collect, render};
use tvtool::linux::{plan_rows, row_arg, scaled_loops};
use tvtool::parse::RowSpec;

const PLAN: &str = r#"
name = "linux-test"
suite = "seed"
rows = [
    "fix_size_alloc_test p:1 h:0 l:500000",
    "fix_size_alloc_test p:64 h:1 l:100000",
    "pcpu_alloc_test p:1 h:0 l:500000",
]
[variants]
patch = "mm.vfree=bulk"
"#;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tvtool-linux-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("plan.toml"), PLAN).unwrap();
    d
}

/// Our kernel's suite log: (row, loops, avg usec) per row.
fn ours_log(rows: &[(&str, u64, u64)], leak_ok: bool) -> String {
    let mut s = String::from(
        "HOST: 2026-12-01T00:00:00Z QEMU emulator version 10.0.2\n\
         HOST: qemu-system-aarch64 -M virt -smp 1 -kernel k -append test_vmalloc.suite=seed\n\
         test_vmalloc: params nr_threads=1 suite=seed loop_scale=0.040000 mm.vfree=bulk cpus=1\n",
    );
    for (row, loops, avg) in rows {
        let name = row.split(' ').next().unwrap();
        s += &format!("test_vmalloc: row {row}\n");
        s += &format!(
            "[    1.000000] test_vmalloc: leak {name} free_pages 10->10 free_va 0x10->0x10 {}\n",
            if leak_ok { "ok" } else { "LOST" }
        );
        s += &format!(
            "Summary: {name} passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: {loops} avg: {avg} usec\n\
             All test took worker0=1234 cycles\n"
        );
    }
    s += &format!("{} passed, 0 failed\nHOST: qemu rc=0 wall_s=1.5\n", rows.len());
    s
}

/// The Linux /init's log: row line, ANCHOR load line, timestamped Summary (no xfailed field).
fn linux_log(rows: &[(&str, u64, u64)]) -> String {
    let mut s = String::from(
        "HOST: 2026-12-01T00:00:00Z QEMU emulator version 10.0.2\n\
         HOST: qemu-system-aarch64 -M virt -smp 1 -kernel Image -initrd initrd-bench.gz\n\
         [    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd083]\n",
    );
    for (i, (row, loops, avg)) in rows.iter().enumerate() {
        let name = row.split(' ').next().unwrap();
        s += &format!("test_vmalloc: row {row}\n");
        s += &format!(
            "ANCHOR: load {}/{}: tvload /test_vmalloc.ko nr_threads=1 test_loop_count={loops}\n",
            i + 1,
            rows.len()
        );
        s += "[    1.108823] test_vmalloc: loading out-of-tree module taints kernel.\n";
        s += &format!(
            "[    1.160369] Summary: {name} passed: 1 failed: 0 repeat: 1 loops: {loops} avg: {avg} usec\n\
             [    1.160383] All test took worker0=1517299 cycles\n\
             tvload: finit_module returned -11\n"
        );
    }
    s += "[    1.577912] reboot: Power down\nHOST: qemu rc=0 wall_s=9.5\n";
    s
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const P1: &str = "fix_size_alloc_test p:1 h:0 l:500000";
const P64: &str = "fix_size_alloc_test p:64 h:1 l:100000";
const PCPU: &str = "pcpu_alloc_test p:1 h:0 l:500000";

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9 * b.abs().max(1.0))
}

#[test]
fn rows_scale_loops_as_the_kernel_and_carry_the_mask() {
    assert_eq!(scaled_loops(500_000, 0.04), 20_000);
    assert_eq!(scaled_loops(100_000, 0.04), 4_000);
    assert_eq!(scaled_loops(100_000, 0.000001), 1);
    assert_eq!(scaled_loops(500_000, 1.0), 500_000);
    let r = RowSpec::parse("vm_map_ram_test p:1 h:0 l:500000").unwrap();
    assert_eq!(row_arg(&r, 0.04).unwrap(), "vm_map_ram_test:1024:1:0:20000:500000");
    assert!(row_arg(&r, 0.0).is_err());

    // the real seed plan: 19 rows, fix_align first; through the binary as the script calls it
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/seed-table.toml");
    assert_eq!(plan_rows(&seed).unwrap().len(), 19);
    let o = Command::new(env!("CARGO_BIN_EXE_tvtool"))
        .args(["linux", "rows", "--plan"])
        .arg(&seed)
        .args(["--loop-scale", "0.04"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 19);
    assert_eq!(lines[0], "fix_align_alloc_test:16:1:0:20000:500000");
    assert!(lines.contains(&"fix_size_alloc_test:1:512:1:4000:100000"), "{out}");
    assert!(lines.contains(&"pcpu_alloc_test:128:1:0:20000:500000"), "{out}");
}

#[test]
fn report_per_loop_ratios_targets_and_ns_per_instruction() {
    let d = scratch("ok");
    let rows = plan_rows(&d.join("plan.toml")).unwrap();
    // icount -smp 1: ours p:1 2000 instr/loop, Linux 8000 -> 0.25 (over 0.2)
    write(
        &d,
        "out/icount/ours/run1.log",
        &ours_log(&[(P1, 20000, 40000), (P64, 4000, 40000), (PCPU, 20000, 70000)], true),
    );
    write(
        &d,
        "out/icount/linux/run1.log",
        &linux_log(&[(P1, 20000, 160000), (P64, 4000, 320000), (PCPU, 20000, 175000)]),
    );
    write(
        &d,
        "out/icount/linux/run2.log",
        &linux_log(&[(P1, 20000, 170000), (P64, 4000, 320000), (PCPU, 20000, 175000)]),
    );
    // icount -smp 2
    write(
        &d,
        "out/icount-smp2/ours/run1.log",
        &ours_log(&[(P1, 20000, 50000), (P64, 4000, 40000), (PCPU, 20000, 70000)], true),
    );
    write(
        &d,
        "out/icount-smp2/linux/run1.log",
        &linux_log(&[(P1, 20000, 160000), (P64, 4000, 320000), (PCPU, 20000, 175000)]),
    );
    // wall -smp 2: two boots each (medians)
    write(
        &d,
        "out/wall/ours/run1.log",
        &ours_log(&[(P1, 20000, 100000), (P64, 4000, 100000), (PCPU, 20000, 140000)], true),
    );
    write(
        &d,
        "out/wall/ours/run2.log",
        &ours_log(&[(P1, 20000, 140000), (P64, 4000, 100000), (PCPU, 20000, 140000)], true),
    );
    write(
        &d,
        "out/wall/linux/run1.log",
        &linux_log(&[(P1, 20000, 400000), (P64, 4000, 400000), (PCPU, 20000, 350000)]),
    );
    write(
        &d,
        "out/wall/linux/run2.log",
        &linux_log(&[(P1, 20000, 400000), (P64, 4000, 400000), (PCPU, 20000, 350000)]),
    );
    write(
        &d,
        "out/host.txt",
        "start 2026-12-01T00:00:00Z\nloadavg_before 1.00 2.00 3.00\nnproc 2\nsettle 5\n",
    );
    let r = collect(&d.join("out"), &rows, 0.04).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.boots.len(), 9);

    let p1 = &r.rows[0];
    assert_eq!(p1.loops, 20000);
    assert!(close(p1.instr_ours.mean, 2000.0));
    assert!(close(p1.instr_linux.mean, 8250.0)); // mean of 8000 and 8500
    assert!(close(p1.instr_ratio, 2000.0 / 8250.0));
    assert!(p1.instr_over_target);
    assert!(close(p1.wall_ours.median, 6.0)); // median of 5 and 7 usec/loop
    assert!(close(p1.wall_linux.median, 20.0));
    assert!(close(p1.wall_ratio, 0.3));
    assert!(p1.wall_target_applies && !p1.wall_over_target); // 0.3 is not over 0.3
                                                             // ns/instr on the -smp 2 instructions: 6 usec / 2500 instr, 20 usec / 8000 instr
    assert_eq!(p1.ns_basis, "smp2");
    assert!(close(p1.ns_per_instr_ours, 6000.0 / 2500.0));
    assert!(close(p1.ns_per_instr_linux, 20000.0 / 8000.0));

    let p64 = &r.rows[1];
    assert_eq!((p64.p, p64.h, p64.loops), (64, 1, 4000));
    assert!(close(p64.instr_ratio, 0.125));
    assert!(!p64.instr_over_target);
    assert!(close(p64.wall_ratio, 0.25));
    assert!(!p64.wall_over_target);

    // pcpu: per object (35000), the wall target does not apply
    let pcpu = &r.rows[2];
    assert_eq!(pcpu.per, "object");
    assert!(close(pcpu.instr_ours.mean, 70000.0 * 1000.0 / 35000.0));
    assert!(close(pcpu.wall_ratio, 0.4));
    assert!(!pcpu.wall_target_applies && !pcpu.wall_over_target);

    let md = render(&r);
    assert!(md.contains("| fix_size_alloc_test p:1 h:0 | 20000 | 2000 | 8250 | 0.242 ! | 6.00 | 20.0 | 0.300 | 2.40 | 2.50 |"), "{md}");
    assert!(md.contains("| pcpu_alloc_test p:1 h:0 (per object) | 20000 |"), "{md}");
    assert!(md.contains("load average (1/5/15 min) before: 1.00 2.00 3.00"), "{md}");
    assert!(md.contains("Above the target: 2 of 3 rows in instructions (> 0.2), 0 of 2 fix_size rows in wall-clock (> 0.3)"), "{md}");
    assert!(md.contains("## Instructions per loop at -smp 1 and -smp 2"), "{md}");
    assert!(md.contains("## Wall-clock us/loop per boot"), "{md}");
    assert!(!md.contains("## Problems"), "{md}");
    assert!(md.contains("- icount, ours: `qemu-system-aarch64 -M virt -smp 1 -kernel k"), "{md}");
    assert!(md.contains("our kernel's params header: `nr_threads=1 suite=seed"), "{md}");
    assert!(md.contains("once its uptime reaches 5 s"), "{md}");
}

#[test]
fn report_lists_missing_rows_loop_mismatches_leaks_and_failed_boots() {
    let d = scratch("bad");
    let rows = plan_rows(&d.join("plan.toml")).unwrap();
    let all = [(P1, 20000, 40000), (P64, 4000, 40000), (PCPU, 20000, 70000)];
    write(&d, "out/icount/ours/run1.log", &ours_log(&all, false));
    // Linux: the p:64 row is missing, p:1 ran other loops
    write(
        &d,
        "out/icount/linux/run1.log",
        &linux_log(&[(P1, 10000, 80000), (PCPU, 20000, 175000)]),
    );
    write(&d, "out/wall/ours/run1.log", &ours_log(&all, true).replace("rc=0", "rc=124"));
    write(&d, "out/wall/linux/run1.log", &linux_log(&all));
    // no icount-smp2 logs: optional, ns/instr falls back to -smp 1
    let r = collect(&d.join("out"), &rows, 0.04).unwrap();
    let all_problems = r.problems.join("\n");
    assert!(all_problems.contains("says LOST"), "{all_problems}");
    assert!(
        all_problems.contains("no Summary line for row `fix_size_alloc_test p:64 h:1 l:100000`"),
        "{all_problems}"
    );
    assert!(all_problems.contains("ran 10000 loops, expected 20000"), "{all_problems}");
    assert!(all_problems.contains("timed out"), "{all_problems}");
    assert!(!all_problems.contains("icount-smp2"), "{all_problems}");
    assert_eq!(r.rows[0].ns_basis, "smp1");
    assert!(r.rows[1].instr_linux.mean.is_none() && r.rows[1].instr_ratio.is_none());
    let md = render(&r);
    assert!(md.contains("## Problems"), "{md}");
    assert!(md.contains("instr/loop (-smp 1; no `-smp 2` icount boots)"), "{md}");
    assert!(!md.contains("## Instructions per loop at -smp 1 and -smp 2"), "{md}");

    // the CLI exits 1 on problems and still writes both files
    let o = Command::new(env!("CARGO_BIN_EXE_tvtool"))
        .args(["linux", "report", "--out"])
        .arg(d.join("out"))
        .arg("--plan")
        .arg(d.join("plan.toml"))
        .args(["--loop-scale", "0.04"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(d.join("out/report.md").is_file() && d.join("out/report.json").is_file());
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    assert_eq!(j["rows"].as_array().unwrap().len(), 3);
    assert!(!j["problems"].as_array().unwrap().is_empty());
}
