use candle_core::{Device, Tensor};
use safetune_core::config::LoraConfig;
use safetune_core::model::ForwardRequest;
use safetune_core::CausalLm;
use safetune_lora::{attach_lora, load_peft, merge_adapters, save_peft};

fn logits(m: &dyn CausalLm, x: &Tensor) -> Tensor {
    m.forward(&ForwardRequest { ids: Some(x), ..Default::default() }).unwrap().logits
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// Gives every B a non-zero value so the adapters change the output.
fn randomise_b(m: &dyn CausalLm) {
    for (i, (name, var)) in m.trainable().into_iter().enumerate() {
        if name.ends_with("lora_B.weight") {
            let t = (Tensor::randn(0f32, 0.2, var.shape(), &Device::Cpu).unwrap() * (1.0 + i as f64 * 0.01)).unwrap();
            var.set(&t).unwrap();
        }
    }
}

fn input(m: &dyn CausalLm) -> Tensor {
    let ids = m.tokenizer().encode("lora check 42").unwrap();
    Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

#[test]
fn lora_forward_equals_merged_weight_forward() {
    let mut m = safetune_model::tiny_model(4).unwrap();
    let x = input(&m);
    let before = logits(&m, &x);
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: vec!["all-linear".into()] };
    let modules = attach_lora(&mut m, &cfg, 1).unwrap();
    assert_eq!(modules.len(), 2 * 7);
    // B starts at zero: the adapted model equals the base model.
    assert_eq!(max_diff(&before, &logits(&m, &x)), 0.0);
    randomise_b(&m);
    let adapted = logits(&m, &x);
    assert!(max_diff(&before, &adapted) > 1e-3);
    merge_adapters(&mut m).unwrap();
    assert!(m.trainable().is_empty());
    let merged = logits(&m, &x);
    assert!(max_diff(&adapted, &merged) < 1e-4, "{}", max_diff(&adapted, &merged));
}

#[test]
fn targets_select_modules() {
    let mut m = safetune_model::tiny_model(4).unwrap();
    let cfg = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["q_proj".into(), "v_proj".into()] };
    let modules = attach_lora(&mut m, &cfg, 1).unwrap();
    assert_eq!(modules.len(), 4);
    assert!(modules.iter().all(|m| m.ends_with("q_proj") || m.ends_with("v_proj")));
    let bad = LoraConfig { targets: vec!["nope".into()], ..cfg.clone() };
    let err = attach_lora(&mut safetune_model::tiny_model(4).unwrap(), &bad, 1).unwrap_err();
    assert!(err.to_string().contains("unknown module `nope`"), "{err}");
}

#[test]
fn impossible_ranks_and_scales_are_errors_before_any_allocation() {
    let cfg = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["all-linear".into()] };
    let attach = |c: LoraConfig| attach_lora(&mut safetune_model::tiny_model(4).unwrap(), &c, 1).unwrap_err().to_string();
    // The spec bound (a 10^9 rank asked for 2.3 TB before this check existed) ...
    let err = attach(LoraConfig { r: 1_000_000_000, ..cfg.clone() });
    assert!(err.starts_with("lora.r: must be in 1..="), "{err}");
    // ... the model's: the tiny model's q_proj is 32 × 32.
    let err = attach(LoraConfig { r: 33, ..cfg.clone() });
    assert!(err.starts_with("lora.r: 33 exceeds the rank of `model.layers.0.self_attn.q_proj` (32 × 32)"), "{err}");
    for alpha in [f64::NAN, f64::INFINITY, 0.0, -1.0] {
        let err = attach(LoraConfig { alpha, ..cfg.clone() });
        assert!(err.starts_with("lora.alpha: must be a positive number"), "{alpha}: {err}");
    }
}

#[test]
fn peft_round_trip_keeps_outputs_and_key_names() {
    let mut m = safetune_model::tiny_model(5).unwrap();
    let x = input(&m);
    let cfg = LoraConfig { r: 4, alpha: 16.0, dropout: 0.1, targets: vec!["q_proj".into(), "v_proj".into()] };
    attach_lora(&mut m, &cfg, 2).unwrap();
    randomise_b(&m);
    let adapted = logits(&m, &x);
    let dir = std::env::temp_dir().join(format!("safetune-peft-{}", std::process::id()));
    save_peft(&m, &cfg, &dir).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let a = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
    assert_eq!(a.dims(), &[4, 32]);
    assert_eq!(b.dims(), &[32, 4]);
    let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(conf["peft_type"], "LORA");
    assert_eq!(conf["r"], 4);
    assert_eq!(conf["target_modules"], serde_json::json!(["q_proj", "v_proj"]));
    let mut fresh = safetune_model::tiny_model(5).unwrap();
    let loaded = load_peft(&mut fresh, &dir, &Device::Cpu).unwrap();
    assert_eq!(loaded.r, 4);
    assert_eq!(max_diff(&adapted, &logits(&fresh, &x)), 0.0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn lora_gradients_match_finite_differences() {
    let mut m = safetune_model::tiny_model(6).unwrap();
    let x = input(&m);
    let cfg = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["all-linear".into()] };
    attach_lora(&mut m, &cfg, 3).unwrap();
    randomise_b(&m);
    let loss = |m: &dyn CausalLm| logits(m, &x).sqr().unwrap().mean_all().unwrap();
    let grads = loss(&m).backward().unwrap();
    let mut checked = 0;
    for (name, var) in m.trainable() {
        if !(name.contains("layers.0.self_attn.k_proj") || name.contains("layers.1.mlp.down_proj")) {
            continue;
        }
        let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let i = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        let h = 1e-2f32;
        let eval = |d: f32| {
            let mut v = base.clone();
            v[i] += d;
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
            loss(&m).to_scalar::<f32>().unwrap()
        };
        let fd = (eval(h) - eval(-h)) / (2.0 * h);
        var.set(&Tensor::from_vec(base, var.shape(), &Device::Cpu).unwrap()).unwrap();
        let rel = (fd - g[i]).abs() / g[i].abs().max(1e-6);
        assert!(rel < 0.05, "{name}: analytic {} vs finite difference {fd}", g[i]);
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn an_adapter_with_nan_values_or_a_rank_its_config_denies_is_an_error() {
    let cfg = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["q_proj".into()] };
    let mut m = safetune_model::tiny_model(4).unwrap();
    attach_lora(&mut m, &cfg, 1).unwrap();
    randomise_b(&m);
    let dir = std::env::temp_dir().join(format!("safetune-lora-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    save_peft(&m, &cfg, &dir).unwrap();
    let load = || load_peft(&mut safetune_model::tiny_model(4).unwrap(), &dir, &Device::Cpu).map(|_| ()).err().map(|e| e.to_string());
    assert_eq!(load(), None, "the saved adapter loads");
    // The config says r = 8, the tensors have rank 2.
    let cfg_file = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_file).unwrap();
    let mut c: serde_json::Value = serde_json::from_str(&text).unwrap();
    c["r"] = 8.into();
    std::fs::write(&cfg_file, c.to_string()).unwrap();
    let err = load().expect("rank mismatch");
    assert!(err.contains("has rank 2 (lora_A) / 2 (lora_B), the config says r = 8"), "{err}");
    std::fs::write(&cfg_file, &text).unwrap();
    // lora_A for a 16-wide input on a 32-wide q_proj: named, not a shape error deep in candle.
    let st = dir.join("adapter_model.safetensors");
    let original = std::fs::read(&st).unwrap();
    let mut t = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let key = t.keys().find(|k| k.ends_with("lora_A.weight")).unwrap().clone();
    t.insert(key, Tensor::zeros((2, 16), candle_core::DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&t, &st).unwrap();
    let err = load().expect("shape mismatch");
    assert!(err.contains("has lora_A [2, 16]") && err.contains("the model's weight is [32, 32]"), "{err}");
    std::fs::write(&st, original).unwrap();
    // One NaN in one lora_B.
    let mut t = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let key = t.keys().find(|k| k.ends_with("lora_B.weight")).unwrap().clone();
    let mut v: Vec<f32> = t[&key].flatten_all().unwrap().to_vec1().unwrap();
    v[0] = f32::NAN;
    let dims = t[&key].dims().to_vec();
    t.insert(key, Tensor::from_vec(v, dims, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&t, &st).unwrap();
    let err = load().expect("NaN adapter");
    assert!(err.contains("lora_B` has non-finite values"), "{err}");
}

/// Rewrites keys of a saved adapter's `adapter_config.json`.
fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("adapter_config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(&path, c.to_string()).unwrap();
}

#[test]
fn peft_options_rslora_patterns_and_regex_targets_are_honoured_and_dora_refused() {
    let mut m = safetune_model::tiny_model(8).unwrap();
    let x = input(&m);
    let cfg = LoraConfig { r: 4, alpha: 16.0, dropout: 0.0, targets: vec!["q_proj".into(), "v_proj".into()] };
    attach_lora(&mut m, &cfg, 3).unwrap();
    randomise_b(&m);
    let adapted = logits(&m, &x);
    let dir = std::env::temp_dir().join(format!("safetune-peft-options-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    save_peft(&m, &cfg, &dir).unwrap();
    let original = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let load = || {
        let mut fresh = safetune_model::tiny_model(8).unwrap();
        load_peft(&mut fresh, &dir, &Device::Cpu).map(|c| (c, logits(&fresh, &x))).map_err(|e| e.to_string())
    };
    // Files are readable as any new file in the directory is (safetensors' own writer left 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(dir.join("probe"), b"").unwrap();
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("adapter_model.safetensors"), mode("probe"));
        std::fs::remove_file(dir.join("probe")).unwrap();
    }
    // rsLoRA scales by alpha / sqrt(r): alpha 8 at r 4 is the scale 16 / 4 gave; alpha 16 doubles it.
    edit_config(&dir, |c| {
        c["use_rslora"] = true.into();
        c["lora_alpha"] = 8.0.into();
    });
    assert_eq!(max_diff(&adapted, &load().unwrap().1), 0.0);
    edit_config(&dir, |c| c["lora_alpha"] = 16.0.into());
    assert!(max_diff(&adapted, &load().unwrap().1) > 1e-4, "use_rslora must change the scale");
    std::fs::write(dir.join("adapter_config.json"), &original).unwrap();
    // rank_pattern gives the modules their rank whatever `r` says; alpha_pattern their alpha.
    edit_config(&dir, |c| {
        c["r"] = 8.into();
        c["lora_alpha"] = 32.0.into();
        c["rank_pattern"] = serde_json::json!({ "q_proj": 4, "v_proj": 4 });
        c["alpha_pattern"] = serde_json::json!({ "(q|v)_proj": 16.0 });
    });
    assert_eq!(max_diff(&adapted, &load().unwrap().1), 0.0);
    // The first key that matches wins, in the file's order (as peft's `get_pattern_key`): a
    // layer's own key after the general one changes nothing; before it, that module's scale doubles.
    let text = |first: &str, second: &str| format!("{{{first}, {second}}}");
    let (general, layer0) = (r#""(q|v)_proj": 16.0"#, r#""model.layers.0.self_attn.q_proj": 32.0"#);
    let path = dir.join("adapter_config.json");
    let ordered = |first: &str, second: &str| {
        // serde_json's map sorts keys; the order is written into the file by hand.
        let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        c["alpha_pattern"] = serde_json::Value::Null;
        let body = c.to_string().replace(r#""alpha_pattern":null"#, &format!(r#""alpha_pattern":{}"#, text(first, second)));
        std::fs::write(&path, body).unwrap();
    };
    ordered(general, layer0);
    assert_eq!(max_diff(&adapted, &load().unwrap().1), 0.0);
    ordered(layer0, general);
    assert!(max_diff(&adapted, &load().unwrap().1) > 1e-4, "layer 0's q_proj at twice the scale");
    edit_config(&dir, |c| c["alpha_pattern"] = serde_json::json!({ "q_proj[": 16.0 }));
    let err = load().unwrap_err();
    assert!(err.contains("adapter_config.json: alpha_pattern: `q_proj[` is not a regular expression"), "{err}");
    std::fs::write(dir.join("adapter_config.json"), &original).unwrap();
    // A regular expression as target_modules: the tensors name the modules.
    edit_config(&dir, |c| c["target_modules"] = ".*\\.(q|v)_proj".into());
    let (loaded, out) = load().unwrap();
    assert_eq!(loaded.targets, vec!["q_proj".to_string(), "v_proj".to_string()]);
    assert_eq!(max_diff(&adapted, &out), 0.0);
    // DoRA is refused by name, not as an unexpected tensor key.
    edit_config(&dir, |c| c["use_dora"] = true.into());
    let err = load().unwrap_err();
    assert!(err.contains("adapter_config.json: use_dora: DoRA adapters are not supported"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
