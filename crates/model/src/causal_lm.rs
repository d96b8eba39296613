//! `CausalLm` for [`Llama`]: the interface the rest of safetune sees (forward,
//! generation, weights, adapters), over the decoder in `llama.rs` and the
//! decoding loop in `generate.rs`.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::model::{ForwardOutput, ForwardRequest, ModelInfo};
use safetune_core::{CausalLm, GenerationParams, LinearAdapter, Result, Tokenize};

use crate::llama::{InputNorms, Llama, Param, Pass};
use crate::ops;

/// The fewest tokens a part of a sequence run on its own may have for its rows to come out
/// bit for bit as in the whole sequence. gemm (0.19, under candle's CPU matmul) takes other
/// code paths for small products — a dot-product kernel when rows × columns ≤ 256, inner
/// blocks of 512 instead of its balanced ones when rows and columns are both ≤ 64 — and a
/// row's rounding then depends on how many rows there are. From 65 rows up every product of
/// the decoder (linear layers, adapters, attention scores and the attention-weighted sum)
/// takes the blocked kernel, whose inner blocking depends on the inner dimension alone.
pub const MIN_PART: usize = 65;

/// A lower bound, on any machine, of the first inner block of the attention-weighted sum over
/// `t` keys. gemm cuts an inner dimension `k` into `ceil(k / ceil(k / c))`-long blocks, `c` ≥ 512
/// from the cache sizes. In the whole sequence a token's weighted sum ends with blocks whose
/// weights are all masked to zero (they leave it as it is) exactly when the token lies in the
/// first block; a head run on its own must end there, or its last tokens' values would be
/// summed in another grouping than the whole sequence's.
fn first_inner_block(t: usize) -> usize {
    if t <= 512 {
        t
    } else {
        t.div_ceil(t.div_ceil(512))
    }
}

impl Llama {
    /// [`CausalLm::last_logits_sharing`] with parts of at least `min_part` tokens ([`MIN_PART`]
    /// there) and heads ending in the first inner block when `block_bound` (there always):
    /// other values only show in tests why those are the limits.
    #[doc(hidden)]
    pub fn last_logits_split(&self, seqs: &[Vec<u32>], shared: usize, min_part: usize, block_bound: bool) -> Result<Tensor> {
        let Some(first) = seqs.first() else { bail!("next-token logits of no sequence") };
        if seqs.iter().any(|s| s.len() < shared || s[..shared] != first[..shared]) {
            bail!("next-token logits: the sequences do not share their first {shared} tokens");
        }
        let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if longest > self.cfg.rope_positions() {
            bail!("sequence of {longest} tokens exceeds the model's {} positions", self.cfg.rope_positions());
        }
        // Where each sequence's rest starts: as late as the shared tokens allow, but with a
        // rest of `min_part` tokens at least; the cache holds the longest such head.
        let bound = |t: usize| if block_bound { first_inner_block(t) } else { t };
        let split = |s: &Vec<u32>| shared.min(s.len().saturating_sub(min_part)).min(bound(s.len()));
        let head = seqs.iter().map(split).max().unwrap_or(0);
        if head < min_part || seqs.len() < 2 {
            return safetune_core::model::last_logits_each(self, seqs);
        }
        let dev = &self.device;
        let pass = |ids: &[u32], from: usize, cache: &mut crate::llama::KvCache| -> Result<Tensor> {
            let t = ids.len();
            let ids = Tensor::new(ids, dev)?.unsqueeze(0)?;
            let positions = Tensor::arange(from as u32, (from + t) as u32, dev)?.unsqueeze(0)?;
            let bias = ops::attention_bias(None, 1, t, from + t, dev)?;
            Ok(self.run(&Pass::inference(&ids, &positions, &bias, None), Some(cache))?.0)
        };
        let mut cache: crate::llama::KvCache = vec![None; self.cfg.num_layers];
        pass(&first[..head], 0, &mut cache)?;
        let mut rows = Vec::with_capacity(seqs.len());
        for s in seqs {
            let at = split(s);
            if at < min_part {
                rows.push(safetune_core::model::last_logits_each(self, std::slice::from_ref(s))?);
                continue;
            }
            let mut mine = cache
                .iter()
                .map(|c| c.as_ref().map(|(k, v)| Ok::<_, candle_core::Error>((k.narrow(2, 0, at)?, v.narrow(2, 0, at)?))).transpose())
                .collect::<candle_core::Result<crate::llama::KvCache>>()?;
            let h = pass(&s[at..], at, &mut mine)?;
            let t = h.dim(1)?;
            let last = Tensor::new(&[(t - 1) as u32], dev)?;
            rows.push(self.lm_head(&h.reshape((t, self.cfg.hidden_size))?.index_select(&last, 0)?)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}

impl CausalLm for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn tokenizer(&self) -> &dyn Tokenize {
        self.tokenizer.as_ref()
    }
    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, req: &ForwardRequest) -> Result<ForwardOutput> {
        let ids = req.ids.ok_or_else(|| anyhow!("forward: no input ids"))?;
        let (b, t) = ids.dims2()?;
        if t > self.cfg.rope_positions() {
            bail!("sequence of {t} tokens exceeds the model's {} positions", self.cfg.rope_positions());
        }
        let positions = Self::rope_positions(req.mask, b, t, &self.device)?;
        let bias = ops::attention_bias(req.mask, b, t, t, &self.device)?;
        let capture = match req.linear_input_norms {
            false => None,
            true => {
                let real = match req.mask {
                    Some(m) => m.to_dtype(DType::F32)?.unsqueeze(2)?,
                    None => Tensor::ones((b, t, 1), DType::F32, &self.device)?,
                };
                Some(InputNorms { real, norms: Default::default() })
            }
        };
        let pass = Pass {
            ids,
            positions: &positions,
            bias: &bias,
            perturbation: req.perturbation,
            output_hidden: req.output_hidden,
            train: req.train,
            capture: capture.as_ref(),
            transposed: None,
        };
        let (h, hidden) = self.run(&pass, None)?;
        let logits = match req.logits_at {
            Some(idx) => self.lm_head(&h.reshape((b * t, self.cfg.hidden_size))?.index_select(idx, 0)?)?,
            None => self.lm_head(&h)?,
        };
        let linear_input_norms = capture.map(|c| c.norms.into_inner()).unwrap_or_default();
        Ok(ForwardOutput { logits, hidden, linear_input_norms })
    }

    fn weights(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|(k, p)| (k.clone(), p.tensor().clone())).collect()
    }

    fn set_weight(&mut self, name: &str, value: Tensor) -> Result<()> {
        let old = self.params.get(name).ok_or_else(|| anyhow!("no weight `{name}`"))?;
        if old.tensor().dims() != value.dims() {
            bail!("weight `{name}`: shape {:?} does not match {:?}", value.dims(), old.tensor().dims());
        }
        let value = value.to_dtype(DType::F32)?.to_device(&self.device)?.detach();
        self.params.insert(name.to_string(), Param::Frozen(value));
        Ok(())
    }

    fn linear_modules(&self) -> Vec<String> {
        self.cfg.linear_modules()
    }

    fn attach_adapter(&mut self, module: &str, adapter: Arc<dyn LinearAdapter>) -> Result<()> {
        if !self.params.contains_key(&format!("{module}.weight")) || module.ends_with("embed_tokens") {
            bail!("no linear module `{module}`");
        }
        self.adapters.insert(module.to_string(), adapter);
        Ok(())
    }

    fn take_adapters(&mut self) -> Vec<(String, Arc<dyn LinearAdapter>)> {
        std::mem::take(&mut self.adapters).into_iter().collect()
    }

    fn set_precision(&mut self, precision: safetune_core::config::Precision) -> Result<()> {
        self.set_bf16_products(!precision.is_f32())
    }

    fn unfreeze_all(&mut self) -> Result<Vec<(String, Var)>> {
        for p in self.params.values_mut() {
            if let Param::Frozen(t) = p {
                *p = Param::Trainable(Var::from_tensor(t)?);
            }
        }
        Ok(self.trainable())
    }

    fn freeze_all(&mut self) {
        for p in self.params.values_mut() {
            if let Param::Trainable(v) = p {
                *p = Param::Frozen(v.as_tensor().detach());
            }
        }
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = self
            .params
            .iter()
            .filter_map(|(k, p)| match p {
                Param::Trainable(v) => Some((k.clone(), v.clone())),
                Param::Frozen(_) => None,
            })
            .collect();
        for (module, a) in &self.adapters {
            for (n, var) in a.vars() {
                v.push((format!("base_model.model.{module}.{n}"), var));
            }
        }
        v
    }

    /// The shared tokens run once into a key/value cache, then each sequence's rest from a
    /// copy of it, the cache cut back where a rest would be short (see [`MIN_PART`]) or where
    /// the whole sequence's attention would group the head's sums otherwise (see
    /// `first_inner_block`). Bit for bit a whole-sequence `forward`: a token's keys and values
    /// depend on the tokens up to it only; every product a row of the rest takes part in has
    /// the same inner dimension as in the whole sequence (its attention spans all keys up to
    /// it, cached ones included); and with at least [`MIN_PART`] rows a product gives a row
    /// the same bits at any row count. Checked on the tiny model and on the real model's
    /// shapes with heads longer than 512 tokens (`crates/model/tests/{tiny,smollm2}.rs`).
    fn last_logits_sharing(&self, seqs: &[Vec<u32>], shared: usize) -> Result<Tensor> {
        self.last_logits_split(seqs, shared, MIN_PART, true)
    }

    /// One fused op on CPU f32 (`ops::target_log_probs`), the bits of the composition.
    fn target_log_probs(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        crate::ops::target_log_probs(logits, targets)
    }

    fn generate(&self, prompts: &[Vec<u32>], params: &GenerationParams) -> Result<Vec<Vec<u32>>> {
        crate::generate::generate(self, prompts, params, &|_, _| false)
    }

    fn generate_until(
        &self,
        prompts: &[Vec<u32>],
        params: &GenerationParams,
        settled: &safetune_core::Settled<'_>,
    ) -> Result<Vec<Vec<u32>>> {
        crate::generate::generate(self, prompts, params, settled)
    }
}
