//! Writing files the way every crate writes them: atomically, and safetensors through that.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Context};
use candle_core::Tensor;

use crate::Result;

/// Writes a file atomically: a temporary sibling, then rename (its directory created).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, contents).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// Writes `tensors` as a safetensors file at `path` with [`write_atomic`], so it has
/// the usual mode of a new file (candle's `save` and safetensors' own writer leave
/// it owner-only).
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), None).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    write_atomic(path, &bytes)
}
