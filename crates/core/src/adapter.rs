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
    /// The adapter as a low-rank product for input `x`, when it is one:
    /// `delta(x) = scale · h Bᵀ` (see [`LowRank`]), so that the model can add
    /// the product into its frozen layer's output in one op. `None` (the
    /// default) means the model adds [`Self::delta`].
    fn low_rank(&self, _x: &Tensor, _train: bool) -> crate::Result<Option<LowRank>> {
        Ok(None)
    }
}

/// The factors of a low-rank adapter's output for one input: `delta = scale · h Bᵀ`.
pub struct LowRank {
    /// `[rows, r]`: the input's rows (every leading dimension flattened), after any
    /// dropout, times `Aᵀ`; recorded in the graph, so `A` (and the input) get gradients
    /// through it.
    pub h: Tensor,
    /// `[out, r]`, the up-projection.
    pub b: Tensor,
    pub scale: f64,
}
