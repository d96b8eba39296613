//! Prompt-masked next-token cross-entropy.

use candle_core::{DType, Tensor, D};
use safetune_core::model::ForwardRequest;
use safetune_core::training::TokenBatch;
use safetune_core::{CausalLm, Result};

/// Mean cross-entropy over the batch's response tokens. Logits are computed
/// only at those positions. Returns the loss and, if asked, hidden states.
pub fn masked_cross_entropy(
    model: &dyn CausalLm,
    batch: &TokenBatch,
    perturbation: Option<&[Tensor]>,
    output_hidden: bool,
    train: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    let mask: Vec<f32> = batch.loss_mask.flatten_all()?.to_vec1()?;
    let positions: Vec<u32> = mask.iter().enumerate().filter(|(_, &m)| m > 0.0).map(|(i, _)| i as u32).collect();
    if positions.is_empty() {
        safetune_core::anyhow::bail!(
            "a batch has no response tokens (examples {:?}): raise max_len so answers fit after their prompts",
            batch.ids_of_examples
        );
    }
    let dev = model.device();
    let idx = Tensor::new(positions.as_slice(), dev)?;
    let out = model.forward(&ForwardRequest {
        ids: Some(&batch.ids),
        mask: Some(&batch.attention),
        output_hidden,
        perturbation,
        train,
        logits_at: Some(&idx),
    })?;
    let targets = batch.targets.flatten_all()?.index_select(&idx, 0)?;
    let logits = out.logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()?.broadcast_add(&max)?;
    let picked = logits.gather(&targets.unsqueeze(1)?, 1)?;
    Ok(((lse - picked)?.mean_all()?, out.hidden))
}
