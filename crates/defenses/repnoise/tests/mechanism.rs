//! Mechanism tests: each fails when the defense's rule is removed.

use candle_core::{DType, Device, Tensor};
use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::training::{stream, PlainSft, StepContext, TrainStep};
use safetune_core::{CausalLm, Example, ExampleKind, Result};
use safetune_defense_repnoise::*;
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

fn on_tiny<R>(f: impl FnOnce(&mut dyn StepContext) -> Result<R>) -> R {
    let model = safetune_model::tiny_model(3).unwrap();
    let cfg = TrainConfig { batch_size: 2, max_len: 256, ..Default::default() };
    with_context(&model, None, &streams(), &cfg, f).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn mmd_matches_the_kernel_sum_by_hand() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[0.0f32, 0.0]], &dev).unwrap();
    let y = Tensor::new(&[[1.0f32, 0.0]], &dev).unwrap();
    // Squared distance 1; bandwidth (2 / 2) / 2² = 0.25, kernels at 0.25, 0.5, 1, 2, 4.
    let k1: f64 = [0.25f64, 0.5, 1.0, 2.0, 4.0].iter().map(|b| (-1.0 / b).exp()).sum();
    let got = scalar(&mmd(&x, &y, 2.0, 5).unwrap());
    assert!((got - (10.0 - 2.0 * k1)).abs() < 1e-5, "{got} vs {}", 10.0 - 2.0 * k1);
    // The same sample on both sides: no discrepancy.
    let z = Tensor::new(&[[0.5f32, 1.0], [2.0, -1.0]], &dev).unwrap();
    assert!(scalar(&mmd(&z, &z, 2.0, 5).unwrap()).abs() < 1e-6);
}

#[test]
fn the_loss_is_retain_plus_beta_noise_minus_alpha_log_harmful() {
    let opts = RepNoiseOptions { alpha: 0.7, beta: 0.5, seed: 1 };
    let mut step = RepNoise::new(opts.clone()).unwrap();
    let got = on_tiny(|ctx| step.loss(ctx).map(|l| scalar(&l)));
    let (retain, noise, harm) = step.last_terms.unwrap();
    // The same batches drawn by hand: alignment data, then harmful.
    let (r, h) = on_tiny(|ctx| {
        let t = ctx.next_batch(stream::TASK)?.unwrap();
        let hb = ctx.next_batch(stream::HARMFUL)?.unwrap();
        Ok((scalar(&ctx.lm_loss(&t, None, false)?.0), scalar(&ctx.lm_loss(&hb, None, false)?.0)))
    });
    assert!((retain - r).abs() < 1e-5 && (harm - h).abs() < 1e-5, "{retain} {r} {harm} {h}");
    assert!(noise > 1e-3, "harmful hidden states are far from noise at the start: {noise}");
    let want = r + 0.5 * noise - 0.7 * (h + 1.0).ln();
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    // Same seed, same step: the same noise.
    let mut again = RepNoise::new(opts).unwrap();
    on_tiny(|ctx| again.loss(ctx).map(|_| ()));
    assert_eq!(again.last_terms.unwrap().1, noise);
}

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

fn values(m: &safetune_model::Llama) -> Vec<f32> {
    m.trainable().iter().flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

#[test]
fn zero_weights_are_plain_sft_and_the_terms_change_training() {
    let cfg =
        TrainConfig { epochs: 1, max_steps: 3, batch_size: 2, max_len: 256, learning_rate: 1e-2, warmup_ratio: 0.0, ..Default::default() };
    let run = |step: &mut dyn TrainStep| {
        let mut m = lora_model();
        let r = train(&mut m, &streams(), step, &cfg, None, "t", true).unwrap();
        (r.losses, values(&m))
    };
    let sft = run(&mut PlainSft);
    let off = run(&mut RepNoise::new(RepNoiseOptions { alpha: 0.0, beta: 0.0, seed: 0 }).unwrap());
    assert_eq!(sft, off);
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let ascent = run(&mut RepNoise::new(RepNoiseOptions { alpha: 1.0, beta: 0.0, seed: 0 }).unwrap());
    assert!(dist(&ascent.1, &sft.1) > 1e-4, "the ascent term must change the update");
    let noise = run(&mut RepNoise::new(RepNoiseOptions { alpha: 0.0, beta: 1.0, seed: 0 }).unwrap());
    assert!(dist(&noise.1, &sft.1) > 1e-4, "the noise term must change the update");
}

#[test]
fn the_step_gradient_is_the_joint_gradient_though_its_parts_run_backward_apart() {
    // The alignment batch's backward pass runs before the harmful batch's forward pass
    // (backward_now: one pass's activations alive at a time); the gradient must be that of the loss as one graph.
    use safetune_core::training::gradients_of;
    let grads = |f: &mut dyn FnMut(&mut dyn StepContext) -> Result<Tensor>| {
        let model = lora_model();
        let cfg = TrainConfig { batch_size: 2, max_len: 256, ..Default::default() };
        with_context(&model, None, &streams(), &cfg, |ctx| {
            let loss = f(ctx)?;
            let value = scalar(&loss);
            let g = gradients_of(&loss, ctx.params().iter().map(|(_, v)| v))?;
            Ok((value, g.iter().flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect::<Vec<f32>>()))
        })
        .unwrap()
    };
    let mut step = RepNoise::new(RepNoiseOptions { alpha: 0.7, beta: 0.0, seed: 0 }).unwrap();
    let split = grads(&mut |ctx| step.loss(ctx));
    let joint = grads(&mut |ctx| {
        let t = ctx.next_batch(stream::TASK)?.unwrap();
        let h = ctx.next_batch(stream::HARMFUL)?.unwrap();
        let retain = ctx.lm_loss(&t, None, false)?.0;
        let harm = ctx.lm_loss(&h, None, false)?.0;
        Ok((retain - ((harm + 1.0)?.log()? * 0.7)?)?)
    });
    assert_eq!(split.0, joint.0, "the loss's value");
    assert!(split.1.iter().any(|g| *g != 0.0));
    let worst = split.1.iter().zip(&joint.1).map(|(a, b)| (a - b).abs() / b.abs().max(1e-6)).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "largest relative gradient difference {worst}");
}

#[test]
fn defaults_and_bad_options() {
    use safetune_core::defense::Defense;
    assert_eq!(RepNoiseOptions::default(), RepNoiseOptions { alpha: 1.0, beta: 0.001, seed: 0 });
    let err = RepNoise::plan(RepNoiseOptions { beta: -1.0, ..Default::default() }).err().unwrap().to_string();
    assert!(err.starts_with("defense_options.repnoise.beta:"), "{err}");
}
