//! Mechanism tests: each fails when the defense's rule is removed.

use candle_core::{DType, Device, Tensor};
use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::rng::SeededRng;
use safetune_core::training::stream;
use safetune_core::{CausalLm, Example, ExampleKind};
use safetune_defense_t_vaccine::*;
use safetune_defense_vaccine::{Vaccine, VaccineConfig};
use safetune_train::{train, StageData};

fn streams() -> StageData {
    let mut data = StageData::default();
    for (name, kind, answer) in [
        (stream::TASK, ExampleKind::Refusal, "I cannot help with that."),
        (stream::HARMFUL, ExampleKind::Harmful, "Sure, here is how to do it."),
    ] {
        let rows = (0..6).map(|i| Example::new(format!("{name}:{i}"), kind, format!("{name} question {i}?"), answer)).collect();
        data.streams.insert(name.to_string(), rows);
    }
    data
}

fn lora_model() -> safetune_model::Llama {
    let mut m = safetune_model::tiny_model(41).unwrap();
    let lora = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["all-linear".into()] };
    safetune_lora::attach_lora(&mut m, &lora, 3).unwrap();
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

fn cfg() -> TrainConfig {
    TrainConfig { epochs: 1, max_steps: 3, batch_size: 3, max_len: 256, learning_rate: 1e-2, warmup_ratio: 0.0, ..Default::default() }
}

#[test]
fn every_layer_active_is_vaccine_exactly_and_one_layer_is_not() {
    let layers = lora_model().info().num_layers;
    assert!(layers >= 2);
    let (mut a, mut b, mut c) = (lora_model(), lora_model(), lora_model());
    let ra =
        train(&mut a, &streams(), &mut Vaccine::new(VaccineConfig { rho: 2.0, ..Default::default() }).unwrap(), &cfg(), None, "v", true)
            .unwrap();
    let all = TVaccineOptions { rho: 2.0, activated_layers: layers, ..Default::default() };
    let mut t = TVaccine::new(all).unwrap();
    let rb = train(&mut b, &streams(), &mut t, &cfg(), None, "t", true).unwrap();
    assert_eq!(ra.losses, rb.losses);
    assert_eq!(values(&a), values(&b));
    let mut one = TVaccine::new(TVaccineOptions { rho: 2.0, activated_layers: 1, ..Default::default() }).unwrap();
    train(&mut c, &streams(), &mut one, &cfg(), None, "t1", true).unwrap();
    assert_eq!(one.active.len(), 1);
    assert!((one.last_norm - 2.0).abs() < 1e-4, "the radius is spent on the active layer: {}", one.last_norm);
    assert_eq!(one.probability.len(), layers);
    assert!((one.probability.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    let diff = values(&a).iter().zip(values(&c)).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-5, "perturbing one layer must train differently from perturbing all ({diff})");
}

#[test]
fn layers_are_drawn_without_replacement_in_proportion_to_their_scores() {
    let p = probabilities(&[3.0, 1.0, 0.0, 4.0]);
    assert_eq!(p, vec![0.375, 0.125, 0.0, 0.5]);
    assert_eq!(probabilities(&[0.0, 0.0]), vec![0.5, 0.5]);
    let mut rng = SeededRng::new(5);
    let mut first = [0usize; 4];
    for _ in 0..4000 {
        let d = draw_layers(&p, 2, &mut rng);
        assert_eq!(d.len(), 2);
        assert!(d[0] < d[1] && !d.contains(&2), "{d:?}");
        first[draw_layers(&p, 1, &mut rng)[0]] += 1;
    }
    // One draw: 37.5% / 12.5% / 0 / 50%.
    assert!((first[0] as f64 / 4000.0 - 0.375).abs() < 0.03 && (first[3] as f64 / 4000.0 - 0.5).abs() < 0.03, "{first:?}");
    assert_eq!(first[2], 0);
    // All of them when asked for more than there are; zero-probability ones last.
    assert_eq!(draw_layers(&p, 9, &mut rng), vec![0, 1, 2, 3]);
}

#[test]
fn defaults_and_bad_options() {
    use safetune_core::defense::Defense;
    let d = TVaccineOptions::default();
    assert_eq!((d.rho, d.activated_layers, d.interval_steps, d.probability_steps), (3.0, 8, 20, 200));
    let err = TVaccine::plan(TVaccineOptions { activated_layers: 0, ..Default::default() }).err().unwrap().to_string();
    assert!(err.starts_with("defense_options.t-vaccine.activated_layers:"), "{err}");
}
