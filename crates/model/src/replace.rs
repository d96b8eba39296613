//! Weights replaced from a safetensors file (a repaired cell's tensors, a full
//! fine-tuning's whole model), checked against the model before any is read.

use std::collections::BTreeMap;
use std::path::Path;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::{CausalLm, Result};

use crate::LlamaConfig;

/// Checks a safetensors file of replacement weights against `config` without reading its data:
/// at least one tensor, each a weight of the model with its shape (any subset of them).
/// Returns their names.
pub fn check_replacements(path: &Path, config: &LlamaConfig) -> Result<Vec<String>> {
    let expected: BTreeMap<String, Vec<usize>> = config.weight_shapes().into_iter().collect();
    check_against(path, &expected)
}

fn check_against(path: &Path, expected: &BTreeMap<String, Vec<usize>>) -> Result<Vec<String>> {
    let declared = crate::safetensors_header::tensors(path)?;
    if declared.is_empty() {
        bail!("{}: holds no tensor", path.display());
    }
    for (name, shape) in &declared {
        match expected.get(name) {
            Some(e) if e != shape => bail!("{}: `{name}` has shape {shape:?}, the model's weight {e:?}", path.display()),
            None => bail!("{}: `{name}` is not a weight of the model", path.display()),
            _ => {}
        }
    }
    Ok(declared.into_iter().map(|(n, _)| n).collect())
}

/// Sets every tensor of a safetensors file as the model's weight of that name, after checking
/// the file as [`check_replacements`] does against the model's own weights and every value
/// finite. Returns the names replaced.
pub fn replace_weights(model: &mut dyn CausalLm, path: &Path) -> Result<Vec<String>> {
    let expected: BTreeMap<String, Vec<usize>> = model.weights().into_iter().map(|(n, w)| (n, w.dims().to_vec())).collect();
    let names = check_against(path, &expected)?;
    let device = model.device().clone();
    let tensors = candle_core::safetensors::load(path, &device).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    for (name, t) in tensors {
        if !safetune_core::model::all_finite(&t)? {
            bail!("{}: `{name}` holds a value that is not finite", path.display());
        }
        model.set_weight(&name, t).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    Ok(names)
}
