//! Vaccine (Huang et al. 2024, "Vaccine: Perturbation-aware Alignment for
//! Large Language Models against Harmful Fine-tuning"), an alignment-stage
//! defense.
//!
//! Each step, a first forward/backward pass records the gradient `g_l` of the
//! loss with respect to every decoder layer's output hidden state (through
//! zero perturbations, whose gradient is exactly that). The perturbation
//! `e_l = ρ·g_l/‖g‖` (norm over all layers together) is added to each layer's
//! output in a second pass, whose gradient is the one the optimiser applies:
//! the model learns to stay aligned under the worst-case drift of its hidden
//! states. ρ = 0 is plain SFT.

use candle_core::{DType, Tensor, Var};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::training::{stream, StepContext, TrainStep};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VaccineConfig {
    /// Perturbation radius ρ (the paper's default).
    pub rho: f64,
}

impl Default for VaccineConfig {
    fn default() -> Self {
        Self { rho: 2.0 }
    }
}

pub struct Vaccine {
    pub cfg: VaccineConfig,
    /// The last perturbation's global norm (for tests and logs).
    pub last_norm: f64,
}

impl Vaccine {
    pub fn new(cfg: VaccineConfig) -> Result<Self> {
        if !(cfg.rho >= 0.0 && cfg.rho.is_finite()) {
            bail!("defense_options.vaccine.rho: must be ≥ 0");
        }
        Ok(Self { cfg, last_norm: 0.0 })
    }
}

/// `ρ·g_l/‖g‖` for every layer, `‖g‖` over all layers together.
pub fn perturbations(grads: &[Tensor], rho: f64) -> Result<(Vec<Tensor>, f64)> {
    let mut sq = 0.0;
    for g in grads {
        sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    let scale = if norm > 0.0 { rho / norm } else { 0.0 };
    let e = grads.iter().map(|g| (g * scale).map(|t| t.detach())).collect::<candle_core::Result<Vec<_>>>()?;
    Ok((e, norm * scale))
}

impl TrainStep for Vaccine {
    fn name(&self) -> &str {
        "vaccine"
    }

    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("vaccine needs the alignment data stream"))?;
        // Pass 1: gradients with respect to each layer's output, through zero perturbations.
        let (b, t) = batch.ids.dims2()?;
        let d = ctx.model().info().hidden_size;
        let layers = ctx.model().info().num_layers;
        let zeros: Vec<Var> =
            (0..layers).map(|_| Var::zeros((b, t, d), DType::F32, ctx.model().device())).collect::<candle_core::Result<_>>()?;
        let z: Vec<Tensor> = zeros.iter().map(|v| v.as_tensor().clone()).collect();
        let (loss1, _) = ctx.lm_loss(&batch, Some(&z), false)?;
        let grads = loss1.backward()?;
        let g: Vec<Tensor> =
            zeros.iter().map(|v| grads.get(v.as_tensor()).cloned().unwrap_or_else(|| v.as_tensor().zeros_like().expect("zeros"))).collect();
        // The first pass's graph (every activation) must be freed before the
        // second pass builds its own, or the step holds two graphs at once.
        drop(grads);
        drop(loss1);
        let (e, norm) = perturbations(&g, self.cfg.rho)?;
        self.last_norm = norm;
        // Pass 2: the loss under the perturbation; its gradient is applied.
        Ok(ctx.lm_loss(&batch, Some(&e), false)?.0)
    }
}

impl Defense for Vaccine {
    const NAME: &'static str = "vaccine";
    const DESCRIPTION: &'static str =
        "perturbation-aware alignment: align under the worst-case hidden-state drift of radius rho (Huang et al. 2024)";
    type Options = VaccineConfig;
    fn plan(cfg: VaccineConfig) -> Result<DefensePlan> {
        Ok(DefensePlan { align_step: Some(Box::new(Vaccine::new(cfg)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(Vaccine);
