//! SafeLoRA (Hsu et al. 2024, "Safe LoRA: the Silver Lining of Reducing
//! Safety Risks when Fine-tuning Large Language Models"), a post-tuning
//! defense.
//!
//! For each fine-tuned weight, the alignment direction `V = W_aligned −
//! W_base` gives the projection `C = V·Vᵀ/‖V‖_F`. A layer whose update `ΔW =
//! W_finetuned − W_aligned` is dissimilar to its projection — cosine
//! similarity of `C·ΔW` and `ΔW` at most `tau` ("threshold" mode), or among the
//! `k` lowest ("number" mode, the default, as upstream) — gets `ΔW` replaced by `C·ΔW`. Other layers,
//! and layers that alignment did not change, are untouched.

use candle_core::Tensor;
use safetune_core::anyhow::bail;
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::repair::{subspace_scores, Repair, WeightSets, Weights};
use safetune_core::training::StepContext;
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SelectMode {
    Threshold,
    Number,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SafeLoraConfig {
    pub mode: SelectMode,
    /// Cosine threshold (threshold mode).
    pub tau: f64,
    /// Layers to project (number mode).
    pub k: usize,
}

impl Default for SafeLoraConfig {
    fn default() -> Self {
        Self { mode: SelectMode::Number, tau: 0.5, k: 10 }
    }
}

pub struct SafeLora {
    pub cfg: SafeLoraConfig,
}

pub use safetune_core::repair::alignment_projection as projection;

impl SafeLora {
    /// Per changed weight: its name, cosine similarity, projected update, aligned value.
    pub fn scores(&self, w: &WeightSets) -> Result<Vec<(String, f64, Tensor, Tensor)>> {
        Ok(subspace_scores(w)?.into_iter().map(|s| (s.name, s.similarity, s.projected, s.aligned)).collect())
    }
}

impl Repair for SafeLora {
    fn name(&self) -> &str {
        "safelora"
    }

    fn repair(&self, w: &WeightSets, _ctx: &mut dyn StepContext) -> Result<Weights> {
        let scored = self.scores(w)?;
        let chosen: std::collections::BTreeSet<usize> = match self.cfg.mode {
            SelectMode::Threshold => (0..scored.len()).filter(|&i| scored[i].1 <= self.cfg.tau).collect(),
            SelectMode::Number => {
                let mut idx: Vec<usize> = (0..scored.len()).collect();
                idx.sort_by(|&a, &b| scored[a].1.total_cmp(&scored[b].1));
                idx.truncate(self.cfg.k);
                idx.into_iter().collect()
            }
        };
        let mut out = Weights::new();
        for (i, (name, _, projected, aligned)) in scored.into_iter().enumerate() {
            if chosen.contains(&i) {
                out.insert(name, (aligned + projected)?);
            }
        }
        Ok(out)
    }
}

impl Defense for SafeLora {
    const NAME: &'static str = "safelora";
    const DESCRIPTION: &'static str = "project dissimilar fine-tuning updates onto the alignment subspace (Hsu et al. 2024)";
    const DIFFERS: &'static str = "projects the dense update C·ΔW (= C·B·A, the same product); number mode takes exactly k layers (upstream: every layer at or below the k-th similarity)";
    type Options = SafeLoraConfig;
    fn plan(cfg: SafeLoraConfig) -> Result<DefensePlan> {
        if !(-1.0..=1.0).contains(&cfg.tau) {
            bail!("defense_options.safelora.tau: must be in [-1, 1]");
        }
        Ok(DefensePlan { repair: Some(Box::new(SafeLora { cfg })), ..Default::default() })
    }
}

safetune_core::register_defense!(SafeLora);
