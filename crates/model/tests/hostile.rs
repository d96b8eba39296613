//! Crafted model files (the probes of the reliability issue) are one-line errors
//! naming the file and the key — no panic, no allocation sized by a header field.
//! Each starts from a tiny model that loads, so the one changed field is the cause.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::Device;
use safetune_model::{check_model, export_hf, load_gguf, load_hf_dir, tiny_model};

mod crafted;
use crafted::{dir, tiny_gguf};

/// An edit of a GGUF file's metadata.
type Edit = Box<dyn FnOnce(&mut Vec<(String, Value)>)>;

fn set(meta: &mut [(String, Value)], key: &str, v: Value) {
    meta.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
}

/// The load fails with one line that names the file and `key`.
fn fails_naming(result: safetune_core::Result<safetune_model::Llama>, path: &Path, key: &str) {
    let err = match result {
        Ok(_) => panic!("{}: loaded, expected an error about `{key}`", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(err.contains(&path.display().to_string()) && err.contains(key), "names file and `{key}`: {err}");
}

#[test]
fn crafted_gguf_headers_are_errors_naming_file_and_key() {
    let ok = tiny_gguf("ok", |_| {});
    let m = load_gguf(&ok, &Device::Cpu).unwrap();
    assert_eq!(m.config().num_layers, 2);

    let cases: Vec<(&str, &str, Edit)> = vec![
        ("align0", "general.alignment", Box::new(|m| m.push(("general.alignment".into(), Value::U32(0))))),
        ("heads0", "llama.attention.head_count", Box::new(|m| set(m, "llama.attention.head_count", Value::U32(0)))),
        (
            "types",
            "tokenizer.ggml.token_type",
            Box::new(|m| {
                let mut t = match &m.iter().find(|(k, _)| k == "tokenizer.ggml.token_type").unwrap().1 {
                    Value::Array(a) => a.clone(),
                    _ => unreachable!(),
                };
                t.extend((0..50).map(|_| Value::I32(3)));
                set(m, "tokenizer.ggml.token_type", Value::Array(t));
            }),
        ),
        ("blocks", "llama.block_count", Box::new(|m| set(m, "llama.block_count", Value::U32(1_000_000_000)))),
        ("eos", "tokenizer.ggml.eos_token_id", Box::new(|m| set(m, "tokenizer.ggml.eos_token_id", Value::U32(1 << 30)))),
        ("ffn", "the configuration needs", Box::new(|m| set(m, "llama.feed_forward_length", Value::U32(48)))),
    ];
    for (name, key, edit) in cases {
        let path = tiny_gguf(name, edit);
        fails_naming(load_gguf(&path, &Device::Cpu), &path, key);
        // The check commands run before writing anything finds the same fault.
        let err = check_model(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(key), "check_model: {err}");
    }
    assert_eq!(check_model(&ok).unwrap().config.num_layers, 2);
}

#[test]
fn a_gguf_tensor_larger_than_the_file_is_an_error_before_it_is_read() {
    let path = tiny_gguf("short", |_| {});
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 64]).unwrap();
    fails_naming(load_gguf(&path, &Device::Cpu), &path, "does not fit in the file");
}

#[test]
fn crafted_hf_configs_are_errors_naming_file_and_key() {
    let base = dir("hf");
    export_hf(&tiny_model(5).unwrap(), &base).unwrap();
    load_hf_dir(&base, &Device::Cpu).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    for (key, value) in [
        ("num_attention_heads", serde_json::json!(0)),
        ("max_position_embeddings", serde_json::json!(1u64 << 62)),
        ("max_position_embeddings", serde_json::json!(1_000_000_000)),
        ("num_hidden_layers", serde_json::json!(1_000_000_000)),
        ("head_dim", serde_json::json!(0)),
        ("rms_norm_eps", serde_json::json!(-1.0)),
    ] {
        let mut c = config.clone();
        c[key] = value;
        std::fs::write(base.join("config.json"), c.to_string()).unwrap();
        fails_naming(load_hf_dir(&base, &Device::Cpu), &base.join("config.json"), key);
        assert!(check_model(&base).err().is_some_and(|e| e.to_string().contains(key)), "check_model: {key}");
    }
    // Fewer layers declared than the weights hold (or more) is an error too, not a silent drop.
    let mut c = config.clone();
    c["num_hidden_layers"] = 1.into();
    std::fs::write(base.join("config.json"), c.to_string()).unwrap();
    let err = load_hf_dir(&base, &Device::Cpu).err().expect("layer mismatch").to_string();
    assert!(err.contains("1 layers, the weights 2"), "{err}");
}

#[test]
fn a_model_with_a_nan_weight_is_an_error_naming_the_weight() {
    let d = dir("nan");
    export_hf(&tiny_model(5).unwrap(), &d).unwrap();
    let file = d.join("model.safetensors");
    let mut w = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let t = &w[name];
    let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v[7] = f32::NAN;
    let nan = candle_core::Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
    w.insert(name.to_string(), nan);
    candle_core::safetensors::save(&w, &file).unwrap();
    let err = load_hf_dir(&d, &Device::Cpu).err().expect("a NaN weight must not load").to_string();
    assert!(err.contains(name) && err.contains("non-finite") && err.starts_with(&d.display().to_string()), "{err}");
}

#[test]
fn a_safetensors_header_that_lies_about_its_tensors_is_caught_by_the_check() {
    let d = dir("st-lie");
    export_hf(&tiny_model(5).unwrap(), &d).unwrap();
    assert_eq!(check_model(&d).unwrap().config.num_layers, 2);
    // Cut the data short: the last tensor's byte range now runs past the end.
    let file = d.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 16]).unwrap();
    let err = check_model(&d).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("does not match its bytes"), "{err}");
    // A header length beyond the file.
    let mut lying = bytes.clone();
    lying[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&file, &lying).unwrap();
    let err = check_model(&d).unwrap_err().to_string();
    assert!(err.contains("header of 1099511627776 bytes does not fit"), "{err}");
}

/// Found by crates/runtime/tests/fuzz.rs: tokenizers 0.23 panics (`expect("Helper")`) on a
/// tokenizer.json cut inside its `decoder` value. Now an error naming the file.
#[test]
fn a_tokenizer_json_cut_inside_its_decoder_is_an_error() {
    let d = dir("hostile-tok");
    export_hf(&tiny_model(2).unwrap(), &d).unwrap();
    let compact =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(d.join("tokenizer.json")).unwrap()).unwrap().to_string();
    let at = compact.find("\"decoder\":{").expect("the tiny tokenizer has a decoder") + "\"decoder\":{\"ty".len();
    std::fs::write(d.join("tokenizer.json"), &compact[..at]).unwrap();
    for r in [check_model(&d).map(|_| ()), load_hf_dir(&d, &Device::Cpu).map(|_| ())] {
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("tokenizer.json: not a valid tokenizer.json: EOF"), "{e}");
    }
}
