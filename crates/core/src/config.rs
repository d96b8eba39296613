//! Hyperparameter types shared by methods, defenses and the runtime.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// LoRA settings (PEFT names and meanings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module suffixes (`q_proj`, `v_proj`) or the single entry `all-linear`.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { r: 8, alpha: 16.0, dropout: 0.05, targets: vec!["all-linear".into()] }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// The precision of a training stage's products against frozen weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Every product in f32 (the default; every published figure).
    #[default]
    F32,
    /// Products against frozen weights (LoRA's base model, the tied output layer) in
    /// bfloat16: weights and inputs rounded to bf16, f32 accumulation, bf16 results — what a
    /// bf16 linear layer computes. Adapters, optimiser state, norms, attention and the loss stay
    /// f32. On a CPU with AVX-512 BF16 the products run at up to twice f32's rate; the numbers
    /// differ from f32's by bf16 rounding (docs/PERFORMANCE.md). Not for full fine-tuning.
    Bf16,
}

impl Precision {
    /// Whether this is the default (f32): configurations leave the field out then, so their
    /// hashes and files are the ones written before the field existed.
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

/// Optimisation settings for one SFT stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub learning_rate: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Sequences are cut to this many tokens.
    pub max_len: usize,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables.
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Stop after this many optimiser steps (0: no limit).
    pub max_steps: usize,
    /// `f32` (default) or `bf16` products against frozen weights ([`Precision`]).
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 2e-4,
            epochs: 1,
            batch_size: 8,
            grad_accum: 1,
            max_len: 256,
            schedule: Schedule::Cosine,
            warmup_ratio: 0.03,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 42,
            max_steps: 0,
            precision: Precision::F32,
        }
    }
}

impl TrainConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self, path: &str) -> crate::Result<()> {
        let bad = |f: &str, why: &str| Err(anyhow::anyhow!("{path}.{f}: {why}"));
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate", "must be a positive number");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1");
        }
        if self.max_len < 8 {
            return bad("max_len", "must be at least 8");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", "must be in [0, 1]");
        }
        if self.epochs == 0 && self.max_steps == 0 {
            return bad("epochs", "must be at least 1");
        }
        Ok(())
    }
}

/// The linear modules of a Llama-family decoder layer, and `all-linear`.
pub const LORA_TARGETS: [&str; 8] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "all-linear"];

/// The largest LoRA rank a spec may ask for (the hidden size of the largest Llama-family
/// models); the model's own weights bound it further when adapters are attached.
pub const MAX_LORA_RANK: usize = 1 << 14;

impl LoraConfig {
    pub fn validate(&self, path: &str) -> crate::Result<()> {
        if self.r == 0 || self.r > MAX_LORA_RANK {
            anyhow::bail!("{path}.r: must be in 1..={MAX_LORA_RANK} (and at most the smaller side of each adapted weight)");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            anyhow::bail!("{path}.alpha: must be a positive number, not {}", self.alpha);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            anyhow::bail!("{path}.dropout: must be in [0, 1)");
        }
        if self.targets.is_empty() {
            anyhow::bail!("{path}.targets: name at least one module or `all-linear`");
        }
        if let Some(t) = self.targets.iter().find(|t| !LORA_TARGETS.contains(&t.as_str())) {
            anyhow::bail!("{path}.targets: unknown module `{t}` (one of {})", LORA_TARGETS.join(", "));
        }
        Ok(())
    }

    /// Whether a module (`model.layers.0.self_attn.q_proj`) is targeted.
    pub fn targets_module(&self, module: &str) -> bool {
        self.targets.iter().any(|t| t == "all-linear" || module.ends_with(&format!(".{t}")))
    }
}

/// Errors naming `key` when a list of a spec names one item twice.
pub fn no_repeats<T: Ord + std::fmt::Display>(key: &str, items: impl IntoIterator<Item = T>) -> crate::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for i in items {
        if seen.contains(&i) {
            anyhow::bail!("{key}: `{i}` appears twice");
        }
        seen.insert(i);
    }
    Ok(())
}

/// A config table from a spec (`null` → the defaults); errors name `path.key` of the bad value.
pub fn options<T: serde::de::DeserializeOwned + Default>(v: &serde_json::Value, path: &str) -> crate::Result<T> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let at = e.path().to_string();
        let msg = e.into_inner().to_string();
        match (at.as_str(), msg.strip_prefix("unknown field `").and_then(|r| r.split_once('`'))) {
            (".", Some((key, rest))) => anyhow::anyhow!("{path}.{key}: unknown key{rest}"),
            (".", None) => anyhow::anyhow!("{path}: {msg}"),
            (at, _) => anyhow::anyhow!("{path}.{at}: {msg}"),
        }
    })
}
