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
    !off && cpu_f32_contiguous(x)
}

/// f32, contiguous, on the CPU: what the custom ops read (whether or not switched off).
fn cpu_f32_contiguous(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous()
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
/// When `w` is frozen, backward computes only the input gradient. A frozen bf16 `w` (CPU,
/// f32 `x`; `train.precision = "bf16"`) multiplies in bf16 ([`crate::products::gemm_xwt_bf16`]):
/// `x` rounded to bf16, f32 accumulation, a bf16 result widened to f32.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    over_rows(x, in_dim, out_dim, |x2| {
        let frozen_on_cpu = !w.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 && w.is_contiguous();
        // A bf16 weight has no other path; an f32 one takes the op when x needs a gradient.
        if frozen_on_cpu && (w.dtype() == DType::BF16 || (w.dtype() == DType::F32 && x.track_op())) {
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

/// `x Wᵀ` for rows `x` (`[m, k]`) and the frozen weight `w` (`[n, k]` on the CPU; f32, or
/// bf16 for a product in bf16): the product and `n`.
fn frozen_product(w: &Tensor, x: &[f32], (m, k): (usize, usize), what: &str) -> candle_core::Result<(Vec<f32>, usize)> {
    let (n, wk) = w.dims2()?;
    if wk != k {
        return Err(op_err(what, &format!("input has {k} features, weight {wk}")));
    }
    let mut y = vec![0f32; m * n];
    if w.dtype() == DType::BF16 {
        with_bf16(w, what, |w| crate::products::gemm_xwt_bf16(&mut y, x, w, (m, n, k)))?;
    } else {
        crate::fused::with_f32(w, what, |w, _| {
            gemm_xwt(&mut y, x, w, (m, n, k), false, 1.0);
            Ok(())
        })?;
    }
    Ok((y, n))
}

/// The contiguous bf16 CPU data of a weight, handed to `f`.
fn with_bf16<R>(t: &Tensor, what: &str, f: impl FnOnce(&[half::bf16]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::BF16(v)) = &*storage else { return Err(op_err(what, "bf16 weight on the CPU expected")) };
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| op_err(what, "weight not contiguous"))?;
    Ok(f(&v[start..end]))
}

/// `dx = dy · W`, the input gradient of a frozen weight: candle's matmul for f32, a product
/// in bf16 ([`crate::products::gemm_xw_bf16`]) for a bf16 weight.
fn frozen_input_grad(grad: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if w.dtype() == DType::BF16 {
        return grad.contiguous()?.apply_op1_no_bwd(&Bf16InputGrad { w: w.clone() });
    }
    grad.matmul(w)
}

/// `dy · W` for `dy` `[m, n]` (f32) and a frozen bf16 `W` `[n, k]`, in bf16.
struct Bf16InputGrad {
    w: Tensor,
}

impl CustomOp1 for Bf16InputGrad {
    fn name(&self) -> &'static str {
        "frozen-bf16-input-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        const WHAT: &str = "frozen bf16 linear backward";
        let (g, m, n) = f32_matrix(s, l, WHAT)?;
        let (wn, k) = self.w.dims2()?;
        if wn != n {
            return Err(op_err(WHAT, &format!("gradient has {n} outputs, weight {wn}")));
        }
        let mut y = vec![0f32; m * k];
        with_bf16(&self.w, WHAT, |w| crate::products::gemm_xw_bf16(&mut y, g, w, (m, n, k)))?;
        Ok((CpuStorage::F32(y), Shape::from((m, k))))
    }
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
        Ok(Some(frozen_input_grad(grad, &self.w)?))
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
        let dx = if x.track_op() { Some(frozen_input_grad(grad, &self.w)?) } else { None };
        let g = grad.affine(self.scale, 0.)?;
        let dh = if h.track_op() { Some(g.matmul(b)?) } else { None };
        let db = if b.track_op() { Some(h.t()?.matmul(&g)?.t()?) } else { None };
        Ok((dx, dh, db))
    }
}

/// Whether [`linear_low_rank`] runs as one op for input `x` and weight `w`: `w` frozen, both
/// f32 on the CPU, `w` contiguous, and fused kernels not switched off — or `w` a frozen bf16
/// weight on the CPU (which has no other path).
pub fn low_rank_fusable(x: &Tensor, w: &Tensor) -> bool {
    let bf16 = w.dtype() == DType::BF16 && w.device().is_cpu() && w.is_contiguous();
    x.device().is_cpu() && x.dtype() == DType::F32 && !w.track_op() && (fusable(w) || bf16)
}

/// `x Wᵀ + scale · h Bᵀ` for a frozen `W` and a low-rank adapter's factors `lr`
/// (`[.., in]` → `[.., out]`): one op ([`FrozenLowRank`]) where
/// [`low_rank_fusable`] holds and the factors are f32 and contiguous, else the composition.
pub fn linear_low_rank(x: &Tensor, w: &Tensor, lr: &safetune_core::LowRank) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    let factors_ok =
        if w.dtype() == DType::BF16 { cpu_f32_contiguous(&lr.h) && cpu_f32_contiguous(&lr.b) } else { fusable(&lr.h) && fusable(&lr.b) };
    if low_rank_fusable(x, w) && factors_ok {
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

    /// `a` rounded to bf16 and widened back (exact): what a bf16 product reads.
    fn bf16_rounded(a: &Tensor) -> Tensor {
        a.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
    }

    /// Every element of `got` is `want` (an f32 product) rounded to bf16 — up to one bf16 step
    /// at `want` plus the f32 sums' own rounding in another order (2^-16 of `scale`, the
    /// product of the operands' absolute values, far below what rounding an operand to bf16
    /// moves a sum) — and is a bf16 value itself.
    fn assert_bf16_rounding_of(got: &Tensor, want: &Tensor, scale: &Tensor, what: &str) {
        assert_eq!(got.dims(), want.dims(), "{what}");
        assert!(bits(got) == bits(&bf16_rounded(got)), "{what}: the result is not a bf16 value");
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (g, w, s) = (v(got), v(want), v(scale));
        for (i, ((g, w), s)) in g.iter().zip(&w).zip(&s).enumerate() {
            // One bf16 step at |w| is at most 2^-7 · |w|.
            let tol = w.abs() * 2f32.powi(-7) + s * 2f32.powi(-16);
            assert!((g - w).abs() <= tol, "{what}: element {i} is {g}, the f32 product of the rounded operands {w} (scale {s})");
        }
    }

    /// A frozen bf16 weight multiplies in bf16, forward and backward: each result is the f32
    /// product of the bf16-rounded operands, rounded to bf16 (gemmkit's kernel accumulates in
    /// f32: AVX-512 BF16's `vdpbf16ps` where the CPU has it). Shapes of SmolLM2's layers and of
    /// sizes gemm's blocking does not divide.
    #[test]
    fn bf16_frozen_products_are_f32_products_of_bf16_operands_rounded_to_bf16() {
        let dev = Device::Cpu;
        for (rows, inp, out) in [(512, 576, 1536), (512, 1536, 576), (37, 576, 192), (2, 64, 49), (1, 576, 576)] {
            let w = Tensor::randn(0f32, 0.05, (out, inp), &dev).unwrap();
            let wb = w.to_dtype(DType::BF16).unwrap();
            let wr = wb.to_dtype(DType::F32).unwrap();
            let x = candle_core::Var::randn(0f32, 1.0, (rows, inp), &dev).unwrap();
            let y = linear(x.as_tensor(), &wb).unwrap();
            let xr = bf16_rounded(x.as_tensor());
            let want = xr.matmul(&wr.t().unwrap()).unwrap();
            let scale = xr.abs().unwrap().matmul(&wr.abs().unwrap().t().unwrap()).unwrap();
            assert_bf16_rounding_of(&y, &want, &scale, &format!("forward {rows}x{inp} · [{out}, {inp}]ᵀ"));
            // The f32 product differs (else the bf16 path was not taken).
            assert!(bits(&y) != bits(&linear(x.as_tensor(), &w).unwrap()), "{rows}x{inp}: the bf16 product equals f32's");
            let g = Tensor::randn(0f32, 1.0, (rows, out), &dev).unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(x.as_tensor()).unwrap();
            let gr = bf16_rounded(&g);
            let want = gr.matmul(&wr).unwrap();
            let scale = gr.abs().unwrap().matmul(&wr.abs().unwrap()).unwrap();
            assert_bf16_rounding_of(dx, &want, &scale, &format!("input gradient {rows}x{out} · [{out}, {inp}]"));
        }
    }

    /// With a low-rank adapter over a frozen bf16 weight, the one op gives the bf16 frozen product
    /// plus the adapter's f32 product, and the gradients of candle's composition of the same.
    #[test]
    fn a_low_rank_adapter_over_a_bf16_weight_adds_its_f32_product() {
        let dev = Device::Cpu;
        let (rows, inp, out, r) = (96, 576, 192, 8);
        let wb = Tensor::randn(0f32, 0.05, (out, inp), &dev).unwrap().to_dtype(DType::BF16).unwrap();
        let x = candle_core::Var::randn(0f32, 1.0, (rows, inp), &dev).unwrap();
        let h = candle_core::Var::randn(0f32, 1.0, (rows, r), &dev).unwrap();
        let b = candle_core::Var::randn(0f32, 0.1, (out, r), &dev).unwrap();
        let lr = safetune_core::LowRank { h: h.as_tensor().clone(), b: b.as_tensor().clone(), scale: 2.0 };
        let fused = linear_low_rank(x.as_tensor(), &wb, &lr).unwrap();
        let composed =
            (linear(x.as_tensor(), &wb).unwrap() + (h.as_tensor().matmul(&b.as_tensor().t().unwrap()).unwrap() * 2.0).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (rows, out), &dev).unwrap();
        let gf = (&fused * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&composed * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let m = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d <= 1e-5 * m.max(1.0), "{what}: differs by {d} (max {m})");
        };
        close(&fused, &composed, "forward");
        for (v, what) in [(&x, "dx"), (&h, "dh"), (&b, "dB")] {
            close(gf.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap(), what);
        }
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
