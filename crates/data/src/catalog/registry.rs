//! The dataset registry: every dataset is one [`register_dataset!`] — its files,
//! download source and row converter ([`DatasetDef`]) and what a run may use it
//! as ([`Use`]: a task with its metric, harmful pairs, benign instructions,
//! safety or over-refusal evaluation sets, a utility benchmark). Spec
//! validation, `safetune list datasets`, pool assembly and the rule that keeps
//! every evaluation prompt out of every training pool all read this registry,
//! so a new dataset (in this crate or any crate linked into the binary) needs
//! no edit anywhere else.

use safetune_core::anyhow::anyhow;
use safetune_core::judge::UtilityMetric;
use safetune_core::registry::inventory;
use safetune_core::{Example, Result};

use super::{Dataset, DatasetDef};

/// Picks a set's examples from a loaded dataset (all its splits).
pub type Select = fn(&Dataset) -> Result<Vec<Example>>;

/// A named evaluation set drawn from a dataset.
pub struct EvalSet {
    /// The name a spec uses (`data.safety_evals` / `data.over_refusal`).
    pub name: &'static str,
    /// A validation set: a calibration sweep may choose on it (never on the others).
    pub validation: bool,
    pub select: Select,
}

/// What a run may use a dataset as.
pub enum Use {
    /// `data.task`: a fine-tuning task — `train` and a scored split (`test`, or
    /// `validation` where the dataset has one) — scored by the metric.
    Task { metric: fn() -> UtilityMetric },
    /// `data.harmful`: the harmful pairs the variants draw from.
    Harmful { select: Select },
    /// `data.benign`: benign instructions for alignment (every row of `train` and `test`).
    Benign,
    /// `data.safety_evals`: harmful prompts whose answers are judged.
    SafetyEval(EvalSet),
    /// `data.over_refusal`: benign prompts a safe model should still answer.
    OverRefusal(EvalSet),
    /// `data.utility_evals`: a benchmark beside the task: MMLU (multiple choice, `dev` shots and
    /// `test`) or MT-Bench (two-turn questions in `test`, graded by a chat model).
    UtilityEval,
}

/// The rows of one split.
pub fn split(ds: &Dataset, name: &str) -> Result<Vec<Example>> {
    Ok(ds.split(name)?.to_vec())
}

/// The `train` split (the default harmful pairs).
pub fn train_split(ds: &Dataset) -> Result<Vec<Example>> {
    split(ds, "train")
}

/// The `test` split.
pub fn test_split(ds: &Dataset) -> Result<Vec<Example>> {
    split(ds, "test")
}

inventory::collect!(DatasetDef);

/// Registers a dataset once: its [`DatasetDef`] for loading and using it, and the
/// `safetune list datasets` row (`role`, `splits`, `files`: free text for people).
#[macro_export]
macro_rules! register_dataset {
    (role: $role:expr, splits: $splits:expr, files: $files:expr, $def:expr $(,)?) => {
        const _: () = {
            const DEF: $crate::catalog::DatasetDef = $def;
            $crate::__inventory::submit! { DEF }
            $crate::__inventory::submit! {
                $crate::__DatasetEntry { name: DEF.name, role: $role, splits: $splits, source: $files, license: DEF.license }
            }
        };
    };
}

/// Every registered dataset, by name.
pub fn all() -> Vec<&'static DatasetDef> {
    let mut v: Vec<&'static DatasetDef> = inventory::iter::<DatasetDef>.into_iter().collect();
    v.sort_by_key(|d| d.name);
    v
}

/// A registered dataset by name.
pub fn find(name: &str) -> Result<&'static DatasetDef> {
    all()
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| anyhow!("unknown dataset `{name}` (known: {})", all().iter().map(|d| d.name).collect::<Vec<_>>().join(", ")))
}

impl DatasetDef {
    /// Its task metric, when it is a task.
    pub fn task_metric(&self) -> Option<UtilityMetric> {
        self.uses.iter().find_map(|u| match u {
            Use::Task { metric } => Some(metric()),
            _ => None,
        })
    }

    /// How its harmful pairs are drawn, when it is a harmful set.
    pub fn harmful_select(&self) -> Option<Select> {
        self.uses.iter().find_map(|u| match u {
            Use::Harmful { select } => Some(*select),
            _ => None,
        })
    }

    pub fn is_benign(&self) -> bool {
        self.uses.iter().any(|u| matches!(u, Use::Benign))
    }

    pub fn is_utility_eval(&self) -> bool {
        self.uses.iter().any(|u| matches!(u, Use::UtilityEval))
    }

    /// Its evaluation sets: (set, true for over-refusal).
    pub fn eval_sets(&self) -> impl Iterator<Item = (&EvalSet, bool)> {
        self.uses.iter().filter_map(|u| match u {
            Use::SafetyEval(s) => Some((s, false)),
            Use::OverRefusal(s) => Some((s, true)),
            _ => None,
        })
    }
}

/// Names of the datasets usable as `data.task`.
pub fn tasks() -> Vec<&'static str> {
    all().into_iter().filter(|d| d.task_metric().is_some()).map(|d| d.name).collect()
}

/// Names of the datasets usable as `data.harmful`.
pub fn harmful_sets() -> Vec<&'static str> {
    all().into_iter().filter(|d| d.harmful_select().is_some()).map(|d| d.name).collect()
}

/// Names of the datasets usable in `data.benign` (joined with `+`).
pub fn benign_sets() -> Vec<&'static str> {
    all().into_iter().filter(|d| d.is_benign()).map(|d| d.name).collect()
}

/// Names usable in `data.utility_evals`.
pub fn utility_evals() -> Vec<&'static str> {
    all().into_iter().filter(|d| d.is_utility_eval()).map(|d| d.name).collect()
}

/// Every evaluation set with the dataset it comes from: safety sets (`over_refusal`
/// false) or over-refusal sets (true), in registry order.
pub fn eval_sets(over_refusal: bool) -> Vec<(&'static DatasetDef, &'static EvalSet)> {
    all().into_iter().flat_map(|d| d.eval_sets().filter(move |(_, o)| *o == over_refusal).map(move |(s, _)| (d, s))).collect()
}

/// Names of the safety (`false`) or over-refusal (`true`) evaluation sets.
pub fn eval_set_names(over_refusal: bool) -> Vec<&'static str> {
    eval_sets(over_refusal).into_iter().map(|(_, s)| s.name).collect()
}

/// Names of the validation sets of either kind (what a calibration sweep may choose on).
pub fn validation_sets(over_refusal: bool) -> Vec<&'static str> {
    eval_sets(over_refusal).into_iter().filter(|(_, s)| s.validation).map(|(_, s)| s.name).collect()
}

/// An evaluation set by name.
pub fn eval_set(name: &str, over_refusal: bool) -> Option<(&'static DatasetDef, &'static EvalSet)> {
    eval_sets(over_refusal).into_iter().find(|(_, s)| s.name == name)
}
