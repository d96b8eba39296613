//! Writing a model as a Hugging Face directory (config.json, tokenizer.json,
//! model.safetensors), e.g. to hand a merged fine-tuned model to other tools.

use std::collections::HashMap;
use std::path::Path;

use safetune_core::anyhow::{anyhow, Context};
use safetune_core::{CausalLm, Result};

use crate::Llama;

pub fn export_hf(model: &Llama, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let c = model.config();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim, "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_eps,
        "tie_word_embeddings": c.tie_embeddings, "max_position_embeddings": c.max_positions,
        "attention_bias": c.attention_bias, "torch_dtype": "float32",
    });
    // The ids that end an answer and pad a batch, so that other tools
    // (transformers' `generate`) stop and pad as safetune does.
    let tok = model.tokenizer();
    let (stops, pad) = (tok.stop_ids().to_vec(), tok.pad_id());
    let mut config = config;
    if let Some(r) = c.rope_scaling {
        config["rope_scaling"] = r.to_json();
    }
    config["eos_token_id"] = serde_json::json!(stops);
    config["pad_token_id"] = serde_json::json!(pad);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    model
        .text_tokenizer()
        .inner()
        .save(dir.join("tokenizer.json"), true)
        .map_err(|e| anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
    let weights: HashMap<String, candle_core::Tensor> = model.weights().into_iter().collect();
    safetune_core::files::write_safetensors(&dir.join("model.safetensors"), &weights)?;
    // Renders a conversation as safetune prompts it (default system prompt,
    // `add_generation_prompt`), so `apply_chat_template` gives the same text.
    let template = model.info().format.chat_template();
    let name = |id: u32| model.text_tokenizer().inner().id_to_token(id);
    let mut tok_config = serde_json::json!({});
    if let Some(t) = template {
        tok_config["chat_template"] = serde_json::json!(t);
    }
    if let Some(eos) = stops.first().and_then(|&id| name(id)) {
        tok_config["eos_token"] = serde_json::json!(eos);
    }
    if let Some(p) = name(pad) {
        tok_config["pad_token"] = serde_json::json!(p);
    }
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tok_config)?)?;
    Ok(())
}
