//! Booster (Huang et al. 2025, "Booster: Tackling Harmful Fine-tuning for Large
//! Language Models via Attenuating Harmful Perturbation", ICLR 2025), an
//! alignment-stage defense.
//!
//! Each alignment step minimises the alignment loss `f(w)` plus `λ` times the
//! drop of the harmful loss `h` under one normalised harmful gradient step:
//!
//! `f(w) + λ·( h(w) − h(w − α·∇h(w)/‖∇h(w)‖) )`
//!
//! with the reference code's first-order gradient `∇f(w) + λ·(∇h(w) − ∇h(w'))`,
//! `w' = w − α·∇h(w)/‖∇h(w)‖` (the norm over every trainable tensor together):
//! the model learns weights from which a harmful fine-tuning step lowers the
//! harmful loss less. Three forward/backward passes per step (`h` at `w`, `h`
//! at `w'`, `f` at `w`). `λ = 0` is plain SFT exactly.

use candle_core::{DType, Tensor};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::training::{global_norm, gradients_of, stream, zero_valued_gradient, StepContext, TrainStep};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Options of `booster`; every default is the reference code's (README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BoosterOptions {
    /// Weight λ of the harmful-perturbation attenuation term.
    pub lambda: f64,
    /// Size α of the simulated (normalised) harmful step.
    pub alpha: f64,
}

impl Default for BoosterOptions {
    fn default() -> Self {
        Self { lambda: 5.0, alpha: 0.1 }
    }
}

/// The alignment objective.
pub struct Booster {
    pub options: BoosterOptions,
    /// Last step's harmful loss before and after the simulated harmful step (for tests and logs).
    pub last_drop: Option<(f64, f64)>,
}

impl Booster {
    pub fn new(options: BoosterOptions) -> Result<Self> {
        for (key, v) in [("lambda", options.lambda), ("alpha", options.alpha)] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("defense_options.booster.{key}: must be a number ≥ 0");
            }
        }
        Ok(Self { options, last_drop: None })
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The gradient of `loss` for every tensor in `params` (zeros where the loss does not reach it).
pub fn gradients(loss: &Tensor, params: &[(String, candle_core::Var)]) -> Result<Vec<Tensor>> {
    gradients_of(loss, params.iter().map(|(_, v)| v))
}

impl TrainStep for Booster {
    fn name(&self) -> &str {
        "booster"
    }

    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("booster: no alignment data"))?;
        if self.options.lambda == 0.0 {
            return Ok(ctx.lm_loss(&batch, None, false)?.0);
        }
        let harmful = ctx.next_batch(stream::HARMFUL)?.ok_or_else(|| {
            anyhow!("booster: no `harmful` stream (it needs harmful pairs that no attack variant draws: raise the harmful pool)")
        })?;
        let params = ctx.params().to_vec();
        // ∇h(w), then w' = w − α·∇h/‖∇h‖.
        let h0 = ctx.lm_loss(&harmful, None, false)?.0;
        let before = scalar(&h0)?;
        let g = gradients(&h0, &params)?;
        drop(h0);
        let scale = self.options.alpha / (global_norm(&g)? + 1e-7);
        let saved: Vec<Tensor> = params.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
        for ((_, v), gi) in params.iter().zip(&g) {
            v.set(&(v.as_tensor() - (gi * scale)?)?)?;
        }
        // ∇h(w'), then the weights back exactly as they were.
        let shifted = ctx.lm_loss(&harmful, None, false);
        let after = shifted.as_ref().map_err(|e| anyhow!("{e}")).and_then(|(h1, _)| Ok((scalar(h1)?, gradients(h1, &params)?)));
        for ((_, v), s) in params.iter().zip(&saved) {
            v.set(s)?;
        }
        drop(shifted);
        let (after, g_shifted) = after?;
        self.last_drop = Some((before, after));
        // f(w) plus a term whose value is zero and whose gradient is λ·(∇h(w) − ∇h(w')).
        let f = ctx.lm_loss(&batch, None, false)?.0;
        let diff = g.iter().zip(&g_shifted).map(|(a, b)| Ok(((a - b)? * self.options.lambda)?)).collect::<Result<Vec<_>>>()?;
        Ok(match zero_valued_gradient(&params, &diff)? {
            Some(term) => (f + term)?,
            None => f,
        })
    }
}

impl Defense for Booster {
    const NAME: &'static str = "booster";
    const DESCRIPTION: &'static str =
        "harmful-perturbation attenuation: align while penalising how much one normalised harmful step lowers the harmful loss (Huang et al. 2025)";
    const DIFFERS: &'static str = "harmful batch of the run's batch size from the defender's pool (reference: 10 BeaverTails pairs); the perturb-aware variant is not implemented";
    type Options = BoosterOptions;
    fn plan(options: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { align_step: Some(Box::new(Booster::new(options)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(Booster);
