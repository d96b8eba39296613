//! A tiny model written as the files a user brings (GGUF, Hugging Face directory), for the
//! tests that craft hostile variants of them (`hostile.rs`, `fuzz.rs`).

use std::path::PathBuf;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use safetune_model::{export_hf, tiny_model, tiny_tokenizer};

/// A fresh temporary directory.
pub fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("safetune-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// GGUF name of a Hugging Face weight name (the inverse of the loader's renaming).
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let (module, kind) = part.rsplit_once('.').unwrap();
    let m = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{m}.{kind}")
}

/// Writes the tiny model as a GGUF file (f32 tensors) with `edit` applied to its metadata.
pub fn tiny_gguf(name: &str, edit: impl FnOnce(&mut Vec<(String, Value)>)) -> PathBuf {
    let d = dir(name);
    export_hf(&tiny_model(5).unwrap(), &d.join("hf")).unwrap();
    let weights = candle_core::safetensors::load(d.join("hf/model.safetensors"), &Device::Cpu).unwrap();
    let tok = tiny_tokenizer().unwrap();
    let mut vocab: Vec<(String, u32)> = tok.get_vocab(true).into_iter().collect();
    vocab.sort_by_key(|v| v.1);
    let tokens: Vec<Value> = vocab.iter().map(|(t, _)| Value::String(t.clone())).collect();
    let n = tokens.len();
    let merges = ["e r", "t h", "i n", "Ġ t", "a n"].iter().map(|m| Value::String(m.to_string())).collect();
    let types = (0..n).map(|i| Value::I32(if i < 3 { 3 } else { 1 })).collect();
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String("tiny".into())),
        ("llama.embedding_length".into(), Value::U32(32)),
        ("llama.feed_forward_length".into(), Value::U32(64)),
        ("llama.block_count".into(), Value::U32(2)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        ("llama.context_length".into(), Value::U32(512)),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
    ];
    edit(&mut meta);
    let q: Vec<(String, QTensor)> = weights.iter().map(|(k, t)| (gguf_name(k), QTensor::quantize(t, GgmlDType::F32).unwrap())).collect();
    let path = d.join("tiny.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    path
}
