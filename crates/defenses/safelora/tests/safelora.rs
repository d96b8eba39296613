use candle_core::{Device, Tensor};
use safetune_core::repair::{Repair, WeightSets, Weights};
use safetune_defense_safelora::{projection, SafeLora, SafeLoraConfig, SelectMode};

fn t(rows: &[[f32; 3]; 3]) -> Tensor {
    Tensor::new(rows, &Device::Cpu).unwrap()
}

fn sets() -> (Weights, Weights, Weights) {
    let mut base = Weights::new();
    let mut aligned = Weights::new();
    let mut ft = Weights::new();
    let b = t(&[[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]]);
    // Alignment moved both layers along the first output row only.
    let v = t(&[[1., 2., 0.], [0., 0., 0.], [0., 0., 0.]]);
    for name in ["a.weight", "b.weight", "c.weight"] {
        base.insert(name.into(), b.clone());
        aligned.insert(name.into(), (&b + &v).unwrap());
    }
    // Layer a: update inside the alignment row space (similar); layer b: update in another row (dissimilar);
    // layer c: not fine-tuned.
    ft.insert("a.weight".into(), (&aligned["a.weight"] + t(&[[0.5, 0.5, 0.], [0., 0., 0.], [0., 0., 0.]])).unwrap());
    ft.insert("b.weight".into(), (&aligned["b.weight"] + t(&[[0., 0., 0.], [0.3, -0.2, 0.9], [0., 0., 0.]])).unwrap());
    ft.insert("c.weight".into(), aligned["c.weight"].clone());
    (base, aligned, ft)
}

/// SafeLoRA reads weights only; the context (a tiny model, no data) is what the runtime would pass.
fn repair(s: &SafeLora, w: &WeightSets) -> Weights {
    let model = safetune_model::tiny_model(1).unwrap();
    let cfg = safetune_core::config::TrainConfig::default();
    safetune_train::with_context(&model, None, &Default::default(), &cfg, |ctx| s.repair(w, ctx)).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn threshold_mode_projects_dissimilar_layers_and_leaves_the_others_untouched() {
    let (base, aligned, ft) = sets();
    let w = WeightSets { base: &base, aligned: &aligned, finetuned: &ft };
    let s = SafeLora { cfg: SafeLoraConfig { mode: SelectMode::Threshold, tau: 0.5, k: 10 } };
    let scores = s.scores(&w).unwrap();
    let cos: std::collections::BTreeMap<String, f64> = scores.iter().map(|(n, c, _, _)| (n.clone(), *c)).collect();
    assert!(cos["a.weight"] > 0.5, "{cos:?}");
    assert!(cos["b.weight"] < 0.5, "{cos:?}");
    assert!(!cos.contains_key("c.weight"), "an unchanged layer is not scored");
    let out = repair(&s, &w);
    assert_eq!(out.keys().collect::<Vec<_>>(), vec!["b.weight"]);
    // The projected layer is W_aligned + C·ΔW with C = V·Vᵀ/‖V‖_F, computed here by hand.
    let v = (&aligned["b.weight"] - &base["b.weight"]).unwrap();
    let norm = (5.0f64).sqrt();
    let c = (v.matmul(&v.t().unwrap()).unwrap() / norm).unwrap();
    assert!(max_diff(&c, &projection(&base["b.weight"], &aligned["b.weight"]).unwrap().unwrap()) < 1e-6);
    assert!(projection(&base["b.weight"], &base["b.weight"]).unwrap().is_none());
    let delta = (&ft["b.weight"] - &aligned["b.weight"]).unwrap();
    let expect = (&aligned["b.weight"] + c.matmul(&delta).unwrap()).unwrap();
    assert!(max_diff(&out["b.weight"], &expect) < 1e-6);
}

#[test]
fn number_mode_takes_the_k_least_similar() {
    let (base, aligned, ft) = sets();
    let w = WeightSets { base: &base, aligned: &aligned, finetuned: &ft };
    let s = SafeLora { cfg: SafeLoraConfig { mode: SelectMode::Number, tau: 0.5, k: 1 } };
    assert_eq!(repair(&s, &w).keys().collect::<Vec<_>>(), vec!["b.weight"]);
    let s = SafeLora { cfg: SafeLoraConfig { mode: SelectMode::Number, tau: 0.5, k: 10 } };
    assert_eq!(repair(&s, &w).len(), 2);
    let d = SafeLoraConfig::default();
    // Upstream's defaults (IBM/SafeLoRA `SafeLoRAConfig`): number mode, 10 layers, threshold 0.5.
    assert_eq!((d.mode, d.tau, d.k), (SelectMode::Number, 0.5, 10));
}
