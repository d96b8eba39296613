use candle_core::{Device, Tensor};
use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::model::ForwardRequest;
use safetune_core::training::{PlainSft, StepContext, TrainStep};
use safetune_core::{CausalLm, Example, ExampleKind, PromptFormat, Result};
use safetune_train::{encode_example, train, StageData};

fn examples() -> Vec<Example> {
    (0..12)
        .map(|i| {
            let pos = i % 2 == 0;
            Example::new(
                format!("t:{i}"),
                ExampleKind::Task,
                format!("review {i}: {}", if pos { "great fun" } else { "dull mess" }),
                if pos { "positive" } else { "negative" },
            )
        })
        .collect()
}

fn data() -> StageData {
    let mut d = StageData::default();
    d.streams.insert("task".into(), examples());
    d
}

fn cfg() -> TrainConfig {
    TrainConfig { learning_rate: 1e-2, epochs: 6, batch_size: 4, max_len: 256, warmup_ratio: 0.0, seed: 9, ..Default::default() }
}

fn lora_model() -> safetune_model::Llama {
    let mut m = safetune_model::tiny_model(11).unwrap();
    let lora = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: vec!["all-linear".into()] };
    safetune_lora::attach_lora(&mut m, &lora, 1).unwrap();
    m
}

#[test]
fn lora_training_lowers_the_loss_and_is_deterministic() {
    let mut m = lora_model();
    let r1 = train(&mut m, &data(), &mut PlainSft, &cfg(), None, "test", true).unwrap();
    assert_eq!(r1.steps, 18);
    let first: f64 = r1.losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = r1.losses[r1.losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < 0.5 * first, "loss {first} → {last}");
    let mut m2 = lora_model();
    let r2 = train(&mut m2, &data(), &mut PlainSft, &cfg(), None, "test", true).unwrap();
    assert_eq!(r1.losses, r2.losses, "same seed, same run");
}

#[test]
fn full_training_updates_every_weight_kind() {
    let mut m = safetune_model::tiny_model(12).unwrap();
    let before: Vec<(String, Tensor)> = m.weights().into_iter().map(|(n, t)| (n, t.copy().unwrap())).collect();
    m.unfreeze_all().unwrap();
    let c = TrainConfig { epochs: 1, ..cfg() };
    train(&mut m, &data(), &mut PlainSft, &c, None, "test", true).unwrap();
    m.freeze_all();
    let after: std::collections::BTreeMap<String, Tensor> = m.weights().into_iter().collect();
    for (n, t) in before {
        let d = (&t - &after[&n]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d > 0.0, "{n} did not change");
    }
}

#[test]
fn a_prefill_is_context_without_loss() {
    let m = safetune_model::tiny_model(13).unwrap();
    let mut ex = Example::new("x", ExampleKind::Refusal, "a prompt", "I can't help with that.");
    ex.prefill = Some("Sure, here is ".into());
    let enc = encode_example(m.tokenizer(), PromptFormat::Chatml, &ex, 256).unwrap();
    let prompt_ids = m.tokenizer().encode(&format!("{}Sure, here is ", PromptFormat::Chatml.prompt(None, "a prompt"))).unwrap();
    let answer_ids = m.tokenizer().encode("I can't help with that.<|im_end|>").unwrap();
    // The prefill sits between prompt and answer; only the answer carries loss.
    assert_eq!(enc.ids, [prompt_ids.clone(), answer_ids.clone()].concat());
    assert_eq!(enc.is_response, [vec![false; prompt_ids.len()], vec![true; answer_ids.len()]].concat());
}

#[test]
fn loss_covers_only_response_tokens() {
    let m = safetune_model::tiny_model(13).unwrap();
    let ex = Example::new("x", ExampleKind::Task, "a prompt", "the answer");
    let enc = encode_example(m.tokenizer(), PromptFormat::Chatml, &ex, 256).unwrap();
    let n_resp = enc.is_response.iter().filter(|&&r| r).count();
    let answer_ids = m.tokenizer().encode("the answer<|im_end|>").unwrap();
    assert_eq!(n_resp, answer_ids.len());
    assert_eq!(&enc.ids[enc.ids.len() - n_resp..], answer_ids.as_slice());
    // The masked loss equals a hand-computed mean over the response positions.
    let mut ctx_data = StageData::default();
    ctx_data.streams.insert("task".into(), vec![ex]);
    struct Probe(Option<f32>);
    impl TrainStep for Probe {
        fn name(&self) -> &str {
            "probe"
        }
        fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
            let b = ctx.next_batch("task")?.unwrap();
            let l = ctx.lm_loss(&b, None, false)?.0;
            self.0 = Some(l.to_scalar::<f32>()?);
            Ok(l)
        }
    }
    let x = Tensor::new(enc.ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = m.forward(&ForwardRequest { ids: Some(&x), ..Default::default() }).unwrap().logits.squeeze(0).unwrap();
    let rows = logits.to_vec2::<f32>().unwrap();
    let mut manual = 0.0f64;
    for j in enc.ids.len() - n_resp - 1..enc.ids.len() - 1 {
        let row = &rows[j];
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
        manual += lse - row[enc.ids[j + 1] as usize] as f64;
    }
    manual /= n_resp as f64;
    let mut probe = Probe(None);
    let mut mm = m;
    mm.unfreeze_all().unwrap();
    let c = TrainConfig { epochs: 1, batch_size: 1, learning_rate: 1e-9, ..cfg() };
    train(&mut mm, &ctx_data, &mut probe, &c, None, "probe", true).unwrap();
    assert!((probe.0.unwrap() as f64 - manual).abs() < 1e-4, "{} vs {manual}", probe.0.unwrap());
}

#[test]
fn a_non_finite_loss_stops_the_run_with_a_clear_error() {
    struct Nan;
    impl TrainStep for Nan {
        fn name(&self) -> &str {
            "nan"
        }
        fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
            let b = ctx.next_batch("task")?.unwrap();
            Ok((ctx.lm_loss(&b, None, false)?.0 * f64::NAN)?)
        }
    }
    let mut m = lora_model();
    let err = train(&mut m, &data(), &mut Nan, &cfg(), None, "test", true).unwrap_err();
    assert!(err.to_string().contains("diverged"), "{err}");
}

#[test]
fn an_example_without_an_answer_token_within_max_len_is_left_out_and_named() {
    // A prompt of ~400 words leaves no answer token within 256: it would carry no loss.
    let long = Example::new("long:0", ExampleKind::Task, "word ".repeat(400), "positive");
    let mut with_long = data();
    with_long.streams.get_mut("task").unwrap().insert(5, long.clone());
    let mut m = lora_model();
    let r = train(&mut m, &with_long, &mut PlainSft, &cfg(), None, "test", true).unwrap();
    assert_eq!(r.left_out, ["long:0"]);
    // The same run as without it: left out before batching, not a batch of its own.
    let mut m2 = lora_model();
    let plain = train(&mut m2, &data(), &mut PlainSft, &cfg(), None, "test", true).unwrap();
    assert_eq!(r.losses, plain.losses);
    assert!(plain.left_out.is_empty());
    // Nothing left to train on: an error naming the examples.
    let mut only_long = StageData::default();
    only_long.streams.insert("task".into(), vec![long]);
    let err = train(&mut lora_model(), &only_long, &mut PlainSft, &cfg(), None, "test", true).unwrap_err().to_string();
    assert!(err.contains("no example has an answer token within max_len 256") && err.contains("long:0"), "{err}");
}

#[test]
fn epoch_tokens_counts_what_one_epoch_of_training_batches() {
    // Rows of very different lengths, and one left out, so that batches carry padding.
    let mut rows: Vec<Example> =
        (0..11).map(|i| Example::new(format!("v:{i}"), ExampleKind::Task, format!("review {}", "so ".repeat(2 * i)), "positive")).collect();
    rows.insert(4, Example::new("long:0", ExampleKind::Task, "word ".repeat(400), "positive"));
    let mut data = StageData::default();
    data.streams.insert("task".into(), rows.clone());
    let c = TrainConfig { epochs: 1, batch_size: 4, ..cfg() };
    // What the trainer's batches hold: ids (with padding) and the attended positions.
    struct Count(usize, usize);
    impl TrainStep for Count {
        fn name(&self) -> &str {
            "count"
        }
        fn loss(&mut self, ctx: &mut dyn StepContext) -> Result<Tensor> {
            let b = ctx.next_batch("task")?.unwrap();
            self.0 += b.ids.elem_count();
            self.1 += b.attention.sum_all()?.to_scalar::<f32>()? as usize;
            Ok(ctx.lm_loss(&b, None, false)?.0)
        }
    }
    let mut probe = Count(0, 0);
    let mut m = lora_model();
    let r = train(&mut m, &data, &mut probe, &c, None, "count", true).unwrap();
    let counted = safetune_train::epoch_tokens(m.tokenizer(), m.info().format, &rows, &c, "task").unwrap();
    assert_eq!(counted, safetune_train::EpochTokens { examples: 11, left_out: 1, batches: r.steps, tokens: r.tokens, padded: probe.0 });
    assert_eq!(counted.tokens, probe.1);
    assert!(counted.padded > counted.tokens, "these lengths pad: {counted:?}");
    let share = counted.padding_share();
    assert!((share - (1.0 - counted.tokens as f64 / counted.padded as f64)).abs() < 1e-12 && share > 0.0);
}

fn logits_bits(m: &safetune_model::Llama) -> Vec<u32> {
    let ids = Tensor::new(&[[5u32, 70, 80, 90, 100, 110]], &Device::Cpu).unwrap();
    let logits = m.forward(&ForwardRequest { ids: Some(&ids), ..Default::default() }).unwrap().logits;
    logits.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// `precision = "bf16"` trains LoRA with the frozen products in bf16: the first step's loss is
/// f32's up to bf16 rounding, the loss falls as f32's does, the trajectory is not f32's (the
/// products did run in bf16), and once the stage ends the model multiplies in f32 again.
#[test]
fn bf16_lora_training_follows_f32_and_leaves_the_model_in_f32() {
    use safetune_core::config::Precision;
    let mut m32 = lora_model();
    let r32 = train(&mut m32, &data(), &mut PlainSft, &cfg(), None, "test", true).unwrap();
    let mut m16 = lora_model();
    let c16 = TrainConfig { precision: Precision::Bf16, ..cfg() };
    let r16 = train(&mut m16, &data(), &mut PlainSft, &c16, None, "test", true).unwrap();
    assert_eq!(r16.steps, r32.steps);
    let rel = (r16.losses[0] - r32.losses[0]).abs() / r32.losses[0];
    assert!(rel < 0.01, "first loss {} (bf16) vs {} (f32)", r16.losses[0], r32.losses[0]);
    assert!(r16.losses != r32.losses, "the bf16 run's losses are f32's bit for bit");
    let first: f64 = r16.losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = r16.losses[r16.losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < 0.5 * first, "bf16 loss {first} → {last}");
    // After the stage: f32 products (switching to f32 changes nothing), bf16 ones differ.
    let after = logits_bits(&m16);
    m16.set_precision(Precision::F32).unwrap();
    assert!(logits_bits(&m16) == after, "the model still multiplied in bf16 after its stage");
    m16.set_precision(Precision::Bf16).unwrap();
    assert!(logits_bits(&m16) != after, "bf16 products give f32's logits");
}

/// Full fine-tuning has no frozen weight to multiply in bf16: the stage refuses, naming the
/// setting, instead of training in f32 under a bf16 label.
#[test]
fn bf16_full_fine_tuning_is_refused_by_name() {
    let mut m = safetune_model::tiny_model(12).unwrap();
    m.unfreeze_all().unwrap();
    let c = TrainConfig { epochs: 1, precision: safetune_core::config::Precision::Bf16, ..cfg() };
    let err = train(&mut m, &data(), &mut PlainSft, &c, None, "full", true).unwrap_err().to_string();
    assert!(err.contains("precision") && err.contains("full fine-tuning"), "{err}");
}
