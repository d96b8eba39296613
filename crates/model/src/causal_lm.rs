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
