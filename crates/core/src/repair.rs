//! The post-tuning interface: edit fine-tuned weights knowing the base
//! (un-aligned) and aligned weights, with the fine-tuned model and data at hand.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

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

/// SafeLoRA's projection onto one weight's alignment subspace, `C = V·Vᵀ/‖V‖_F` with
/// `V = aligned − base`; `None` when alignment did not change the weight (no safety
/// direction). SafeLoRA and SafeMERGE select layers with it.
pub fn alignment_projection(base: &Tensor, aligned: &Tensor) -> Result<Option<Tensor>> {
    let v = (aligned - base)?.to_dtype(DType::F32)?;
    let norm = v.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    if norm == 0.0 {
        return Ok(None);
    }
    Ok(Some((v.matmul(&v.t()?)? / norm as f64)?))
}

/// Cosine similarity of two tensors of one shape (0 when either is zero: nothing shared).
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let dot = (a * b)?.sum_all()?.to_scalar::<f32>()? as f64;
    let na = a.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    let nb = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    Ok(if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) })
}

/// One fine-tuned linear weight scored against its alignment subspace: the update
/// `ΔW = finetuned − aligned`, its projection `C·ΔW` and their cosine similarity.
pub struct SubspaceScore {
    pub name: String,
    pub similarity: f64,
    pub delta: Tensor,
    pub projected: Tensor,
    pub aligned: Tensor,
}

/// Every 2-D weight that fine-tuning changed and alignment changed too, scored (SafeLoRA's
/// criterion), in name order. Weights alignment left alone have no subspace and are skipped.
pub fn subspace_scores(w: &WeightSets) -> Result<Vec<SubspaceScore>> {
    let mut out = Vec::new();
    for (name, ft) in w.finetuned {
        let (Some(base), Some(al)) = (w.base.get(name), w.aligned.get(name)) else { continue };
        if ft.rank() != 2 {
            continue;
        }
        let delta = (ft - al)?;
        if delta.abs()?.max_all()?.to_scalar::<f32>()? == 0.0 {
            continue;
        }
        let Some(c) = alignment_projection(base, al).map_err(|e| anyhow::anyhow!("`{name}`: {e}"))? else { continue };
        let projected = c.matmul(&delta)?;
        out.push(SubspaceScore { name: name.clone(), similarity: cosine(&projected, &delta)?, delta, projected, aligned: al.clone() });
    }
    Ok(out)
}
