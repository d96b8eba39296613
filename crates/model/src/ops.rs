//! Differentiable building blocks.
//!
//! candle-nn's fused `rms_norm`, `softmax_last_dim` and `rope` record no
//! gradient, so the model is built from compositions of ops that do, plus
//! custom ops: here a matmul against a frozen weight whose backward returns
//! only the input gradient (candle's matmul backward always computes the
//! weight gradient too, which doubles the cost for frozen weights), and
//! which keeps nothing but its input for the backward pass, and the same
//! with a low-rank adapter's product added into its result; in `fused`,
//! softmax, RMSNorm, attention, RoPE and SwiGLU with backward passes. Each
//! function here picks the custom op where it applies and otherwise the
//! composition (`*_composed`, the tests' reference).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};

use safetune_core::Result;

use crate::products::gemm_xwt;

/// Whether the fused CPU kernels apply (f32, contiguous, on the CPU, and not
/// switched off with `SAFETUNE_COMPOSED_OPS=1`, which benchmarks use to time
/// the plain path).
fn fusable(x: &Tensor) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("SAFETUNE_COMPOSED_OPS").is_ok_and(|v| v == "1"));
    !off && x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous()
}

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension: the fused
/// kernel on CPU f32, else the composition.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fusable(x) && fusable(weight) && weight.rank() == 1 {
        return Ok(x.apply_op2(weight, crate::fused::RmsNorm { eps: eps as f32 })?);
    }
    rms_norm_composed(x, weight, eps)
}

/// RMSNorm from differentiable candle ops (the reference for the fused kernel).
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(weight)?)
}

/// `log p(target)` per row of `logits` `[n, vocab]` (`targets` `[n]` u32): the fused kernel on
/// CPU f32 ([`crate::fused::TargetLogProbs`], the same bits), else the composition
/// (`safetune_core::model::target_log_probs_composed`).
pub fn target_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fusable(logits) && logits.rank() == 2 {
        let targets: Vec<u32> = targets.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        return Ok(logits.apply_op1(crate::fused::TargetLogProbs { targets })?);
    }
    safetune_core::model::target_log_probs_composed(logits, targets)
}

/// Softmax over the last dimension: the fused kernel on CPU f32, else the composition.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if fusable(x) {
        return Ok(x.apply_op1(crate::fused::SoftmaxLast)?);
    }
    softmax_last_composed(x)
}

/// Softmax from differentiable candle ops. The max is a constant shift
/// (softmax is shift invariant), so it is detached.
pub fn softmax_last_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// Grouped-query attention: `softmax(scale · q kᵀ + bias) v` for `q` `[b, kvh, rep·t, d]`
/// (the `rep` query heads sharing a key/value head stacked), `k`, `v` `[b, kvh, s, d]` and
/// an additive `bias` `[b, 1, 1, t, s]`; `[b, kvh, rep·t, d]`. On CPU f32 one op
/// ([`crate::fused::Attention`], the same bits): while training it keeps no `[.., s]` tensor
/// for backward, and in inference (prefill and decoding) it makes one pass where the
/// composition makes four, each with a new `[.., s]` tensor. Otherwise the composition.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    if !bias.track_op() && [q, k, v, bias].into_iter().all(fusable) {
        return Ok(q.apply_op3(k, v, crate::fused::Attention { bias: bias.clone(), scale })?);
    }
    attention_composed(q, k, v, bias, scale)
}

/// [`attention`] from differentiable candle ops (the reference for the fused op).
pub fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, kvh, m, _) = q.dims4()?;
    let s = k.dim(2)?;
    let t = bias.dim(3)?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = scores.reshape((b, kvh, m / t, t, s))?.broadcast_add(bias)?;
    let probs = softmax_last(&scores)?.reshape((b, kvh, m, s))?;
    Ok(probs.matmul(v)?)
}

/// `silu(gate) ⊙ up`, SwiGLU's gate: one op on CPU f32 ([`crate::fused::SwiGlu`], the same
/// bits), else the composition.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fusable(gate) && fusable(up) && gate.dims() == up.dims() {
        return Ok(gate.apply_op2(up, crate::fused::SwiGlu)?);
    }
    swiglu_composed(gate, up)
}

/// [`swiglu`] from differentiable candle ops (the reference for the fused op).
pub fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.silu()? * up)?)
}

/// Rotary embedding, Hugging Face "rotate half" layout.
/// `x`: `[b, h, t, d]`; `cos`, `sin`: `[b or 1, 1, t, d/2]`, constants. One op on CPU f32
/// ([`crate::fused::Rope`], the same bits), else the composition.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fusable(x) && fusable(cos) && fusable(sin) && !cos.track_op() && !sin.track_op() && x.rank() == 4 {
        return Ok(x.apply_op1(crate::fused::Rope { cos: cos.clone(), sin: sin.clone() })?);
    }
    rope_composed(x, cos, sin)
}

/// [`rope`] from differentiable candle ops (the reference for the fused op).
pub fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[a, b], D::Minus1)?)
}

/// `x Wᵀ` for `x` of any rank `[.., in]` and `w` `[out, in]`.
/// When `w` is frozen, backward computes only the input gradient.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    over_rows(x, in_dim, out_dim, |x2| {
        let frozen = !w.track_op();
        if frozen && x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 && w.is_contiguous() {
            return Ok(x2.contiguous()?.apply_op1(FrozenLinear { w: w.clone() })?);
        }
        Ok(x2.matmul(&w.t()?)?)
    })
}

/// `f` applied to `x` (`[.., in_dim]`) flattened to rows (`[rows, in_dim]`), its `[rows,
/// out_dim]` result given `x`'s leading dimensions back.
fn over_rows(x: &Tensor, in_dim: usize, out_dim: usize, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let last = dims.len() - 1;
    let rows: usize = dims[..last].iter().product();
    dims[last] = out_dim;
    Ok(f(&x.reshape((rows, in_dim))?)?.reshape(dims)?)
}

/// Whether a product of `rows` input rows against a weight stored transposed (`[in, out]`)
/// gives the bits of the stored weight's product: gemm (0.19) takes special kernels whose
/// rounding depends on the layout for one row (matrix-vector), for at most 256 outputs
/// (a dot-product kernel, with the stored layout only) and for an inner dimension of 2 or
/// less; everywhere else both layouts run the same blocked kernel over the same sums.
pub fn transposed_alike(rows: usize, (in_dim, out_dim): (usize, usize)) -> bool {
    rows >= 2 && rows * out_dim > 256 && in_dim > 2
}

/// `x Wᵀ` for `x` of any rank `[.., in]` from `wt` = `Wᵀ` stored `[in, out]` (inference only).
pub fn linear_transposed(x: &Tensor, wt: &Tensor) -> Result<Tensor> {
    let (in_dim, out_dim) = wt.dims2()?;
    over_rows(x, in_dim, out_dim, |x2| Ok(x2.matmul(wt)?))
}

/// `y = x Wᵀ` for a frozen `W` in one op: the product is written straight
/// into the result (the graph keeps only `x`), and backward returns only
/// `dx = dy · W` — no weight gradient, which candle's matmul would compute.
struct FrozenLinear {
    w: Tensor,
}

fn op_err(what: &str, m: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what}: {m}"))
}

/// The contiguous f32 CPU data of an op's argument, checked to be `[rows, cols]`.
fn f32_matrix<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (rows, cols) = l.shape().dims2()?;
    Ok((crate::fused::f32_rows(s, l, what)?.0, rows, cols))
}

/// `x Wᵀ` for rows `x` (`[m, k]`) and the frozen weight `w` (`[n, k]`, f32 on the CPU): the
/// product and `n`.
fn frozen_product(w: &Tensor, x: &[f32], (m, k): (usize, usize), what: &str) -> candle_core::Result<(Vec<f32>, usize)> {
    crate::fused::with_f32(w, what, |w, wl| {
        let (n, wk) = wl.shape().dims2()?;
        if wk != k {
            return Err(op_err(what, &format!("input has {k} features, weight {wk}")));
        }
        let mut y = vec![0f32; m * n];
        gemm_xwt(&mut y, x, w, (m, n, k), false, 1.0);
        Ok((y, n))
    })
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        const WHAT: &str = "frozen linear";
        let (x, m, k) = f32_matrix(s, l, WHAT)?;
        let (y, n) = frozen_product(&self.w, x, (m, k), WHAT)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// `y = x Wᵀ + scale · h Bᵀ` for a frozen `W` and a low-rank adapter's `h` (`[rows, r]`)
/// and `B` (`[out, r]`) in one op: the adapter's product is added into the frozen
/// product's result, so the graph keeps `x`, `h` and `B` (all kept anyway) instead of
/// the frozen product, `h Bᵀ`, its scaled copy and their sum. Backward computes what
/// candle's backward of that composition computes, in the same order: `dx = dy · W`,
/// `g = scale · dy`, `dh = g · B`, `dB = (hᵀ · g)ᵀ`.
struct FrozenLowRank {
    w: Tensor,
    scale: f64,
}

impl candle_core::CustomOp3 for FrozenLowRank {
    fn name(&self) -> &'static str {
        "frozen-linear-low-rank"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        const WHAT: &str = "frozen linear with adapter";
        let (x, m, k) = f32_matrix(s1, l1, WHAT)?;
        let (h, hm, r) = f32_matrix(s2, l2, WHAT)?;
        let (b, bn, br) = f32_matrix(s3, l3, WHAT)?;
        if hm != m || br != r {
            return Err(op_err(WHAT, &format!("{m} input rows, h {hm} × {r}, B {bn} × {br}")));
        }
        let (mut y, n) = frozen_product(&self.w, x, (m, k), WHAT)?;
        if bn != n {
            return Err(op_err(WHAT, &format!("B has {bn} outputs, the weight {n}")));
        }
        gemm_xwt(&mut y, h, b, (m, n, r), true, self.scale as f32);
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        h: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() { Some(grad.matmul(&self.w)?) } else { None };
        let g = grad.affine(self.scale, 0.)?;
        let dh = if h.track_op() { Some(g.matmul(b)?) } else { None };
        let db = if b.track_op() { Some(h.t()?.matmul(&g)?.t()?) } else { None };
        Ok((dx, dh, db))
    }
}

/// Whether [`linear_low_rank`] runs as one op for input `x` and weight `w`: `w` frozen, both
/// f32 on the CPU, `w` contiguous, and fused kernels not switched off.
pub fn low_rank_fusable(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !w.track_op() && fusable(w)
}

/// `x Wᵀ + scale · h Bᵀ` for a frozen `W` and a low-rank adapter's factors `lr`
/// (`[.., in]` → `[.., out]`): one op ([`FrozenLowRank`]) where
/// [`low_rank_fusable`] holds and the factors are f32 and contiguous, else the composition.
pub fn linear_low_rank(x: &Tensor, w: &Tensor, lr: &safetune_core::LowRank) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    if low_rank_fusable(x, w) && fusable(&lr.h) && fusable(&lr.b) {
        let op = FrozenLowRank { w: w.clone(), scale: lr.scale };
        return over_rows(x, in_dim, out_dim, |x2| Ok(x2.contiguous()?.apply_op3(&lr.h, &lr.b, op)?));
    }
    let delta = (lr.h.matmul(&lr.b.t()?)? * lr.scale)?;
    over_rows(x, in_dim, out_dim, |x2| Ok((linear(x2, w)? + delta)?))
}

/// Additive attention bias `[b, 1, 1, t, s]`: 0 where query `i` may see key
/// `j`, a large negative number elsewhere. Keys are the last `s` positions
/// of which the queries are the last `t`; `mask` (`[b, s]`, 1 = real token)
/// hides padding.
pub fn attention_bias(mask: Option<&Tensor>, b: usize, t: usize, s: usize, device: &candle_core::Device) -> Result<Tensor> {
    const NEG: f32 = -1e9;
    let offset = s - t;
    let causal: Vec<f32> = (0..t).flat_map(|i| (0..s).map(move |j| if j <= i + offset { 0.0 } else { NEG })).collect();
    let causal = Tensor::from_vec(causal, (1, 1, 1, t, s), device)?;
    match mask {
        None => Ok(causal.broadcast_as((b, 1, 1, t, s))?.contiguous()?),
        Some(m) => {
            let pad = ((m.to_dtype(DType::F32)? - 1.0)? * (-(NEG as f64)))?.reshape((b, 1, 1, 1, s))?;
            Ok(causal.broadcast_add(&pad)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    /// On SmolLM2-135M's weight shapes, a product against the weight stored transposed is
    /// bit for bit the stored weight's wherever `transposed_alike` says so: from 2 rows up
    /// (decoding batches, shrinking batches, prompts), below, at and above gemm's packing
    /// threshold of 96 rows.
    #[test]
    fn products_from_a_transposed_weight_are_bit_for_bit_the_stored_weights() {
        let dev = Device::Cpu;
        for (out, inp) in [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)] {
            let w = Tensor::randn(0f32, 0.05, (out, inp), &dev).unwrap();
            let wt = w.t().unwrap().contiguous().unwrap();
            let rows_list: &[usize] = if out == 49152 { &[2, 7, 24, 97] } else { &[2, 3, 8, 24, 64, 65, 96, 97, 130, 512] };
            for &rows in rows_list {
                assert!(transposed_alike(rows, (inp, out)));
                let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev).unwrap();
                let stored = linear(&x, &w).unwrap();
                let from_t = linear_transposed(&x, &wt).unwrap();
                assert_eq!(stored.dims(), from_t.dims());
                assert!(bits(&stored) == bits(&from_t), "{rows} rows x [{out}, {inp}]: the products differ");
            }
        }
        // Where the guard says no, the products differ: one row (gemm's matrix-vector path)
        // and at most 256 outputs (its dot-product kernel for the stored layout).
        for (out, inp, rows) in [(576, 576, 1), (49152, 576, 1), (16, 128, 2), (64, 64, 2)] {
            assert!(!transposed_alike(rows, (inp, out)));
            let w = Tensor::randn(0f32, 0.05, (out, inp), &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev).unwrap();
            let from_t = linear_transposed(&x, &w.t().unwrap().contiguous().unwrap()).unwrap();
            assert!(bits(&linear(&x, &w).unwrap()) != bits(&from_t), "{rows} rows x [{out}, {inp}]");
        }
    }
}
