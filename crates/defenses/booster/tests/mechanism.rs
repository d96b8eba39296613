//! Mechanism tests: each fails when the defense's rule is removed.

use candle_core::{DType, Device, Tensor, Var};
use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::model::Perturbation;
use safetune_core::training::{stream, PlainSft, StepContext, TokenBatch, TrainStep};
use safetune_core::{CausalLm, Example, ExampleKind, Result};
use safetune_defense_booster::*;
use safetune_train::{train, with_context, StageData};

/// Tiny-model streams: alignment data (`task`) and `harmful`, 4 examples each.
fn streams() -> StageData {
    let mut data = StageData::default();
    for (name, kind, answer) in [
        (stream::TASK, ExampleKind::Refusal, "I cannot help with that."),
        (stream::HARMFUL, ExampleKind::Harmful, "Sure, here is how to do it."),
    ] {
        let rows = (0..4).map(|i| Example::new(format!("{name}:{i}"), kind, format!("{name} question {i}?"), answer)).collect();
        data.streams.insert(name.to_string(), rows);
    }
    data
}

/// The tiny model with LoRA on every linear layer, B non-zero so every adapter matters.
fn lora_model() -> safetune_model::Llama {
    let mut m = safetune_model::tiny_model(3).unwrap();
    let lora = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["all-linear".into()] };
    safetune_lora::attach_lora(&mut m, &lora, 5).unwrap();
    for (n, v) in m.trainable() {
        if n.ends_with("lora_B.weight") {
            v.set(&(Tensor::ones(v.shape(), DType::F32, &Device::Cpu).unwrap() * 0.05).unwrap()).unwrap();
        }
    }
    m
}

/// A context whose `params` are the model's trainable tensors (as in training).
struct WithParams<'a> {
    inner: &'a mut dyn StepContext,
    params: Vec<(String, Var)>,
}

impl StepContext for WithParams<'_> {
    fn model(&self) -> &dyn CausalLm {
        self.inner.model()
    }
    fn reference(&self) -> Option<&dyn CausalLm> {
        None
    }
    fn params(&self) -> &[(String, Var)] {
        &self.params
    }
    fn next_batch(&mut self, s: &str) -> Result<Option<TokenBatch>> {
        self.inner.next_batch(s)
    }
    fn lm_loss(&self, b: &TokenBatch, p: Option<Perturbation>, h: bool) -> Result<(Tensor, Vec<Tensor>)> {
        self.inner.lm_loss(b, p, h)
    }
    fn step(&self) -> usize {
        0
    }
    fn total_steps(&self) -> usize {
        1
    }
}

fn on_model<R>(m: &safetune_model::Llama, f: impl FnOnce(&mut dyn StepContext) -> Result<R>) -> R {
    let cfg = TrainConfig { batch_size: 2, max_len: 256, ..Default::default() };
    let params = m.trainable();
    with_context(m, None, &streams(), &cfg, |inner| f(&mut WithParams { inner, params })).unwrap()
}

fn flat(ts: &[Tensor]) -> Vec<f32> {
    ts.iter().flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

fn values(m: &safetune_model::Llama) -> Vec<f32> {
    flat(&m.trainable().iter().map(|(_, v)| v.as_tensor().clone()).collect::<Vec<_>>())
}

#[test]
fn the_applied_gradient_is_alignment_plus_lambda_times_the_harmful_drop_gradient() {
    let m = lora_model();
    let start = values(&m);
    let opts = BoosterOptions { lambda: 5.0, alpha: 0.1 };
    let mut booster = Booster::new(opts.clone()).unwrap();
    let (value, got) = on_model(&m, |ctx| {
        let l = booster.loss(ctx)?;
        let params = ctx.params().to_vec();
        Ok((l.to_scalar::<f32>()?, gradients(&l, &params)?))
    });
    assert_eq!(values(&m), start, "the weights must be restored after the simulated harmful step");
    // The same batches by hand: ∇f(w) + λ·(∇h(w) − ∇h(w − α·g/‖g‖)).
    let (f_value, want) = on_model(&m, |ctx| {
        let params = ctx.params().to_vec();
        let task = ctx.next_batch(stream::TASK)?.unwrap();
        let harmful = ctx.next_batch(stream::HARMFUL)?.unwrap();
        let f = ctx.lm_loss(&task, None, false)?.0;
        let gf = gradients(&f, &params)?;
        let g = gradients(&ctx.lm_loss(&harmful, None, false)?.0, &params)?;
        let norm = flat(&g).iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        for ((_, v), gi) in params.iter().zip(&g) {
            v.set(&(v.as_tensor() - (gi * (opts.alpha / norm))?)?)?;
        }
        let g2 = gradients(&ctx.lm_loss(&harmful, None, false)?.0, &params)?;
        for ((_, v), gi) in params.iter().zip(&g) {
            v.set(&(v.as_tensor() + (gi * (opts.alpha / norm))?)?)?;
        }
        let want: Vec<Tensor> =
            gf.iter().zip(&g).zip(&g2).map(|((a, b), c)| (a + ((b - c).unwrap() * opts.lambda).unwrap()).unwrap()).collect();
        Ok((f.to_scalar::<f32>()?, want))
    });
    assert!((value - f_value).abs() < 1e-6, "the loss's value is the alignment loss: {value} vs {f_value}");
    let (got, want) = (flat(&got), flat(&want));
    let plain = on_model(&m, |ctx| {
        let params = ctx.params().to_vec();
        let task = ctx.next_batch(stream::TASK)?.unwrap();
        Ok(flat(&gradients(&ctx.lm_loss(&task, None, false)?.0, &params)?))
    });
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(dist(&got, &want) < 1e-4, "booster gradient differs from the rule by {}", dist(&got, &want));
    assert!(dist(&got, &plain) > 1e-3, "the attenuation term must change the gradient ({})", dist(&got, &plain));
    let (before, after) = booster.last_drop.unwrap();
    assert!(after < before, "a harmful step lowers the harmful loss: {before} → {after}");
}

#[test]
fn lambda_zero_is_plain_sft_exactly() {
    let cfg =
        TrainConfig { epochs: 1, max_steps: 3, batch_size: 2, max_len: 256, learning_rate: 1e-2, warmup_ratio: 0.0, ..Default::default() };
    let (mut a, mut b) = (lora_model(), lora_model());
    let ra = train(&mut a, &streams(), &mut PlainSft, &cfg, None, "sft", true).unwrap();
    let mut booster = Booster::new(BoosterOptions { lambda: 0.0, ..Default::default() }).unwrap();
    let rb = train(&mut b, &streams(), &mut booster, &cfg, None, "booster", true).unwrap();
    assert_eq!(ra.losses, rb.losses);
    assert_eq!(values(&a), values(&b));
}

#[test]
fn defaults_and_bad_options() {
    use safetune_core::defense::Defense;
    assert_eq!(BoosterOptions::default(), BoosterOptions { lambda: 5.0, alpha: 0.1 });
    let err = Booster::plan(BoosterOptions { lambda: -1.0, ..Default::default() }).err().unwrap().to_string();
    assert!(err.starts_with("defense_options.booster.lambda:"), "{err}");
    let err = Booster::plan(BoosterOptions { alpha: f64::NAN, ..Default::default() }).err().unwrap().to_string();
    assert!(err.starts_with("defense_options.booster.alpha:"), "{err}");
}
