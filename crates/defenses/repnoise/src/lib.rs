//! RepNoise (Rosati et al. 2024, "Representation Noising: A Defence Mechanism
//! Against Harmful Finetuning", NeurIPS 2024), an alignment-stage defense.
//!
//! Each alignment step minimises
//!
//! `L_retain + β·MMD(harmful hidden states, Gaussian noise) − α·log(L_harmful + 1)`
//!
//! — the alignment loss, a pull of every layer's hidden states on harmful
//! answers toward Gaussian noise (maximum mean discrepancy with a mixture of five
//! Gaussian kernels, averaged over layers), and bounded gradient ascent on the
//! harmful answers. The harmful information is removed from the representations,
//! so fine-tuning has less to recover. `α = β = 0` is plain SFT exactly.

use candle_core::{DType, Tensor, D};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::defense::{Defense, DefensePlan};
use safetune_core::rng::SeededRng;
use safetune_core::training::{backward_now, stream, StepContext, TrainStep};
use safetune_core::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Options of `repnoise`; every default is the reference code's (README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RepNoiseOptions {
    /// Weight α of the gradient ascent on harmful answers (`−α·log(L_harmful + 1)`).
    pub alpha: f64,
    /// Weight β of the noise (MMD) term.
    pub beta: f64,
    /// Seed of the Gaussian noise (each step draws fresh noise from it).
    pub seed: u64,
}

impl Default for RepNoiseOptions {
    fn default() -> Self {
        Self { alpha: 1.0, beta: 0.001, seed: 0 }
    }
}

/// The alignment objective.
pub struct RepNoise {
    pub options: RepNoiseOptions,
    /// Last step's terms: retain loss, MMD to noise, harmful loss (for tests and logs).
    pub last_terms: Option<(f64, f64, f64)>,
}

impl RepNoise {
    pub fn new(options: RepNoiseOptions) -> Result<Self> {
        for (key, v) in [("alpha", options.alpha), ("beta", options.beta)] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("defense_options.repnoise.{key}: must be a number ≥ 0");
            }
        }
        Ok(Self { options, last_terms: None })
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Maximum mean discrepancy between the rows of `source` and `target` (`[n, dim]` each) under
/// a sum of `kernels` Gaussian kernels whose bandwidths are `mul`-spaced around the mean
/// pairwise squared distance (detached), as the reference's `MMD_loss`: `mean(XX + YY − XY − YX)`.
pub fn mmd(source: &Tensor, target: &Tensor, mul: f64, kernels: usize) -> Result<Tensor> {
    let n = source.dim(0)?;
    let total = Tensor::cat(&[source, target], 0)?;
    let m = 2 * n;
    let sq = total.sqr()?.sum_keepdim(1)?; // [m, 1]
    let gram = total.matmul(&total.t()?)?;
    let l2 = (sq.broadcast_add(&sq.t()?)? - (gram * 2.0)?)?.relu()?;
    let mut bandwidth = scalar(&l2.sum_all()?)? / ((m * m - m) as f64);
    bandwidth /= mul.powi((kernels / 2) as i32);
    if bandwidth <= 0.0 {
        // Every row identical: no discrepancy to measure.
        return Ok(l2.sum_all()?.zeros_like()?);
    }
    let mut k: Option<Tensor> = None;
    for i in 0..kernels {
        let e = (&l2 / -(bandwidth * mul.powi(i as i32)))?.exp()?;
        k = Some(match k {
            None => e,
            Some(acc) => (acc + e)?,
        });
    }
    let k = k.ok_or_else(|| anyhow!("mmd: at least one kernel"))?;
    let xx = k.narrow(0, 0, n)?.narrow(1, 0, n)?;
    let yy = k.narrow(0, n, n)?.narrow(1, n, n)?;
    let xy = k.narrow(0, 0, n)?.narrow(1, n, n)?;
    let yx = k.narrow(0, n, n)?.narrow(1, 0, n)?;
    Ok((((xx + yy)? - xy)? - yx)?.mean_all()?)
}

/// Standard normal noise of `shape`, from `rng`.
fn gaussian(shape: &[usize], rng: &mut SeededRng, dev: &candle_core::Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.next_normal() as f32).collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

impl TrainStep for RepNoise {
    fn name(&self) -> &str {
        "repnoise"
    }

    fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
        let batch = ctx.next_batch(stream::TASK)?.ok_or_else(|| anyhow!("repnoise: no alignment data"))?;
        let retain = ctx.lm_loss(&batch, None, false)?.0;
        if self.options.alpha == 0.0 && self.options.beta == 0.0 {
            return Ok(retain);
        }
        // The alignment batch's backward pass now, before the harmful batch's forward pass: one
        // pass's activations alive at a time instead of two (the same value and gradient; README).
        let retain = backward_now(&retain, ctx.params())?;
        let harmful = ctx.next_batch(stream::HARMFUL)?.ok_or_else(|| {
            anyhow!("repnoise: no `harmful` stream (it needs harmful pairs that no attack variant draws: raise the harmful pool)")
        })?;
        let (harm_loss, hidden) = ctx.lm_loss(&harmful, None, self.options.beta > 0.0)?;
        let mut loss = (&retain - ((&harm_loss + 1.0)?.log()? * self.options.alpha)?)?;
        let mut noise_value = 0.0;
        if self.options.beta > 0.0 && !hidden.is_empty() {
            // The harmful answers' positions (the loss mask), every other position zeroed in both samples.
            let mask = harmful.loss_mask.unsqueeze(D::Minus1)?;
            let mut rng = SeededRng::derive(self.options.seed, &format!("repnoise/step/{}", ctx.step()));
            let mut noise: Option<Tensor> = None;
            for h in &hidden {
                let (b, t, d) = h.dims3()?;
                let hm = h.to_dtype(DType::F32)?.broadcast_mul(&mask)?.reshape((b, t * d))?;
                let g = gaussian(&[b, t, d], &mut rng, h.device())?.broadcast_mul(&mask)?.reshape((b, t * d))?;
                let term = mmd(&hm, &g, 2.0, 5)?;
                noise = Some(match noise {
                    None => term,
                    Some(acc) => (acc + term)?,
                });
            }
            if let Some(noise) = noise {
                let noise = (noise / hidden.len() as f64)?;
                noise_value = scalar(&noise)?;
                loss = (loss + (noise * self.options.beta)?)?;
            }
        }
        self.last_terms = Some((scalar(&retain)?, noise_value, scalar(&harm_loss)?));
        Ok(loss)
    }
}

impl Defense for RepNoise {
    const NAME: &'static str = "repnoise";
    const DESCRIPTION: &'static str =
        "representation noising: align while pushing harmful answers' hidden states toward Gaussian noise and ascending their loss (Rosati et al. 2024)";
    const DIFFERS: &'static str = "noise on decoder-layer outputs (reference: MLP outputs); harmful loss on final logits only (reference adds every layer's logit lens)";
    type Options = RepNoiseOptions;
    fn plan(options: Self::Options) -> Result<DefensePlan> {
        Ok(DefensePlan { align_step: Some(Box::new(RepNoise::new(options)?)), ..Default::default() })
    }
}

safetune_core::register_defense!(RepNoise);
