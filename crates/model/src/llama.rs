//! The Llama-family decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::model::{ModelInfo, PerturbationSite};
use safetune_core::{LinearAdapter, Result};

use crate::config::LlamaConfig;
use crate::ops;
use crate::tokenizer::TextTokenizer;

/// A weight that is either a constant or an optimiser-updated variable.
#[derive(Clone)]
pub enum Param {
    Frozen(Tensor),
    Trainable(Var),
}

impl Param {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Trainable(v) => v.as_tensor(),
        }
    }
}

/// Per-layer key/value cache for incremental decoding: `[b, kv_heads, s, hd]`.
pub(crate) type KvCache = Vec<Option<(Tensor, Tensor)>>;

pub struct Llama {
    pub(crate) cfg: LlamaConfig,
    pub(crate) info: ModelInfo,
    pub(crate) device: Device,
    pub(crate) params: BTreeMap<String, Param>,
    pub(crate) adapters: BTreeMap<String, Arc<dyn LinearAdapter>>,
    pub(crate) tokenizer: Arc<TextTokenizer>,
    cos: Tensor,
    sin: Tensor,
    /// bf16 copies of the frozen matrix weights while a stage trains with
    /// `precision = "bf16"` (set by [`Llama::set_bf16_products`]): the products against them
    /// run in bf16. `None` otherwise (every product in f32).
    pub(crate) bf16: Option<BTreeMap<String, Tensor>>,
}

/// Inputs of one pass through the decoder stack.
pub(crate) struct Pass<'a> {
    pub ids: &'a Tensor,
    /// `[b, t]` u32 position of each token.
    pub positions: &'a Tensor,
    /// `[b, 1, 1, t, s]` additive attention bias.
    pub bias: &'a Tensor,
    pub perturbation: Option<safetune_core::model::Perturbation<'a>>,
    pub output_hidden: bool,
    pub train: bool,
    /// Collects each linear module's input statistics (`ForwardRequest::linear_input_norms`).
    pub capture: Option<&'a InputNorms>,
    /// Each linear weight stored transposed (`[in, out]`, see [`Llama::transposed_weights`]):
    /// products of at least two rows read it instead.
    pub transposed: Option<&'a TransposedWeights>,
}

impl<'a> Pass<'a> {
    /// An inference pass (no perturbation, capture or hidden states; not training).
    pub(crate) fn inference(ids: &'a Tensor, positions: &'a Tensor, bias: &'a Tensor, transposed: Option<&'a TransposedWeights>) -> Self {
        Pass { ids, positions, bias, perturbation: None, output_hidden: false, train: false, capture: None, transposed }
    }
}

/// Every matrix weight of a model stored transposed and contiguous (`[in, out]`), by name.
///
/// Why: candle's CPU matmul hands `x Wᵀ` to gemm, which computes it as `W xᵀ` with `W` as its
/// left operand. Stored `[out, in]`, `W` has no unit stride along its rows there, so gemm packs
/// (copies) all of it before every product; while decoding (a few rows against the whole
/// weight) that copy was 53% of the time. Stored `[in, out]` the rows are unit-stride and gemm
/// reads the weight in place for up to 96 input rows. The values, the kernel and the order of
/// every sum are the same, so each product is bit for bit the same where
/// [`ops::transposed_alike`] says so (a single row takes gemm's matrix-vector path and small
/// products a dot-product kernel, which depend on the layout: those keep the stored weight).
/// f32 on the CPU only. Checked on the model's shapes by the `ops` unit test and on whole
/// answers in `crates/model/tests/smollm2.rs`.
pub(crate) type TransposedWeights = BTreeMap<String, Tensor>;

/// `Σ_tokens x_j²` of each linear module's input, over the tokens where `real` (`[b, t, 1]`) is 1.
pub(crate) struct InputNorms {
    pub real: Tensor,
    pub norms: std::cell::RefCell<BTreeMap<String, Tensor>>,
}

impl InputNorms {
    fn add(&self, module: &str, x: &Tensor) -> Result<()> {
        let d = x.dim(candle_core::D::Minus1)?;
        let sq = x.detach().to_dtype(DType::F32)?.sqr()?.broadcast_mul(&self.real)?.reshape(((), d))?.sum(0)?;
        let mut norms = self.norms.borrow_mut();
        let total = match norms.remove(module) {
            Some(prev) => (prev + sq)?,
            None => sq,
        };
        norms.insert(module.to_string(), total);
        Ok(())
    }
}

impl Llama {
    /// Builds a model from named weights; every expected weight must be present with its shape
    /// and finite. Errors do not name a file: the loaders that read one add it.
    pub fn from_weights(
        cfg: LlamaConfig,
        mut weights: BTreeMap<String, Tensor>,
        tokenizer: TextTokenizer,
        info_name: &str,
        format: safetune_core::PromptFormat,
        device: &Device,
    ) -> Result<Self> {
        // The layer count must match the weights present before anything is sized from it.
        let present = weights
            .keys()
            .filter_map(|k| k.strip_prefix("model.layers.")?.split_once('.')?.0.parse::<usize>().ok())
            .max()
            .map_or(0, |l| l + 1);
        if cfg.num_layers != present {
            bail!("the configuration has {} layers, the weights {present}", cfg.num_layers);
        }
        let mut params = BTreeMap::new();
        for (name, shape) in cfg.weight_shapes() {
            let t = weights.remove(&name).ok_or_else(|| anyhow!("missing weight `{name}`"))?;
            if t.dims() != shape.as_slice() {
                bail!("weight `{name}` has shape {:?}, expected {:?}", t.dims(), shape);
            }
            if !safetune_core::model::all_finite(&t)? {
                bail!("weight `{name}` has non-finite values (NaN or infinity)");
            }
            params.insert(name, Param::Frozen(t.to_dtype(DType::F32)?.to_device(device)?));
        }
        let (cos, sin) = rope_tables(&cfg, device)?;
        let info = ModelInfo {
            name: info_name.to_string(),
            num_layers: cfg.num_layers,
            hidden_size: cfg.hidden_size,
            vocab_size: cfg.vocab_size,
            format,
        };
        Ok(Self {
            cfg,
            info,
            device: device.clone(),
            params,
            adapters: BTreeMap::new(),
            tokenizer: Arc::new(tokenizer),
            cos,
            sin,
            bf16: None,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Uses another prompt format (for example the Alpaca template) for this model.
    pub fn set_format(&mut self, format: safetune_core::PromptFormat) {
        self.info.format = format;
    }

    /// Renames the model (`ModelInfo::name`).
    pub fn set_info_name(&mut self, name: &str) {
        self.info.name = name.to_string();
    }

    pub fn device_ref(&self) -> &Device {
        &self.device
    }

    pub fn text_tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// A deep copy with its own frozen weights and no adapters (for a reference model).
    pub fn frozen_copy(&self) -> Result<Self> {
        let params = self.params.iter().map(|(k, p)| Ok((k.clone(), Param::Frozen(p.tensor().detach().copy()?)))).collect::<Result<_>>()?;
        Ok(Self {
            cfg: self.cfg.clone(),
            info: self.info.clone(),
            device: self.device.clone(),
            params,
            adapters: BTreeMap::new(),
            tokenizer: self.tokenizer.clone(),
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            bf16: None,
        })
    }

    /// Products against frozen matrix weights in bf16 (`on`: a bf16 copy of each, kept until
    /// switched off) or in f32 (`!on`, the default). Only the CPU holds bf16 products; a model
    /// with no frozen matrix weight (full fine-tuning) has nothing to multiply in bf16, so
    /// asking for it is an error rather than a silent f32 run.
    pub fn set_bf16_products(&mut self, on: bool) -> Result<()> {
        if !on {
            self.bf16 = None;
            return Ok(());
        }
        if !self.device.is_cpu() {
            bail!("precision = \"bf16\": bf16 products are built for the CPU only (this model is on {:?})", self.device);
        }
        let copies: BTreeMap<String, Tensor> = self
            .params
            .iter()
            .filter_map(|(k, p)| match p {
                // The embedding matrix is a product's weight only as the tied output layer.
                Param::Frozen(t) if t.rank() == 2 && (k != "model.embed_tokens.weight" || self.cfg.tie_embeddings) => Some((k, t)),
                _ => None,
            })
            .map(|(k, t)| Ok((k.clone(), t.to_dtype(DType::BF16)?.contiguous()?)))
            .collect::<Result<_>>()?;
        if copies.is_empty() {
            bail!("precision = \"bf16\" multiplies frozen weights in bf16, and this stage trains every weight (full fine-tuning): use precision = \"f32\"");
        }
        self.bf16 = Some(copies);
        Ok(())
    }

    fn w(&self, name: &str) -> Result<&Tensor> {
        self.params.get(name).map(Param::tensor).ok_or_else(|| anyhow!("no weight `{name}`"))
    }

    /// A transposed copy of every matrix weight ([`TransposedWeights`]), detached: for
    /// inference passes over weights that do not change while it is held.
    pub(crate) fn transposed_weights(&self) -> Result<TransposedWeights> {
        self.params
            .iter()
            .filter(|(_, p)| p.tensor().rank() == 2 && p.tensor().dtype() == DType::F32)
            .map(|(k, p)| Ok((k.clone(), p.tensor().detach().t()?.contiguous()?)))
            .collect()
    }

    /// `x Wᵀ` of the weight `name`: from its transposed copy when the pass holds one and the
    /// product has two rows or more (bit for bit the same, see [`TransposedWeights`]).
    fn product(&self, name: &str, x: &Tensor, transposed: Option<&TransposedWeights>) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1);
        match transposed.and_then(|t| t.get(name)) {
            Some(wt) if ops::transposed_alike(rows, wt.dims2()?) && !x.track_op() => ops::linear_transposed(x, wt),
            _ => ops::linear(x, self.frozen_or_bf16(name)?),
        }
    }

    /// The weight `name` a product reads: its bf16 copy while products run in bf16
    /// ([`Llama::set_bf16_products`]), else the weight itself.
    fn frozen_or_bf16(&self, name: &str) -> Result<&Tensor> {
        match self.bf16.as_ref().and_then(|m| m.get(name)) {
            Some(w) => Ok(w),
            None => self.w(name),
        }
    }

    fn linear(&self, module: &str, x: &Tensor, p: &Pass) -> Result<Tensor> {
        let train = p.train;
        if let Some(c) = p.capture {
            c.add(module, x)?;
        }
        let weight = format!("{module}.weight");
        let bias = self.params.get(&format!("{module}.bias"));
        let adapter = self.adapters.get(module);
        // A low-rank adapter over a frozen weight: its product added into the frozen one in one op.
        if let (Some(a), None) = (adapter, bias) {
            let w = self.frozen_or_bf16(&weight)?;
            if ops::low_rank_fusable(x, w) {
                if let Some(lr) = a.low_rank(x, train)? {
                    return ops::linear_low_rank(x, w, &lr);
                }
            }
        }
        let mut y = self.product(&weight, x, p.transposed)?;
        if let Some(b) = bias {
            y = y.broadcast_add(b.tensor())?;
        }
        if let Some(a) = adapter {
            y = (y + a.delta(x, train)?)?;
        }
        Ok(y)
    }

    fn attention(&self, l: usize, x: &Tensor, p: &Pass, cos: &Tensor, sin: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let (h, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let pre = format!("model.layers.{l}.self_attn");
        let q = self.linear(&format!("{pre}.q_proj"), x, p)?.reshape((b, t, h, hd))?.transpose(1, 2)?;
        let k = self.linear(&format!("{pre}.k_proj"), x, p)?.reshape((b, t, kvh, hd))?.transpose(1, 2)?;
        let v = self.linear(&format!("{pre}.v_proj"), x, p)?.reshape((b, t, kvh, hd))?.transpose(1, 2)?;
        let q = ops::rope(&q.contiguous()?, cos, sin)?;
        let mut k = ops::rope(&k.contiguous()?, cos, sin)?;
        let mut v = v.contiguous()?;
        if let Some(cache) = cache {
            if let Some((pk, pv)) = &cache[l] {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            cache[l] = Some((k.clone(), v.clone()));
        }
        let rep = h / kvh;
        // Group the query heads that share a key/value head instead of copying k and v.
        let q = q.reshape((b, kvh, rep * t, hd))?;
        let out = ops::attention(&q, &k, &v, p.bias, 1.0 / (hd as f64).sqrt())?;
        let out = out.reshape((b, h, t, hd))?.transpose(1, 2)?.reshape((b, t, h * hd))?;
        self.linear(&format!("{pre}.o_proj"), &out, p)
    }

    fn mlp(&self, l: usize, x: &Tensor, p: &Pass) -> Result<Tensor> {
        let pre = format!("model.layers.{l}.mlp");
        let gate = self.linear(&format!("{pre}.gate_proj"), x, p)?;
        let up = self.linear(&format!("{pre}.up_proj"), x, p)?;
        self.linear(&format!("{pre}.down_proj"), &ops::swiglu(&gate, &up)?, p)
    }

    /// Runs the decoder stack; returns the final-normed hidden states and,
    /// if asked, each layer's output.
    pub(crate) fn run(&self, p: &Pass, mut cache: Option<&mut KvCache>) -> Result<(Tensor, Vec<Tensor>)> {
        let (b, t) = p.ids.dims2()?;
        let d = self.cfg.hidden_size;
        let emb = self.w("model.embed_tokens.weight")?;
        let mut x = emb.index_select(&p.ids.flatten_all()?, 0)?.reshape((b, t, d))?;
        let half = self.cfg.head_dim / 2;
        let pos = p.positions.flatten_all()?;
        let cos = self.cos.index_select(&pos, 0)?.reshape((b, 1, t, half))?;
        let sin = self.sin.index_select(&pos, 0)?.reshape((b, 1, t, half))?;
        let eps = self.cfg.rms_eps;
        let mut hidden = Vec::new();
        if let Some(pert) = p.perturbation {
            if pert.tensors.len() != self.cfg.num_layers {
                bail!("perturbation has {} tensors for {} layers", pert.tensors.len(), self.cfg.num_layers);
            }
        }
        let at = |site: PerturbationSite| p.perturbation.filter(|q| q.site == site).map(|q| q.tensors);
        for l in 0..self.cfg.num_layers {
            let pre = format!("model.layers.{l}");
            let h = ops::rms_norm(&x, self.w(&format!("{pre}.input_layernorm.weight"))?, eps)?;
            let mut a = self.attention(l, &h, p, &cos, &sin, cache.as_deref_mut())?;
            if let Some(e) = at(PerturbationSite::AttentionOutput) {
                a = a.broadcast_add(&e[l])?;
            }
            x = (x + a)?;
            let h = ops::rms_norm(&x, self.w(&format!("{pre}.post_attention_layernorm.weight"))?, eps)?;
            x = (&x + self.mlp(l, &h, p)?)?;
            if let Some(e) = at(PerturbationSite::LayerOutput) {
                x = x.broadcast_add(&e[l])?;
            }
            if p.output_hidden {
                hidden.push(x.clone());
            }
        }
        Ok((ops::rms_norm(&x, self.w("model.norm.weight")?, eps)?, hidden))
    }

    /// Vocabulary logits for hidden states `[.., d]`.
    pub(crate) fn lm_head(&self, h: &Tensor) -> Result<Tensor> {
        self.lm_head_with(h, None)
    }

    /// [`lm_head`](Self::lm_head), from the transposed weights when given.
    pub(crate) fn lm_head_with(&self, h: &Tensor, transposed: Option<&TransposedWeights>) -> Result<Tensor> {
        let name = if self.cfg.tie_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        self.product(name, h, transposed)
    }

    pub(crate) fn rope_positions(mask: Option<&Tensor>, b: usize, t: usize, device: &Device) -> Result<Tensor> {
        Ok(match mask {
            None => Tensor::arange(0u32, t as u32, device)?.unsqueeze(0)?.broadcast_as((b, t))?.contiguous()?,
            Some(m) => {
                let c = m.to_dtype(DType::F32)?.cumsum(1)?;
                (c - 1.0)?.clamp(0f32, f32::MAX)?.to_dtype(DType::U32)?
            }
        })
    }
}

fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let inv: Vec<f32> = cfg.rope_inv_freq();
    let n = cfg.rope_positions();
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((Tensor::from_vec(cos, (n, half), device)?, Tensor::from_vec(sin, (n, half), device)?))
}
