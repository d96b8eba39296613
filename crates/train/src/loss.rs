//! Prompt-masked next-token cross-entropy.

use candle_core::Tensor;
use safetune_core::model::Perturbation;
use safetune_core::training::{response_log_probs, TokenBatch};
use safetune_core::{CausalLm, Result};

/// Mean cross-entropy over the batch's response tokens. Logits are computed
/// only at those positions. Returns the loss and, if asked, hidden states.
pub fn masked_cross_entropy(
    model: &dyn CausalLm,
    batch: &TokenBatch,
    perturbation: Option<Perturbation>,
    output_hidden: bool,
    train: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    let (lp, hidden) = response_log_probs(model, batch, perturbation, output_hidden, train)?;
    Ok((lp.neg()?.mean_all()?, hidden))
}
