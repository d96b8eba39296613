//! Mechanism tests: each fails when the defense's rule is removed.

use candle_core::{DType, Device, Tensor};
use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::model::ForwardRequest;
use safetune_core::training::{stream, PlainSft, TrainStep};
use safetune_core::{CausalLm, Example, ExampleKind};
use safetune_defense_ldifs::*;
use safetune_train::{train, with_context, StageData};

fn streams() -> StageData {
    let mut data = StageData::default();
    let rows = (0..6).map(|i| Example::new(format!("t:{i}"), ExampleKind::Task, format!("review {i}: great film?"), "positive")).collect();
    data.streams.insert(stream::TASK.to_string(), rows);
    data
}

/// The tiny model with LoRA; `b` sets every B matrix (0: the model equals the reference).
fn lora_model(b: f32) -> safetune_model::Llama {
    let mut m = safetune_model::tiny_model(3).unwrap();
    let lora = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["all-linear".into()] };
    safetune_lora::attach_lora(&mut m, &lora, 5).unwrap();
    for (n, v) in m.trainable() {
        if n.ends_with("lora_B.weight") {
            v.set(&(Tensor::ones(v.shape(), DType::F32, &Device::Cpu).unwrap() * b as f64).unwrap()).unwrap();
        }
    }
    m
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn cfg() -> TrainConfig {
    TrainConfig { epochs: 1, max_steps: 4, batch_size: 2, max_len: 256, learning_rate: 2e-2, warmup_ratio: 0.0, ..Default::default() }
}

/// Σ over layers of ‖h_l(model) − h_l(reference)‖² on the stream's first batch.
fn feature_distance(m: &dyn CausalLm, reference: &dyn CausalLm) -> f64 {
    with_context(m, Some(reference), &streams(), &cfg(), |ctx| {
        let b = ctx.next_batch(stream::TASK)?.unwrap();
        let req = ForwardRequest { ids: Some(&b.ids), mask: Some(&b.attention), output_hidden: true, ..Default::default() };
        let (h, r) = (m.forward(&req)?.hidden, reference.forward(&req)?.hidden);
        let real = b.attention.unsqueeze(2)?;
        let mut s = 0.0;
        for (x, y) in h.iter().zip(&r) {
            s += scalar(&(x - y)?.broadcast_mul(&real)?.sqr()?.sum_all()?);
        }
        Ok(s)
    })
    .unwrap()
}

#[test]
fn the_loss_adds_half_rho_times_each_layers_feature_distance() {
    let reference = safetune_model::tiny_model(3).unwrap();
    let m = lora_model(0.05);
    let d = feature_distance(&m, &reference);
    assert!(d > 1e-3, "the adapted model's features differ from the reference's: {d}");
    let mut step = Ldifs::new(LdifsOptions { rho: 0.2, drop_above: 0.0 }).unwrap();
    let got = with_context(&m, Some(&reference), &streams(), &cfg(), |ctx| step.loss(ctx).map(|l| scalar(&l))).unwrap();
    let task = with_context(&m, Some(&reference), &streams(), &cfg(), |ctx| {
        let b = ctx.next_batch(stream::TASK)?.unwrap();
        Ok(scalar(&ctx.lm_loss(&b, None, false)?.0))
    })
    .unwrap();
    assert_eq!(step.last_kept, m.info().num_layers);
    assert!((got - (task + 0.1 * d)).abs() < 1e-4 * (1.0 + got.abs()), "{got} vs {task} + 0.1 · {d}");
    // A threshold below every term drops them all: the task loss alone.
    let mut dropping = Ldifs::new(LdifsOptions { rho: 0.2, drop_above: 1e-12 }).unwrap();
    let got = with_context(&m, Some(&reference), &streams(), &cfg(), |ctx| dropping.loss(ctx).map(|l| scalar(&l))).unwrap();
    assert_eq!(dropping.last_kept, 0);
    assert!((got - task).abs() < 1e-6);
}

#[test]
fn training_with_ldifs_keeps_features_nearer_the_reference_and_rho_zero_is_sft() {
    let reference = safetune_model::tiny_model(3).unwrap();
    let run = |step: &mut dyn TrainStep| {
        let mut m = lora_model(0.0);
        let r = train(&mut m, &streams(), step, &cfg(), Some(&reference), "t", true).unwrap();
        (r.losses, feature_distance(&m, &reference))
    };
    let sft = run(&mut PlainSft);
    let off = run(&mut Ldifs::new(LdifsOptions { rho: 0.0, drop_above: 0.0 }).unwrap());
    assert_eq!(sft, off);
    let ldifs = run(&mut Ldifs::new(LdifsOptions { rho: 1.0, drop_above: 0.0 }).unwrap());
    assert!(sft.1 > 0.0 && ldifs.1 < 0.5 * sft.1, "feature distance after training: ldifs {} vs sft {}", ldifs.1, sft.1);
}

#[test]
fn defaults_and_bad_options() {
    use safetune_core::defense::Defense;
    assert_eq!(LdifsOptions::default(), LdifsOptions { rho: 1e-4, drop_above: 0.1 });
    let err = Ldifs::plan(LdifsOptions { rho: -1.0, ..Default::default() }).err().unwrap().to_string();
    assert!(err.starts_with("defense_options.ldifs.rho:"), "{err}");
    let err = Ldifs::plan(LdifsOptions { drop_above: -0.5, ..Default::default() }).err().unwrap().to_string();
    assert!(err.starts_with("defense_options.ldifs.drop_above:"), "{err}");
    assert!(Ldifs::new(LdifsOptions::default()).unwrap().wants_reference());
}
