//! `tvtool smp` (make bench-smp): plan expansion, the Linux reference parser, per-worker
//! aggregation and ratios from small synthetic logs, the report, and runs with a fake QEMU.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tvtool::parse;
use tvtool::smp::anchor;
use tvtool::smp::report::{self, median, CellData, Ratio, SmpReport};
use tvtool::smp::{cells, mask, ns, qemu_args, Series, SmpCell, SmpPlan};

const PLAN: &str = r#"
name = "smp-test"
kernel = "kernel8.img"
smp = 4
runs = 3
loops = 20000
loop_scale = 0.5
timeout_s = 20
common_args = "test_vmalloc.sequential_test_order=1 test_vmalloc.seed={run}"
workers_tests = ["fix_size_alloc_test", "vm_map_ram_test"]
idle_tests = ["fix_size_alloc_test", "vm_map_ram_test", "pcpu_alloc_test"]
"#;

fn plan() -> SmpPlan {
    SmpPlan::parse(PLAN).unwrap()
}

fn anchor_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/linux-6.12-smp-scaling-16vcpu.txt")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * b.abs().max(1.0)
}

#[test]
fn ns_are_powers_of_two_then_the_maximum() {
    assert_eq!(ns(1), vec![1]);
    assert_eq!(ns(2), vec![1, 2]);
    assert_eq!(ns(4), vec![1, 2, 4]);
    assert_eq!(ns(6), vec![1, 2, 4, 6]);
    assert_eq!(ns(16), vec![1, 2, 4, 8, 16]);
    assert_eq!(ns(64), vec![1, 2, 4, 8, 16, 32, 64]);
}

#[test]
fn plan_validation() {
    let bad = |from: &str, to: &str| SmpPlan::parse(&PLAN.replace(from, to)).unwrap_err();
    assert!(bad("smp = 4", "smp = 0").to_string().contains("smp"));
    assert!(bad("smp = 4", "smp = 65").to_string().contains("1..=64"));
    assert!(bad("runs = 3", "runs = 0").to_string().contains("runs"));
    assert!(bad("loop_scale = 0.5", "loop_scale = 0.0").to_string().contains("loop_scale"));
    assert!(bad("\"vm_map_ram_test\"]", "\"vm_map_test\"]").to_string().contains("vm_map_test"));
    assert!(bad("name = ", "bogus = 1\nname = ").to_string().contains("bogus"));
    let p = plan();
    assert_eq!(p.loop_count(), 10000);
    assert_eq!(mask(&p.workers_tests), 1 | 1 << 10);
    assert_eq!(mask(&p.idle_tests), 1 | 1 << 7 | 1 << 10);
}

#[test]
fn cells_interleave_runs_and_pair_seeds() {
    let p = plan();
    let c = cells(&p);
    assert_eq!(c.len(), 3 * 2 * 3);
    let cfg: Vec<(Series, u32, u32, u32)> =
        c[..6].iter().map(|c| (c.series, c.smp, c.threads, c.run)).collect();
    assert_eq!(
        cfg,
        vec![
            (Series::Workers, 4, 1, 1),
            (Series::Workers, 4, 2, 1),
            (Series::Workers, 4, 4, 1),
            (Series::Idle, 1, 1, 1),
            (Series::Idle, 2, 1, 1),
            (Series::Idle, 4, 1, 1),
        ]
    );
    assert!(c[6..12].iter().all(|c| c.run == 2));
    assert_eq!(
        c[2].append,
        "test_vmalloc.sequential_test_order=1 test_vmalloc.seed=1 test_vmalloc.nr_threads=4 test_vmalloc.run_test_mask=0x401 test_vmalloc.test_loop_count=10000"
    );
    assert!(c[17]
        .append
        .contains("seed=3 test_vmalloc.nr_threads=1 test_vmalloc.run_test_mask=0x481"));
    assert_eq!(c[2].rel_log(), "workers/s4t4/run1.log");
    assert_eq!(c[4].rel_log(), "idle/s2t1/run1.log");
    let a = qemu_args(&p, "k.img", &c[2]);
    assert_eq!(&a[..6], ["-M", "virt", "-cpu", "cortex-a72", "-smp", "4"]);
}

#[test]
fn gicv3_above_eight_cpus_for_every_boot() {
    let mut p = plan();
    p.smp = 16;
    for c in cells(&p) {
        let a = qemu_args(&p, "k.img", &c);
        assert_eq!(a[1], "virt,gic-version=3", "{}", c.rel_log());
    }
    p.smp = 8;
    assert!(cells(&p).iter().all(|c| qemu_args(&p, "k", c)[1] == "virt"));
    p.machine = Some("virt,gic-version=max".into());
    assert_eq!(qemu_args(&p, "k", &cells(&p)[0])[1], "virt,gic-version=max");
    // tvtool run's plans too
    assert_eq!(tvtool::plan::virt_machine(8), "virt");
    assert_eq!(tvtool::plan::virt_machine(9), "virt,gic-version=3");
}

#[test]
fn linux_reference_parses_and_gives_ratios_to_s16t1() {
    let a = anchor::parse("ref", &std::fs::read_to_string(anchor_file()).unwrap());
    assert_eq!(a.rows.len(), 20);
    assert_eq!(a.max_smp(), 16);
    assert!(a.header[0].starts_with("Linux 6.12.117"), "{:?}", a.header);
    let r = a.rows.iter().find(|r| r.smp == 16 && r.threads == 16 && r.test == "vm_map_ram_test");
    let r = r.unwrap();
    assert_eq!(r.runs.len(), 2);
    assert_eq!((r.runs[0].median, r.runs[0].min, r.runs[0].max), (80686.0, 49201.0, 159276.0));
    // s4t4 has one run ("-" in r2)
    let p4 = a.workers_point("fix_size_alloc_test", 4).unwrap();
    assert_eq!(p4.config, "s4t4");
    assert_eq!(p4.medians, vec![195707.0]);
    assert_eq!(p4.base_config, "s16t1");
    assert_eq!(p4.base_medians, vec![161634.0, 195081.0]);
    assert!(close(p4.ratio, 195707.0 / ((161634.0 + 195081.0) / 2.0)));
    assert!(close(p4.ratio_lo, 195707.0 / 195081.0));
    assert!(close(p4.ratio_hi, 195707.0 / 161634.0));
    let p16 = a.workers_point("fix_size_alloc_test", 16).unwrap();
    assert!((p16.ratio - 2.06).abs() < 0.005, "{}", p16.ratio);
    assert!((p16.ratio_lo - 352105.0 / 195081.0).abs() < 1e-9);
    let p1 = a.workers_point("fix_size_alloc_test", 1).unwrap();
    assert_eq!((p1.config.as_str(), p1.ratio), ("s16t1", 1.0));
    assert!(a.workers_point("fix_size_alloc_test", 2).is_none());
    assert!(a.workers_point("pcpu_alloc_test", 4).is_none());
}

#[test]
fn median_and_ratio_statistics() {
    assert_eq!(median(&[3.0]), 3.0);
    assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    let r = Ratio::of(&[2.0, 2.0, 2.0]).unwrap();
    assert!(close(r.geo_mean, 2.0) && close(r.ci_lo.unwrap(), 2.0) && close(r.ci_hi.unwrap(), 2.0));
    // logs 0 and ln 4: mean ln 2, sd ln4/sqrt2, t(1) = 12.706
    let r = Ratio::of(&[1.0, 4.0]).unwrap();
    let h = 12.706 * (4f64.ln() / 2f64.sqrt()) / 2f64.sqrt();
    assert!(close(r.geo_mean, 2.0));
    assert!(close(r.ci_lo.unwrap(), (2f64.ln() - h).exp()));
    assert!(close(r.ci_hi.unwrap(), (2f64.ln() + h).exp()));
    let one = Ratio::of(&[1.5]).unwrap();
    assert_eq!((one.n, one.ci_lo), (1, None));
    assert!(Ratio::of(&[]).is_none());
    assert!(Ratio::of(&[1.0, 0.0]).is_none());
}

/// A boot's log with `w` workers, `avg[worker][test]`.
fn log_text(tests: &[&str], avgs: &[&[u64]]) -> String {
    let mut s = String::from("test_vmalloc: params nr_threads=2 test_loop_count=100\n");
    for (w, a) in avgs.iter().enumerate() {
        for (t, v) in tests.iter().zip(a.iter()) {
            s.push_str(&format!(
                "Summary: {t} passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 100 avg: {v} usec\n"
            ));
        }
        s.push_str(&format!("All test took worker{w}=1000 cycles\n"));
    }
    s
}

fn data(series: Series, n: u32, smp: u32, threads: u32, run: u32, avgs: &[&[u64]]) -> CellData {
    let tests = ["fix_size_alloc_test", "vm_map_ram_test"];
    let log = parse::parse_log("t.log", &log_text(&tests, avgs)).unwrap();
    let c = SmpCell {
        series,
        n,
        smp,
        threads,
        run,
        tests: tests.iter().map(|t| t.to_string()).collect(),
        append: String::new(),
    };
    report::cell_data(&log, &c)
}

#[test]
fn cells_take_the_median_over_workers_and_ratios_pair_runs() {
    let w = Series::Workers;
    let d = vec![
        data(w, 1, 2, 1, 1, &[&[100, 10]]),
        data(w, 1, 2, 1, 2, &[&[200, 10]]),
        data(w, 2, 2, 2, 1, &[&[150, 30], &[250, 10]]),
        data(w, 2, 2, 2, 2, &[&[300, 20], &[500, 20]]),
    ];
    assert_eq!(d[2].workers["fix_size_alloc_test"], vec![150.0, 250.0]);
    let tests = vec![(w, vec!["fix_size_alloc_test".to_string(), "vm_map_ram_test".to_string()])];
    let s = report::aggregate(&d, 2, &tests, None);
    assert_eq!(s.len(), 1);
    let fix = &s[0].lines[0];
    assert_eq!(fix.test, "fix_size_alloc_test");
    let (p1, p2) = (&fix.points[0], &fix.points[1]);
    assert_eq!((p1.n, p1.smp, p1.threads), (1, 2, 1));
    assert_eq!((p2.n, p2.smp, p2.threads), (2, 2, 2));
    // run cells: 200 (150..250) and 400 (300..500); ratios 200/100 and 400/200
    assert_eq!(p2.cells.iter().map(|c| c.median).collect::<Vec<_>>(), vec![200.0, 400.0]);
    assert_eq!((p2.worker_min, p2.worker_max), (Some(150.0), Some(500.0)));
    assert_eq!(p2.time, Some(300.0));
    assert_eq!(p2.ratios, vec![2.0, 2.0]);
    assert!(close(p2.ratio.unwrap().geo_mean, 2.0));
    assert_eq!(p1.ratios, vec![1.0, 1.0]);
    let vm = &s[0].lines[1].points[1];
    assert_eq!(vm.ratios, vec![2.0, 2.0]);
}

#[test]
fn a_run_missing_at_one_point_is_left_out_of_its_ratios() {
    let w = Series::Workers;
    let d = vec![
        data(w, 1, 2, 1, 1, &[&[100, 10]]),
        data(w, 1, 2, 1, 2, &[&[100, 10]]),
        data(w, 1, 2, 1, 3, &[&[100, 10]]),
        // run 1 of N=2 lost a worker: not a cell; run 2 is missing altogether
        data(w, 2, 2, 2, 1, &[&[900, 90]]),
        data(w, 2, 2, 2, 3, &[&[300, 30], &[300, 30]]),
    ];
    let tests = vec![(w, vec!["fix_size_alloc_test".to_string()])];
    let s = report::aggregate(&d, 2, &tests, None);
    let p2 = &s[0].lines[0].points[1];
    assert_eq!(p2.cells.len(), 1);
    assert_eq!(p2.cells[0].run, 3);
    assert_eq!(p2.ratios, vec![3.0]);
    assert_eq!(p2.ratio.unwrap().ci_lo, None);
    let md = report::render_ratio_table(&s[0]);
    assert!(md.contains("| fix_size_alloc_test | 100 | 3.00 |"), "{md}");
}

#[test]
fn workers_series_carries_the_linux_reference_where_n_matches() {
    let a = anchor::parse("ref", &std::fs::read_to_string(anchor_file()).unwrap());
    let w = Series::Workers;
    let mut d = vec![];
    for n in [1u32, 2, 4] {
        let v: Vec<u64> = vec![100 * n as u64, 10];
        let avgs: Vec<&[u64]> = (0..n).map(|_| v.as_slice()).collect();
        d.push(data(w, n, 4, n, 1, &avgs));
    }
    let tests = vec![(w, vec!["fix_size_alloc_test".to_string()])];
    let s = report::aggregate(&d, 4, &tests, Some(&a));
    let pts = &s[0].lines[0].points;
    assert_eq!(pts[0].linux.as_ref().unwrap().config, "s16t1");
    assert!(pts[1].linux.is_none());
    assert_eq!(pts[2].linux.as_ref().unwrap().config, "s4t4");
    let t = report::render_ratio_table(&s[0]);
    assert!(t.contains("| test | N=1: usec | N=2: ratio [95% CI] | N=4: ratio [95% CI] | Linux 6.12 (16-core host) s4t4 / s16t1 |"), "{t}");
    assert!(t.contains("| fix_size_alloc_test | 100 | 2.00 | 4.00 | 1.10 (1.00-1.21) |"), "{t}");
    let det = report::render_detail_table(&s[0]);
    assert!(det.contains("s16t1: 178358 usec (base)"), "{det}");
    assert!(det.contains("s4t4: 195707 usec, 1.10x s16t1 (pairs 1.00-1.21)"), "{det}");
}

fn fake_report(smp: u32, host_cores: usize) -> SmpReport {
    let mut p = plan();
    p.smp = smp;
    SmpReport {
        plan: p,
        host_cores,
        host_cpu: None,
        load_before: None,
        load_after: None,
        qemu_version: None,
        kernel: "k".into(),
        test_loop_count: 10000,
        wall_s: 1.0,
        ci_method: report::CI_METHOD.into(),
        series: vec![],
        anchor: None,
        boots: vec![],
    }
}

#[test]
fn header_says_when_the_host_has_fewer_cores_than_n() {
    let md = report::render_markdown(&fake_report(4, 2));
    assert!(md.contains("- host: 2 cores (nproc)"), "{md}");
    assert!(
        md.contains(
            "fewer than N = 4 vCPUs: where N > 2 the N-worker series measures host contention"
        ),
        "{md}"
    );
    let md = report::render_markdown(&fake_report(2, 2));
    assert!(!md.contains("measures host contention"), "{md}");
    assert!(md.contains("N <= 2: every vCPU can have its own host core"), "{md}");
    assert!(md.contains("(no Linux reference: the plan has no `anchor`)"), "{md}");
}

// ---- end to end with tests/fixtures/fake-qemu.sh (FAKE_MODE=scaling: avg = 1000 x nr_threads
// + 100 x (smp - 1) + 10 x worker + seed) ----

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tvtool-smp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("kernel8.img"), b"not a kernel").unwrap();
    std::fs::copy(anchor_file(), d.join("ref.txt")).unwrap();
    std::fs::write(d.join("plan.toml"), format!("{PLAN}anchor = \"ref.txt\"\n")).unwrap();
    d
}

fn tvtool_smp(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-qemu.sh");
    let mut c = Command::new(env!("CARGO_BIN_EXE_tvtool"));
    c.current_dir(dir).args(["smp", "plan.toml", "--out", "out"]).args(extra);
    c.env("TVTOOL_QEMU", fake).env("FAKE_MODE", "scaling").env_remove("FAKE_FAIL_SMP");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn smp_run_with_fake_qemu_writes_table_json_and_svg() {
    let d = scratch("ok");
    let o = tvtool_smp(&d, &["--runs", "2"], &[]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    // workers at -smp 4: N=1 1300+r, N=2 median 2305+r: ratio 1.77; N=4 4315+r: 3.32
    let row = out.lines().find(|l| l.starts_with("| fix_size_alloc_test | 13")).unwrap();
    assert!(row.contains("| 1.77 [1.77, 1.78] | 3.32 [3.31, 3.33] |"), "{row}");
    assert!(row.ends_with("| 1.10 (1.00-1.21) |"), "{row}");
    // idle: -smp 2 1100+r / 1000+r = 1.10, -smp 4 1.30, also pcpu_alloc_test
    let row = out.lines().find(|l| l.starts_with("| pcpu_alloc_test | 100")).unwrap();
    assert!(row.contains("| 1.10 [1.10, 1.10] | 1.30 [1.30, 1.30] |"), "{row}");
    assert!(
        out.contains("## Linux 6.12 reference: a 16-core host, not this one (ref.txt)"),
        "{out}"
    );
    assert!(err.contains("[12/12] idle/s4t1/run2.log rc=0"), "{err}");
    assert!(err.contains("12 boots, 0 failed"), "{err}");
    for f in ["report.md", "report.json", "smp.svg", "plan.toml", "workers/s4t4/run2.log"] {
        assert!(d.join("out").join(f).is_file(), "{f} missing");
    }
    assert_eq!(std::fs::read_to_string(d.join("out/report.md")).unwrap(), out);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    let p = &j["series"][0]["lines"][0]["points"][1];
    assert_eq!(p["threads"], 2);
    assert_eq!(p["cells"].as_array().unwrap().len(), 2);
    assert!((p["ratio"]["geo_mean"].as_f64().unwrap() - 1.772).abs() < 0.001, "{p}");
    assert_eq!(j["series"][1]["series"], "idle");
    assert_eq!(j["boots"].as_array().unwrap().len(), 12);
    let svg = std::fs::read_to_string(d.join("out/smp.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2 + 3 + 2, "lines: 2 workers, 3 idle, 2 Linux");
    let log = std::fs::read_to_string(d.join("out/workers/s4t2/run1.log")).unwrap();
    assert!(log.starts_with("HOST: tvtool smp plan=smp-test series=workers n=2 smp=4 nr_threads=2 run=1\nHOST: cmd "), "{log}");

    // --report-only rebuilds the same tables from the logs
    let o2 = tvtool_smp(&d, &["--runs", "2", "--report-only"], &[]);
    assert!(o2.status.success(), "{}", text(&o2.stderr));
    let tables = |s: &str| s.lines().filter(|l| l.starts_with('|')).collect::<Vec<_>>().join("\n");
    assert_eq!(tables(&text(&o2.stdout)), tables(&out));
}

#[test]
fn failed_boots_fail_the_run_but_the_rest_is_reported() {
    let d = scratch("fail");
    let o = tvtool_smp(&d, &["--runs", "2"], &[("FAKE_FAIL_SMP", "2")]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("idle/s2t1/run1.log rc=3 ") && err.contains("FAILED: qemu exited with rc=3"),
        "{err}"
    );
    assert!(err.contains("12 boots, 2 failed"), "{err}");
    assert!(out.contains("## Failed boots (2 of 12)"), "{out}");
    let row = out.lines().find(|l| l.starts_with("| pcpu_alloc_test | 100")).unwrap();
    assert!(row.contains("| n/a | 1.30 [1.30, 1.30] |"), "{row}");
}

#[test]
fn dry_run_prints_every_boot_and_smp_16_uses_gicv3() {
    let d = scratch("dry");
    let o =
        tvtool_smp(&d, &["--smp", "16", "--runs", "1", "--loop-scale", "0.1", "--dry-run"], &[]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(out.lines().filter(|l| l.starts_with("# ")).count(), 10, "{out}");
    assert_eq!(out.matches("-M virt,gic-version=3 ").count(), 10, "{out}");
    assert!(out.contains("# workers/s16t16/run1.log\n"), "{out}");
    assert!(out.contains("-smp 16 -m 2G"), "{out}");
    assert!(out.contains("test_vmalloc.nr_threads=16 test_vmalloc.run_test_mask=0x401 test_vmalloc.test_loop_count=2000'"), "{out}");
    assert!(!d.join("out").exists());
    let o = tvtool_smp(&d, &["--smp", "65", "--dry-run"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("smp must be 1..=64"));
}
