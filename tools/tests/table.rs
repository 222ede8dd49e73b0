use tvtool::compare::{self, VariantData};
use tvtool::parse::RowKey;
use tvtool::stats::PctOf;

fn key(name: &str, p: u64, h: u8, l: u64) -> RowKey {
    RowKey { name: name.into(), p: Some(p), h: Some(h), l: Some(l), tag: String::new() }
}

fn two_rows() -> Vec<VariantData> {
    let mut base = VariantData::new("base");
    let mut patch = VariantData::new("patch");
    // inserted out of order on purpose: rows sort by test name, then p, then h
    base.samples.insert(
        key("kvfree_rcu_1_arg_vmalloc_test", 1, 0, 500000),
        vec![532145.0, 532146.0, 532146.0],
    );
    patch.samples.insert(
        key("kvfree_rcu_1_arg_vmalloc_test", 1, 0, 500000),
        vec![441086.0, 541086.0, 641086.0],
    );
    base.samples
        .insert(key("fix_align_alloc_test", 1, 0, 500000), vec![1331843.0, 1331843.0, 1331844.0]);
    patch
        .samples
        .insert(key("fix_align_alloc_test", 1, 0, 500000), vec![437245.0, 437245.0, 437245.0]);
    vec![base, patch]
}

const GOLDEN: &str = "\
+-----------------+----------------------------------------------------------+-------------------+--------------------+
| Benchmark       | Result Class                                             | base              | patch              |
+=================+==========================================================+===================+====================+
| micromm/vmalloc | fix_align_alloc_test: p:1, h:0, l:500000 (usec)          | 1331843.33        | (I) 67.17%         |
|                 | kvfree_rcu_1_arg_vmalloc_test: p:1, h:0, l:500000 (usec) | 532145.67         | -1.68%             |
+-----------------+----------------------------------------------------------+-------------------+--------------------+
";

#[test]
fn golden_grid_in_the_seed_shape() {
    let r = compare::build_report(&two_rows(), PctOf::Base);
    assert_eq!(compare::render_grid(&r), GOLDEN);
    let text = compare::render_text(&r);
    assert!(text.starts_with(GOLDEN));
    assert!(text.contains("runs: base n=3, patch n=3"), "{text}");
    assert!(text.contains("Student t, two-sided, df = n-1"), "{text}");
    assert!(!text.contains("icount"), "{text}");
}

#[test]
fn seed_lines_are_reproduced_verbatim() {
    // two lines copied from shared/docs/seed-vfree-patch.txt (modulo its mail quoting)
    let r = compare::build_report(&two_rows(), PctOf::Base);
    let g = compare::render_grid(&r);
    assert!(g.contains("| micromm/vmalloc | fix_align_alloc_test: p:1, h:0, l:500000 (usec)          | 1331843.33        | (I) 67.17%         |"));
}

#[test]
fn regression_marker_rows_and_missing_cells() {
    let mut base = VariantData::new("mm-new");
    let mut a = VariantData::new("this series");
    let mut b = VariantData::new("other");
    base.samples.insert(key("vm_map_ram_test", 1, 0, 500000), vec![100.0, 101.0, 99.0]);
    a.samples.insert(key("vm_map_ram_test", 1, 0, 500000), vec![150.0, 151.0, 149.0]);
    b.samples.insert(key("pcpu_alloc_test", 1, 0, 500000), vec![1.0, 2.0]);
    b.icount = true;
    let r = compare::build_report(&[base, a, b], PctOf::Base);
    let g = compare::render_text(&r);
    assert!(g.contains("| (R) -50.00%        |"), "{g}");
    assert!(g.contains("| n/a               |"), "{g}");
    assert!(g.contains("under -icount shift=0 one usec = 1000 guest instructions"), "{g}");
    assert!(g.contains("runs: mm-new n=3, this series n=3, other n=2"), "{g}");
    // pcpu row sorts before vm_map_ram
    let pc = g.find("pcpu_alloc_test").unwrap();
    let vm = g.find("vm_map_ram_test").unwrap();
    assert!(pc < vm);
    // JSON has the statistics
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["rows"][1]["cells"][1]["marker"], "R");
    assert_eq!(j["rows"][1]["cells"][0]["n"], 3);
    // markdown and svg render
    let md = compare::render_markdown(&r);
    assert!(md.contains("| Benchmark | Result Class | mm-new | this series | other |"), "{md}");
    let svg = tvtool::svg::render(&r);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("this series"));
}

#[test]
fn row_order_test_then_p_then_h() {
    let mut base = VariantData::new("base");
    for (p, h) in [(512, 1), (4, 0), (16, 1), (16, 0), (1, 0), (64, 0)] {
        base.samples.insert(key("fix_size_alloc_test", p, h, 1), vec![1.0]);
    }
    base.samples.insert(key("fix_align_alloc_test", 1, 0, 1), vec![1.0]);
    let r = compare::build_report(&[base], PctOf::Base);
    let labels: Vec<&str> = r.rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(
        labels,
        vec![
            "fix_align_alloc_test: p:1, h:0, l:1",
            "fix_size_alloc_test: p:1, h:0, l:1",
            "fix_size_alloc_test: p:4, h:0, l:1",
            "fix_size_alloc_test: p:16, h:0, l:1",
            "fix_size_alloc_test: p:16, h:1, l:1",
            "fix_size_alloc_test: p:64, h:0, l:1",
            "fix_size_alloc_test: p:512, h:1, l:1",
        ]
    );
}
