//! A tiny random-initialised model with a byte-level tokenizer, for tests.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Tensor};
use safetune_core::rng::SeededRng;
use safetune_core::{PromptFormat, Result};
use tokenizers::Tokenizer;

use crate::config::LlamaConfig;
use crate::hf::finish_tokenizer;
use crate::tokenizer::{byte_alphabet, PreTokenizer, TextTokenizer};
use crate::Llama;

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A byte-level tokenizer: 3 ChatML specials, 256 bytes, and a few merges.
pub fn tiny_tokenizer() -> Result<Tokenizer> {
    tiny_tokenizer_with(&[])
}

/// [`tiny_tokenizer`] with more merges after its own (`"Ġ A"`: ` A` one token, as MMLU's
/// answer letters are in real vocabularies).
pub fn tiny_tokenizer_with(extra_merges: &[&str]) -> Result<Tokenizer> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_alphabet().into_iter().map(|c| c.to_string()));
    let merges: Vec<&str> = ["e r", "t h", "i n", "Ġ t", "a n"].into_iter().chain(extra_merges.iter().copied()).collect();
    for &m in &merges {
        tokens.push(m.replace(' ', ""));
    }
    let special: BTreeSet<u32> = (0..SPECIALS.len() as u32).collect();
    let merges: Vec<String> = merges.iter().map(|s| s.to_string()).collect();
    TextTokenizer::byte_level_bpe(&tokens, &merges, &special, PreTokenizer::DigitsThenByteLevel)
}

/// A tiny ChatML model with seeded random weights.
pub fn tiny_model(seed: u64) -> Result<Llama> {
    tiny_model_with(seed, &[])
}

/// [`tiny_model`] over [`tiny_tokenizer_with`]`(extra_merges)` (its vocabulary, and so its
/// random weights, differ from `tiny_model`'s when there are any).
pub fn tiny_model_with(seed: u64, extra_merges: &[&str]) -> Result<Llama> {
    random_model(seed, extra_merges, |c| c)
}

/// A random model over [`tiny_tokenizer`] with the tiny configuration as `shape` changes it
/// (wider layers, more of them): for tests that need products and kernels large enough to
/// be split across threads.
pub fn tiny_model_shaped(seed: u64, shape: impl FnOnce(LlamaConfig) -> LlamaConfig) -> Result<Llama> {
    random_model(seed, &[], shape)
}

fn random_model(seed: u64, extra_merges: &[&str], shape: impl FnOnce(LlamaConfig) -> LlamaConfig) -> Result<Llama> {
    let inner = tiny_tokenizer_with(extra_merges)?;
    let cfg = shape(LlamaConfig::tiny(inner.get_vocab_size(true)));
    let mut rng = SeededRng::new(seed);
    let mut weights = BTreeMap::new();
    for (name, shape) in cfg.weight_shapes() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            (0..n).map(|_| 1.0 + 0.1 * (rng.next_f64() as f32 - 0.5)).collect()
        } else {
            let scale = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
            (0..n).map(|_| scale * (2.0 * rng.next_f64() as f32 - 1.0) * 1.7).collect()
        };
        weights.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
    }
    let tok = finish_tokenizer(inner, PromptFormat::Chatml, Some(2), None)?;
    Llama::from_weights(cfg, weights, tok, "tiny", PromptFormat::Chatml, &Device::Cpu)
}
