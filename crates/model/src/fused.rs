//! Fused CPU kernels with hand-written backward passes for the two
//! memory-heavy compositions of the decoder: softmax over the last dimension
//! (attention) and RMSNorm. Each keeps one output tensor in the graph instead
//! of the four or five intermediates of its composition, and runs rows in
//! parallel. Backward passes are written with candle ops (they are not
//! recorded: candle detaches gradients), and tests compare both directions
//! against the compositions in `ops`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};
use rayon::prelude::*;

fn f32_rows<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else { return Err(candle_core::Error::Msg(format!("{what}: f32 only"))) };
    let (start, end) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what}: input not contiguous")))?;
    let cols = *l.dims().last().ok_or_else(|| candle_core::Error::Msg(format!("{what}: scalar input")))?;
    Ok((&v[start..end], cols))
}

/// Rows at a time per parallel task: enough work to amortise scheduling.
fn chunk_rows(cols: usize) -> usize {
    (16_384 / cols.max(1)).max(1)
}

pub(crate) struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "fused-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, cols) = f32_rows(s, l, "softmax")?;
        let mut out = vec![0f32; x.len()];
        let per = chunk_rows(cols) * cols;
        out.par_chunks_mut(per).zip(x.par_chunks(per)).for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(cols).zip(x.chunks(cols)) {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = (v - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    /// dx = y ⊙ (dy − Σ(dy ⊙ y)) over the last dimension.
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dot = (dy * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * dy.broadcast_sub(&dot)?)?))
    }
}

pub(crate) struct RmsNorm {
    pub eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, cols) = f32_rows(s1, l1, "rms_norm")?;
        let (w, wcols) = f32_rows(s2, l2, "rms_norm weight")?;
        if wcols != cols || w.len() != cols {
            return Err(candle_core::Error::Msg(format!("rms_norm: weight of {} for rows of {cols}", w.len())));
        }
        let mut out = vec![0f32; x.len()];
        let per = chunk_rows(cols) * cols;
        let eps = self.eps;
        out.par_chunks_mut(per).zip(x.par_chunks(per)).for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(cols).zip(x.chunks(cols)) {
                let ms = x.iter().map(|v| v * v).sum::<f32>() / cols as f32;
                let r = 1.0 / (ms + eps).sqrt();
                for ((o, &v), &w) in o.iter_mut().zip(x).zip(w) {
                    *o = v * r * w;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// With x̂ = x·r, r = (mean(x²) + eps)^-½ and g = dy ⊙ w:
    /// dx = r · (g − x̂ · mean(g ⊙ x̂)), dw = Σ_rows dy ⊙ x̂ (only for a tracked weight).
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?.sqrt()?.recip()?;
        let xhat = x.broadcast_mul(&r)?;
        let g = dy.broadcast_mul(w)?;
        let m = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = (g - xhat.broadcast_mul(&m)?)?.broadcast_mul(&r)?;
        let dw = if w.track_op() {
            let cols = w.dim(0)?;
            Some((dy * &xhat)?.reshape(((), cols))?.sum(0)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap()
    }

    fn random(shape: &[usize], seed: u64) -> Tensor {
        // A fixed pseudo-random fill (no RNG dependency): values in about [-3, 3].
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (((i as u64 + 1) * 2654435761 + seed * 97) % 1000) as f32 / 166.0 - 3.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_softmax_matches_the_composition_forward_and_backward() {
        let x = Var::from_tensor(&random(&[2, 3, 5, 7], 1)).unwrap();
        // Masked entries as the attention bias makes them.
        let bias = Tensor::from_vec((0..7).map(|j| if j > 4 { -1e9f32 } else { 0.0 }).collect::<Vec<_>>(), 7, &Device::Cpu).unwrap();
        let xin = x.as_tensor().broadcast_add(&bias).unwrap();
        let w = random(&[2, 3, 5, 7], 2);
        let fused = crate::ops::softmax_last(&xin).unwrap();
        let composed = crate::ops::softmax_last_composed(&xin).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-6, "forward {}", max_diff(&fused, &composed));
        let g1 = (&fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&composed * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (g1, g2) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
        assert!(max_diff(g1, g2) < 1e-5, "backward {}", max_diff(g1, g2));
        assert!(g1.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1, "a gradient must flow");
    }

    #[test]
    fn fused_rms_norm_matches_the_composition_forward_and_backward() {
        let x = Var::from_tensor(&random(&[3, 4, 16], 3)).unwrap();
        let wt = Var::from_tensor(&(random(&[16], 4) * 0.3).unwrap()).unwrap();
        let up = random(&[3, 4, 16], 5);
        let fused = crate::ops::rms_norm(x.as_tensor(), wt.as_tensor(), 1e-5).unwrap();
        let composed = crate::ops::rms_norm_composed(x.as_tensor(), wt.as_tensor(), 1e-5).unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5, "forward {}", max_diff(&fused, &composed));
        let g1 = (&fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", x.as_tensor()), ("weight", wt.as_tensor())] {
            let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(max_diff(a, b) < 1e-4, "{name} backward {}", max_diff(a, b));
        }
        // A frozen weight gets no gradient (and costs none).
        let frozen = wt.as_tensor().detach();
        let g3 = (crate::ops::rms_norm(x.as_tensor(), &frozen, 1e-5).unwrap() * &up).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g3.get(&frozen).is_none());
        assert!(max_diff(g3.get(x.as_tensor()).unwrap(), g1.get(x.as_tensor()).unwrap()) < 1e-6);
    }
}
