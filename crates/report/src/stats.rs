//! Statistics across seeds: the mean, the sample standard deviation and the
//! 95% Student-t interval of a handful of values (one per seed).

use safetune_core::judge::Estimate;

/// Student t quantile (0.975) for `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 10] = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228];
    match df {
        0 => f64::NAN,
        1..=10 => T[df - 1],
        11..=20 => 2.1,
        21..=30 => 2.05,
        _ => 1.96,
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
}
