//! Mechanism tests: each fails when the defense's rule is removed.

use candle_core::{DType, Tensor};
use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::training::{response_log_probs, response_offsets, stream, PlainSft, TrainStep};
use safetune_core::{CausalLm, Example, ExampleKind};
use safetune_defense_constrained_sft::*;
use safetune_train::{train, with_context, StageData};

fn streams() -> StageData {
    let mut data = StageData::default();
    let rows = (0..6)
        .map(|i| Example::new(format!("t:{i}"), ExampleKind::Harmful, format!("request {i}?"), "Sure, here is the full answer."))
        .collect();
    data.streams.insert(stream::TASK.to_string(), rows);
    data
}

fn lora_model() -> safetune_model::Llama {
    let mut m = safetune_model::tiny_model(3).unwrap();
    let lora = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: vec!["all-linear".into()] };
    safetune_lora::attach_lora(&mut m, &lora, 5).unwrap();
    m
}

fn cfg(steps: usize) -> TrainConfig {
    TrainConfig { epochs: 10, max_steps: steps, batch_size: 3, max_len: 256, learning_rate: 5e-2, warmup_ratio: 0.0, ..Default::default() }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn weights_follow_the_reference_formula_and_the_beta_schedule() {
    let c = ConstrainedSft::new(ConstrainedSftOptions::default()).unwrap();
    assert_eq!((c.beta_at(0), c.beta_at(1), c.beta_at(4), c.beta_at(5), c.beta_at(50)), (0.5, 2.0, 2.0, 0.1, 0.1));
    let w = token_weights(&[-1.0, -1.0, -0.2, -5.0], &[-1.0, -2.0, -5.0, -0.2], &[0.5, 2.0, 2.0, 0.1]);
    let want = |b: f64, d: f64| (2.0 * (1.0 - 1.0 / (1.0 + (-b * d).exp()))).max(1e-3) as f32;
    assert_eq!(w[0], 1.0, "equal log-probabilities: weight 1 (plain SFT)");
    assert!((w[1] - want(2.0, 1.0)).abs() < 1e-6 && (w[3] - want(0.1, -4.8)).abs() < 1e-6, "{w:?}");
    assert_eq!(w[2], 1e-3, "a token far above the reference is clamped to 1e-3");
    assert!(w[3] > 1.0, "a token below the reference is pushed harder than SFT");
}

#[test]
fn equal_to_the_reference_it_is_plain_sft() {
    let reference = safetune_model::tiny_model(3).unwrap();
    let m = lora_model(); // B = 0: the model computes exactly what the reference does
    let mut c = ConstrainedSft::new(ConstrainedSftOptions::default()).unwrap();
    let got = with_context(&m, Some(&reference), &streams(), &cfg(1), |ctx| c.loss(ctx).map(|l| scalar(&l))).unwrap();
    let sft = with_context(&m, Some(&reference), &streams(), &cfg(1), |ctx| PlainSft.loss(ctx).map(|l| scalar(&l))).unwrap();
    assert_eq!(got, sft);
    assert_eq!(c.last_mean_weight, 1.0);
}

/// Mean over examples of the first answer token's log-probability, model minus reference.
fn first_token_shift(m: &dyn CausalLm, reference: &dyn CausalLm) -> f64 {
    with_context(m, Some(reference), &streams(), &cfg(1), |ctx| {
        let b = ctx.next_batch(stream::TASK)?.unwrap();
        let (lp, _) = response_log_probs(m, &b, None, false, false)?;
        let (rp, _) = response_log_probs(reference, &b, None, false, false)?;
        let (lp, rp): (Vec<f32>, Vec<f32>) = (lp.to_vec1()?, rp.to_vec1()?);
        let offsets = response_offsets(&b)?;
        let firsts: Vec<f64> = offsets.iter().enumerate().filter(|(_, &o)| o == 0).map(|(i, _)| (lp[i] - rp[i]) as f64).collect();
        Ok(firsts.iter().sum::<f64>() / firsts.len() as f64)
    })
    .unwrap()
}

#[test]
fn the_constraint_holds_the_first_answer_tokens_near_the_aligned_model() {
    let reference = safetune_model::tiny_model(3).unwrap();
    let run = |step: &mut dyn TrainStep| {
        let mut m = lora_model();
        train(&mut m, &streams(), step, &cfg(12), Some(&reference), "t", true).unwrap();
        first_token_shift(&m, &reference)
    };
    let sft = run(&mut PlainSft);
    let opts = ConstrainedSftOptions { beta: 1.0, ..Default::default() };
    let constrained = run(&mut ConstrainedSft::new(opts).unwrap());
    assert!(sft > 1.0, "SFT raises the first answer token's log-probability: {sft}");
    eprintln!("first answer token, log-prob above the aligned model's: SFT {sft:.3}, constrained {constrained:.3}");
    assert!(constrained < 0.6 * sft, "constrained {constrained} vs SFT {sft}");
}

#[test]
fn bad_options_name_their_key() {
    use safetune_core::defense::Defense;
    let err = ConstrainedSft::plan(ConstrainedSftOptions { beta: 0.0, ..Default::default() }).err().unwrap().to_string();
    assert!(err.starts_with("defense_options.constrained-sft.beta:"), "{err}");
    assert!(ConstrainedSft::new(ConstrainedSftOptions::default()).unwrap().wants_reference());
}
