use candle_core::Tensor;
use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::training::PlainSft;
use safetune_core::{CausalLm, Example, ExampleKind};
use safetune_defense_vaccine::{Vaccine, VaccineConfig};
use safetune_train::{train, StageData};

fn data() -> StageData {
    let mut d = StageData::default();
    let ex = (0..6)
        .map(|i| Example::new(format!("a:{i}"), ExampleKind::Refusal, format!("harmful request {i}"), "I cannot help with that."))
        .collect();
    d.streams.insert("task".into(), ex);
    d
}

fn model() -> safetune_model::Llama {
    let mut m = safetune_model::tiny_model(41).unwrap();
    let lora = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["all-linear".into()] };
    safetune_lora::attach_lora(&mut m, &lora, 3).unwrap();
    // Non-zero B so every adapter matters from the first step.
    for (n, v) in m.trainable() {
        if n.ends_with("lora_B.weight") {
            v.set(&(Tensor::ones(v.shape(), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap() * 0.05).unwrap()).unwrap();
        }
    }
    m
}

fn weights(m: &safetune_model::Llama) -> Vec<Vec<f32>> {
    m.trainable().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

fn cfg() -> TrainConfig {
    TrainConfig { epochs: 1, max_steps: 3, batch_size: 3, max_len: 256, learning_rate: 1e-2, warmup_ratio: 0.0, ..Default::default() }
}

#[test]
fn rho_zero_is_plain_sft_exactly() {
    let (mut a, mut b) = (model(), model());
    let ra = train(&mut a, &data(), &mut PlainSft, &cfg(), None, "sft", true).unwrap();
    let mut v = Vaccine::new(VaccineConfig { rho: 0.0, ..Default::default() }).unwrap();
    let rb = train(&mut b, &data(), &mut v, &cfg(), None, "vaccine", true).unwrap();
    assert_eq!(ra.losses, rb.losses);
    assert_eq!(weights(&a), weights(&b));
}

#[test]
fn perturbation_has_norm_rho_and_changes_the_applied_gradient() {
    let (mut a, mut b) = (model(), model());
    train(&mut a, &data(), &mut PlainSft, &cfg(), None, "sft", true).unwrap();
    let mut v = Vaccine::new(VaccineConfig { rho: 2.0, ..Default::default() }).unwrap();
    train(&mut b, &data(), &mut v, &cfg(), None, "vaccine", true).unwrap();
    assert!((v.last_norm - 2.0).abs() < 1e-4, "{}", v.last_norm);
    let diff: f32 = weights(&a).iter().flatten().zip(weights(&b).iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(diff > 1e-5, "the perturbed pass must change the update ({diff})");
}

#[test]
fn perturbations_are_the_normalised_hidden_gradients() {
    let dev = candle_core::Device::Cpu;
    let g = vec![Tensor::new(&[3.0f32, 0.0], &dev).unwrap(), Tensor::new(&[0.0f32, 4.0], &dev).unwrap()];
    let (e, norm) = safetune_defense_vaccine::perturbations(&g, 2.0).unwrap();
    assert!((norm - 2.0).abs() < 1e-9);
    assert_eq!(e[0].to_vec1::<f32>().unwrap(), vec![1.2, 0.0]);
    assert_eq!(e[1].to_vec1::<f32>().unwrap(), vec![0.0, 1.6]);
    assert_eq!(safetune_core::registry::defense("vaccine").unwrap().stages().unwrap(), [safetune_core::registry::Stage::Alignment]);
    assert_eq!(VaccineConfig::default().rho, 2.0);
    // The reference hooks the attention blocks (git-disl/Vaccine `get_leaf_modules_with_grad`).
    assert_eq!(VaccineConfig::default().site, safetune_core::model::PerturbationSite::AttentionOutput);
}

#[test]
fn the_site_of_the_perturbation_matters() {
    use safetune_core::model::PerturbationSite;
    let run = |site| {
        let mut m = model();
        let mut v = Vaccine::new(VaccineConfig { rho: 2.0, site }).unwrap();
        train(&mut m, &data(), &mut v, &cfg(), None, "vaccine", true).unwrap();
        assert!((v.last_norm - 2.0).abs() < 1e-4, "{site:?}: {}", v.last_norm);
        weights(&m)
    };
    let (a, b) = (run(PerturbationSite::AttentionOutput), run(PerturbationSite::LayerOutput));
    let diff: f32 = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(diff > 1e-6, "perturbing attention outputs trains differently from perturbing layer outputs ({diff})");
}
