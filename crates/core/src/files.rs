//! Writing files the way every crate writes them.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Context};
use candle_core::Tensor;

use crate::Result;

/// Writes `tensors` as a safetensors file at `path` (its directory created),
/// through a temporary file renamed into place, with the usual mode of a new
/// file (candle's `save` and safetensors' own writer leave it owner-only).
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let dir = path.parent().ok_or_else(|| anyhow!("{}: no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), None).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}
