//! The model interface: what training, defenses and metrics may ask of a model.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var, D};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{LinearAdapter, PromptFormat, Result};

/// Text ↔ token ids. Special tokens written in the text (`<|im_start|>`) are
/// parsed as single ids.
pub trait Tokenize: Send + Sync {
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Decodes, dropping special tokens.
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Ids that end a generated answer.
    fn stop_ids(&self) -> &[u32];
    fn pad_id(&self) -> u32;
}

/// Shape facts about a decoder-only model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub format: PromptFormat,
}

/// Where per-layer perturbations are added (Vaccine's hidden-state drift).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PerturbationSite {
    /// Each decoder layer's output (the residual stream after the layer).
    #[default]
    LayerOutput,
    /// Each layer's attention-block output, before it joins the residual stream (where the
    /// Vaccine and T-Vaccine reference code hook `LlamaAttention`).
    AttentionOutput,
}

/// One additive perturbation per decoder layer (`[batch, seq, hidden]` each) at a site.
#[derive(Clone, Copy)]
pub struct Perturbation<'a> {
    pub tensors: &'a [Tensor],
    pub site: PerturbationSite,
}

/// One forward request.
#[derive(Default)]
pub struct ForwardRequest<'a> {
    /// Token ids, `[batch, seq]` u32.
    pub ids: Option<&'a Tensor>,
    /// 1.0 for real tokens, 0.0 for padding, `[batch, seq]` f32. `None`: no padding.
    pub mask: Option<&'a Tensor>,
    /// Return every decoder layer's output hidden state.
    pub output_hidden: bool,
    /// Added at each layer `l` at its site (`[batch, seq, hidden]` each), as Vaccine does.
    pub perturbation: Option<Perturbation<'a>>,
    /// Training mode: adapters apply dropout.
    pub train: bool,
    /// Flat indices into `batch * seq` at which to compute logits (`None`:
    /// every position). Training asks only for response positions, which
    /// avoids a `[batch, seq, vocab]` tensor.
    pub logits_at: Option<&'a Tensor>,
    /// Also return, for every linear module, the sum over the batch's real tokens of its
    /// input's squared entries (Wanda's activation statistic, Antidote's score).
    pub linear_input_norms: bool,
}

pub struct ForwardOutput {
    /// `[batch, seq, vocab]`, or `[n, vocab]` when `logits_at` selects `n` positions.
    pub logits: Tensor,
    /// One `[batch, seq, hidden]` per decoder layer when requested, else empty.
    pub hidden: Vec<Tensor>,
    /// Per linear module (`model.layers.3.mlp.up_proj`), `Σ_tokens x_j²` over the module's input
    /// columns `j` (`[in_features]`, real tokens only) when requested, else empty.
    pub linear_input_norms: std::collections::BTreeMap<String, Tensor>,
}

/// Decoding settings. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Prompts decoded together (left-padded).
    pub batch_size: usize,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: 0.0, top_p: 1.0, seed: 0, batch_size: 16 }
    }
}

/// A Llama-family causal language model as the rest of safetune sees it.
/// Weight names follow Hugging Face (`model.layers.0.self_attn.q_proj.weight`).
pub trait CausalLm: Send + Sync {
    fn info(&self) -> &ModelInfo;
    fn tokenizer(&self) -> &dyn Tokenize;
    fn device(&self) -> &Device;

    /// Logits for every position, optionally every layer's hidden state.
    fn forward(&self, req: &ForwardRequest) -> Result<ForwardOutput>;

    /// Every base weight by name, current values (adapters not merged).
    fn weights(&self) -> Vec<(String, Tensor)>;
    /// Replaces one base weight (same shape); the tensor becomes frozen.
    fn set_weight(&mut self, name: &str, value: Tensor) -> Result<()>;

    /// Modules an adapter can attach to (`model.layers.3.mlp.up_proj`).
    fn linear_modules(&self) -> Vec<String>;
    /// Attaches an adapter to a linear module (replacing any earlier one).
    fn attach_adapter(&mut self, module: &str, adapter: Arc<dyn LinearAdapter>) -> Result<()>;
    /// Removes and returns all adapters.
    fn take_adapters(&mut self) -> Vec<(String, Arc<dyn LinearAdapter>)>;

    /// Makes every base weight trainable (full fine-tuning) and returns them.
    fn unfreeze_all(&mut self) -> Result<Vec<(String, Var)>>;
    /// Makes every base weight a constant again (drops gradients tracking).
    fn freeze_all(&mut self);
    /// Trainable tensors: unfrozen base weights and adapter weights (PEFT names).
    fn trainable(&self) -> Vec<(String, Var)>;

    /// The precision of products against frozen weights from now on (a training stage sets
    /// it from `TrainConfig::precision` and sets f32 again when it ends). A model without a
    /// bf16 path accepts only f32.
    fn set_precision(&mut self, precision: crate::config::Precision) -> Result<()> {
        if precision.is_f32() {
            return Ok(());
        }
        anyhow::bail!("precision = \"bf16\": model `{}` has no bf16 products (use precision = \"f32\")", self.info().name)
    }

    /// Completions (new token ids, without the prompt and stop token) for each prompt.
    fn generate(&self, prompts: &[Vec<u32>], params: &GenerationParams) -> Result<Vec<Vec<u32>>>;

    /// As [`generate`](Self::generate), but prompt `i`'s completion also ends as
    /// soon as `settled(i, ids)` holds for its new ids so far (a judge's verdict
    /// that no continuation can change). Every other completion must come out
    /// exactly as `generate` gives it. The default ignores `settled`.
    fn generate_until(&self, prompts: &[Vec<u32>], params: &GenerationParams, settled: &Settled<'_>) -> Result<Vec<Vec<u32>>> {
        let _ = settled;
        self.generate(prompts, params)
    }

    /// Next-token logits after each whole sequence (`[seqs.len(), vocab]`, row `i` for
    /// `seqs[i]`), where every sequence starts with the same `shared` tokens. Each row must
    /// equal, bit for bit, a [`forward`](Self::forward) of its sequence alone with
    /// `logits_at` its last position; an implementation may compute the shared tokens once
    /// (a key/value cache: few-shot prompts that share their shots). The default runs each
    /// sequence whole ([`last_logits_each`]).
    fn last_logits_sharing(&self, seqs: &[Vec<u32>], shared: usize) -> Result<Tensor> {
        let _ = shared;
        last_logits_each(self, seqs)
    }

    /// `log p(target)` for each row of `logits` (`[n, vocab]`, `targets` `[n]` u32), `[n]`,
    /// recorded for backward: what training's losses are made of. An implementation may fuse
    /// it, and must then give the bits of [`target_log_probs_composed`] (the
    /// default) forward and backward.
    fn target_log_probs(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        target_log_probs_composed(logits, targets)
    }
}

/// Next-token logits after each whole sequence, one `forward` per sequence (`[seqs.len(), vocab]`).
pub fn last_logits_each<M: CausalLm + ?Sized>(model: &M, seqs: &[Vec<u32>]) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(seqs.len());
    for s in seqs {
        if s.is_empty() {
            crate::anyhow::bail!("next-token logits of an empty sequence");
        }
        let ids = Tensor::new(s.as_slice(), model.device())?.unsqueeze(0)?;
        let last = Tensor::new(&[(s.len() - 1) as u32], model.device())?;
        rows.push(model.forward(&ForwardRequest { ids: Some(&ids), logits_at: Some(&last), ..Default::default() })?.logits);
    }
    if rows.is_empty() {
        crate::anyhow::bail!("next-token logits of no sequence");
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// `log p(target)` for each row of `logits` (`[n, vocab]`, `targets` `[n]` u32) as candle ops:
/// `x_t − (log Σ exp(x − max) + max)`, the max detached. [`CausalLm::target_log_probs`]'s
/// default, and the reference a fused kernel must equal bit for bit.
pub fn target_log_probs_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()?.broadcast_add(&max)?;
    let picked = logits.gather(&targets.unsqueeze(1)?, 1)?;
    Ok((picked - lse)?.squeeze(1)?)
}

/// `settled(i, ids)`: whether prompt `i`'s completion so far (`ids`) may end here.
pub type Settled<'a> = dyn Fn(usize, &[u32]) -> bool + Sync + 'a;

/// Whether every value of a tensor is finite: the sum of absolute values is finite exactly
/// then (short of an overflow that no weight of a working model reaches). Loaders check
/// every weight and adapter with it, so a NaN file is an error, not a run that looks safe.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    let s = t.to_dtype(candle_core::DType::F32)?.abs()?.sum_all()?.to_scalar::<f32>()?;
    Ok(s.is_finite())
}
