//! Differentiable building blocks.
//!
//! candle-nn's fused `rms_norm`, `softmax_last_dim` and `rope` record no
//! gradient, so the model is built from compositions of ops that do, plus
//! one custom op: a matmul against a frozen weight whose backward returns
//! only the input gradient (candle's matmul backward always computes the
//! weight gradient too, which doubles the cost for frozen weights).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use safetune_core::Result;

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

/// Rotary embedding, Hugging Face "rotate half" layout.
/// `x`: `[b, h, t, d]`; `cos`, `sin`: `[b or 1, 1, t, d/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
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
    let mut dims = x.dims().to_vec();
    let last = dims.len() - 1;
    let rows: usize = dims[..last].iter().product();
    let x2 = x.reshape((rows, in_dim))?;
    dims[last] = out_dim;
    let frozen = !w.track_op();
    if frozen && x.track_op() && x.device().is_cpu() {
        let y = x2.detach().matmul(&w.t()?)?;
        let y = x2.apply_op2(&y, InputGradOnly { w: w.clone() })?;
        return Ok(y.reshape(dims)?);
    }
    Ok(x2.matmul(&w.t()?)?.reshape(dims)?)
}

/// Forward: returns `y` (its second argument) unchanged.
/// Backward: `dx = dy · W`, nothing for `y` or `W`.
struct InputGradOnly {
    w: Tensor,
}

fn copy_second(s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
    let (start, end) = l2.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("linear: result not contiguous".into()))?;
    let out = match s2 {
        CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
        CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
        CpuStorage::BF16(v) => CpuStorage::BF16(v[start..end].to_vec()),
        CpuStorage::F16(v) => CpuStorage::F16(v[start..end].to_vec()),
        _ => return Err(candle_core::Error::Msg("linear: unsupported dtype".into())),
    };
    Ok((out, l2.shape().clone()))
}

impl CustomOp2 for InputGradOnly {
    fn name(&self) -> &'static str {
        "linear-input-grad-only"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        copy_second(s2, l2)
    }
    fn bwd(&self, _x: &Tensor, _y: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let w = if grad.dtype() == self.w.dtype() { self.w.clone() } else { self.w.to_dtype(grad.dtype())? };
        Ok((Some(grad.matmul(&w)?), None))
    }
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
