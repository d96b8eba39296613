//! `safetune model export`: a model with PEFT adapters merged into it, written as a
//! Hugging Face directory (config.json, model.safetensors, tokenizer.json and a
//! tokenizer_config.json whose chat template renders prompts as safetune does), so
//! transformers, vLLM or any other tool loads exactly the weights a cell evaluated.

use std::path::Path;

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::Result;

/// Writes `model` (a known name, a .gguf file or a HF directory) with its `parts` (adapters
/// merged in order, then weights replaced) to `out`, which must not exist yet or be empty.
/// Written beside it first and moved into place, so a failure leaves nothing half-written.
pub fn export(model: &str, parts: &crate::prepare::AddedWeights, out: &Path) -> Result<String> {
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("--out: {} exists and is not empty", out.display());
    }
    let path = crate::fetch::resolve_model(model, true)?;
    parts.check(&safetune_model::check_model(&path)?.config)?;
    let m = crate::prepare::model_with(&path, crate::spec::TemplateChoice::Model, parts)?;
    let name = out.file_name().ok_or_else(|| anyhow!("--out: {} names no directory", out.display()))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("--out: cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = m.export_hf(&tmp).and_then(|()| {
        if out.exists() {
            std::fs::remove_dir(out).with_context(|| format!("--out: cannot replace {}", out.display()))?;
        }
        std::fs::rename(&tmp, out).with_context(|| format!("--out: cannot write {}", out.display()))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(out.display().to_string())
}
