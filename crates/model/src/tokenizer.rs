//! Text ↔ ids. Wraps a Hugging Face `tokenizers::Tokenizer`, loaded from a
//! `tokenizer.json` or built from a GGUF's embedded vocabulary and merges.

use std::collections::BTreeSet;

use safetune_core::anyhow::{anyhow, Context};
use safetune_core::{Result, Tokenize};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

pub struct TextTokenizer {
    inner: Tokenizer,
    stop_ids: Vec<u32>,
    pad_id: u32,
}

/// How a byte-level BPE splits text before merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2 regex, no prefix space (Llama-3, Qwen2 use close variants).
    ByteLevel,
    /// SmolLM2 (`pre=smollm`): every digit its own piece, then GPT-2 byte level.
    DigitsThenByteLevel,
}

/// The largest tokenizer.json read (Llama 3's is 9 MB, SmolLM2's 2 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

impl TextTokenizer {
    pub fn new(inner: Tokenizer, stop_ids: Vec<u32>, pad_id: u32) -> Self {
        Self { inner, stop_ids, pad_id }
    }

    /// Reads a `tokenizer.json` (at most `MAX_TOKENIZER_BYTES`). Its JSON syntax is checked
    /// in full first: tokenizers 0.23 panics (`expect("Helper")` in its decoder's
    /// deserializer) on a file cut inside the `decoder` value, instead of erroring.
    pub fn from_file(path: &std::path::Path) -> Result<Tokenizer> {
        let bad = |e: &dyn std::fmt::Display| anyhow!("{}: not a valid tokenizer.json: {e}", path.display());
        let size = std::fs::metadata(path).map_err(|e| bad(&e))?.len();
        if size > MAX_TOKENIZER_BYTES {
            return Err(bad(&format!("{size} bytes, more than the {MAX_TOKENIZER_BYTES} a tokenizer needs")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(&e))?;
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| bad(&e))?;
        text.parse::<Tokenizer>().map_err(|e| bad(&e))
    }

    /// Builds a byte-level BPE from a vocabulary (index = id), merges
    /// (`"a b"`) and the ids of control tokens, which become special tokens.
    pub fn byte_level_bpe(tokens: &[String], merges: &[String], special: &BTreeSet<u32>, pre: PreTokenizer) -> Result<Tokenizer> {
        let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        let added: Vec<Value> = special
            .iter()
            .map(|&id| {
                json!({"id": id, "content": tokens[id as usize], "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre_tokenizer = match pre {
            PreTokenizer::ByteLevel => byte_level.clone(),
            PreTokenizer::DigitsThenByteLevel => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level.clone()]}),
        };
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        });
        let text = serde_json::to_string(&spec)?;
        text.parse::<Tokenizer>().map_err(|e| anyhow!("building the BPE tokenizer: {e}"))
    }

    /// The id of a token written as text, if it is one token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

impl Tokenize for TextTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("tokenizer: {e}")).context("decoding")
    }
    fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }
    fn pad_id(&self) -> u32 {
        self.pad_id
    }
}

/// GPT-2's byte → printable-character table used by byte-level BPE.
pub fn byte_alphabet() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars = vec!['\0'; 256];
    for &b in &printable {
        chars[b as usize] = char::from_u32(b).unwrap_or('?');
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            chars[b as usize] = char::from_u32(256 + n).unwrap_or('?');
            n += 1;
        }
    }
    printable.clear();
    chars
}
