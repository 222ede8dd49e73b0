//! Minimum effect (noise threshold): a difference smaller than `min_effect` % of the base mean
//! is never marked (I)/(R), even when the CIs are disjoint (zero-width under -icount).

use std::path::Path;
use std::process::Command;
use tvtool::compare::{self, VariantData};
use tvtool::parse::RowKey;
use tvtool::stats::{self, Marker, PctOf, Summary};

fn key(name: &str) -> RowKey {
    RowKey { name: name.into(), p: Some(1), h: Some(0), l: Some(500000), tag: String::new() }
}

/// base: constant 1000 on every row; patch: constant 1000 x (1 - d/100) (zero-variance rows,
/// as a deterministic -icount run gives).
fn zero_variance(diffs: &[(&str, f64)]) -> Vec<VariantData> {
    let mut base = VariantData::new("base");
    let mut patch = VariantData::new("patch");
    for (name, d) in diffs {
        base.samples.insert(key(name), vec![1000.0; 6]);
        patch.samples.insert(key(name), vec![1000.0 * (1.0 - d / 100.0); 6]);
    }
    vec![base, patch]
}

fn marker_of(r: &compare::Report, name: &str) -> Marker {
    let row = r.rows.iter().find(|row| row.key.name == name).unwrap();
    row.cells[1].as_ref().unwrap().marker.unwrap()
}

#[test]
#[allow(clippy::assertions_on_constants)]
fn default_threshold_is_at_most_three_percent() {
    assert!(stats::DEFAULT_MIN_EFFECT > 0.0 && stats::DEFAULT_MIN_EFFECT <= 3.0);
}

#[test]
fn zero_variance_half_percent_is_unmarked_by_default() {
    let data = zero_variance(&[("fix_size_alloc_test", 0.5), ("vm_map_ram_test", -0.5)]);
    let r = compare::build_report(&data, PctOf::Base);
    // the CIs alone would say significant ...
    let c = r.rows[0].cells[1].as_ref().unwrap();
    assert_eq!(c.marker_ci, Some(Marker::I));
    assert!((c.effect_pct.unwrap() - 0.5).abs() < 1e-9);
    // ... the threshold says noise
    assert_eq!(marker_of(&r, "fix_size_alloc_test"), Marker::None);
    assert_eq!(marker_of(&r, "vm_map_ram_test"), Marker::None);
    let g = compare::render_grid(&r);
    assert!(g.contains("| 0.50%              |"), "{g}");
    assert!(g.contains("| -0.50%             |"), "{g}");
    assert!(!g.contains("(I)") && !g.contains("(R)"), "{g}");
}

#[test]
fn zero_variance_ten_percent_is_marked_by_default() {
    let data = zero_variance(&[("fix_size_alloc_test", 10.0), ("vm_map_ram_test", -10.0)]);
    let r = compare::build_report(&data, PctOf::Base);
    assert_eq!(marker_of(&r, "fix_size_alloc_test"), Marker::I);
    assert_eq!(marker_of(&r, "vm_map_ram_test"), Marker::R);
    let g = compare::render_grid(&r);
    assert!(g.contains("| (I) 10.00%         |"), "{g}");
    assert!(g.contains("| (R) -10.00%        |"), "{g}");
}

#[test]
fn custom_threshold() {
    let data = zero_variance(&[
        ("fix_size_alloc_test", 0.5),
        ("pcpu_alloc_test", 10.0),
        ("vm_map_ram_test", 25.0),
    ]);
    // lower: 0.5% now counts
    let r = compare::build_report_with(&data, PctOf::Base, 0.1);
    assert_eq!(marker_of(&r, "fix_size_alloc_test"), Marker::I);
    assert_eq!(r.min_effect, 0.1);
    // higher: 10% is below 20%, 25% is not
    let r = compare::build_report_with(&data, PctOf::Base, 20.0);
    assert_eq!(marker_of(&r, "fix_size_alloc_test"), Marker::None);
    assert_eq!(marker_of(&r, "pcpu_alloc_test"), Marker::None);
    assert_eq!(marker_of(&r, "vm_map_ram_test"), Marker::I);
    let t = compare::render_text(&r);
    assert!(t.contains("differences below 20.0% are never marked"), "{t}");
    // 0 = the CIs alone
    let r = compare::build_report_with(&data, PctOf::Base, 0.0);
    assert_eq!(marker_of(&r, "fix_size_alloc_test"), Marker::I);
    // the threshold never adds a marker: overlapping CIs stay unmarked
    let b = Summary::of(&[100.0, 130.0, 70.0]).unwrap();
    let v = Summary::of(&[60.0, 90.0, 30.0]).unwrap();
    assert_eq!(stats::marker_min(&b, &v, 0.0), Marker::None);
}

#[test]
fn threshold_is_relative_to_the_base_mean_whatever_pct_of() {
    // base 1000, patch 970.9: (b-v)/v = 3.0%, (b-v)/b = 2.91%: below a 2.95% threshold
    let mut base = VariantData::new("base");
    let mut patch = VariantData::new("patch");
    base.samples.insert(key("vm_map_ram_test"), vec![1000.0; 3]);
    patch.samples.insert(key("vm_map_ram_test"), vec![970.9; 3]);
    let data = vec![base, patch];
    let r = compare::build_report_with(&data, PctOf::Variant, 2.95);
    assert_eq!(marker_of(&r, "vm_map_ram_test"), Marker::None);
    let r = compare::build_report_with(&data, PctOf::Variant, 2.9);
    assert_eq!(marker_of(&r, "vm_map_ram_test"), Marker::I);
    assert!((stats::effect_pct(1000.0, 1100.0) - 10.0).abs() < 1e-9);
}

#[test]
fn footnote_states_the_default() {
    let r = compare::build_report(&zero_variance(&[("vm_map_ram_test", 1.0)]), PctOf::Base);
    let t = compare::render_text(&r);
    let want = format!(
        "differences below {}% are never marked",
        compare::fmt_pct(stats::DEFAULT_MIN_EFFECT)
    );
    assert!(t.contains(&want), "{t}");
    assert_eq!(compare::fmt_pct(2.0), "2.0");
    assert_eq!(compare::fmt_pct(0.25), "0.25");
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["min_effect"], stats::DEFAULT_MIN_EFFECT);
    assert_eq!(j["rows"][0]["cells"][1]["marker_ci"], "I");
    assert_eq!(j["rows"][0]["cells"][1]["marker"], "None");
}

fn log(dir: &Path, name: &str, avg: u64) {
    std::fs::write(
        dir.join(name),
        format!(
            "test_vmalloc: row vm_map_ram_test p:1 h:0 l:500000\n\
             Summary: vm_map_ram_test passed: 1 failed: 0 xfailed: 0 repeat: 1 loops: 5000 avg: {avg} usec\n\
             All test took worker0=1 cycles\n"
        ),
    )
    .unwrap();
}

#[test]
fn compare_cli_min_effect() {
    let d = std::env::temp_dir().join(format!("tvtool-test-{}-mineff", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    for v in ["base", "patch"] {
        std::fs::create_dir_all(d.join(v)).unwrap();
    }
    for r in 1..=3 {
        log(&d.join("base"), &format!("run{r}.log"), 100000);
        log(&d.join("patch"), &format!("run{r}.log"), 99000); // 1% faster, zero variance
    }
    let run = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_tvtool"))
            .current_dir(&d)
            .args(["compare", "--base", "base=base", "--variant", "patch=patch"])
            .args(["--pct-of", "base"])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (rc, out, _) = run(&[]);
    assert_eq!(rc, Some(0));
    assert!(out.contains("| 1.00%              |"), "{out}");
    let (rc, out, _) = run(&["--min-effect", "0.5"]);
    assert_eq!(rc, Some(0));
    assert!(out.contains("| (I) 1.00%          |"), "{out}");
    assert!(out.contains("differences below 0.5% are never marked"), "{out}");
    let (rc, out, _) = run(&["--min-effect", "0", "--spread"]);
    assert_eq!(rc, Some(0));
    assert!(out.contains("| (I) 1.00%          |"), "{out}");
    assert!(out.contains("minimum effect 0"), "{out}");
    assert!(out.contains("| vm_map_ram_test: p:1, h:0, l:500000 (usec) | 3 | 0.00% | 0.00% | 3 | 0.00% | 0.00% |"), "{out}");
    assert!(out.contains("all rows and variants: median CV 0.00%"), "{out}");
    let (rc, _, err) = run(&["--min-effect=-1"]);
    assert_eq!(rc, Some(2));
    assert!(err.contains("min_effect must be a percentage >= 0"), "{err}");
}
