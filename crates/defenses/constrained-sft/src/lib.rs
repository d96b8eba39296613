//! Token-wise constrained fine-tuning (Qi et al. 2025, "Safety Alignment Should
//! Be Made More Than Just a Few Tokens Deep", ICLR 2025), a fine-tuning-stage
//! defense.
//!
//! The objective keeps each answer token's log-probability close to the aligned
//! model's, most strongly on the first tokens, where alignment lives:
//!
//! `L = −mean_t  w_t · log π(y_t | x, y_<t)`,
//! `w_t = stopgrad(max(2·(1 − σ(β_t·(log π(y_t|…) − log π_aligned(y_t|…)))), 10⁻³))`
//!
//! — the gradient of the paper's `(2/β_t)·log σ(β_t·Δ_t)` objective, computed as
//! the reference code does (a cross-entropy weighted by a detached factor). `β_t`
//! is `β·first_token_bias_factor` for the first answer token,
//! `β·bias_factor` for the next `bias_length − 1`, and `β` after. At the start
//! (the model equals the aligned model) every weight is 1: plain SFT; a token
//! whose probability has risen far above the aligned model's stops being pushed.

use candle_core::{DType, Tensor};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::training::{response_log_probs, response_offsets, stream, StepContext, TrainStep};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Options of `constrained-sft`; every default is the reference code's (README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConstrainedSftOptions {
    /// Base constraint strength β (answer tokens after the first `bias_length`).
    pub beta: f64,
    /// β multiplier for answer tokens 2..`bias_length`.
    pub bias_factor: f64,
    /// Number of leading answer tokens with a stronger constraint.
    pub bias_length: usize,
    /// β multiplier for the first answer token.
    pub first_token_bias_factor: f64,
}

impl Default for ConstrainedSftOptions {
    fn default() -> Self {
        Self { beta: 0.1, bias_factor: 20.0, bias_length: 5, first_token_bias_factor: 5.0 }
    }
}

/// The fine-tuning objective.
pub struct ConstrainedSft {
    pub options: ConstrainedSftOptions,
    /// Last step's mean token weight (1 at the start; lower as tokens leave the aligned model).
    pub last_mean_weight: f64,
}

impl ConstrainedSft {
    pub fn new(options: ConstrainedSftOptions) -> Result<Self> {
        for (key, v) in
            [("beta", options.beta), ("bias_factor", options.bias_factor), ("first_token_bias_factor", options.first_token_bias_factor)]
        {
            if !(v > 0.0 && v.is_finite()) {
                bail!("defense_options.constrained-sft.{key}: must be a number > 0");
            }
        }
        Ok(Self { options, last_mean_weight: 1.0 })
    }

    /// `β_t` for an answer token at `offset` (0: the first answer token).
    pub fn beta_at(&self, offset: usize) -> f64 {
        let o = &self.options;
        if offset >= o.bias_length {
            o.beta
        } else if offset == 0 {
            o.beta * o.first_token_bias_factor
        } else {
            o.beta * o.bias_factor
        }
    }
}

/// `max(2·(1 − σ(β·Δ)), 10⁻³)` for each token.
pub fn token_weights(policy: &[f32], reference: &[f32], betas: &[f64]) -> Vec<f32> {
    policy
        .iter()
        .zip(reference)
        .zip(betas)
        .map(|((&p, &r), &b)| {
            let z = b * (p as f64 - r as f64);
            let sigmoid = 1.0 / (1.0 + (-z).exp());
            (2.0 * (1.0 - sigmoid)).max(1e-3) as f32
        })
        .collect()
}

impl TrainStep for ConstrainedSft {
    fn name(&self) -> &str {
        "constrained-sft"
    }

    fn wants_reference(&self) -> bool {
        true
    }

    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("constrained-sft: the task stream is empty"))?;
        let reference = ctx.reference().ok_or_else(|| anyhow!("constrained-sft: the stage gave no reference (aligned) model"))?;
        let (ref_lp, _) = response_log_probs(reference, &batch, None, false, false)?;
        let (lp, _) = response_log_probs(ctx.model(), &batch, None, false, true)?;
        let betas: Vec<f64> = response_offsets(&batch)?.into_iter().map(|o| self.beta_at(o)).collect();
        let w = token_weights(&lp.to_dtype(DType::F32)?.to_vec1()?, &ref_lp.to_dtype(DType::F32)?.to_vec1()?, &betas);
        self.last_mean_weight = w.iter().map(|&x| x as f64).sum::<f64>() / w.len().max(1) as f64;
        let w = Tensor::from_vec(w, lp.dims(), lp.device())?;
        Ok((lp * w)?.neg()?.mean_all()?)
    }
}

impl Defense for ConstrainedSft {
    const NAME: &'static str = "constrained-sft";
    const DESCRIPTION: &'static str =
        "token-wise constrained fine-tuning: keep each answer token's log-probability near the aligned model's, strongest on the first tokens (Qi et al. 2025)";
    const DIFFERS: &'static str = "reference log-probabilities computed each step (reference: once before training); no anchor batches";
    type Options = ConstrainedSftOptions;
    fn plan(options: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { step: Some(Box::new(ConstrainedSft::new(options)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(ConstrainedSft);
