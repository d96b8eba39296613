//! The LoRA adapter and attaching/merging it.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use safetune_core::anyhow::bail;
use safetune_core::config::LoraConfig;
use safetune_core::rng::SeededRng;
use safetune_core::{CausalLm, LinearAdapter, LowRank, Result};

pub struct LoraAdapter {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    dropout: f64,
    rng: Mutex<SeededRng>,
}

impl LoraAdapter {
    /// PEFT's initialisation: `A` uniform in ±1/√in (Kaiming-uniform with a=√5), `B` zero.
    pub fn new(in_dim: usize, out_dim: usize, cfg: &LoraConfig, rng: &mut SeededRng, device: &Device) -> Result<Self> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a: Vec<f32> = (0..cfg.r * in_dim).map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.r, in_dim), device)?)?;
        let b = Var::zeros((out_dim, cfg.r), DType::F32, device)?;
        Ok(Self::from_parts(a, b, cfg, rng.next_u64()))
    }

    pub fn from_parts(a: Var, b: Var, cfg: &LoraConfig, seed: u64) -> Self {
        Self { a, b, scale: cfg.alpha / cfg.r as f64, dropout: cfg.dropout, rng: Mutex::new(SeededRng::new(seed)) }
    }

    fn dropout(&self, x: &Tensor) -> Result<Tensor> {
        let keep = 1.0 - self.dropout;
        let n = x.elem_count();
        let mut rng = self.rng.lock().map_err(|_| safetune_core::anyhow::anyhow!("dropout rng poisoned"))?;
        let mask: Vec<f32> = (0..n).map(|_| if rng.next_f64() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
        Ok((x * Tensor::from_vec(mask, x.shape(), x.device())?)?)
    }

    /// `h = x' Aᵀ` over the rows of `x` (`[rows, r]`), `x'` being `x` after dropout when training.
    fn down(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = if train && self.dropout > 0.0 { self.dropout(x)? } else { x.clone() };
        let in_dim = self.a.dim(1)?;
        let rows = x.elem_count() / in_dim;
        Ok(x.reshape((rows, in_dim))?.matmul(&self.a.t()?)?)
    }
}

impl LinearAdapter for LoraAdapter {
    fn delta(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.down(x, train)?;
        let y = (h.matmul(&self.b.t()?)? * self.scale)?;
        let mut dims = x.dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = self.b.dim(0)?;
        Ok(y.reshape(dims)?)
    }

    fn low_rank(&self, x: &Tensor, train: bool) -> Result<Option<LowRank>> {
        Ok(Some(LowRank { h: self.down(x, train)?, b: self.b.as_tensor().clone(), scale: self.scale }))
    }

    fn vars(&self) -> Vec<(String, Var)> {
        vec![("lora_A.weight".into(), self.a.clone()), ("lora_B.weight".into(), self.b.clone())]
    }

    fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.matmul(self.a.as_tensor())? * self.scale)?)
    }
}

/// Attaches fresh adapters to every module `cfg` targets; returns their names.
pub fn attach_lora(model: &mut dyn CausalLm, cfg: &LoraConfig, seed: u64) -> Result<Vec<String>> {
    cfg.validate("lora")?;
    let weights: std::collections::BTreeMap<String, Tensor> = model.weights().into_iter().collect();
    let mut rng = SeededRng::derive(seed, "lora-init");
    let mut attached = Vec::new();
    for module in model.linear_modules() {
        if !cfg.targets_module(&module) {
            continue;
        }
        let w = &weights[&format!("{module}.weight")];
        let (out_dim, in_dim) = w.dims2()?;
        if cfg.r > in_dim.min(out_dim) {
            bail!("lora.r: {} exceeds the rank of `{module}` ({out_dim} × {in_dim})", cfg.r);
        }
        let adapter = LoraAdapter::new(in_dim, out_dim, cfg, &mut rng, w.device())?;
        model.attach_adapter(&module, Arc::new(adapter))?;
        attached.push(module);
    }
    if attached.is_empty() {
        bail!("lora.targets: {:?} matches no linear module of the model", cfg.targets);
    }
    Ok(attached)
}

/// Removes every adapter and adds its ΔW into the base weight.
pub fn merge_adapters(model: &mut dyn CausalLm) -> Result<Vec<String>> {
    let weights: std::collections::BTreeMap<String, Tensor> = model.weights().into_iter().collect();
    let mut merged = Vec::new();
    for (module, adapter) in model.take_adapters() {
        let name = format!("{module}.weight");
        let w = (&weights[&name] + adapter.delta_weight()?)?;
        model.set_weight(&name, w)?;
        merged.push(name);
    }
    Ok(merged)
}
