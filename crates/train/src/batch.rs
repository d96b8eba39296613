//! Examples → token ids with a loss mask → padded batches.

use candle_core::{Device, Tensor};
use safetune_core::rng::SeededRng;
use safetune_core::training::TokenBatch;
use safetune_core::{Example, PromptFormat, Result, Tokenize};

/// One tokenised example: `ids` and, per id, whether it is a response token.
#[derive(Debug, Clone)]
pub struct EncodedExample {
    pub id: String,
    pub ids: Vec<u32>,
    pub is_response: Vec<bool>,
}

/// Formats an example with the model's template and tokenises it; only the
/// response and its end-of-turn marker carry loss (a `prefill` is context,
/// not target). Cut to `max_len`.
pub fn encode_example(tok: &dyn Tokenize, format: PromptFormat, ex: &Example, max_len: usize) -> Result<EncodedExample> {
    let mut prompt = format.prompt(ex.system.as_deref(), &ex.prompt);
    if let Some(p) = &ex.prefill {
        prompt.push_str(p);
    }
    let mut ids = tok.encode(&prompt)?;
    let answer = tok.encode(&format!("{}{}", ex.response, format.end_of_turn()))?;
    let mut is_response = vec![false; ids.len()];
    ids.extend(&answer);
    is_response.extend(std::iter::repeat_n(true, answer.len()));
    ids.truncate(max_len);
    is_response.truncate(max_len);
    Ok(EncodedExample { id: ex.id.clone(), ids, is_response })
}

/// Groups examples into batches of similar length: shuffle (seeded), sort
/// within windows of 16 batches, cut into batches, shuffle batch order.
pub fn make_batches(examples: &[EncodedExample], batch_size: usize, rng: &mut SeededRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    rng.shuffle(&mut order);
    let window = batch_size * 16;
    let mut batches = Vec::new();
    for chunk in order.chunks_mut(window) {
        chunk.sort_by_key(|&i| examples[i].ids.len());
        batches.extend(chunk.chunks(batch_size).map(|c| c.to_vec()));
    }
    rng.shuffle(&mut batches);
    batches
}

/// The length a batch of rows of these lengths is padded to: its longest row (at least 2, so
/// that one target follows one id).
pub fn padded_len(lens: impl IntoIterator<Item = usize>) -> usize {
    lens.into_iter().max().unwrap_or(1).max(2)
}

/// Right-pads a batch to [`padded_len`]; targets are the ids shifted left by one.
pub fn collate(examples: &[&EncodedExample], pad: u32, device: &Device) -> Result<TokenBatch> {
    let b = examples.len();
    let t = padded_len(examples.iter().map(|e| e.ids.len()));
    let mut ids = vec![pad; b * t];
    let mut attention = vec![0f32; b * t];
    let mut targets = vec![pad; b * t];
    let mut loss_mask = vec![0f32; b * t];
    for (r, e) in examples.iter().enumerate() {
        for (j, &id) in e.ids.iter().enumerate() {
            ids[r * t + j] = id;
            attention[r * t + j] = 1.0;
            if j + 1 < e.ids.len() {
                targets[r * t + j] = e.ids[j + 1];
                loss_mask[r * t + j] = if e.is_response[j + 1] { 1.0 } else { 0.0 };
            }
        }
    }
    Ok(TokenBatch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        attention: Tensor::from_vec(attention, (b, t), device)?,
        targets: Tensor::from_vec(targets, (b, t), device)?,
        loss_mask: Tensor::from_vec(loss_mask, (b, t), device)?,
        ids_of_examples: examples.iter().map(|e| e.id.clone()).collect(),
    })
}
