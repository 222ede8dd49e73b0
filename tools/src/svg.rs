//! Hand-written SVG: grouped bar chart of % change vs base per row (one bar per non-base
//! variant), error bars from the Welch 95% CI of the difference where n >= 2.

use crate::compare::Report;
use crate::stats::Marker;
use std::fmt::Write;

const W: f64 = 1200.0;
const H: f64 = 600.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 190.0;
pub(crate) const COLORS: &[&str] =
    &["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" tick step for a range.
pub(crate) fn nice_step(range: f64) -> f64 {
    let raw = range / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

pub fn render(r: &Report) -> String {
    let vars: Vec<usize> = (1..r.variants.len()).collect();
    let mut lo: f64 = 0.0;
    let mut hi: f64 = 0.0;
    for row in &r.rows {
        for &vi in &vars {
            if let Some(c) = &row.cells[vi] {
                for v in [c.pct, c.pct_lo, c.pct_hi].into_iter().flatten() {
                    if v.is_finite() {
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                }
            }
        }
    }
    if hi - lo < 1.0 {
        hi += 1.0;
        lo -= 1.0;
    }
    let step = nice_step(hi - lo);
    let lo = (lo / step).floor() * step;
    let hi = (hi / step).ceil() * step;
    let ph = H - TOP - BOTTOM;
    let pw = W - LEFT - RIGHT;
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#);
    let title = format!(
        "{}: % change vs {} (positive = faster; {})",
        r.benchmark,
        r.base,
        if r.icount { "-icount shift=0" } else { "wall clock" }
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"#,
        W / 2.0,
        esc(&title)
    );
    // grid + y ticks
    let mut t = lo;
    while t <= hi + step * 1e-9 {
        let yy = y(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}%</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0,
            fmt_tick(t, step)
        );
        t += step;
    }
    // zero line
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#000"/>"##,
        y(0.0),
        LEFT + pw
    );
    // y axis label
    let _ = writeln!(
        s,
        r#"<text transform="translate(20,{:.1}) rotate(-90)" text-anchor="middle">% change vs {} (mean time; &gt;0 = faster)</text>"#,
        TOP + ph / 2.0,
        esc(&r.base)
    );
    let n = r.rows.len().max(1) as f64;
    let gw = pw / n;
    let bw = (gw * 0.8 / vars.len().max(1) as f64).min(40.0);
    for (ri, row) in r.rows.iter().enumerate() {
        let gx = LEFT + gw * ri as f64 + (gw - bw * vars.len() as f64) / 2.0;
        for (k, &vi) in vars.iter().enumerate() {
            let Some(c) = &row.cells[vi] else { continue };
            let Some(p) = c.pct else { continue };
            let x = gx + bw * k as f64;
            let (y0, y1) = (y(0.0), y(p));
            let color = COLORS[k % COLORS.len()];
            let mk = c.marker.unwrap_or(Marker::None);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {}: {}{:.2}% (n={})</title></rect>"#,
                y0.min(y1),
                bw * 0.92,
                (y1 - y0).abs(),
                esc(&row.label),
                esc(&c.variant),
                mk.text(),
                p,
                c.n
            );
            if let (Some(a), Some(b)) = (c.pct_lo, c.pct_hi) {
                let cx = x + bw * 0.46;
                let _ = writeln!(
                    s,
                    r##"<path d="M{:.1},{:.1}V{:.1}M{:.1},{:.1}H{:.1}M{:.1},{:.1}H{:.1}" stroke="#000" fill="none"/>"##,
                    cx,
                    y(a),
                    y(b),
                    cx - 3.0,
                    y(a),
                    cx + 3.0,
                    cx - 3.0,
                    y(b),
                    cx + 3.0
                );
            }
            if mk != Marker::None {
                let ty = if p >= 0.0 {
                    y(c.pct_hi.unwrap_or(p).max(p)) - 4.0
                } else {
                    y(c.pct_lo.unwrap_or(p).min(p)) + 12.0
                };
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{ty:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                    x + bw * 0.46,
                    if mk == Marker::I { "I" } else { "R" }
                );
            }
        }
        // x label, rotated
        let lx = LEFT + gw * (ri as f64 + 0.5);
        let ly = TOP + ph + 12.0;
        let _ = writeln!(
            s,
            r#"<text transform="translate({lx:.1},{ly:.1}) rotate(-40)" text-anchor="end" font-size="11"><title>{}</title>{}</text>"#,
            esc(&row.label),
            esc(&row.key.short_label())
        );
    }
    // plot frame
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#000"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">row (test p:nr_pages h:use_huge)</text>"#,
        LEFT + pw / 2.0,
        H - 12.0
    );
    // legend
    for (k, &vi) in vars.iter().enumerate() {
        let lx = LEFT + pw + 15.0;
        let ly = TOP + 10.0 + 20.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            COLORS[k % COLORS.len()],
            lx + 18.0,
            ly + 10.0,
            esc(&r.variants[vi])
        );
    }
    let ly = TOP + 20.0 + 20.0 * vars.len() as f64;
    let min_line = format!("and differ by >= {}% of base", crate::compare::fmt_pct(r.min_effect));
    for (i, t) in [
        "I / R above a bar: the 95% CIs",
        "of the means do not overlap",
        min_line.as_str(),
        "(Improvement / Regression)",
        "",
        "error bars: Welch 95% CI",
        "of the difference of means",
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
            LEFT + pw + 15.0,
            ly + 13.0 * i as f64,
            t
        );
    }
    s.push_str("</svg>\n");
    s
}

pub(crate) fn fmt_tick(t: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{:.0}", t)
    } else {
        let d = (-step.log10()).ceil() as usize;
        format!("{:.*}", d, t)
    }
}
