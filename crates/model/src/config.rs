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
    /// How the rotary frequencies are rescaled for a longer context (none: plain RoPE).
    pub rope_scaling: Option<RopeScaling>,
}

/// The rotary-frequency rescalings a Llama-family `config.json` may ask for
/// (`rope_scaling`, or transformers 5's `rope_parameters`), computed as
/// transformers' `modeling_rope_utils` computes them. Other kinds (yarn,
/// dynamic, longrope) are refused by name rather than silently ignored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1/3.2: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_positions: f64 },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
}

impl RopeScaling {
    /// The table as `config.json` writes it.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => serde_json::json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_positions as u64,
            }),
            RopeScaling::Linear { factor } => serde_json::json!({ "rope_type": "linear", "factor": factor }),
        }
    }

    /// Reads a `rope_scaling`/`rope_parameters` table (`key` names it in errors); `None` for the default kind.
    fn from_json(v: &serde_json::Value, key: &str, file: &str) -> Result<Option<Self>> {
        use safetune_core::anyhow::bail;
        let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
        let num = |k: &str| -> Result<f64> {
            match v.get(k).and_then(|x| x.as_f64()) {
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => bail!("{file}: {key}.{k} must be a positive number"),
            }
        };
        Ok(match kind {
            "default" => None,
            "linear" => Some(RopeScaling::Linear { factor: num("factor")? }),
            "llama3" => {
                let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
                if high <= low {
                    bail!("{file}: {key}.high_freq_factor must be above low_freq_factor");
                }
                Some(RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_positions: num("original_max_position_embeddings")?,
                })
            }
            other => bail!("{file}: {key}.rope_type = `{other}` is not supported (default, linear and llama3 are)"),
        })
    }

    /// Rescales plain RoPE inverse frequencies.
    pub fn apply(self, inv_freq: &mut [f64]) {
        match self {
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => {
                let low_wavelen = original_max_positions / low_freq_factor;
                let high_wavelen = original_max_positions / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (original_max_positions / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
    }
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
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5: the rotary settings, `rope_theta` among them.
    rope_parameters: Option<serde_json::Value>,
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
        let (key, table) = match (&c.rope_parameters, &c.rope_scaling) {
            (Some(p), _) if p.is_object() => ("rope_parameters", Some(p)),
            (_, Some(s)) if s.is_object() => ("rope_scaling", Some(s)),
            _ => ("rope_scaling", None),
        };
        let rope_scaling = match table {
            Some(t) => RopeScaling::from_json(t, key, file)?,
            None => None,
        };
        let theta_in_parameters = c.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64());
        let cfg = Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim,
            rope_theta: c.rope_theta.or(theta_in_parameters).unwrap_or(10_000.0),
            rms_eps: c.rms_norm_eps.unwrap_or(1e-6),
            tie_embeddings: c.tie_word_embeddings.unwrap_or(false),
            max_positions: c.max_position_embeddings.unwrap_or(4096),
            attention_bias: c.attention_bias.unwrap_or(qwen),
            rope_scaling,
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

    /// The rotary inverse frequencies, `head_dim / 2` of them, with any rescaling applied
    /// (computed in f64; plain RoPE exactly as before scaling existed, so its results keep their bits).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let exponent = |i: usize| 2.0 * i as f64 / self.head_dim as f64;
        let Some(s) = self.rope_scaling else {
            return (0..self.head_dim / 2).map(|i| 1.0 / self.rope_theta.powf(exponent(i)) as f32).collect();
        };
        let mut inv: Vec<f64> = (0..self.head_dim / 2).map(|i| 1.0 / self.rope_theta.powf(exponent(i))).collect();
        s.apply(&mut inv);
        inv.into_iter().map(|f| f as f32).collect()
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
            rope_scaling: None,
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

#[cfg(test)]
mod rope_tests {
    use super::*;

    fn llama31(extra: &str) -> String {
        format!(
            r#"{{"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072 {extra}}}"#
        )
    }

    /// Llama 3.1's rescaled frequencies against transformers 5.25's `ROPE_INIT_FUNCTIONS["llama3"]`
    /// (and `"linear"`) on the same configuration (values printed from Python, float32).
    #[test]
    fn rope_scaling_matches_transformers() {
        let scaling = r#", "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#;
        let old = LlamaConfig::from_hf_json(&llama31(scaling), "c.json").unwrap();
        // transformers 5 writes the same as `rope_parameters`, rope_theta inside.
        let new = LlamaConfig::from_hf_json(
            &llama31(
                r#", "rope_parameters": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_theta": 500000.0}"#,
            ),
            "c.json",
        )
        .unwrap();
        assert_eq!(old, new);
        let inv = old.rope_inv_freq();
        let reference = [
            (0, 1.0),
            (10, 0.128_687_38),
            (20, 0.016_560_441),
            (30, 0.001_371_893_7),
            (40, 3.428_102_4e-5),
            (45, 1.229_763_9e-5),
            (50, 4.411_534_5e-6),
            (63, 3.068_925_9e-7),
        ];
        for (i, want) in reference {
            assert!(((inv[i] as f64) - want).abs() <= 1e-6 * want, "inv_freq[{i}] = {} vs transformers {want}", inv[i]);
        }
        let linear = r#"{"vocab_size": 10, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4,
            "rope_scaling": {"type": "linear", "factor": 4.0}}"#;
        let inv = LlamaConfig::from_hf_json(linear, "c.json").unwrap().rope_inv_freq();
        for (got, want) in inv.iter().zip([0.25, 0.079_056_94, 0.025, 0.007_905_694_7]) {
            assert!(((*got as f64) - want).abs() <= 1e-6 * want, "{got} vs {want}");
        }
        // Without scaling: the plain table, bit for bit as before.
        let plain = LlamaConfig::from_hf_json(&llama31(r#", "rope_theta": 500000.0"#), "c.json").unwrap();
        let before: Vec<f32> = (0..64).map(|i| 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0) as f32).collect();
        assert_eq!(plain.rope_inv_freq(), before);
        assert!(plain.rope_scaling.is_none());
    }

    #[test]
    fn unknown_or_broken_rope_scaling_is_refused_by_name() {
        for (extra, needle) in [
            (r#", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#, "rope_scaling.rope_type = `yarn` is not supported"),
            (r#", "rope_scaling": {"rope_type": "linear"}"#, "rope_scaling.factor must be a positive number"),
            (
                r#", "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                "original_max_position_embeddings": 8192}"#,
                "rope_parameters.high_freq_factor must be above low_freq_factor",
            ),
        ] {
            let e = LlamaConfig::from_hf_json(&llama31(extra), "c.json").unwrap_err().to_string();
            assert!(e.starts_with("c.json: ") && e.contains(needle), "{e}");
        }
    }
}
