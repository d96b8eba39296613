//! SafeLoRA (Hsu et al. 2024, "Safe LoRA: the Silver Lining of Reducing
//! Safety Risks when Fine-tuning Large Language Models"), a post-tuning
//! defense.
//!
//! For each fine-tuned weight, the alignment direction `V = W_aligned −
//! W_base` gives the projection `C = V·Vᵀ/‖V‖_F`. A layer whose update `ΔW =
//! W_finetuned − W_aligned` is dissimilar to its projection — cosine
//! similarity of `C·ΔW` and `ΔW` below `tau` ("threshold" mode), or among the
//! `k` lowest ("number" mode) — gets `ΔW` replaced by `C·ΔW`. Other layers,
//! and layers that alignment did not change, are untouched.

use candle_core::{DType, Tensor};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::repair::{Repair, WeightSets, Weights};
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
        Self { mode: SelectMode::Threshold, tau: 0.5, k: 10 }
    }
}

pub struct SafeLora {
    pub cfg: SafeLoraConfig,
}

/// The projection `C = V·Vᵀ/‖V‖_F` of one weight; `None` when alignment
/// did not change it (no safety direction to project onto).
pub fn projection(base: &Tensor, aligned: &Tensor) -> Result<Option<Tensor>> {
    let v = (aligned - base)?.to_dtype(DType::F32)?;
    let norm = v.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    if norm == 0.0 {
        return Ok(None);
    }
    Ok(Some((v.matmul(&v.t()?)? / norm as f64)?))
}

fn cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let dot = (a * b)?.sum_all()?.to_scalar::<f32>()? as f64;
    let na = a.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    let nb = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    // A zero projection shares nothing with the update: similarity 0.
    Ok(if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) })
}

impl SafeLora {
    /// Per changed weight: its name, cosine similarity, projected update.
    pub fn scores(&self, w: &WeightSets) -> Result<Vec<(String, f64, Tensor, Tensor)>> {
        let mut out = Vec::new();
        for (name, ft) in w.finetuned {
            let (Some(base), Some(al)) = (w.base.get(name), w.aligned.get(name)) else { continue };
            if ft.rank() != 2 {
                continue;
            }
            let delta = (ft - al)?;
            if delta.abs()?.max_all()?.to_scalar::<f32>()? == 0.0 {
                continue;
            }
            // A weight alignment left alone has no safety subspace: SafeLoRA leaves it alone too.
            let Some(c) = projection(base, al).map_err(|e| anyhow!("safelora: `{name}`: {e}"))? else { continue };
            let projected = c.matmul(&delta)?;
            out.push((name.clone(), cosine(&projected, &delta)?, projected, al.clone()));
        }
        Ok(out)
    }
}

impl Repair for SafeLora {
    fn name(&self) -> &str {
        "safelora"
    }

    fn repair(&self, w: &WeightSets, _ctx: &mut dyn StepContext) -> Result<Weights> {
        let scored = self.scores(w)?;
        let chosen: std::collections::BTreeSet<usize> = match self.cfg.mode {
            SelectMode::Threshold => (0..scored.len()).filter(|&i| scored[i].1 < self.cfg.tau).collect(),
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
    type Options = SafeLoraConfig;
    fn plan(cfg: SafeLoraConfig) -> Result<DefensePlan> {
        if !(-1.0..=1.0).contains(&cfg.tau) {
            bail!("defense_options.safelora.tau: must be in [-1, 1]");
        }
        Ok(DefensePlan { repair: Some(Box::new(SafeLora { cfg })), ..Default::default() })
    }
}

safetune_core::register_defense!(SafeLora);
