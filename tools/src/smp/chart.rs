//! SVG of the SMP scaling report: one panel per series, x = N (log2 scale), y = ratio to
//! N = 1, one line per test with 95% CI bars; in the workers panel Linux 6.12's ratios (a
//! 16-core host) as dashed lines with hollow squares.

use super::report::{SeriesReport, SmpReport};
use crate::svg::{esc, fmt_tick, nice_step, COLORS};
use std::fmt::Write;

const PW: f64 = 440.0;
const PH: f64 = 360.0;
const LEFT: f64 = 70.0;
const GAP: f64 = 90.0;
const TOP: f64 = 70.0;
const LEGEND_W: f64 = 330.0;
const H: f64 = 520.0;

fn short(test: &str) -> &str {
    test.strip_suffix("_test").unwrap_or(test)
}

/// y range of a panel: every ratio, CI end and Linux value, with 1.0 inside.
fn y_range(s: &SeriesReport) -> (f64, f64, f64) {
    let (mut lo, mut hi) = (1.0f64, 1.0f64);
    for l in &s.lines {
        for p in &l.points {
            let mut vals = vec![];
            if let Some(r) = &p.ratio {
                vals.extend([Some(r.geo_mean), r.ci_lo, r.ci_hi].into_iter().flatten());
            }
            if let Some(a) = &p.linux {
                vals.extend([a.ratio, a.ratio_lo, a.ratio_hi]);
            }
            for v in vals.into_iter().filter(|v| v.is_finite()) {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    if hi - lo < 0.2 {
        hi += 0.1;
        lo -= 0.1;
    }
    let step = nice_step(hi - lo);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

fn panel(o: &mut String, s: &SeriesReport, x0: f64, tests: &[&str], smp: u32) {
    let xs: Vec<u32> =
        s.lines.first().map(|l| l.points.iter().map(|p| p.n).collect()).unwrap_or_default();
    let lmax = xs.iter().map(|n| (*n as f64).log2()).fold(0.0, f64::max).max(1.0);
    let x = |n: u32| x0 + 20.0 + (n as f64).log2() / lmax * (PW - 40.0);
    let (lo, hi, step) = y_range(s);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * PH;
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13">{}</text>"#,
        x0 + PW / 2.0,
        TOP - 12.0,
        esc(&match s.series {
            super::Series::Workers =>
                format!("N workers on -smp {smp}: per-worker time / 1 worker"),
            super::Series::Idle => "1 worker on -smp N: time / time at -smp 1".to_string(),
        })
    );
    let mut t = lo;
    while t <= hi + step * 1e-9 {
        let _ = writeln!(
            o,
            r##"<line x1="{x0}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(t),
            x0 + PW,
            x0 - 6.0,
            y(t) + 4.0,
            fmt_tick(t, step)
        );
        t += step;
    }
    let _ = writeln!(
        o,
        r##"<line x1="{x0}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#000" stroke-dasharray="2,2"/>"##,
        y(1.0),
        x0 + PW
    );
    for n in &xs {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{n}</text>"#,
            x(*n),
            TOP + PH + 16.0
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">N ({}, log2 scale)</text>"#,
        x0 + PW / 2.0,
        TOP + PH + 36.0,
        s.x_label
    );
    let _ = writeln!(
        o,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">ratio to N = 1</text>"#,
        x0 - 45.0,
        TOP + PH / 2.0
    );
    for l in &s.lines {
        let i = tests.iter().position(|t| *t == l.test).unwrap_or(0);
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> =
            l.points.iter().filter_map(|p| Some((x(p.n), y(p.ratio?.geo_mean)))).collect();
        if pts.len() > 1 {
            let d: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
            let _ = writeln!(
                o,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
                d.join(" ")
            );
        }
        for p in &l.points {
            let Some(r) = p.ratio else { continue };
            let px = x(p.n) + (i as f64 - 2.0) * 3.0;
            if let (Some(a), Some(b)) = (r.ci_lo, r.ci_hi) {
                let _ = writeln!(
                    o,
                    r#"<path d="M{px:.1},{:.1}V{:.1}" stroke="{c}" fill="none"/>"#,
                    y(a),
                    y(b)
                );
            }
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{c}"><title>{} N={}: {:.2} (95% CI {}), runs {}</title></circle>"#,
                x(p.n),
                y(r.geo_mean),
                esc(&l.test),
                p.n,
                r.geo_mean,
                match (r.ci_lo, r.ci_hi) {
                    (Some(a), Some(b)) => format!("{a:.2}-{b:.2}"),
                    _ => "n/a".into(),
                },
                r.n
            );
        }
        let lin: Vec<(u32, f64)> =
            l.points.iter().filter_map(|p| Some((p.n, p.linux.as_ref()?.ratio))).collect();
        if lin.len() > 1 {
            let d: Vec<String> =
                lin.iter().map(|(n, v)| format!("{:.1},{:.1}", x(*n), y(*v))).collect();
            let _ = writeln!(
                o,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="1.2" stroke-dasharray="6,4"/>"#,
                d.join(" ")
            );
        }
        for p in &l.points {
            let Some(a) = &p.linux else { continue };
            let _ = writeln!(
                o,
                r#"<rect x="{:.1}" y="{:.1}" width="7" height="7" fill="white" stroke="{c}" stroke-width="1.5"><title>Linux 6.12 (16-core host) {} {}: {:.2} ({:.2}-{:.2})</title></rect>"#,
                x(p.n) - 3.5,
                y(a.ratio) - 3.5,
                esc(&l.test),
                a.config,
                a.ratio,
                a.ratio_lo,
                a.ratio_hi
            );
        }
    }
    let _ = writeln!(
        o,
        r##"<rect x="{x0}" y="{TOP}" width="{PW}" height="{PH}" fill="none" stroke="#000"/>"##
    );
}

/// The chart of both series.
pub fn render(r: &SmpReport) -> String {
    let np = r.series.len().max(1) as f64;
    let w = LEFT + np * PW + (np - 1.0) * GAP + 30.0 + LEGEND_W;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{H}" viewBox="0 0 {w} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect x="0" y="0" width="{w}" height="{H}" fill="white"/>"#);
    let title = format!(
        "test_vmalloc SMP scaling, -smp up to {} (host: {} cores; wall clock, {} runs, loops {})",
        r.plan.smp, r.host_cores, r.plan.runs, r.test_loop_count
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="26" text-anchor="middle" font-size="16">{}</text>"#,
        w / 2.0,
        esc(&title)
    );
    let mut tests: Vec<&str> = vec![];
    for s in &r.series {
        for l in &s.lines {
            if !tests.contains(&l.test.as_str()) {
                tests.push(&l.test);
            }
        }
    }
    for (i, s) in r.series.iter().enumerate() {
        panel(&mut o, s, LEFT + i as f64 * (PW + GAP), &tests, r.plan.smp);
    }
    let lx = LEFT + np * PW + (np - 1.0) * GAP + 30.0;
    for (i, t) in tests.iter().enumerate() {
        let ly = TOP + 20.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            COLORS[i % COLORS.len()],
            lx + 18.0,
            ly + 10.0,
            esc(short(t))
        );
    }
    let mut ly = TOP + 20.0 * tests.len() as f64 + 16.0;
    let mut notes = vec![
        "dots: this kernel, geometric mean of the".to_string(),
        "per-run ratios; bars: 95% CI".to_string(),
        "dashed, hollow squares: Linux 6.12 on a".to_string(),
        "16-core host, s<N>t<N> / s16t1".to_string(),
    ];
    if (r.plan.smp as usize) > r.host_cores {
        notes.push(format!("N > {} (host cores): the workers series", r.host_cores));
        notes.push("measures host contention, not the kernel".into());
    }
    for t in notes {
        let _ = writeln!(o, r#"<text x="{lx:.1}" y="{ly:.1}" font-size="11">{}</text>"#, esc(&t));
        ly += 14.0;
    }
    o.push_str("</svg>\n");
    o
}
