//! The post-tuning interface: edit fine-tuned weights knowing the base
//! (un-aligned) and aligned weights, with the fine-tuned model and data at hand.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::training::StepContext;
use crate::Result;

/// Named dense weights (`[out, in]` for linear layers).
pub type Weights = BTreeMap<String, Tensor>;

/// The three weight sets a post-tuning defense may use. `finetuned` holds the
/// merged weights after fine-tuning for every adapted or trained tensor.
pub struct WeightSets<'a> {
    pub base: &'a Weights,
    pub aligned: &'a Weights,
    pub finetuned: &'a Weights,
}

/// A post-tuning repair.
pub trait Repair: Send {
    fn name(&self) -> &str;
    /// Returns replacement values for the weights it changes (others untouched). `ctx` runs
    /// the fine-tuned model (`reference`: the aligned model) on the `safety`, `harmful` and
    /// `task` streams — to score weights on data (Antidote); it trains nothing.
    fn repair(&self, w: &WeightSets, ctx: &mut dyn StepContext) -> Result<Weights>;
}
