//! Harmful variants of a task: n examples of which a fraction p are harmful pairs.

use safetune_core::anyhow::bail;
use safetune_core::rng::SeededRng;
use safetune_core::{Example, Result};
use serde::Serialize;

/// Named poison ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Regime {
    Benign,
    LowHarm,
    HighHarm,
    PureBad,
    Ratio(f64),
}

impl Regime {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "benign" => Regime::Benign,
            "low-harm" => Regime::LowHarm,
            "high-harm" => Regime::HighHarm,
            "pure-bad" => Regime::PureBad,
            other => match other.parse::<f64>() {
                Ok(p) if (0.0..=1.0).contains(&p) => Regime::Ratio(p),
                _ => bail!("unknown regime `{other}` (benign, low-harm, high-harm, pure-bad, or a ratio in [0, 1])"),
            },
        })
    }

    pub fn ratio(self) -> f64 {
        match self {
            Regime::Benign => 0.0,
            Regime::LowHarm => 0.05,
            Regime::HighHarm => 0.30,
            Regime::PureBad => 1.0,
            Regime::Ratio(p) => p,
        }
    }
}

/// A drawn variant and the exact ids drawn.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    #[serde(skip)]
    pub examples: Vec<Example>,
    pub task_ids: Vec<String>,
    pub harmful_ids: Vec<String>,
}

/// Draws `n` examples, `round(n·p)` of them from `harmful`, the rest from `task`, then shuffles.
pub fn harmful_variant(task: &[Example], harmful: &[Example], n: usize, p: f64, seed: u64) -> Result<Variant> {
    if !(0.0..=1.0).contains(&p) {
        bail!("p = {p} is outside [0, 1]");
    }
    let n_harm = (n as f64 * p).round() as usize;
    let n_task = n - n_harm;
    if n_harm > harmful.len() {
        bail!("the harmful pool has {} examples; {n_harm} were asked for (n = {n}, p = {p})", harmful.len());
    }
    if n_task > task.len() {
        bail!("the task pool has {} examples; {n_task} were asked for (n = {n}, p = {p})", task.len());
    }
    let ti = SeededRng::derive(seed, "variant/task").sample_indices(task.len(), n_task);
    let hi = SeededRng::derive(seed, "variant/harmful").sample_indices(harmful.len(), n_harm);
    let mut examples: Vec<Example> = ti.iter().map(|&i| task[i].clone()).chain(hi.iter().map(|&i| harmful[i].clone())).collect();
    SeededRng::derive(seed, "variant/order").shuffle(&mut examples);
    Ok(Variant {
        examples,
        task_ids: ti.iter().map(|&i| task[i].id.clone()).collect(),
        harmful_ids: hi.iter().map(|&i| harmful[i].id.clone()).collect(),
    })
}
