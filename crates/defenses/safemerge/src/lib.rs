//! SafeMERGE (Djuhera et al. 2025, "SafeMERGE: Preserving Safety Alignment in
//! Fine-Tuned Large Language Models via Selective Layer-Wise Model Merging"), a
//! post-tuning defense.
//!
//! Each fine-tuned weight is scored with SafeLoRA's criterion: the cosine
//! similarity between its update `ΔW = W_finetuned − W_aligned` and the update's
//! projection onto the alignment subspace (`C = V·Vᵀ/‖V‖_F`, `V = W_aligned −
//! W_base`). A layer below `threshold` has drifted away from safe behaviour and is
//! merged with the safety model, `(1 − safety_weight)·fine-tuned +
//! safety_weight·safe`; other layers keep their fine-tuned value. The safety model
//! here is the aligned model (the instruct model tuned on safety data), so a merged
//! layer is `W_aligned + (1 − safety_weight)·ΔW`.

use safetune_core::anyhow::bail;
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::repair::{subspace_scores, Repair, WeightSets, Weights};
use safetune_core::training::StepContext;
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Options of `safemerge`; every default is the reference code's (README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SafeMergeOptions {
    /// Layers whose cosine similarity is below this are merged.
    pub threshold: f64,
    /// The safety model's weight in a merged layer.
    pub safety_weight: f64,
}

impl Default for SafeMergeOptions {
    fn default() -> Self {
        Self { threshold: 0.35, safety_weight: 0.2 }
    }
}

/// A scored layer: name, cosine similarity to its alignment subspace, whether it was merged.
pub type LayerChoice = (String, f64, bool);

pub struct SafeMerge {
    pub options: SafeMergeOptions,
}

impl SafeMerge {
    pub fn new(options: SafeMergeOptions) -> Result<Self> {
        if !(-1.0..=1.0).contains(&options.threshold) {
            bail!("defense_options.safemerge.threshold: must be in [-1, 1]");
        }
        if !(0.0..=1.0).contains(&options.safety_weight) {
            bail!("defense_options.safemerge.safety_weight: must be in [0, 1]");
        }
        Ok(Self { options })
    }

    /// The merged weights and, for every scored layer, its name, similarity and whether it merged.
    pub fn merge(&self, w: &WeightSets) -> Result<(Weights, Vec<LayerChoice>)> {
        let mut out = Weights::new();
        let mut report = Vec::new();
        for s in subspace_scores(w)? {
            let merged = s.similarity < self.options.threshold;
            if merged {
                out.insert(s.name.clone(), (&s.aligned + (&s.delta * (1.0 - self.options.safety_weight))?)?);
            }
            report.push((s.name, s.similarity, merged));
        }
        Ok((out, report))
    }
}

impl Repair for SafeMerge {
    fn name(&self) -> &str {
        "safemerge"
    }

    fn repair(&self, w: &WeightSets, _ctx: &mut dyn StepContext) -> Result<Weights> {
        Ok(self.merge(w)?.0)
    }
}

impl Defense for SafeMerge {
    const NAME: &'static str = "safemerge";
    const DESCRIPTION: &'static str =
        "selective layer-wise merge: layers whose update leaves the alignment subspace are merged back toward the safety model (Djuhera et al. 2025)";
    const DIFFERS: &'static str =
        "the safety model is the aligned model; merges dense updates (reference: a separate safety LoRA, PEFT weighted adapters)";
    type Options = SafeMergeOptions;
    fn plan(options: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { repair: Some(Box::new(SafeMerge::new(options)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(SafeMerge);
