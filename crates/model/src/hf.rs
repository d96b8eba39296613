//! Loading a Hugging Face model directory: `config.json`, `tokenizer.json`,
//! one or several `*.safetensors` files.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device};
use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::{PromptFormat, Result};
use tokenizers::Tokenizer;

use crate::config::LlamaConfig;
use crate::tokenizer::TextTokenizer;
use crate::Llama;

/// What a model directory holds, read without its weights.
struct Dir {
    cfg: LlamaConfig,
    tokenizer: TextTokenizer,
    format: PromptFormat,
    files: Vec<std::path::PathBuf>,
}

fn read_dir(dir: &Path) -> Result<Dir> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?;
    let cfg = LlamaConfig::from_hf_json(&text, &cfg_path.display().to_string())?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        bail!("{}: missing (a Hugging Face model directory needs tokenizer.json)", tok_path.display());
    }
    let inner = TextTokenizer::from_file(&tok_path)?;
    let (tokenizer, format) = dir_tokenizer(dir, inner)?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.safetensors weights", dir.display());
    }
    Ok(Dir { cfg, tokenizer, format, files })
}

/// The prompt format (`tokenizer_config.json`'s chat template, else the vocabulary) and the
/// tokenizer with its stop ids (`generation_config.json`'s and `tokenizer_config.json`'s EOS).
fn dir_tokenizer(dir: &Path, inner: Tokenizer) -> Result<(TextTokenizer, PromptFormat)> {
    let tc = std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap_or_default();
    let tc: serde_json::Value = serde_json::from_str(&tc).unwrap_or(serde_json::Value::Null);
    let template = tc.get("chat_template").and_then(|v| v.as_str()).unwrap_or("");
    let vocab: Vec<String> = {
        let mut v: Vec<(String, u32)> = inner.get_vocab(true).into_iter().collect();
        v.sort_by_key(|x| x.1);
        v.into_iter().map(|x| x.0).collect()
    };
    let format = detect_format(template, &vocab);
    let gen = std::fs::read_to_string(dir.join("generation_config.json")).unwrap_or_default();
    let gen: serde_json::Value = serde_json::from_str(&gen).unwrap_or(serde_json::Value::Null);
    let mut eos: Vec<u32> = match gen.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    };
    if let Some(e) = tc.get("eos_token").and_then(|v| v.as_str()).and_then(|s| inner.token_to_id(s)) {
        eos.push(e);
    }
    let first = eos.first().copied();
    let tok = finish_tokenizer(inner, format, first, Some(eos)).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    Ok((tok, format))
}

/// Checks a model directory as [`load_hf_dir`] does, without reading its weights: config,
/// tokenizer, and every safetensors header (each tensor within its file, every weight the
/// config needs with its shape). Returns the configuration.
pub fn check_hf_dir(dir: &Path) -> Result<crate::CheckedModel> {
    let Dir { cfg, tokenizer, format, files } = read_dir(dir)?;
    let mut declared = Vec::new();
    for f in &files {
        declared.extend(crate::safetensors_header::tensors(f)?);
    }
    cfg.check_shapes(&declared, &dir.display().to_string())?;
    Ok(crate::CheckedModel { config: cfg, tokenizer, format })
}

pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<Llama> {
    let Dir { cfg, tokenizer, format, files } = read_dir(dir)?;
    let mut weights = BTreeMap::new();
    for f in &files {
        let loaded =
            candle_core::safetensors::load(f, device).map_err(|e| anyhow!("{}: not a readable safetensors file: {e}", f.display()))?;
        for (k, v) in loaded {
            weights.insert(k, v.to_dtype(DType::F32)?);
        }
    }
    if cfg.tie_embeddings {
        weights.remove("lm_head.weight");
    }
    let name = dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let model = Llama::from_weights(cfg, weights, tokenizer, &name, format, device).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    Ok(model)
}

/// Picks the prompt format from a chat template (or, without one, from the vocabulary).
pub fn detect_format(template: &str, vocab: &[String]) -> PromptFormat {
    let has = |t: &str| template.contains(t) || (template.is_empty() && vocab.iter().any(|v| v == t));
    if has("<|im_start|>") {
        PromptFormat::Chatml
    } else if has("<|start_header_id|>") {
        PromptFormat::Llama3
    } else if has("[INST]") {
        PromptFormat::Llama2
    } else {
        PromptFormat::Alpaca
    }
}

/// Adds stop and pad ids: EOS ids plus the format's end-of-turn token when it is one token.
pub fn finish_tokenizer(inner: Tokenizer, format: PromptFormat, eos: Option<u32>, extra: Option<Vec<u32>>) -> Result<TextTokenizer> {
    let mut stops: Vec<u32> = extra.unwrap_or_default();
    stops.extend(eos);
    let eot = format.end_of_turn().trim();
    if let Some(id) = inner.token_to_id(eot) {
        stops.push(id);
    }
    for t in ["<|endoftext|>", "</s>", "<|eot_id|>", "<|end_of_text|>"] {
        if let Some(id) = inner.token_to_id(t) {
            if format != PromptFormat::Alpaca || t == "</s>" || t == "<|endoftext|>" {
                stops.push(id);
            }
        }
    }
    stops.sort();
    stops.dedup();
    if stops.is_empty() {
        bail!("the tokenizer has no end-of-sequence token");
    }
    let pad = inner.token_to_id("<|endoftext|>").or(eos).unwrap_or(stops[0]);
    Ok(TextTokenizer::new(inner, stops, pad))
}
