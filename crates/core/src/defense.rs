//! The data-level defense interface: a defense that changes the fine-tuning
//! data (SafeInstr, BEA) and possibly the system prompt at inference.

use crate::{Example, Result};

pub trait DataMix: Send {
    fn name(&self) -> &str;
    /// Edits the user's fine-tuning data. `safety` holds harmful prompt →
    /// refusal pairs, disjoint from every evaluation prompt.
    fn mix(&self, task: &mut Vec<Example>, safety: &[Example], seed: u64) -> Result<()>;
    /// The system prompt at inference, given the prompt format's default.
    fn inference_system(&self, default: Option<&str>) -> Option<String> {
        default.map(str::to_string)
    }
}
