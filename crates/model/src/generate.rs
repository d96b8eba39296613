//! Batched generation with a key/value cache: prompts are left-padded,
//! decoded greedily or by temperature/top-p sampling from a seed, and each
//! stops at a stop token, the token budget, or when the caller's `settled`
//! says its answer so far decides what it needs. A finished answer leaves the
//! batch, so the rest decode with fewer rows.

use candle_core::{DType, Tensor};
use safetune_core::rng::SeededRng;
use safetune_core::{GenerationParams, Result, Settled, Tokenize};

use crate::llama::{KvCache, Llama, Pass, TransposedWeights};
use crate::ops;

/// Completions of `prompts` (see [`safetune_core::CausalLm::generate_until`]).
pub fn generate(model: &Llama, prompts: &[Vec<u32>], params: &GenerationParams, settled: &Settled<'_>) -> Result<Vec<Vec<u32>>> {
    generate_with(model, prompts, params, settled, true)
}

/// [`generate`], reading the weights transposed ([`TransposedWeights`]: gemm then does not copy
/// every weight before each decoding step) when `transposed` and some batch has two rows or
/// more; `false` only shows in tests that the answers are the same either way.
#[doc(hidden)]
pub fn generate_with(
    model: &Llama,
    prompts: &[Vec<u32>],
    params: &GenerationParams,
    settled: &Settled<'_>,
    transposed: bool,
) -> Result<Vec<Vec<u32>>> {
    let mut out = vec![Vec::new(); prompts.len()];
    // Built per call (a copy of the weights: about 0.3 s at 135M parameters, measured beside a
    // training run), so it never outlives weights that training may change — a `Frozen`
    // tensor can share its storage with a `Var` an optimizer still updates. Only on the CPU (weights are f32
    // there): the equality is a property of gemm's f32 kernels, not of another device's matmul.
    let wt = match transposed && model.device_ref().is_cpu() && prompts.len() >= 2 && params.batch_size >= 2 && params.max_new_tokens > 0 {
        true => Some(model.transposed_weights()?),
        false => None,
    };
    // Similar lengths together waste less padding; results return in input order.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| (prompts[i].len(), i));
    for chunk in order.chunks(params.batch_size.max(1)) {
        let batch: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i].as_slice()).collect();
        let rngs: Vec<SeededRng> = chunk.iter().map(|&i| SeededRng::derive(params.seed, &format!("gen{i}"))).collect();
        let settled_here = |k: usize, ids: &[u32]| settled(chunk[k], ids);
        for (k, ids) in generate_batch(model, &batch, params, rngs, &settled_here, wt.as_ref())?.into_iter().enumerate() {
            out[chunk[k]] = ids;
        }
        safetune_core::progress::advance(chunk.len());
    }
    Ok(out)
}

fn generate_batch(
    model: &Llama,
    prompts: &[&[u32]],
    params: &GenerationParams,
    mut rngs: Vec<SeededRng>,
    settled: &Settled<'_>,
    transposed: Option<&TransposedWeights>,
) -> Result<Vec<Vec<u32>>> {
    let dev = model.device_ref();
    let tok = model.text_tokenizer();
    let (stops, pad) = (tok.stop_ids().to_vec(), tok.pad_id());
    let b = prompts.len();
    let len = prompts.iter().map(|p| p.len()).max().unwrap_or(0).max(1);
    let max_pos = model.config().rope_positions();
    if len > max_pos {
        safetune_core::anyhow::bail!("a prompt of {len} tokens exceeds the model's {max_pos} positions");
    }
    let budget = params.max_new_tokens.min(max_pos.saturating_sub(len));
    let mut ids = Vec::with_capacity(b * len);
    let mut mask = Vec::with_capacity(b * len);
    for p in prompts {
        let padn = len - p.len();
        ids.extend(std::iter::repeat_n(pad, padn).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0f32, padn).chain(std::iter::repeat_n(1f32, p.len())));
    }
    let mut mask_t = Tensor::from_vec(mask, (b, len), dev)?;
    let ids_t = Tensor::from_vec(ids, (b, len), dev)?;
    let positions = Llama::rope_positions(Some(&mask_t), b, len, dev)?;
    let mut next_pos: Vec<u32> = positions.narrow(1, len - 1, 1)?.flatten_all()?.to_vec1::<u32>()?;
    for (p, n) in prompts.iter().zip(next_pos.iter_mut()) {
        *n = if p.is_empty() { 0 } else { *n + 1 };
    }
    let bias = ops::attention_bias(Some(&mask_t), b, len, len, dev)?;
    let mut cache: KvCache = vec![None; model.config().num_layers];
    let (h, _) = model.run(&Pass::inference(&ids_t, &positions, &bias, transposed), Some(&mut cache))?;
    let mut logits = model.lm_head_with(&h.narrow(1, len - 1, 1)?, transposed)?.squeeze(1)?;

    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    // The prompts (indices into `prompts`) still in the batch, in batch order.
    let mut rows: Vec<usize> = (0..b).collect();
    for step in 0..budget {
        let logit_rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(rows.len());
        for (row, &i) in logit_rows.iter().zip(&rows) {
            let t = if done[i] { pad } else { pick(row, params, &mut rngs[i]) };
            if !done[i] {
                if stops.contains(&t) {
                    done[i] = true;
                } else {
                    out[i].push(t);
                    // On the last step the answer ends anyway.
                    done[i] = step + 1 < budget && settled(i, &out[i]);
                }
            }
            next.push(t);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        // Finished answers leave the batch (their cache rows dropped), but two
        // rows stay at least: a matrix product gives a row the same bits at
        // any row count from two up (checked for gemm on this model's shapes;
        // a single row takes its matrix-vector path, which rounds otherwise),
        // so the answers still decoding come out exactly as in the full batch.
        let mut keep: Vec<usize> = (0..rows.len()).filter(|&r| !done[rows[r]]).collect();
        if keep.len() == 1 && rows.len() >= 2 {
            let passenger = (0..rows.len()).find(|&r| done[rows[r]]).unwrap_or(0);
            keep.push(passenger);
            keep.sort_unstable();
        }
        if keep.len() < rows.len() {
            let idx = Tensor::from_vec(keep.iter().map(|&r| r as u32).collect::<Vec<u32>>(), keep.len(), dev)?;
            for (k, v) in cache.iter_mut().flatten() {
                *k = k.index_select(&idx, 0)?;
                *v = v.index_select(&idx, 0)?;
            }
            mask_t = mask_t.index_select(&idx, 0)?;
            next = keep.iter().map(|&r| next[r]).collect();
            next_pos = keep.iter().map(|&r| next_pos[r]).collect();
            rows = keep.iter().map(|&r| rows[r]).collect();
        }
        let n = rows.len();
        let step_ids = Tensor::from_vec(next, (n, 1), dev)?;
        let pos = Tensor::from_vec(next_pos.clone(), (n, 1), dev)?;
        for p in next_pos.iter_mut() {
            *p += 1;
        }
        mask_t = Tensor::cat(&[&mask_t, &Tensor::ones((n, 1), DType::F32, dev)?], 1)?;
        let s = mask_t.dim(1)?;
        let bias = ops::attention_bias(Some(&mask_t), n, 1, s, dev)?;
        let (h, _) = model.run(&Pass::inference(&step_ids, &pos, &bias, transposed), Some(&mut cache))?;
        logits = model.lm_head_with(&h, transposed)?.squeeze(1)?;
    }
    Ok(out)
}

/// Greedy argmax, or temperature + nucleus sampling.
fn pick(logits: &[f32], params: &GenerationParams, rng: &mut SeededRng) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = params.temperature as f32;
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let probs: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) / t).exp())).collect();
    let z: f32 = probs.iter().map(|p| p.1).sum();
    let kept = nucleus(probs, z, params.top_p);
    let total: f32 = kept.iter().map(|p| p.1).sum();
    let mut r = rng.next_f64() as f32 * total;
    for &(i, p) in &kept {
        if r < p {
            return i;
        }
        r -= p;
    }
    kept.last().map(|p| p.0).unwrap_or(0)
}

/// How many of the most probable tokens a nucleus below `top_p = 1` is first looked for in.
const NUCLEUS_HEAD: usize = 256;

/// The nucleus: `(token, p / z)` most probable first (equal ones by token id, as a stable
/// sort of the vocabulary gives them), up to and including the first at which the running
/// share reaches `top_p` (all, if rounding never lets it). A full comparison sort of the
/// vocabulary for every sampled token was most of sampling's cost, so: with `top_p < 1` the
/// `NUCLEUS_HEAD` most probable tokens in this (total) order are the first ones of the whole
/// ordering, and the walk over them is the same walk — only when it runs past them is
/// everything sorted; the whole ordering (`top_p = 1`, the default) comes from a stable
/// radix sort. Either way the result is the stable sort's, bit for bit (tested).
fn nucleus(mut probs: Vec<(u32, f32)>, z: f32, top_p: f64) -> Vec<(u32, f32)> {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let walk = |sorted: &[(u32, f32)]| {
        let mut kept = Vec::new();
        let mut acc = 0.0f32;
        for &(i, p) in sorted {
            kept.push((i, p / z));
            acc += p / z;
            if acc as f64 >= top_p {
                return (kept, true);
            }
        }
        (kept, false)
    };
    if top_p < 1.0 && probs.len() > NUCLEUS_HEAD {
        probs.select_nth_unstable_by(NUCLEUS_HEAD - 1, order);
        probs[..NUCLEUS_HEAD].sort_unstable_by(order);
        let (kept, reached) = walk(&probs[..NUCLEUS_HEAD]);
        if reached {
            return kept;
        }
        probs.sort_unstable_by(order);
    } else {
        probs = radix_sort_descending(probs);
    }
    walk(&probs).0
}

/// Stable sort by `f32::total_cmp`, largest first, in four 8-bit passes (least significant
/// first): equal values keep their input order.
fn radix_sort_descending(mut v: Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    // total_cmp's order as unsigned integers, then complemented: ascending keys = descending values.
    let key = |p: f32| {
        let b = p.to_bits();
        !(if b >> 31 == 1 { !b } else { b | 0x8000_0000 })
    };
    let mut out = v.clone();
    for shift in [0u32, 8, 16, 24] {
        let mut count = [0usize; 257];
        for &(_, p) in &v {
            count[((key(p) >> shift) & 0xff) as usize + 1] += 1;
        }
        for i in 0..256 {
            count[i + 1] += count[i];
        }
        for &e in &v {
            let d = ((key(e.1) >> shift) & 0xff) as usize;
            out[count[d]] = e;
            count[d] += 1;
        }
        std::mem::swap(&mut v, &mut out);
    }
    v
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The nucleus as first written: a stable sort of the whole vocabulary by probability.
    fn nucleus_by_full_sort(mut probs: Vec<(u32, f32)>, z: f32, top_p: f64) -> Vec<(u32, f32)> {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut kept = Vec::new();
        let mut acc = 0.0f32;
        for (i, p) in probs {
            kept.push((i, p / z));
            acc += p / z;
            if acc as f64 >= top_p {
                break;
            }
        }
        kept
    }

    #[test]
    fn the_radix_sort_orders_as_total_cmp_and_keeps_ties_in_order() {
        let v: Vec<(u32, f32)> =
            [0.5f32, -1.0, 0.0, -0.0, 2.0, 0.5, f32::INFINITY, 1e-30, -0.0, 0.5].iter().enumerate().map(|(i, &p)| (i as u32, p)).collect();
        let mut want = v.clone();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        let got = radix_sort_descending(v);
        assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), want.iter().map(|e| e.0).collect::<Vec<_>>());
    }

    proptest! {
        /// Same tokens, same shares, same order as the full sort — with many ties (logits on
        /// a coarse grid), flat and peaked distributions, and top_p up to 1 (past the head).
        #[test]
        fn the_nucleus_equals_the_full_sort(
            grid in prop::collection::vec(0u8..40, 1..2000),
            scale in 0.05f32..4.0,
            temperature in 0.1f64..2.0,
            top_p in prop_oneof![0.01f64..1.0, Just(1.0)],
        ) {
            let logits: Vec<f32> = grid.iter().map(|&g| g as f32 * scale).collect();
            let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let probs: Vec<(u32, f32)> =
                logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) / temperature as f32).exp())).collect();
            let z: f32 = probs.iter().map(|p| p.1).sum();
            let want = nucleus_by_full_sort(probs.clone(), z, top_p);
            let got = nucleus(probs, z, top_p);
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!(g.0, w.0);
                prop_assert_eq!(g.1.to_bits(), w.1.to_bits());
            }
        }
    }
}
