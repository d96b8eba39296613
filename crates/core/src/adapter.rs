//! The seam between a model's linear layers and parameter-efficient adapters.

use candle_core::{Tensor, Var};

/// Something added to a frozen linear layer: `y = x Wᵀ + delta(x)`.
/// The model calls it; an adapter crate (LoRA) implements it.
pub trait LinearAdapter: Send + Sync {
    /// The adapter's additive output for input `x` (`[.., in]` → `[.., out]`).
    /// `train` enables stochastic parts such as dropout.
    fn delta(&self, x: &Tensor, train: bool) -> crate::Result<Tensor>;
    /// The trainable tensors, named relative to the adapted module
    /// (for LoRA: `lora_A.weight`, `lora_B.weight`).
    fn vars(&self) -> Vec<(String, Var)>;
    /// The dense weight update ΔW (`[out, in]`) this adapter is equivalent to.
    fn delta_weight(&self) -> crate::Result<Tensor>;
}
