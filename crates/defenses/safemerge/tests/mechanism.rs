//! Mechanism tests: each fails when the defense's rule is removed.

use candle_core::{Device, Tensor};
use safetune_core::defense::Defense;
use safetune_core::repair::{Repair, WeightSets, Weights};
use safetune_defense_safemerge::*;

fn t(rows: &[[f32; 3]; 3]) -> Tensor {
    Tensor::new(rows, &Device::Cpu).unwrap()
}

/// Alignment moved every layer along the first output row; fine-tuning moved layer `a` inside
/// that row (similar), `b` in another row (dissimilar); `c` it left alone.
fn sets() -> (Weights, Weights, Weights) {
    let (mut base, mut aligned, mut ft) = (Weights::new(), Weights::new(), Weights::new());
    let b = t(&[[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]]);
    let v = t(&[[1., 2., 0.], [0., 0., 0.], [0., 0., 0.]]);
    for name in ["a.weight", "b.weight", "c.weight"] {
        base.insert(name.into(), b.clone());
        aligned.insert(name.into(), (&b + &v).unwrap());
    }
    ft.insert("a.weight".into(), (&aligned["a.weight"] + t(&[[0.5, 0.5, 0.], [0., 0., 0.], [0., 0., 0.]])).unwrap());
    ft.insert("b.weight".into(), (&aligned["b.weight"] + t(&[[0., 0., 0.], [0.3, -0.2, 0.9], [0., 0., 0.]])).unwrap());
    ft.insert("c.weight".into(), aligned["c.weight"].clone());
    (base, aligned, ft)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn only_dissimilar_layers_are_merged_toward_the_safety_model() {
    let (base, aligned, ft) = sets();
    let w = WeightSets { base: &base, aligned: &aligned, finetuned: &ft };
    let m = SafeMerge::new(SafeMergeOptions::default()).unwrap();
    let (out, report) = m.merge(&w).unwrap();
    let merged: Vec<&str> = report.iter().filter(|r| r.2).map(|r| r.0.as_str()).collect();
    assert_eq!(merged, vec!["b.weight"], "{report:?}");
    assert!(report.iter().all(|r| r.0 != "c.weight"), "an unchanged layer is not scored");
    assert_eq!(out.keys().collect::<Vec<_>>(), vec!["b.weight"]);
    // 0.8 of the fine-tuning update stays: W_aligned + 0.8·ΔW.
    let want = (&aligned["b.weight"] + ((&ft["b.weight"] - &aligned["b.weight"]).unwrap() * 0.8).unwrap()).unwrap();
    assert!(max_diff(&out["b.weight"], &want) < 1e-6);
    // Through the repair interface (a tiny model as context; SafeMERGE reads weights only).
    let model = safetune_model::tiny_model(1).unwrap();
    let cfg = safetune_core::config::TrainConfig::default();
    let via = safetune_train::with_context(&model, None, &Default::default(), &cfg, |ctx| m.repair(&w, ctx)).unwrap();
    assert!(max_diff(&via["b.weight"], &want) < 1e-6);
    // Safety weight 1: the safety model's layer; 0: the fine-tuned one.
    let all = SafeMerge::new(SafeMergeOptions { safety_weight: 1.0, ..Default::default() }).unwrap().merge(&w).unwrap().0;
    assert!(max_diff(&all["b.weight"], &aligned["b.weight"]) < 1e-6);
    let none = SafeMerge::new(SafeMergeOptions { safety_weight: 0.0, ..Default::default() }).unwrap().merge(&w).unwrap().0;
    assert!(max_diff(&none["b.weight"], &ft["b.weight"]) < 1e-6);
    // A threshold below every similarity merges nothing.
    assert!(SafeMerge::new(SafeMergeOptions { threshold: -1.0, ..Default::default() }).unwrap().merge(&w).unwrap().0.is_empty());
}

#[test]
fn defaults_and_bad_options() {
    assert_eq!(SafeMergeOptions::default(), SafeMergeOptions { threshold: 0.35, safety_weight: 0.2 });
    let err = SafeMerge::plan(SafeMergeOptions { safety_weight: 1.5, ..Default::default() }).err().unwrap().to_string();
    assert!(err.starts_with("defense_options.safemerge.safety_weight:"), "{err}");
}
