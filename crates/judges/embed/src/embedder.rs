//! Sentence embeddings: WordPiece tokens → BERT → mean pooling → unit length.

use std::path::Path;

use candle_core::{Device, Tensor};
use safetune_core::anyhow::anyhow;
use safetune_core::Result;
use tokenizers::Tokenizer;

use crate::bert::{mean_pool_normalized, Bert};

pub struct Embedder {
    bert: Bert,
    tokenizer: Tokenizer,
    /// Longer texts keep their first tokens (sentence-transformers' max_seq_length: 256).
    max_tokens: usize,
}

impl Embedder {
    /// `dir` holds config.json, tokenizer.json and model.safetensors.
    pub fn load(dir: &Path) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| anyhow!("{}: {e}", tok_path.display()))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| anyhow!("{}: {e}", tok_path.display()))?;
        Ok(Self { bert: Bert::load(dir)?, tokenizer, max_tokens: 256 })
    }

    /// The WordPiece ids of a text with [CLS] … [SEP], cut to the encoder's length.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| anyhow!("tokenizing: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > self.max_tokens {
            // Keep [CLS] … and the closing [SEP].
            let last = ids[ids.len() - 1];
            ids.truncate(self.max_tokens - 1);
            ids.push(last);
        }
        Ok(ids)
    }

    /// One unit-length embedding per text, in input order. Texts of similar
    /// length are batched together (the result does not depend on batching
    /// beyond float rounding).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.token_ids(t)).collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(16) {
            let t = chunk.iter().map(|&i| ids[i].len()).max().unwrap_or(1);
            let (mut flat, mut mask) = (Vec::with_capacity(chunk.len() * t), Vec::with_capacity(chunk.len() * t));
            for &i in chunk {
                flat.extend(ids[i].iter().copied().chain(std::iter::repeat_n(0, t - ids[i].len())));
                mask.extend((0..t).map(|j| if j < ids[i].len() { 1f32 } else { 0f32 }));
            }
            let ids_t = Tensor::from_vec(flat, (chunk.len(), t), &Device::Cpu)?;
            let mask_t = Tensor::from_vec(mask, (chunk.len(), t), &Device::Cpu)?;
            let pooled = mean_pool_normalized(&self.bert.forward(&ids_t, &mask_t)?, &mask_t)?.to_vec2::<f32>()?;
            for (&i, e) in chunk.iter().zip(pooled) {
                out[i] = e;
            }
            safetune_core::progress::advance(chunk.len());
        }
        Ok(out)
    }
}
