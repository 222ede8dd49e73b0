use tvtool::stats::{self, Marker, PctOf, Summary};

fn close(a: f64, b: f64, eps: f64) -> bool {
    (a - b).abs() < eps
}

#[test]
fn known_sample() {
    let s = Summary::of(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    assert_eq!(s.n, 5);
    assert_eq!(s.mean, 3.0);
    assert!(close(s.sd, 1.5811, 1e-4), "{}", s.sd);
    assert_eq!(stats::t975(4.0), 2.776);
    let h = s.ci_half.unwrap();
    assert!(close(h, 1.9630, 1e-4), "{h}");
    let (lo, hi) = s.ci().unwrap();
    assert!(close(lo, 3.0 - 1.9630, 1e-4) && close(hi, 3.0 + 1.9630, 1e-4));
}

#[test]
fn more_known_samples() {
    // [2, 4, 4, 4, 5, 5, 7, 9]: mean 5, sample sd sqrt(32/7) = 2.13809, t(7) = 2.365
    let s = Summary::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
    assert_eq!(s.mean, 5.0);
    assert!(close(s.sd, 2.13809, 1e-5));
    assert!(close(s.ci_half.unwrap(), 2.365 * 2.13809 / 8f64.sqrt(), 1e-5));
    // n = 1: no CI
    let one = Summary::of(&[42.0]).unwrap();
    assert_eq!((one.mean, one.sd, one.ci_half), (42.0, 0.0, None));
    assert!(Summary::of(&[]).is_none());
    // constant samples: zero width
    let c = Summary::of(&[7.0, 7.0, 7.0]).unwrap();
    assert_eq!(c.ci_half, Some(0.0));
}

#[test]
fn t_table() {
    assert_eq!(stats::t975(1.0), 12.706);
    assert_eq!(stats::t975(5.0), 2.571);
    assert_eq!(stats::t975(30.0), 2.042);
    // beyond the table: close to exact values, tending to the normal limit
    assert!(close(stats::t975(40.0), 2.021, 0.001), "{}", stats::t975(40.0));
    assert!(close(stats::t975(60.0), 2.000, 0.001));
    assert!(close(stats::t975(120.0), 1.980, 0.001));
    assert!(close(stats::t975(1e9), 1.96, 0.001));
    assert!(stats::t975(31.0) < 2.042 && stats::t975(31.0) > 2.03);
    assert!(stats::t975(0.5).is_nan());
}

#[test]
fn sign_convention() {
    assert!(close(stats::pct_change(100.0, 50.0, PctOf::Base), 50.0, 1e-12));
    assert!(close(stats::pct_change(100.0, 150.0, PctOf::Base), -50.0, 1e-12));
    assert!(close(stats::pct_change(100.0, 50.0, PctOf::Variant), 100.0, 1e-12));
    assert_eq!(format!("{:.2}%", stats::pct_change(100.0, 50.0, PctOf::Base)), "50.00%");
}

#[test]
fn markers() {
    let base = Summary::of(&[100.0, 101.0, 99.0, 100.0]).unwrap();
    let faster = Summary::of(&[50.0, 51.0, 49.0, 50.0]).unwrap();
    let slower = Summary::of(&[150.0, 151.0, 149.0, 150.0]).unwrap();
    let overlap = Summary::of(&[98.0, 103.0, 96.0, 104.0]).unwrap();
    assert_eq!(stats::marker(&base, &faster), Marker::I);
    assert_eq!(stats::marker(&base, &slower), Marker::R);
    assert_eq!(stats::marker(&base, &overlap), Marker::None);
    // just touching intervals overlap -> no marker
    let b = Summary::of(&[0.0, 2.0]).unwrap(); // mean 1, half = 12.706*sqrt2/sqrt2 = 12.706
    let v = Summary { n: 2, mean: 1.0 - 2.0 * 12.706, sd: b.sd, ci_half: b.ci_half };
    assert_eq!(stats::marker(&b, &v), Marker::None);
    // n = 1 on either side: never significant
    let one = Summary::of(&[10.0]).unwrap();
    assert_eq!(stats::marker(&base, &one), Marker::None);
    assert_eq!(stats::marker(&one, &base), Marker::None);
}

#[test]
fn welch_interval() {
    let b = Summary::of(&[100.0, 102.0, 98.0]).unwrap();
    let v = Summary::of(&[50.0, 52.0, 48.0]).unwrap();
    // equal variances 4, n 3: se = sqrt(4/3+4/3) = 1.63299, df = 4 -> t 2.776
    let h = stats::welch_half(&b, &v).unwrap();
    assert!(close(h, 2.776 * (8.0f64 / 3.0).sqrt(), 1e-9));
    let (lo, hi) = stats::pct_interval(&b, &v, PctOf::Base).unwrap();
    assert!(close(lo, 50.0 - h, 1e-9) && close(hi, 50.0 + h, 1e-9));
}
