//! safetune-model: a Llama-family decoder in candle.
//!
//! Loads GGUF files (dequantized to f32, tokenizer rebuilt from the embedded
//! vocabulary) and Hugging Face directories, trains through differentiable
//! ops, and generates in batches with a key/value cache. It implements
//! [`safetune_core::CausalLm`] and knows nothing of datasets or defenses.

mod causal_lm;
mod config;
mod export;
mod fused;
mod generate;
mod gguf;
mod hf;
mod llama;
pub mod ops;
mod products;
mod replace;
mod safetensors_header;
mod tiny;
mod tokenizer;

use std::path::Path;

use candle_core::Device;
use safetune_core::anyhow::bail;
use safetune_core::Result;

pub mod memory;
pub use causal_lm::MIN_PART;
pub use config::LlamaConfig;
pub use export::export_hf;
pub use generate::{argmax, generate_with};
pub use gguf::check_gguf;
pub use gguf::load_gguf;
pub use hf::{check_hf_dir, detect_format, load_hf_dir};
pub use llama::{Llama, Param};
pub use replace::{check_replacements, replace_weights};
pub use tiny::{tiny_model, tiny_model_shaped, tiny_model_with, tiny_tokenizer, tiny_tokenizer_with};
pub use tokenizer::{byte_alphabet, PreTokenizer, TextTokenizer};

/// Loads a model from a `.gguf` file or a Hugging Face directory.
pub fn load_model(path: &Path, device: &Device) -> Result<Llama> {
    if path.is_dir() {
        return load_hf_dir(path, device);
    }
    ensure_gguf(path)?;
    load_gguf(path, device)
}

/// What checking a model without its weights gives: the configuration, the tokenizer and the
/// prompt format that loading it would give.
pub struct CheckedModel {
    pub config: LlamaConfig,
    pub tokenizer: TextTokenizer,
    pub format: safetune_core::PromptFormat,
}

impl std::fmt::Debug for CheckedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedModel")
            .field("config", &self.config)
            .field("vocabulary", &self.tokenizer.vocab_size())
            .field("format", &self.format)
            .finish()
    }
}

/// Checks a model as [`load_model`] would, without reading its weights (seconds for any size):
/// the configuration, tokenizer and format it would load, or the same error. Commands run it
/// before writing anything.
pub fn check_model(path: &Path) -> Result<CheckedModel> {
    if path.is_dir() {
        return check_hf_dir(path);
    }
    ensure_gguf(path)?;
    check_gguf(path)
}

/// A path that is not a directory must be a GGUF file.
fn ensure_gguf(path: &Path) -> Result<()> {
    if path.extension().is_some_and(|e| e == "gguf") {
        Ok(())
    } else if !path.exists() {
        bail!("{}: no such model file or directory", path.display())
    } else {
        bail!("{}: not a model (expected a .gguf file or a directory with config.json)", path.display())
    }
}

/// The compute device: CUDA when built with `cuda` and one is present, else CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}

/// A loaded checkpoint behind the model API: what the runtime holds, so it works with
/// any family this crate can load (today the Llama family) rather than one concrete type.
/// A new family implements [`safetune_core::CausalLm`] and this trait, and
/// [`open_checkpoint`] learns to recognise its files.
pub trait Checkpoint: safetune_core::CausalLm + Send + Sync {
    /// Writes the current weights as a Hugging Face directory (config, tokenizer, safetensors).
    fn export_hf(&self, dir: &Path) -> Result<()>;
    /// Uses another prompt format (for example the Alpaca template) for this model.
    fn set_format(&mut self, format: safetune_core::PromptFormat);
    /// Names the model as its user does (`ModelInfo::name`: a saved adapter's
    /// `base_model_name_or_path`), instead of the name inside its files.
    fn set_name(&mut self, name: &str);
}

impl Checkpoint for Llama {
    fn export_hf(&self, dir: &Path) -> Result<()> {
        export::export_hf(self, dir)
    }
    fn set_format(&mut self, format: safetune_core::PromptFormat) {
        Llama::set_format(self, format)
    }
    fn set_name(&mut self, name: &str) {
        self.set_info_name(name)
    }
}

/// Opens a `.gguf` file or a Hugging Face directory as a [`Checkpoint`].
pub fn open_checkpoint(path: &Path, device: &Device) -> Result<Box<dyn Checkpoint>> {
    Ok(Box::new(load_model(path, device)?))
}
