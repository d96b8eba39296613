//! T-Vaccine (Liu et al. 2024, "Targeted Vaccine: Safety Alignment for Large
//! Language Models against Harmful Fine-Tuning via Layer-wise Perturbation"),
//! an alignment-stage defense: Vaccine restricted to safety-critical layers.
//!
//! Every `probability_steps` steps, one harmful batch gives each decoder layer a
//! score, the norm of the harmful loss's gradient with respect to its output
//! hidden state; the scores, normalised, are the layers' sampling probabilities.
//! Every `interval_steps` steps, `activated_layers` layers are drawn from them
//! without replacement. Each step is then Vaccine on the drawn layers only: the
//! gradient `g_l` of the alignment loss with respect to each drawn layer's output,
//! the perturbation `ρ·g_l/‖g‖` (norm over the drawn layers) added to those
//! outputs in a second pass, whose gradient the optimiser applies.

use candle_core::Tensor;
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::model::{Perturbation, PerturbationSite};
use safetune_core::rng::SeededRng;
use safetune_core::training::{hidden_state_gradients, perturbations, stream, StepContext, StepState, TrainStep};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Options of `t-vaccine`; every default is the reference code's (README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TVaccineOptions {
    /// Perturbation radius ρ.
    pub rho: f64,
    /// Layers perturbed at a time.
    pub activated_layers: usize,
    /// Steps between two draws of the perturbed layers.
    pub interval_steps: usize,
    /// Steps between two scorings of the layers on harmful data.
    pub probability_steps: usize,
    /// Seed of the layer draws.
    pub seed: u64,
    /// Where the perturbation is added (the reference: each attention block's output).
    pub site: PerturbationSite,
}

impl Default for TVaccineOptions {
    fn default() -> Self {
        Self { rho: 3.0, activated_layers: 8, interval_steps: 20, probability_steps: 200, seed: 0, site: PerturbationSite::AttentionOutput }
    }
}

pub struct TVaccine {
    pub options: TVaccineOptions,
    /// The layers' sampling probabilities (from the last scoring).
    pub probability: Vec<f64>,
    /// The layers perturbed now, ascending.
    pub active: Vec<usize>,
    /// The last perturbation's norm (over the active layers).
    pub last_norm: f64,
    draws: usize,
}

impl TVaccine {
    pub fn new(options: TVaccineOptions) -> Result<Self> {
        if !(options.rho >= 0.0 && options.rho.is_finite()) {
            bail!("defense_options.t-vaccine.rho: must be a number ≥ 0");
        }
        for (key, v) in [
            ("activated_layers", options.activated_layers),
            ("interval_steps", options.interval_steps),
            ("probability_steps", options.probability_steps),
        ] {
            if v == 0 {
                bail!("defense_options.t-vaccine.{key}: must be at least 1");
            }
        }
        Ok(Self { options, probability: Vec::new(), active: Vec::new(), last_norm: 0.0, draws: 0 })
    }
}

/// Each layer's score normalised to sum to one (uniform when every score is zero).
pub fn probabilities(scores: &[f64]) -> Vec<f64> {
    let total: f64 = scores.iter().sum();
    if total > 0.0 && total.is_finite() {
        scores.iter().map(|s| s / total).collect()
    } else {
        vec![1.0 / scores.len().max(1) as f64; scores.len()]
    }
}

/// `k` distinct indices drawn one after another with probability proportional to `p` among
/// those not yet drawn (numpy's `choice(replace=False, p=p)`), ascending. Indices of zero
/// probability are drawn only once every positive one is.
pub fn draw_layers(p: &[f64], k: usize, rng: &mut SeededRng) -> Vec<usize> {
    let mut left: Vec<usize> = (0..p.len()).collect();
    let mut out = Vec::new();
    while out.len() < k && !left.is_empty() {
        let total: f64 = left.iter().map(|&i| p[i]).sum();
        let pos = if total > 0.0 {
            let mut u = rng.next_f64() * total;
            let mut pos = left.len() - 1;
            for (j, &i) in left.iter().enumerate() {
                if p[i] > 0.0 && u < p[i] {
                    pos = j;
                    break;
                }
                u -= p[i];
            }
            // Rounding at the end of the range: the last positive one.
            if p[left[pos]] <= 0.0 {
                pos = left.iter().rposition(|&i| p[i] > 0.0).unwrap_or(pos);
            }
            pos
        } else {
            rng.below(left.len())
        };
        out.push(left.remove(pos));
    }
    out.sort_unstable();
    out
}

fn norm(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?.sqrt())
}

impl TrainStep for TVaccine {
    fn name(&self) -> &str {
        "t-vaccine"
    }

    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("t-vaccine: no alignment data"))?;
        let step = ctx.step();
        if self.probability.is_empty() || step.is_multiple_of(self.options.probability_steps) {
            let harmful = ctx.next_batch(stream::HARMFUL)?.ok_or_else(|| {
                anyhow!("t-vaccine: no `harmful` stream (it scores layers on harmful pairs that no attack variant draws)")
            })?;
            let scores = hidden_state_gradients(ctx, &harmful, self.options.site)?.iter().map(norm).collect::<Result<Vec<_>>>()?;
            self.probability = probabilities(&scores);
        }
        if self.active.is_empty() || step.is_multiple_of(self.options.interval_steps) {
            let mut rng = SeededRng::derive(self.options.seed, &format!("t-vaccine/draw/{}", self.draws));
            self.draws += 1;
            self.active = draw_layers(&self.probability, self.options.activated_layers, &mut rng);
        }
        // Pass 1 on the alignment batch; only the active layers' gradients enter the norm.
        let g = hidden_state_gradients(ctx, &batch, self.options.site)?;
        let chosen: Vec<Tensor> = self.active.iter().map(|&l| g[l].clone()).collect();
        let (e, n) = perturbations(&chosen, self.options.rho)?;
        self.last_norm = n;
        let mut per_layer: Vec<Tensor> = g.iter().map(|t| t.zeros_like()).collect::<candle_core::Result<_>>()?;
        for (&l, e) in self.active.iter().zip(e) {
            per_layer[l] = e;
        }
        // Pass 2: the loss under the targeted perturbation; its gradient is applied.
        Ok(ctx.lm_loss(&batch, Some(Perturbation { tensors: &per_layer, site: self.options.site }), false)?.0)
    }

    /// The layer probabilities of the last scoring, the drawn layers and the draw count.
    fn save_state(&self) -> Result<StepState> {
        Ok(StepState {
            values: serde_json::json!({ "probability": self.probability, "active": self.active, "draws": self.draws }),
            tensors: Vec::new(),
        })
    }

    fn load_state(&mut self, saved: StepState) -> Result<()> {
        let bad = |f: &str| anyhow!("t-vaccine: checkpoint: bad `{f}`");
        self.probability = serde_json::from_value(saved.values["probability"].clone()).map_err(|_| bad("probability"))?;
        self.active = serde_json::from_value(saved.values["active"].clone()).map_err(|_| bad("active"))?;
        self.draws = serde_json::from_value(saved.values["draws"].clone()).map_err(|_| bad("draws"))?;
        Ok(())
    }
}

impl Defense for TVaccine {
    const NAME: &'static str = "t-vaccine";
    const DESCRIPTION: &'static str =
        "targeted Vaccine: perturb only layers drawn by their harmful-gradient norm during alignment (Liu et al. 2024)";
    const DIFFERS: &'static str = "every adapter trains (the reference freezes the undrawn layers' adapters to save memory); perturbation on attention outputs as the reference";
    type Options = TVaccineOptions;
    fn plan(options: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { align_step: Some(Box::new(TVaccine::new(options)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(TVaccine);
