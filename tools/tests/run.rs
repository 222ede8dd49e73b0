//! `tvtool run` end to end with a fake QEMU (tests/fixtures/fake-qemu.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fake_qemu() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-qemu.sh")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tvtool-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("kernel8.img"), b"not a kernel").unwrap();
    d
}

const SUITE_PLAN: &str = r#"
name = "fake-seed"
kernel = "kernel8.img"
icount = true
timeout_s = 20
runs = 3
suite = "seed"
loop_scale = 0.01
rows = ["fix_size_alloc_test p:1 h:0 l:500000", "vm_map_ram_test p:1 h:0 l:500000"]
[variants]
base = "mm.vfree=single mm.vmalloc_large_order=on"
patch = "mm.vfree=bulk mm.vmalloc_large_order=on"
"#;

fn run_plan(dir: &Path, plan: &str, mode: &str, extra: &[&str]) -> Output {
    std::fs::write(dir.join("plan.toml"), plan).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tvtool"))
        .current_dir(dir)
        .args(["run", "plan.toml", "--out", "out", "--jobs", "2"])
        .args(extra)
        .env("TVTOOL_QEMU", fake_qemu())
        .env("FAKE_MODE", mode)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn suite_plan_ok_prints_table_and_keeps_logs() {
    let d = scratch("ok");
    let o = run_plan(&d, SUITE_PLAN, "ok", &[]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("| Benchmark       | Result Class"), "{out}");
    assert!(
        out.contains("| micromm/vmalloc | fix_size_alloc_test: p:1, h:0, l:500000 (usec)"),
        "{out}"
    );
    assert!(out.contains("vm_map_ram_test: p:1, h:0, l:500000 (usec)"), "{out}");
    // patch ~500 vs base ~1000: about +100% (the seed's speed-up convention) and significant
    assert!(out.contains("| (I) 9") || out.contains("| (I) 10"), "{out}");
    assert!(out.contains("runs: base n=3, patch n=3"), "{out}");
    assert!(out.contains("under -icount shift=0 one usec = 1000 guest instructions"), "{out}");
    for v in ["base", "patch"] {
        for r in 1..=3 {
            let log = d.join(format!("out/{v}/suite-seed/run{r}.log"));
            let t = std::fs::read_to_string(&log).unwrap();
            assert!(t.lines().last().unwrap().starts_with("HOST: qemu rc=0 wall_s="), "{t}");
            assert!(t.contains("HOST: cmd "), "{t}");
            assert!(t.contains("-icount shift=0"), "{t}");
            assert!(t.contains("test_vmalloc.suite=seed test_vmalloc.loop_scale=0.01"), "{t}");
        }
    }
    for f in ["report.json", "report.svg", "table.md", "plan.toml"] {
        assert!(d.join("out").join(f).is_file(), "{f} missing");
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    assert_eq!(j["failed_cells"], 0);
    assert_eq!(j["cells"].as_array().unwrap().len(), 6);
    assert_eq!(j["report"]["rows"].as_array().unwrap().len(), 2);
    assert_eq!(j["report"]["rows"][0]["cells"][1]["marker"], "I");
    // interleaving: run r of every variant before run r+1
    let order: Vec<String> = j["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{}{}", c["variant"].as_str().unwrap(), c["run"]))
        .collect();
    assert_eq!(order, vec!["base1", "patch1", "base2", "patch2", "base3", "patch3"]);
    // compare on the kept logs gives the same table
    let c = Command::new(env!("CARGO_BIN_EXE_tvtool"))
        .current_dir(&d)
        .args([
            "compare",
            "--base",
            "base=out/base",
            "--variant",
            "patch=out/patch/*/run*.log",
            "--svg",
            "c.svg",
            "--json",
            "c.json",
        ])
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", text(&c.stderr));
    let ct = text(&c.stdout);
    let grid_run: Vec<&str> = out.lines().take(6).collect();
    let grid_cmp: Vec<&str> = ct.lines().take(6).collect();
    assert_eq!(grid_run, grid_cmp);
    assert!(d.join("c.svg").is_file() && d.join("c.json").is_file());
    // and parse
    let p = Command::new(env!("CARGO_BIN_EXE_tvtool"))
        .current_dir(&d)
        .args(["parse", "out/base/suite-seed/run1.log"])
        .output()
        .unwrap();
    assert!(p.status.success());
    assert!(text(&p.stdout).contains(
        "row=\"fix_size_alloc_test: p:1, h:0, l:500000\" test=fix_size_alloc_test worker=0"
    ));
}

fn expect_failure(mode: &str, needle: &str) {
    let d = scratch(mode);
    let o = run_plan(&d, SUITE_PLAN, mode, &["--runs", "2"]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(!o.status.success(), "{mode}: should fail\nstdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(needle), "{mode}: stderr lacks {needle:?}:\n{err}");
    assert!(err.contains("FAIL "), "{err}");
    assert!(d.join("out/patch/suite-seed/run2.log").is_file());
}

#[test]
fn failed_test_makes_run_fail() {
    expect_failure("fail", "reported failed: 1");
}

#[test]
fn lost_leak_makes_run_fail() {
    expect_failure("lost", "leak check LOST for vm_map_ram_test");
}

#[test]
fn missing_row_makes_run_fail() {
    expect_failure("missing", "expected row `vm_map_ram_test p:1 h:0 l:500000` missing");
}

#[test]
fn qemu_rc_makes_run_fail() {
    expect_failure("rc", "qemu exited with rc=3");
}

#[test]
fn unparsable_log_makes_run_fail() {
    expect_failure("garbage", "malformed Summary line");
}

#[test]
fn timeout_kills_and_fails() {
    let d = scratch("timeout");
    let plan = SUITE_PLAN.replace("timeout_s = 20", "timeout_s = 1");
    let t0 = std::time::Instant::now();
    let o = run_plan(&d, &plan, "timeout", &["--smoke"]);
    assert!(t0.elapsed().as_secs() < 15);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("timeout after 1 s"), "{err}");
    let t = std::fs::read_to_string(d.join("out/base/suite-seed/run1.log")).unwrap();
    assert!(t.contains("HOST: qemu rc=124 wall_s="), "{t}");
}

#[test]
fn row_per_boot_plan() {
    let d = scratch("rows");
    let plan = r#"
name = "fake-rows"
kernel = "kernel8.img"
runs = 2
loop_scale = 0.01
rows = ["fix_size_alloc_test p:512 h:1 l:100000", "vm_map_ram_test p:1 h:0 l:500000"]
base = "base"
[variants]
patch = "mm.vfree=bulk"
base = "mm.vfree=single"
"#;
    let o = run_plan(&d, plan, "ok", &[]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    // `base = "base"` puts base first although listed second
    assert!(out.contains("| base              | patch              |"), "{out}");
    assert!(out.contains("fix_size_alloc_test: p:512, h:1, l:100000 (usec)"), "{out}");
    let t =
        std::fs::read_to_string(d.join("out/base/fix_size_alloc_test-p512-h1-l100000/run2.log"))
            .unwrap();
    assert!(t.contains("HOST: row fix_size_alloc_test p:512 h:1 l:100000"), "{t}");
    // mask bit 0, nr_pages, use_huge, scaled loops
    assert!(
        t.contains("test_vmalloc.run_test_mask=1 test_vmalloc.nr_pages=512 test_vmalloc.use_huge=1 test_vmalloc.test_loop_count=1000"),
        "{t}"
    );
    let t = std::fs::read_to_string(d.join("out/patch/vm_map_ram_test-p1-h0-l500000/run1.log"))
        .unwrap();
    assert!(t.contains("test_vmalloc.run_test_mask=1024 "), "{t}");
    assert!(!out.contains("icount"), "{out}");
}

#[test]
fn smoke_like_plan_with_smp_list() {
    let d = scratch("smp");
    let plan = r#"
name = "fake-smoke"
kernel = "kernel8.img"
smp = [1, 4]
runs = 1
common_args = "test_vmalloc.run_test_mask=8191 test_vmalloc.test_loop_count=1000 test_vmalloc.nr_threads={smp}"
[variants]
base = "mm.vfree=single"
patch = "mm.vfree=bulk"
"#;
    let o = run_plan(&d, plan, "ok", &[]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("vrealloc_test: p:1, h:0, l:1000, smp:4 (usec)"), "{out}");
    assert!(out.contains("no_block_alloc_test: p:1, h:0, l:1000, smp:1 (usec)"), "{out}");
    let t = std::fs::read_to_string(d.join("out/patch/all-smp4/run1.log")).unwrap();
    assert!(t.contains("-smp 4") && t.contains("test_vmalloc.nr_threads=4"), "{t}");
    assert!(t.contains("All test took worker3="), "{t}");
    // a worker short of nr_threads is a failure
    let d = scratch("smp-few");
    let o = run_plan(&d, plan, "fewworkers", &[]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("expected 4 worker(s), log has 3"), "{err}");
}

#[test]
fn shipped_plans_load_and_expand() {
    use tvtool::plan::{self, Plan};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans");
    let seed = Plan::load(&dir.join("seed-table.toml")).unwrap();
    assert_eq!(seed.row_specs().unwrap().len(), 19);
    assert_eq!(seed.runs, 6);
    assert!(seed.icount);
    let v = seed.variant_list();
    assert_eq!(v[0], ("base".to_string(), "mm.vfree=single mm.vmalloc_large_order=on".to_string()));
    assert_eq!(v[1], ("patch".to_string(), "mm.vfree=bulk mm.vmalloc_large_order=on".to_string()));
    let cells = plan::cells(&seed, seed.runs).unwrap();
    assert_eq!(cells.len(), 12);
    assert_eq!(cells[0].expect.rows.len(), 19);
    assert!(cells[0].append.contains("test_vmalloc.suite=seed test_vmalloc.loop_scale=0.02"));
    let args = plan::qemu_args(&seed, "k.img", &cells[1]);
    let s = args.join(" ");
    assert!(s.starts_with("-M virt -cpu cortex-a72 -smp 1 -m 2G -nographic -no-reboot -semihosting -kernel k.img -append"), "{s}");
    assert!(s.ends_with("-icount shift=0"), "{s}");

    let reg = Plan::load(&dir.join("regression.toml")).unwrap();
    let v = reg.variant_list();
    assert!(v[0].1.contains("mm.vmalloc_large_order=off") && v[0].1.contains("mm.vfree=single"));
    assert!(v[1].1.contains("mm.vmalloc_large_order=on") && v[1].1.contains("mm.vfree=single"));

    let smoke = Plan::load(&dir.join("smoke.toml")).unwrap();
    let cells = plan::cells(&smoke, 1).unwrap();
    assert_eq!(cells.len(), 4);
    assert_eq!(cells[2].smp, 4);
    assert!(cells[2].append.contains("test_vmalloc.nr_threads=4"));
    assert_eq!(cells[2].expect.tests.len(), 13);
    assert_eq!(cells[2].expect.workers, Some(4));
    assert_eq!(cells[2].set, "all-smp4");
}

#[test]
fn bad_plans_are_rejected() {
    use tvtool::plan::Plan;
    assert!(Plan::parse("name='x'\n[variants]\n").is_err());
    assert!(Plan::parse("name='x'\nbogus=1\n[variants]\na='b'\n").is_err());
    assert!(Plan::parse("name='x'\nrows=['nope_test p:1 h:0 l:1']\n[variants]\na='b'\n").is_err());
    assert!(Plan::parse("name='x'\nrows=['fix_size_alloc_test p:1 h:3 l:1']\n[variants]\na='b'\n")
        .is_err());
    assert!(Plan::parse("name='x'\nmachine='sbsa-ref'\n[variants]\na='b'\n").is_err());
    let p = Plan::parse("name='x'\nmachine='raspi4b'\n[variants]\na='b'\n").unwrap();
    let cells = tvtool::plan::cells(&p, 1).unwrap();
    let s = tvtool::plan::qemu_args(&p, "k", &cells[0]).join(" ");
    assert!(s.contains("-M raspi4b") && s.contains("-dtb .cache/bcm2711-rpi-4-b.dtb -serial null -serial stdio -display none -monitor none"), "{s}");
}

#[test]
fn variant_order_is_file_order() {
    use tvtool::plan::Plan;
    let p = Plan::parse("name='x'\n[variants]\nzeta='a=1'\nalpha='a=2'\nmid='a=3'\n").unwrap();
    let names: Vec<String> = p.variant_list().into_iter().map(|v| v.0).collect();
    assert_eq!(names, vec!["zeta", "alpha", "mid"]);
    let p = Plan::parse("name='x'\nbase='mid'\n[variants]\nzeta='a=1'\nalpha='a=2'\nmid='a=3'\n")
        .unwrap();
    let names: Vec<String> = p.variant_list().into_iter().map(|v| v.0).collect();
    assert_eq!(names, vec!["mid", "zeta", "alpha"]);
}

#[test]
fn plan_min_effect_and_cli_override() {
    // fake QEMU: patch ~500 vs base ~1000 (a 50% difference, disjoint CIs)
    let d = scratch("mineff");
    let plan = SUITE_PLAN.replace("runs = 3", "runs = 3\nmin_effect = 60.0");
    let o = run_plan(&d, &plan, "ok", &[]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    assert!(!out.contains("| (I) "), "{out}");
    assert!(out.contains("differences below 60.0% are never marked"), "{out}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    assert_eq!(j["report"]["min_effect"], 60.0);
    assert_eq!(j["report"]["rows"][0]["cells"][1]["marker_ci"], "I");
    assert_eq!(j["report"]["rows"][0]["cells"][1]["marker"], "None");
    // --min-effect overrides the plan; --spread appends the spread table
    let d = scratch("mineff2");
    let o = run_plan(&d, &plan, "ok", &["--min-effect", "1.5", "--spread"]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("| (I) "), "{out}");
    assert!(out.contains("differences below 1.5% are never marked"), "{out}");
    assert!(out.contains("Run-to-run spread"), "{out}");
    assert!(out.contains("| vm_map_ram_test: p:1, h:0, l:500000 (usec) | 3 |"), "{out}");
    // bad values
    assert!(tvtool::plan::Plan::parse(
        &SUITE_PLAN.replace("runs = 3", "runs = 3\nmin_effect = -1.0")
    )
    .is_err());
    let d = scratch("mineff3");
    let o = run_plan(&d, SUITE_PLAN, "ok", &["--min-effect", "nan"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

#[test]
fn seed_wall_plan_is_the_seed_plan_without_icount() {
    use tvtool::plan::{self, Plan};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plans");
    let seed = Plan::load(&dir.join("seed-table.toml")).unwrap();
    let wall = Plan::load(&dir.join("seed-wall.toml")).unwrap();
    assert!(!wall.icount);
    assert!(wall.runs >= 6);
    assert_eq!(wall.rows, seed.rows);
    assert_eq!(wall.variant_list(), seed.variant_list());
    assert_eq!((wall.suite.clone(), wall.loop_scale), (seed.suite.clone(), seed.loop_scale));
    assert_eq!(wall.common_args, seed.common_args);
    assert_eq!(
        (wall.smp.values(), &wall.cpu, &wall.mem),
        (seed.smp.values(), &seed.cpu, &seed.mem)
    );
    let cells = plan::cells(&wall, wall.runs).unwrap();
    let s = plan::qemu_args(&wall, "k.img", &cells[0]).join(" ");
    assert!(!s.contains("-icount"), "{s}");
}
