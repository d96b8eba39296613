//! Vaccine (Huang et al. 2024, "Vaccine: Perturbation-aware Alignment for
//! Large Language Models against Harmful Fine-tuning"), an alignment-stage
//! defense.
//!
//! Each step, a first forward/backward pass records the gradient `g_l` of the
//! loss with respect to every layer's attention-block output (the reference's
//! hook; `site = "layer-output"`: the decoder layer's output) through zero
//! perturbations, whose gradient is exactly that. The perturbation
//! `e_l = ρ·g_l/‖g‖` (norm over all layers together) is added there in a second
//! pass, whose gradient is the one the optimiser applies:
//! the model learns to stay aligned under the worst-case drift of its hidden
//! states. ρ = 0 is plain SFT.

use candle_core::Tensor;
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::model::{Perturbation, PerturbationSite};
use safetune_core::training::{hidden_state_gradients, stream, StepContext, TrainStep};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VaccineConfig {
    /// Perturbation radius ρ (the paper's default).
    pub rho: f64,
    /// Where the perturbation is added: each attention block's output (the reference's
    /// hooks) or each decoder layer's output.
    pub site: PerturbationSite,
}

impl Default for VaccineConfig {
    fn default() -> Self {
        Self { rho: 2.0, site: PerturbationSite::AttentionOutput }
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

pub use safetune_core::training::perturbations;

impl TrainStep for Vaccine {
    fn name(&self) -> &str {
        "vaccine"
    }

    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("vaccine needs the alignment data stream"))?;
        // Pass 1: gradients with respect to each layer's output.
        let g = hidden_state_gradients(ctx, &batch, self.cfg.site)?;
        let (e, norm) = perturbations(&g, self.cfg.rho)?;
        self.last_norm = norm;
        // Pass 2: the loss under the perturbation; its gradient is applied.
        Ok(ctx.lm_loss(&batch, Some(Perturbation { tensors: &e, site: self.cfg.site }), false)?.0)
    }
}

impl Defense for Vaccine {
    const NAME: &'static str = "vaccine";
    const DESCRIPTION: &'static str =
        "perturbation-aware alignment: align under the worst-case hidden-state drift of radius rho (Huang et al. 2024)";
    const DIFFERS: &'static str =
        "as the reference (perturbs each attention block's output, rho 2); `site = \"layer-output\"` perturbs the residual stream instead";
    type Options = VaccineConfig;
    fn plan(cfg: VaccineConfig) -> Result<DefensePlan> {
        Ok(DefensePlan { align_step: Some(Box::new(Vaccine::new(cfg)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(Vaccine);
