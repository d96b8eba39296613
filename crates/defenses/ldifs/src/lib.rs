//! LDIFS (Mukhoti et al. 2024, "Fine-tuning can cripple your foundation model;
//! preserving features may be the solution", TMLR), a fine-tuning-stage
//! regulariser, as the Booster and Vaccine papers run it as a baseline.
//!
//! Each fine-tuning step adds to the task loss a feature-space distance to the
//! model the stage starts from (the aligned model): for every decoder layer `l`,
//! `ρ/2·‖h_l(w) − h_l(w_aligned)‖²` over the batch's real tokens. As in the
//! reference code, a layer's term is dropped when it is not below `drop_above`
//! (0: never).
//! `ρ = 0` is plain SFT exactly.

use candle_core::{DType, Tensor, D};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::model::ForwardRequest;
use safetune_core::training::{stream, StepContext, TrainStep};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Options of `ldifs`; every default is the reference code's (README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LdifsOptions {
    /// Strength ρ of the feature-distance term.
    pub rho: f64,
    /// A layer's term counts only while below this value (0: always).
    pub drop_above: f64,
}

impl Default for LdifsOptions {
    fn default() -> Self {
        Self { rho: 1e-4, drop_above: 0.1 }
    }
}

/// The fine-tuning objective.
pub struct Ldifs {
    pub options: LdifsOptions,
    /// Last step's per-layer terms and how many of them counted (for tests and logs).
    pub last_terms: Vec<f64>,
    pub last_kept: usize,
}

impl Ldifs {
    pub fn new(options: LdifsOptions) -> Result<Self> {
        if !(options.rho >= 0.0 && options.rho.is_finite()) {
            bail!("defense_options.ldifs.rho: must be a number ≥ 0");
        }
        if !(options.drop_above >= 0.0 && options.drop_above.is_finite()) {
            bail!("defense_options.ldifs.drop_above: must be a number ≥ 0 (0: never drop)");
        }
        Ok(Self { options, last_terms: Vec::new(), last_kept: 0 })
    }
}

impl TrainStep for Ldifs {
    fn name(&self) -> &str {
        "ldifs"
    }

    fn wants_reference(&self) -> bool {
        self.options.rho > 0.0
    }

    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("ldifs: the task stream is empty"))?;
        if self.options.rho == 0.0 {
            return Ok(ctx.lm_loss(&batch, None, false)?.0);
        }
        let (mut loss, hidden) = ctx.lm_loss(&batch, None, true)?;
        let reference = ctx.reference().ok_or_else(|| anyhow!("ldifs: the stage gave no reference (aligned) model"))?;
        // The reference's features; one logit position only (its logits are not used).
        let first = Tensor::new(&[0u32], reference.device())?;
        let out = reference.forward(&ForwardRequest {
            ids: Some(&batch.ids),
            mask: Some(&batch.attention),
            output_hidden: true,
            logits_at: Some(&first),
            ..Default::default()
        })?;
        if out.hidden.len() != hidden.len() {
            bail!("ldifs: the reference has {} layers, the model {}", out.hidden.len(), hidden.len());
        }
        let real = batch.attention.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        self.last_terms.clear();
        self.last_kept = 0;
        for (h, r) in hidden.iter().zip(&out.hidden) {
            let diff = (h.to_dtype(DType::F32)? - r.to_dtype(DType::F32)?.detach())?.broadcast_mul(&real)?;
            let term = (diff.sqr()?.sum_all()? * (self.options.rho / 2.0))?;
            let value = term.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            self.last_terms.push(value);
            if self.options.drop_above == 0.0 || value < self.options.drop_above {
                loss = (loss + term)?;
                self.last_kept += 1;
            }
        }
        Ok(loss)
    }
}

impl Defense for Ldifs {
    const NAME: &'static str = "ldifs";
    const DESCRIPTION: &'static str =
        "feature-distance regularisation: fine-tune while keeping every layer's hidden states near the aligned model's (Mukhoti et al. 2024)";
    const DIFFERS: &'static str = "features are decoder-layer outputs at real tokens (reference: MLP outputs at every position)";
    type Options = LdifsOptions;
    fn plan(options: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { step: Some(Box::new(Ldifs::new(options)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(Ldifs);
