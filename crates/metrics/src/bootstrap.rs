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
    let means: Vec<f64> = (0..RESAMPLES).map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64).collect();
    percentile_interval(means)
}

/// The 95% percentile interval of bootstrap statistics: the ⌊2.5%⌋-th and the ⌈97.5%⌉-th
/// smallest of them (indices ⌊0.025·n⌋ and ⌈0.975·n⌉ − 1; 50 and 1949 of 2,000), the one
/// convention of every interval here.
fn percentile_interval(mut stats: Vec<f64>) -> (f64, f64) {
    stats.sort_by(f64::total_cmp);
    let n = stats.len();
    (stats[(n as f64 * 0.025) as usize], stats[((n as f64 * 0.975).ceil() as usize).clamp(1, n) - 1])
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

/// One evaluation set answered by two models: per prompt, each model's value (1 or 0 for a
/// verdict, a task score), `None` where that model's answer was empty (left out of its mean,
/// as the rates leave empty answers out).
pub type PairedSet = Vec<(Option<f64>, Option<f64>)>;

/// Second model's statistic minus the first's, where a model's statistic is the mean over
/// `sets` of its mean value per set, and the difference is averaged over the seeds (the
/// outer slice: each seed's sets, both models asked the same prompts). With its 95% paired
/// percentile-bootstrap interval over prompts: every resample draws each set's prompts
/// with replacement, the same prompts for both models, so what the two share (an easy
/// prompt, a hard one) cancels. `None` without prompts, or when a tenth of the resamples
/// leave some set with no non-empty answer of one model.
pub fn paired_difference(seeds: &[Vec<PairedSet>], seed: u64) -> Option<Estimate> {
    // The statistic on the prompts as they are (`rng` None) or on one resample of them.
    fn stat(seeds: &[Vec<PairedSet>], mut rng: Option<&mut SeededRng>) -> Option<f64> {
        let mut total = 0.0;
        for sets in seeds {
            let (mut first, mut second) = (0.0, 0.0);
            for set in sets {
                let (mut a, mut na, mut b, mut nb) = (0.0, 0usize, 0.0, 0usize);
                for j in 0..set.len() {
                    let (x, y) = set[rng.as_mut().map_or(j, |r| r.below(set.len()))];
                    if let Some(x) = x {
                        a += x;
                        na += 1;
                    }
                    if let Some(y) = y {
                        b += y;
                        nb += 1;
                    }
                }
                if na == 0 || nb == 0 {
                    return None;
                }
                first += a / na as f64;
                second += b / nb as f64;
            }
            total += (second - first) / sets.len() as f64;
        }
        Some(total / seeds.len() as f64)
    }
    if seeds.is_empty() || seeds.iter().any(|s| s.is_empty() || s.iter().any(|set| set.is_empty())) {
        return None;
    }
    let value = stat(seeds, None)?;
    let mut rng = SeededRng::derive(seed, "paired-bootstrap");
    let stats: Vec<f64> = (0..RESAMPLES).filter_map(|_| stat(seeds, Some(&mut rng))).collect();
    if stats.len() < RESAMPLES * 9 / 10 {
        return None;
    }
    let (ci_low, ci_high) = percentile_interval(stats);
    Some(Estimate { value, n: seeds.iter().flatten().map(Vec::len).sum(), ci_low, ci_high })
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
    #[test]
    fn every_interval_takes_the_same_two_order_statistics() {
        let stats = |n: usize| (0..n).rev().map(|i| i as f64).collect::<Vec<_>>();
        assert_eq!(percentile_interval(stats(2000)), (50.0, 1949.0));
        assert_eq!(percentile_interval(stats(1800)), (45.0, 1754.0));
        assert_eq!(percentile_interval(stats(1)), (0.0, 0.0));
    }
    #[test]
    fn a_paired_difference_is_exact_in_its_value_and_its_interval_shrinks_with_shared_prompts() {
        // Identical models: zero, and every resample zero.
        let same: PairedSet = (0..50).map(|i| (Some((i % 3 == 0) as u8 as f64), Some((i % 3 == 0) as u8 as f64))).collect();
        let e = paired_difference(&[vec![same.clone()]], 1).unwrap();
        assert_eq!((e.value, e.ci_low, e.ci_high, e.n), (0.0, 0.0, 0.0, 50));
        // The second model complies on 10 more of 100 prompts, else the same: +0.10, and the
        // interval excludes zero though each model's own interval is far wider than 0.10.
        let mut rng = SeededRng::new(5);
        let first: Vec<bool> = (0..100).map(|_| rng.next_f64() < 0.5).collect();
        let mut flipped = 0;
        let set: PairedSet = first
            .iter()
            .map(|&a| {
                let b = a
                    || (flipped < 10 && {
                        flipped += 1;
                        true
                    });
                (Some(a as u8 as f64), Some(b as u8 as f64))
            })
            .collect();
        let d = paired_difference(&[vec![set.clone()]], 2).unwrap();
        assert!((d.value - 0.10).abs() < 1e-12, "{d:?}");
        assert!(d.ci_low > 0.0 && d.ci_high < 0.2 && d.ci_low <= d.value && d.value <= d.ci_high, "{d:?}");
        let own = proportion(&first, 2);
        assert!(own.ci_high - own.ci_low > d.ci_high - d.ci_low, "{own:?} vs {d:?}");
        // Empty answers leave a model's mean; sets are averaged, then seeds.
        let with_empty: PairedSet = vec![(Some(1.0), None), (Some(0.0), Some(1.0)), (None, Some(1.0))];
        let two = paired_difference(&[vec![with_empty.clone(), same.clone()], vec![set.clone()]], 3).unwrap();
        let seed_a = ((1.0 - 0.5) + 0.0) / 2.0;
        assert!((two.value - (seed_a + 0.10) / 2.0).abs() < 1e-12, "{two:?}");
        // Nothing to compare, or a model with no answer at all: no estimate.
        assert!(paired_difference(&[], 1).is_none());
        assert!(paired_difference(&[vec![vec![(Some(1.0), None)]]], 1).is_none());
    }
}
