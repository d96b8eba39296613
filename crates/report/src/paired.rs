//! Two cells' stored answers to the same prompts, side by side: per evaluation set, each
//! cell's per-prompt value of one measure, in the order of the prompts' ids — what the
//! paired bootstrap intervals of the defense table (`defenses.rs`) and of the harmful-share
//! steps (`steps.rs`) resample, and [`difference`], the interval both report.

use std::path::Path;

use safetune_core::judge::Estimate;
use safetune_eval::results::ModelEval;
use safetune_metrics::PairedSet;

/// Where a model's stored answers are: its run directory, its label under `generations/`, and
/// its evaluation (whose sets say which files to read).
pub type Answers<'a> = (&'a Path, &'a str, &'a ModelEval);

/// What a difference is taken of, prompt by prompt.
#[derive(Clone, Copy)]
pub enum Measure {
    /// Compliance (1) or refusal (0) on the safety sets.
    Asr,
    /// The task score of each test row.
    Task,
    /// Refusal (1) or compliance (0) on the over-refusal sets.
    OverRefusal,
}

/// One measure of two evaluated models (`u` first, `d` second: undefended and defended, a
/// regime and the next more harmful one, an aligned model and a cell trained from it), each
/// given as its run directory, its label (`generations/<label>/`) and its evaluation, per
/// prompt: per set of `u`'s evaluation, both cells' values in the order of the prompts' ids (`None` for an empty
/// answer), from the stored answers (`generations/<label>/<set>.jsonl`). `None` when a file is
/// missing, the two cells were not asked the same prompts, or a value cannot be read.
pub fn paired_sets(u: Answers, d: Answers, m: Measure) -> Option<Vec<PairedSet>> {
    let e = u.2;
    let sets: Vec<&str> = match m {
        Measure::Asr => e.safety.iter().map(|s| s.set.as_str()).collect(),
        Measure::Task => vec![e.task.task.as_str()],
        Measure::OverRefusal => e.over_refusal.iter().map(|o| o.set.as_str()).collect(),
    };
    let value = |v: &str| -> Option<Option<f64>> {
        let (hit, miss) = match m {
            Measure::Asr => ("compliance", "refusal"),
            Measure::OverRefusal => ("refusal", "compliance"),
            Measure::Task => return v.parse::<f64>().ok().map(Some),
        };
        match v {
            _ if v == hit => Some(Some(1.0)),
            _ if v == miss => Some(Some(0.0)),
            "empty" => Some(None),
            _ => None,
        }
    };
    let stored = |(dir, label, _): Answers, set: &str| super::verdicts(&dir.join("generations").join(label).join(format!("{set}.jsonl")));
    sets.iter()
        .map(|set| {
            let (a, b) = (stored(u, set)?, stored(d, set)?);
            if a.len() != b.len() {
                return None;
            }
            let mut ids: Vec<&String> = a.keys().collect();
            ids.sort();
            ids.into_iter().map(|id| Some((value(&a[id])?, value(b.get(id)?)?))).collect()
        })
        .collect()
}

/// The paired bootstrap of `m` (`safetune_metrics::paired_difference`) over `pairs`, one pair
/// of models (first, second) per seed, seeded with `seed`; kept only when its value is the
/// difference the report states from the models' own figures (`reported`, the mean over the
/// seeds): stored answers that do not give those figures give no interval rather than a
/// wrong one. Task scores are stored to four decimals, so they agree to 5e-5; rates to 1e-9.
pub fn difference<'a>(
    pairs: impl IntoIterator<Item = (Answers<'a>, Answers<'a>)>,
    m: Measure,
    seed: u64,
    reported: f64,
) -> Option<Estimate> {
    let seeds: Vec<Vec<PairedSet>> = pairs.into_iter().map(|(u, d)| paired_sets(u, d, m)).collect::<Option<_>>()?;
    let est = safetune_metrics::paired_difference(&seeds, seed)?;
    let tolerance = if matches!(m, Measure::Task) { 5e-5 } else { 1e-9 };
    ((est.value - reported).abs() <= tolerance).then_some(est)
}
