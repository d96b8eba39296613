//! Antidote (Huang et al. 2025, "Antidote: Post-fine-tuning Safety Alignment for
//! Large Language Models against Harmful Fine-tuning", ICML 2025), a post-tuning
//! defense.
//!
//! After fine-tuning, the fine-tuned model is run on harmful data (the defender's
//! harmful pairs) to collect, for every linear module, the squared norm of each
//! input column over all tokens, `‖X_j‖²`. Each entry of the fine-tuning update
//! `ΔW = W_finetuned − W_aligned` gets the Wanda score `|ΔW_ij|·‖X_j‖`, and in each
//! row the top `dense_ratio` share of entries by score — the update's weights that
//! matter most on harmful inputs — is pruned (reset to the aligned value).

use candle_core::{DType, Tensor};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::model::ForwardRequest;
use safetune_core::repair::{Repair, WeightSets, Weights};
use safetune_core::training::{stream, StepContext};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Options of `antidote`; every default is the reference code's (README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AntidoteOptions {
    /// Share of each row of the update pruned (the highest Wanda scores).
    pub dense_ratio: f64,
    /// Harmful examples the scores are computed on (at most the defender's pool).
    pub samples: usize,
}

impl Default for AntidoteOptions {
    fn default() -> Self {
        Self { dense_ratio: 0.1, samples: 2000 }
    }
}

pub struct Antidote {
    pub options: AntidoteOptions,
}

impl Antidote {
    pub fn new(options: AntidoteOptions) -> Result<Self> {
        if !(options.dense_ratio > 0.0 && options.dense_ratio <= 1.0) {
            bail!("defense_options.antidote.dense_ratio: must be in (0, 1]");
        }
        if options.samples == 0 {
            bail!("defense_options.antidote.samples: must be at least 1");
        }
        Ok(Self { options })
    }
}

/// `Σ_tokens x_j²` of every linear module's input, over `samples` examples of the `harmful`
/// stream run through the context's (fine-tuned) model.
pub fn harmful_input_norms(ctx: &mut dyn StepContext, samples: usize) -> Result<BTreeMap<String, Tensor>> {
    let available = ctx.stream_len(stream::HARMFUL).unwrap_or(samples);
    let want = samples.min(available);
    if want == 0 {
        bail!("antidote: no harmful pairs to score weights on (the `harmful` stream is empty)");
    }
    let mut seen = 0;
    let mut total: BTreeMap<String, Tensor> = BTreeMap::new();
    while seen < want {
        let batch = ctx.next_batch(stream::HARMFUL)?.ok_or_else(|| anyhow!("antidote: no `harmful` stream"))?;
        seen += batch.ids_of_examples.len();
        let first = Tensor::new(&[0u32], ctx.model().device())?;
        let out = ctx.model().forward(&ForwardRequest {
            ids: Some(&batch.ids),
            mask: Some(&batch.attention),
            logits_at: Some(&first),
            linear_input_norms: true,
            ..Default::default()
        })?;
        for (name, n) in out.linear_input_norms {
            let sum = match total.remove(&name) {
                Some(prev) => (prev + n)?,
                None => n,
            };
            total.insert(name, sum);
        }
    }
    Ok(total)
}

/// The mask of the entries pruned in each row: the `ceil(dense_ratio · columns)` highest scores
/// (ties: the later column first, as a stable ascending sort keeps the later one on top).
pub fn top_per_row(scores: &[Vec<f32>], dense_ratio: f64) -> Vec<Vec<bool>> {
    scores
        .iter()
        .map(|row| {
            let cols = row.len();
            let keep = (cols as f64 * (1.0 - dense_ratio)).floor() as usize;
            let mut order: Vec<usize> = (0..cols).collect();
            order.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
            let mut mask = vec![false; cols];
            for &j in &order[keep.min(cols)..] {
                mask[j] = true;
            }
            mask
        })
        .collect()
}

impl Repair for Antidote {
    fn name(&self) -> &str {
        "antidote"
    }

    fn repair(&self, w: &WeightSets, ctx: &mut dyn StepContext) -> Result<Weights> {
        let norms = harmful_input_norms(ctx, self.options.samples)?;
        let mut out = Weights::new();
        for (module, n) in &norms {
            let name = format!("{module}.weight");
            let (Some(ft), Some(al)) = (w.finetuned.get(&name), w.aligned.get(&name)) else { continue };
            let delta = (ft - al)?.to_dtype(DType::F32)?;
            if delta.abs()?.max_all()?.to_scalar::<f32>()? == 0.0 {
                continue;
            }
            let scores = delta.abs()?.broadcast_mul(&n.sqrt()?.unsqueeze(0)?)?.to_vec2::<f32>()?;
            let mask = top_per_row(&scores, self.options.dense_ratio);
            let pruned: Vec<u8> = mask.iter().flatten().map(|&m| m as u8).collect();
            let pruned = Tensor::from_vec(pruned, delta.dims(), delta.device())?;
            // Pruned entries take the aligned value exactly, the others keep the fine-tuned one.
            out.insert(name, pruned.where_cond(&al.to_dtype(DType::F32)?, &ft.to_dtype(DType::F32)?)?);
        }
        if out.is_empty() {
            bail!("antidote: no fine-tuned linear weight to prune (did fine-tuning change any?)");
        }
        Ok(out)
    }
}

impl Defense for Antidote {
    const NAME: &'static str = "antidote";
    const DESCRIPTION: &'static str =
        "post-tuning pruning: reset the fine-tuning update's weights with the highest Wanda scores on harmful data (Huang et al. 2025)";
    const DIFFERS: &'static str =
        "prunes entries of the dense update ΔW (reference: entries of the LoRA A/B factors; q,k,v for full fine-tuning)";
    type Options = AntidoteOptions;
    fn plan(options: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { repair: Some(Box::new(Antidote::new(options)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(Antidote);
