//! A BERT encoder (inference only) for sentence-transformers checkpoints such
//! as all-MiniLM-L6-v2: `config.json` + `model.safetensors` in one directory.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{layer_norm, linear, LayerNorm, Linear, VarBuilder};
use safetune_core::anyhow::{anyhow, Context};
use safetune_core::Result;

#[derive(Debug, serde::Deserialize)]
struct Config {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

pub struct Bert {
    words: Tensor,
    positions: Tensor,
    types: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
}

impl Bert {
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?;
        let cfg: Config = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", cfg_path.display()))?;
        if cfg.hidden_act.as_deref().is_some_and(|a| a != "gelu") {
            return Err(anyhow!(
                "{}: hidden_act `{}` is not supported (gelu only)",
                cfg_path.display(),
                cfg.hidden_act.unwrap_or_default()
            ));
        }
        let weights = dir.join("model.safetensors");
        // SAFETY: the file is mapped read-only and not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu) }
            .with_context(|| format!("{}: cannot load", weights.display()))?;
        let h = cfg.hidden_size;
        let e = vb.pp("embeddings");
        let words = e.pp("word_embeddings").get_unchecked("weight")?;
        let positions = e.pp("position_embeddings").get_unchecked("weight")?;
        let types = e.pp("token_type_embeddings").get_unchecked("weight")?;
        let embed_norm = layer_norm(h, cfg.layer_norm_eps, e.pp("LayerNorm"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| -> Result<Layer> {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let inter_size = l.pp("intermediate.dense").get_unchecked("bias")?.dim(0)?;
                Ok(Layer {
                    query: linear(h, h, l.pp("attention.self.query"))?,
                    key: linear(h, h, l.pp("attention.self.key"))?,
                    value: linear(h, h, l.pp("attention.self.value"))?,
                    attn_out: linear(h, h, l.pp("attention.output.dense"))?,
                    attn_norm: layer_norm(h, cfg.layer_norm_eps, l.pp("attention.output.LayerNorm"))?,
                    intermediate: linear(h, inter_size, l.pp("intermediate.dense"))?,
                    output: linear(inter_size, h, l.pp("output.dense"))?,
                    out_norm: layer_norm(h, cfg.layer_norm_eps, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<_>>()
            .with_context(|| format!("{}: not a BERT checkpoint", weights.display()))?;
        Ok(Self { words, positions, types, embed_norm, layers, heads: cfg.num_attention_heads })
    }

    /// The last hidden states (b, t, h) of token ids (b, t) with a 0/1 mask (b, t).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.positions.dim(0)? {
            return Err(anyhow!("{t} tokens is more than the encoder's {} positions", self.positions.dim(0)?));
        }
        let words = self.words.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, ()))?;
        let pos = self.positions.narrow(0, 0, t)?.unsqueeze(0)?;
        let typ = self.types.narrow(0, 0, 1)?.unsqueeze(0)?;
        let mut x = self.embed_norm.forward(&words.broadcast_add(&pos)?.broadcast_add(&typ)?)?;
        // Padding gets a large negative score in every attention row.
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e4)?.reshape((b, 1, 1, t))?;
        let h = x.dim(2)?;
        let d = h / self.heads;
        for l in &self.layers {
            let split = |y: Tensor| -> Result<Tensor> { Ok(y.reshape((b, t, self.heads, d))?.transpose(1, 2)?.contiguous()?) };
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
            x = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let inner = l.intermediate.forward(&x)?.gelu_erf()?;
            x = l.out_norm.forward(&(l.output.forward(&inner)? + &x)?)?;
        }
        Ok(x)
    }
}

/// Mean of the hidden states over unmasked tokens, scaled to unit length:
/// sentence-transformers' Pooling(mean) + Normalize.
pub fn mean_pool_normalized(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = sum.broadcast_div(&count)?;
    let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(mean.broadcast_div(&norm)?)
}
