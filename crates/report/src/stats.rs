//! Statistics across seeds: the mean, the sample standard deviation and the
//! 95% Student-t interval of a handful of values (one per seed).

use safetune_core::judge::Estimate;

/// Student t quantile (0.975) for `df` degrees of freedom: the table's value up to 30, then
/// the value at the lower end of each span (40, 60, 120), so the interval is never narrower
/// than the exact one.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101,
        2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=40 => T[29],
        41..=60 => 2.021,
        61..=120 => 2.000,
        _ => 1.980,
    }
}

/// Mean, sample standard deviation and 95% t-interval of values across seeds.
pub fn across(values: &[f64]) -> (Estimate, f64) {
    let n = values.len();
    let (mean, half, sd) = mean_sd_half(values);
    (Estimate { value: mean, n, ci_low: (mean - half).max(0.0), ci_high: (mean + half).min(1.0) }, sd)
}

/// Mean and half-width of the 95% t-interval across seeds, unclamped (for
/// differences, which may be negative); a half-width of 0 with one value.
pub fn mean_and_half_width(values: &[f64]) -> (f64, f64) {
    let (mean, half, _) = mean_sd_half(values);
    (mean, half)
}

fn mean_sd_half(values: &[f64]) -> (f64, f64, f64) {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return (mean, 0.0, 0.0);
    }
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    (mean, t975(n - 1) * sd / (n as f64).sqrt(), sd)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mean_sd_and_t_interval_across_seeds() {
        let (e, sd) = super::across(&[0.2, 0.4, 0.6]);
        assert!((e.value - 0.4).abs() < 1e-12 && (sd - 0.2).abs() < 1e-12);
        // 4.303 · 0.2 / √3 = 0.4969
        assert!((e.ci_high - 0.8969).abs() < 1e-3 && e.ci_low == 0.0, "{e:?}");
        assert_eq!(e.n, 3);
        let (one, sd1) = super::across(&[0.5]);
        assert_eq!((one.value, one.ci_low, one.ci_high, sd1), (0.5, 0.5, 0.5, 0.0));
        // Differences keep their sign and their whole interval.
        let (mean, half) = super::mean_and_half_width(&[-0.4, -0.2]);
        assert!((mean + 0.3).abs() < 1e-12 && (half - 12.706 * 0.1414213562 / 2f64.sqrt()).abs() < 1e-6, "{mean} {half}");
    }

    #[test]
    fn the_t_quantile_is_never_below_the_exact_one() {
        // t(0.975) at 12, 20 and 30 degrees of freedom; past 30, the value at the span's lower end.
        for (df, t) in [(12, 2.179), (20, 2.086), (30, 2.042), (35, 2.042), (50, 2.021), (100, 2.000), (1000, 1.980)] {
            assert_eq!(super::t975(df), t, "df {df}");
        }
        assert!((1..2000).all(|d| super::t975(d) >= super::t975(d + 1)), "falls with the degrees of freedom");
    }
}
