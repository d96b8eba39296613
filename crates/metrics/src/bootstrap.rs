//! Seeded percentile bootstrap for proportions.

use safetune_core::judge::Estimate;
use safetune_core::rng::SeededRng;

const RESAMPLES: usize = 2000;

/// The 95% percentile-bootstrap interval of the mean of `values`.
pub fn bootstrap_ci(values: &[f64], seed: u64) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mut rng = SeededRng::derive(seed, "bootstrap");
    let mut means: Vec<f64> = (0..RESAMPLES).map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    (means[(RESAMPLES as f64 * 0.025) as usize], means[(RESAMPLES as f64 * 0.975) as usize - 1])
}

/// Mean of `values` with its bootstrap interval.
pub fn mean_estimate(values: &[f64], seed: u64) -> Estimate {
    let n = values.len();
    let value = if n == 0 { 0.0 } else { values.iter().sum::<f64>() / n as f64 };
    let (ci_low, ci_high) = bootstrap_ci(values, seed);
    Estimate { value, n, ci_low, ci_high }
}

/// Share of `true` with its bootstrap interval.
pub fn proportion(outcomes: &[bool], seed: u64) -> Estimate {
    let values: Vec<f64> = outcomes.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
    let n = values.len();
    let value = if n == 0 { 0.0 } else { values.iter().sum::<f64>() / n as f64 };
    let (ci_low, ci_high) = bootstrap_ci(&values, seed);
    Estimate { value, n, ci_low, ci_high }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_covers_the_truth_about_95_percent_of_the_time() {
        let mut rng = SeededRng::new(11);
        let p = 0.3;
        let trials = 200;
        let mut covered = 0;
        for t in 0..trials {
            let sample: Vec<bool> = (0..100).map(|_| rng.next_f64() < p).collect();
            let e = proportion(&sample, t);
            assert!(e.ci_low <= e.value && e.value <= e.ci_high);
            if e.ci_low <= p && p <= e.ci_high {
                covered += 1;
            }
        }
        let rate = covered as f64 / trials as f64;
        assert!((0.88..=0.99).contains(&rate), "coverage {rate}");
        assert_eq!(proportion(&[], 0).n, 0);
    }
}
