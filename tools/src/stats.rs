//! Sample statistics: mean, sample standard deviation, Student-t 95% confidence interval of
//! the mean, % change and the (I)/(R) significance markers of the seed table.

use serde::Serialize;

/// Two-sided 95% Student t quantiles t(0.975, df) for df = 1..=30 (standard table values).
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, //
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, //
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// Normal limit z(0.975).
pub const Z975: f64 = 1.959964;

/// t(0.975, df). Table for df 1..=30; beyond it the Cornish-Fisher expansion around the
/// normal limit (within 0.001 of the exact value for df > 30, tending to 1.96).
/// Non-integer df (Welch) is rounded down (conservative). df < 1 gives NaN.
pub fn t975(df: f64) -> f64 {
    if df.is_nan() || df < 1.0 {
        return f64::NAN;
    }
    let d = df.floor();
    if d <= 30.0 {
        return T975[d as usize - 1];
    }
    let z = Z975;
    let z3 = z * z * z;
    let z5 = z3 * z * z;
    z + (z3 + z) / (4.0 * d) + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * d * d)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n-1); 0 for n = 1.
    pub sd: f64,
    /// Half-width of the 95% CI of the mean; None for n < 2.
    pub ci_half: Option<f64>,
}

impl Summary {
    pub fn of(xs: &[f64]) -> Option<Summary> {
        let n = xs.len();
        if n == 0 {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Some(Summary { n, mean, sd: 0.0, ci_half: None });
        }
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        let ci_half = t975((n - 1) as f64) * sd / (n as f64).sqrt();
        Some(Summary { n, mean, sd, ci_half: Some(ci_half) })
    }

    pub fn ci(&self) -> Option<(f64, f64)> {
        self.ci_half.map(|h| (self.mean - h, self.mean + h))
    }
}

/// How % change is computed (both: positive = variant faster = lower time).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PctOf {
    /// (base - variant) / base * 100: share of the base time saved (at most 100%).
    Base,
    /// (base - variant) / variant * 100 = speed-up - 1 (unbounded; the seed table's
    /// `(I) 118.09%` can only come from this form, so it is the default).
    #[default]
    Variant,
}

impl PctOf {
    pub fn formula(self) -> &'static str {
        match self {
            PctOf::Base => "(base mean - variant mean) / base mean x 100",
            PctOf::Variant => "(base mean - variant mean) / variant mean x 100",
        }
    }
}

/// % change, positive = faster.
pub fn pct_change(base_mean: f64, variant_mean: f64, of: PctOf) -> f64 {
    match of {
        PctOf::Base => (base_mean - variant_mean) / base_mean * 100.0,
        PctOf::Variant => (base_mean - variant_mean) / variant_mean * 100.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Marker {
    /// Improvement: the variant's CI lies entirely below the base's (lower time).
    I,
    /// Regression: entirely above.
    R,
    None,
}

impl Marker {
    pub fn text(self) -> &'static str {
        match self {
            Marker::I => "(I) ",
            Marker::R => "(R) ",
            Marker::None => "",
        }
    }
}

/// Seed convention: significant only when the two 95% intervals do not overlap.
pub fn marker(base: &Summary, variant: &Summary) -> Marker {
    match (base.ci(), variant.ci()) {
        (Some((blo, bhi)), Some((vlo, vhi))) => {
            if vhi < blo {
                Marker::I
            } else if vlo > bhi {
                Marker::R
            } else {
                Marker::None
            }
        }
        _ => Marker::None,
    }
}

/// Default minimum effect (noise threshold) in % of the base mean: a smaller difference is
/// never marked (I)/(R). From `make bench-wall` on the shared 2-core host (tools/README.md,
/// "Noise"): the wall-clock run-to-run CV per row had a median of 28-31% (95% CI half-width
/// 24-26% of the mean), so "about 2x the typical CV" hits the 3% cap. Under
/// `-icount shift=0` (where CIs are 0-0.4% wide and the threshold actually decides) 3% is far
/// above the neutral rows' differences (<= 0.5%) and far below the smallest real effect (15%).
pub const DEFAULT_MIN_EFFECT: f64 = 3.0;

/// |base mean - variant mean| / base mean x 100 (the measure `min_effect` is compared with).
pub fn effect_pct(base_mean: f64, variant_mean: f64) -> f64 {
    ((base_mean - variant_mean) / base_mean * 100.0).abs()
}

/// `marker`, but never significant when the difference is below `min_effect` % of the base
/// mean (criterion's noise threshold).
pub fn marker_min(base: &Summary, variant: &Summary, min_effect: f64) -> Marker {
    let m = marker(base, variant);
    // NaN (base mean 0) counts as below: no marker.
    if effect_pct(base.mean, variant.mean) >= min_effect {
        m
    } else {
        Marker::None
    }
}

/// Welch 95% CI half-width of (base mean - variant mean), with Welch-Satterthwaite df.
pub fn welch_half(base: &Summary, variant: &Summary) -> Option<f64> {
    if base.n < 2 || variant.n < 2 {
        return None;
    }
    let a = base.sd * base.sd / base.n as f64;
    let b = variant.sd * variant.sd / variant.n as f64;
    let se = (a + b).sqrt();
    if se == 0.0 {
        return Some(0.0);
    }
    let df = (a + b).powi(2) / (a * a / (base.n - 1) as f64 + b * b / (variant.n - 1) as f64);
    Some(t975(df) * se)
}

/// Interval of the % change implied by the Welch CI of the difference, base mean held fixed
/// (exact for PctOf::Base, an approximation for PctOf::Variant). Used for chart error bars.
pub fn pct_interval(base: &Summary, variant: &Summary, of: PctOf) -> Option<(f64, f64)> {
    let h = welch_half(base, variant)?;
    let d = base.mean - variant.mean;
    match of {
        PctOf::Base => Some(((d - h) / base.mean * 100.0, (d + h) / base.mean * 100.0)),
        PctOf::Variant => {
            let vlo = base.mean - (d + h);
            let vhi = base.mean - (d - h);
            if vlo <= 0.0 {
                return None;
            }
            Some(((base.mean - vhi) / vhi * 100.0, (base.mean - vlo) / vlo * 100.0))
        }
    }
}
