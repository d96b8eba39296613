//! The alignment set: harmful prompts paired with the project's refusals,
//! mixed with benign instructions.

use safetune_core::anyhow::bail;
use safetune_core::rng::SeededRng;
use safetune_core::{Example, ExampleKind, Result};

use crate::refusals::refusal_for;

#[derive(Debug, Clone, PartialEq)]
pub struct AlignmentSpec {
    /// Refusal pairs (`None`: every harmful prompt in the pool).
    pub refusals: Option<usize>,
    pub benign: usize,
    pub seed: u64,
}

pub fn alignment_set(harmful_prompts: &[Example], benign: &[Example], spec: &AlignmentSpec) -> Result<Vec<Example>> {
    let n_ref = spec.refusals.unwrap_or(harmful_prompts.len());
    if n_ref > harmful_prompts.len() {
        bail!("alignment.refusals: {n_ref} asked for, the harmful-prompt pool has {}", harmful_prompts.len());
    }
    if spec.benign > benign.len() {
        bail!("alignment.benign: {} asked for, the benign pool has {}", spec.benign, benign.len());
    }
    let mut style = SeededRng::derive(spec.seed, "align/style");
    let mut out: Vec<Example> = SeededRng::derive(spec.seed, "align/refusals")
        .sample_indices(harmful_prompts.len(), n_ref)
        .into_iter()
        .map(|i| {
            let h = &harmful_prompts[i];
            Example::new(h.id.clone(), ExampleKind::Refusal, h.prompt.clone(), refusal_for(&mut style))
        })
        .collect();
    out.extend(
        SeededRng::derive(spec.seed, "align/benign").sample_indices(benign.len(), spec.benign).into_iter().map(|i| benign[i].clone()),
    );
    SeededRng::derive(spec.seed, "align/order").shuffle(&mut out);
    Ok(out)
}
