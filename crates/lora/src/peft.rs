//! Python peft's on-disk layout: `adapter_config.json` and
//! `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_A.weight` (`[r, in]`) and `lora_B.weight` (`[out, r]`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::config::LoraConfig;
use safetune_core::{CausalLm, Result};
use serde::{Deserialize, Serialize};

use crate::LoraAdapter;

#[derive(Serialize, Deserialize)]
struct AdapterConfig {
    peft_type: String,
    task_type: String,
    r: usize,
    lora_alpha: f64,
    lora_dropout: f64,
    target_modules: Targets,
    /// Rank-stabilised LoRA: scale `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    use_rslora: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    use_dora: bool,
    /// Per-module rank and alpha: peft matches each key, in the file's order, against a module
    /// name as the regular expression `(.*\.)?(key)$`; the first that matches wins.
    #[serde(default, skip_serializing)]
    rank_pattern: Option<InOrder<usize>>,
    #[serde(default, skip_serializing)]
    alpha_pattern: Option<InOrder<f64>>,
    #[serde(default)]
    bias: String,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    inference_mode: bool,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
}

/// peft's `target_modules`: module names, or one regular expression (the tensors name the
/// modules an adapter has either way).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Targets {
    Names(Vec<String>),
    Regex(String),
}

/// A JSON object's entries in the order the file has them (peft's patterns depend on it).
struct InOrder<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for InOrder<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Entries<T> {
            type Value = InOrder<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of module patterns")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> std::result::Result<InOrder<T>, M::Error> {
                let mut v = Vec::new();
                while let Some(entry) = m.next_entry()? {
                    v.push(entry);
                }
                Ok(InOrder(v))
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

const PREFIX: &str = "base_model.model.";

/// Writes the model's adapters to `dir` in peft's layout (atomically per file).
pub fn save_peft(model: &dyn CausalLm, cfg: &LoraConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let vars = model.trainable();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut targets = std::collections::BTreeSet::new();
    for (name, var) in &vars {
        if let Some(module) = name.strip_prefix(PREFIX).and_then(|n| n.strip_suffix(".lora_A.weight")) {
            targets.insert(module.rsplit('.').next().unwrap_or(module).to_string());
        }
        if name.starts_with(PREFIX) {
            tensors.insert(name.clone(), var.as_tensor().clone());
        }
    }
    if tensors.is_empty() {
        bail!("the model has no adapters to save");
    }
    let config = AdapterConfig {
        peft_type: "LORA".into(),
        task_type: "CAUSAL_LM".into(),
        r: cfg.r,
        lora_alpha: cfg.alpha,
        lora_dropout: cfg.dropout,
        target_modules: Targets::Names(targets.into_iter().collect()),
        use_rslora: false,
        use_dora: false,
        rank_pattern: None,
        alpha_pattern: None,
        bias: "none".into(),
        fan_in_fan_out: false,
        inference_mode: true,
        base_model_name_or_path: Some(model.info().name.clone()),
    };
    write_safetensors(&dir.join("adapter_model.safetensors"), &tensors)?;
    let tmp = dir.join("adapter_config.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&config)?)?;
    std::fs::rename(&tmp, dir.join("adapter_config.json"))?;
    Ok(())
}

pub use safetune_core::files::write_safetensors;

/// One module's adapter pair read from a PEFT directory, with the module's own rank and scale
/// (as a `LoraConfig` whose `alpha / r` is that scale).
type Pair = (String, Tensor, Tensor, LoraConfig);

/// The value of the first pattern key (peft's `rank_pattern`/`alpha_pattern`, in the file's
/// order) that matches `module` as peft's `get_pattern_key` matches it, `(.*\.)?(key)$`.
fn pattern_value<T: Copy>(patterns: &Option<InOrder<T>>, module: &str, field: &str) -> Result<Option<T>> {
    for (key, v) in patterns.iter().flat_map(|p| &p.0) {
        let re =
            regex::Regex::new(&format!("^(.*\\.)?({key})$")).map_err(|e| anyhow!("{field}: `{key}` is not a regular expression: {e}"))?;
        if re.is_match(module) {
            return Ok(Some(*v));
        }
    }
    Ok(None)
}

/// Reads and checks a PEFT LoRA directory: its config, and per module a pair of finite tensors
/// whose rank is the config's `r` (or its `rank_pattern` entry). `use_rslora`, `rank_pattern`
/// and `alpha_pattern` are honoured; DoRA is refused.
fn read_peft(dir: &Path, device: &Device) -> Result<(LoraConfig, Vec<Pair>)> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?;
    let c: AdapterConfig = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", cfg_path.display()))?;
    if c.peft_type != "LORA" {
        bail!("{}: peft_type `{}` is not LORA", cfg_path.display(), c.peft_type);
    }
    if c.use_dora {
        bail!(
            "{}: use_dora: DoRA adapters are not supported (their magnitude vectors change the weight differently); only plain LoRA loads",
            cfg_path.display()
        );
    }
    let targets = match c.target_modules {
        Targets::Names(names) => names,
        Targets::Regex(_) => Vec::new(), // filled from the tensors below
    };
    let mut cfg = LoraConfig { r: c.r, alpha: c.lora_alpha, dropout: c.lora_dropout, targets };
    let st = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&st, device).map_err(|e| anyhow!("{}: {e}", st.display()))?;
    let mut by_module: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (k, t) in tensors {
        let rest = k.strip_prefix(PREFIX).ok_or_else(|| anyhow!("{}: unexpected key `{k}`", st.display()))?;
        let rest = rest.replace(".default.", ".");
        if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            by_module.entry(m.to_string()).or_default().0 = Some(t.to_dtype(candle_core::DType::F32)?);
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            by_module.entry(m.to_string()).or_default().1 = Some(t.to_dtype(candle_core::DType::F32)?);
        } else {
            bail!("{}: unexpected key `{k}`", st.display());
        }
    }
    if cfg.r == 0 || !(cfg.alpha.is_finite() && cfg.alpha > 0.0) {
        bail!("{}: r = {} and lora_alpha = {} must be positive", cfg_path.display(), cfg.r, cfg.alpha);
    }
    let mut pairs = Vec::new();
    let at = |e: safetune_core::anyhow::Error| anyhow!("{}: {e}", cfg_path.display());
    for (module, pair) in by_module {
        let (Some(a), Some(b)) = pair else { bail!("{}: `{module}` lacks lora_A or lora_B", st.display()) };
        let r = pattern_value(&c.rank_pattern, &module, "rank_pattern").map_err(at)?.unwrap_or(cfg.r);
        let alpha = pattern_value(&c.alpha_pattern, &module, "alpha_pattern").map_err(at)?.unwrap_or(cfg.alpha);
        if r == 0 || !(alpha.is_finite() && alpha > 0.0) {
            bail!("{}: `{module}`: r = {r} and alpha = {alpha} must be positive", cfg_path.display());
        }
        // Config and tensors must agree (a rank-4 adapter under `r = 64` would load with a
        // 16× wrong scale), and every value must be finite.
        let (ra, rb) = (a.dims2()?.0, b.dims2()?.1);
        if ra != r || rb != r {
            bail!("{}: `{module}` has rank {ra} (lora_A) / {rb} (lora_B), the config says r = {r}", st.display());
        }
        for (part, t) in [("lora_A", &a), ("lora_B", &b)] {
            if !safetune_core::model::all_finite(t)? {
                bail!("{}: `{module}.{part}` has non-finite values (NaN or infinity)", st.display());
            }
        }
        // The adapter's scale is `alpha / r`; rsLoRA's is `alpha / sqrt(r)`.
        let scale = if c.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        let own = LoraConfig { r, alpha: scale * r as f64, dropout: cfg.dropout, targets: Vec::new() };
        pairs.push((module, a, b, own));
    }
    if cfg.targets.is_empty() {
        let mut names: Vec<String> = pairs.iter().map(|(m, ..)| m.rsplit('.').next().unwrap_or(m).to_string()).collect();
        names.sort();
        names.dedup();
        cfg.targets = names;
    }
    Ok((cfg, pairs))
}

/// Checks a PEFT LoRA directory as [`load_peft`] does, without a model (commands run it
/// before writing anything).
pub fn check_peft(dir: &Path) -> Result<LoraConfig> {
    Ok(read_peft(dir, &Device::Cpu)?.0)
}

/// Loads a peft LoRA directory and attaches its adapters; returns the config.
pub fn load_peft(model: &mut dyn CausalLm, dir: &Path, device: &Device) -> Result<LoraConfig> {
    let (cfg, pairs) = read_peft(dir, device)?;
    let st = dir.join("adapter_model.safetensors");
    let dims: BTreeMap<String, Vec<usize>> = model.weights().into_iter().map(|(n, w)| (n, w.dims().to_vec())).collect();
    for (i, (module, a, b, own)) in pairs.into_iter().enumerate() {
        // A is r × in, B is out × r for the module's out × in weight.
        let w =
            dims.get(&format!("{module}.weight")).ok_or_else(|| anyhow!("{}: no linear module `{module}` in the model", st.display()))?;
        if w.len() != 2 || a.dims()[1] != w[1] || b.dims()[0] != w[0] {
            bail!("{}: `{module}` has lora_A {:?} and lora_B {:?}, the model's weight is {:?}", st.display(), a.dims(), b.dims(), w);
        }
        let adapter = LoraAdapter::from_parts(Var::from_tensor(&a)?, Var::from_tensor(&b)?, &own, i as u64);
        model.attach_adapter(&module, Arc::new(adapter)).with_context(|| format!("{}: `{module}`", st.display()))?;
    }
    Ok(cfg)
}
