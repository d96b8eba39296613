//! Architecture hyperparameters of a Llama-family decoder.

use serde::Deserialize;

use safetune_core::{anyhow::Context, Result};

/// Upper bounds of [`LlamaConfig::validate`]: well above every Llama-family model
/// (Llama-3.1-405B: 126 layers, hidden 16,384, intermediate 53,248, vocab 128,256).
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_HIDDEN: usize = 1 << 16;
pub const MAX_INTERMEDIATE: usize = 1 << 18;
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_HEAD_DIM: usize = 1 << 10;
pub const MAX_POSITIONS: usize = 1 << 24;
/// Rotary tables cover at most this many positions ([`LlamaConfig::rope_positions`]).
pub const ROPE_POSITIONS: usize = 8192;

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub tie_embeddings: bool,
    pub max_positions: usize,
    /// Qwen2-style biases on q, k and v projections.
    pub attention_bias: bool,
}

#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<usize>,
    attention_bias: Option<bool>,
    model_type: Option<String>,
}

impl LlamaConfig {
    /// Parses a Hugging Face `config.json` (Llama, Mistral, Qwen2, SmolLM).
    pub fn from_hf_json(text: &str, file: &str) -> Result<Self> {
        let c: HfConfig = serde_json::from_str(text).with_context(|| format!("{file}: not a Llama-family config"))?;
        if c.num_attention_heads == 0 {
            safetune_core::anyhow::bail!("{file}: num_attention_heads must be positive");
        }
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads);
        let qwen = c.model_type.as_deref() == Some("qwen2");
        let cfg = Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim,
            rope_theta: c.rope_theta.unwrap_or(10_000.0),
            rms_eps: c.rms_norm_eps.unwrap_or(1e-6),
            tie_embeddings: c.tie_word_embeddings.unwrap_or(false),
            max_positions: c.max_position_embeddings.unwrap_or(4096),
            attention_bias: c.attention_bias.unwrap_or(qwen),
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Checks the sizes before anything is computed or allocated from them: positive, consistent
    /// and within bounds no Llama-family model exceeds, so a crafted file is an error, never
    /// an overflow or a huge allocation. Keys are named as in `config.json` (GGUF files map
    /// theirs onto them: `llama.attention.head_count` → `num_attention_heads`, ...).
    pub fn validate(&self, file: &str) -> Result<()> {
        use safetune_core::anyhow::bail;
        for (key, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("intermediate_size", self.intermediate_size, MAX_INTERMEDIATE),
            ("num_hidden_layers", self.num_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_heads, self.hidden_size),
            ("num_key_value_heads", self.num_kv_heads, self.num_heads),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("max_position_embeddings", self.max_positions, MAX_POSITIONS),
        ] {
            if v == 0 || v > max {
                bail!("{file}: {key} = {v} is out of range (1..={max})");
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!("{file}: num_attention_heads must be a multiple of num_key_value_heads");
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("{file}: head_dim must be even");
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!("{file}: rope_theta = {} must be a positive number", self.rope_theta);
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            bail!("{file}: rms_norm_eps = {} must be a positive number", self.rms_eps);
        }
        Ok(())
    }

    /// Positions the model computes rotary tables for and accepts: the declared context,
    /// at most [`ROPE_POSITIONS`] (safetune's sequences are a few hundred tokens; a
    /// 128k-context model would otherwise build a table of hundreds of MB at load).
    pub fn rope_positions(&self) -> usize {
        self.max_positions.min(ROPE_POSITIONS)
    }

    /// A tiny configuration for tests.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            tie_embeddings: true,
            max_positions: 512,
            attention_bias: false,
        }
    }

    /// Every weight name and shape this configuration expects, HF naming.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_heads * hd, self.num_kv_heads * hd);
        let mut v = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, d])];
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            v.push((format!("{p}.input_layernorm.weight"), vec![d]));
            v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
            v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
            v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
            if self.attention_bias {
                v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
            v.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            v.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
            v.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
            v.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
        }
        v.push(("model.norm.weight".to_string(), vec![d]));
        if !self.tie_embeddings {
            v.push(("lm_head.weight".to_string(), vec![self.vocab_size, d]));
        }
        v
    }

    /// Checks the tensors a file declares (Hugging Face names, shapes) against this
    /// configuration before any is read: every expected weight present with its shape, nothing
    /// unknown (`lm_head.weight` beside tied embeddings is allowed: loading drops it).
    pub fn check_shapes(&self, declared: &[(String, Vec<usize>)], file: &str) -> Result<()> {
        use safetune_core::anyhow::bail;
        let expected: std::collections::BTreeMap<String, Vec<usize>> = self.weight_shapes().into_iter().collect();
        for (name, shape) in declared {
            match expected.get(name) {
                Some(e) if e != shape => bail!("{file}: weight `{name}` has shape {shape:?}, the configuration needs {e:?}"),
                None if !(self.tie_embeddings && name == "lm_head.weight") => bail!("{file}: unexpected weight `{name}`"),
                _ => {}
            }
        }
        if let Some(missing) = expected.keys().find(|k| !declared.iter().any(|(n, _)| n == *k)) {
            bail!("{file}: missing weight `{missing}`");
        }
        Ok(())
    }

    /// Adapter-capable linear modules.
    pub fn linear_modules(&self) -> Vec<String> {
        let mut v = Vec::new();
        for l in 0..self.num_layers {
            for m in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                v.push(format!("model.layers.{l}.{m}"));
            }
        }
        v
    }
}
