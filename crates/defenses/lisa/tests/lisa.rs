use candle_core::{Device, Tensor, Var};
use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::{CausalLm, Example, ExampleKind};
use safetune_defense_lisa::{Lisa, LisaConfig, State};
use safetune_train::{train, StageData};

#[test]
fn proximal_gradient_is_rho_times_distance_to_anchor() {
    let dev = Device::Cpu;
    let w = Var::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
    let v = Var::new(&[[0.3f32, 0.1], [0.0, -1.0]], &dev).unwrap();
    let params = vec![("w".to_string(), w.clone()), ("v".to_string(), v.clone())];
    let mut lisa = Lisa::new(LisaConfig { rho: 0.7, ..Default::default() }).unwrap();
    lisa.anchor = vec![Tensor::new(&[0.0f32, 1.0, 0.5], &dev).unwrap(), Tensor::new(&[[0.0f32, 0.0], [1.0, 1.0]], &dev).unwrap()];
    let p = lisa.proximal(&params).unwrap().unwrap();
    // (ρ/2)·(1 + 9 + 0 + 0.09 + 0.01 + 1 + 4) = 0.35 · 15.1
    assert!((p.to_scalar::<f32>().unwrap() - 0.35 * 15.1).abs() < 1e-5);
    let g = p.backward().unwrap();
    let gw = g.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(gw, vec![0.7 * 1.0, 0.7 * -3.0, 0.0]);
    let gv = g.get(v.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    let expect = [[0.7f32 * 0.3, 0.7 * 0.1], [-0.7, 0.7 * -2.0]];
    for (a, b) in gv.iter().flatten().zip(expect.iter().flatten()) {
        assert!((a - b).abs() < 1e-6);
    }
}

fn examples(kind: ExampleKind, prefix: &str, answer: &str) -> Vec<Example> {
    (0..8).map(|i| Example::new(format!("{prefix}:{i}"), kind, format!("{prefix} request {i}"), answer)).collect()
}

#[test]
fn states_switch_at_the_configured_steps_and_draw_their_streams() {
    let mut m = safetune_model::tiny_model(31).unwrap();
    let lora = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["q_proj".into()] };
    safetune_lora::attach_lora(&mut m, &lora, 1).unwrap();
    let mut data = StageData::default();
    data.streams.insert("task".into(), examples(ExampleKind::Task, "task", "positive"));
    data.streams.insert("safety".into(), examples(ExampleKind::Refusal, "harm", "I cannot help with that."));
    let cfg = TrainConfig { epochs: 1, max_steps: 11, batch_size: 2, max_len: 256, learning_rate: 1e-3, ..Default::default() };
    let mut lisa = Lisa::new(LisaConfig { alignment_step: 2, finetune_step: 3, rho: 1.0, warmup_ratio: 0.0 }).unwrap();
    train(&mut m, &data, &mut lisa, &cfg, None, "lisa", true).unwrap();
    assert_eq!(
        lisa.switches,
        vec![(0, State::Alignment), (2, State::Finetune), (5, State::Alignment), (7, State::Finetune), (10, State::Alignment)]
    );
    // Without a safety stream Lisa says what it needs.
    let mut only_task = StageData::default();
    only_task.streams.insert("task".into(), examples(ExampleKind::Task, "task", "positive"));
    let mut lisa = Lisa::new(LisaConfig { alignment_step: 2, finetune_step: 3, rho: 1.0, warmup_ratio: 0.0 }).unwrap();
    let err = train(&mut m, &only_task, &mut lisa, &cfg, None, "lisa", true).unwrap_err().to_string();
    assert!(err.contains("`safety`"), "{err}");
    assert!(!m.trainable().is_empty());
}

#[test]
fn registered_with_paper_defaults() {
    let e = safetune_core::registry::defense("lisa").unwrap();
    assert_eq!(e.stages().unwrap(), [safetune_core::registry::Stage::Finetuning]);
    let d = LisaConfig::default();
    assert_eq!((d.alignment_step, d.finetune_step, d.rho, d.warmup_ratio), (100, 900, 1.0, 0.1));
    let err = |v| (e.build)(&v).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(err(serde_json::json!({"rho": -1.0})), "defense_options.lisa.rho: must be a number ≥ 0");
    assert!(err(serde_json::json!({"bogus": 1})).starts_with("defense_options.lisa.bogus: unknown field"));
    assert!(err(serde_json::json!({"rho": "x"})).starts_with("defense_options.lisa.rho: invalid type"));
    // Defaults written out resolve to the same options as none at all (one cache key).
    assert_eq!((e.resolve)(&serde_json::json!({"rho": 1.0})).unwrap(), (e.resolve)(&serde_json::Value::Null).unwrap());
}
