//! Fused CPU kernels with hand-written backward passes for the two
//! memory-heavy compositions of the decoder: softmax over the last dimension
//! (attention) and RMSNorm. Each keeps one output tensor in the graph instead
//! of the four or five intermediates of its composition, and runs rows in
//! parallel. Backward passes are written with candle ops (they are not
//! recorded: candle detaches gradients), and tests compare both directions
//! against the compositions in `ops`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};
use rayon::prelude::*;

pub(crate) fn f32_rows<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else { return Err(candle_core::Error::Msg(format!("{what}: f32 only"))) };
    let (start, end) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what}: input not contiguous")))?;
    let cols = *l.dims().last().ok_or_else(|| candle_core::Error::Msg(format!("{what}: scalar input")))?;
    Ok((&v[start..end], cols))
}

/// Rows at a time per parallel task: enough work to amortise scheduling.
fn chunk_rows(cols: usize) -> usize {
    (16_384 / cols.max(1)).max(1)
}

/// Elements below which an element-wise kernel runs on the calling thread (decoding's one
/// position a step is too little to hand to the thread pool).
const PARALLEL_MIN: usize = 1 << 15;

/// Every `d` below it has `d.exp() == +0.0` (test `exp_underflows_to_zero_below_the_cut`).
const UNDERFLOWS: f32 = -104.0;

/// `o = softmax(x)` for one row.
fn softmax_row(o: &mut [f32], x: &[f32]) {
    let max = row_max(x);
    let mut sum = 0f32;
    for (o, &v) in o.iter_mut().zip(x) {
        let d = v - max;
        // Below -104, e^d is under half the smallest subnormal: `exp` returns +0 exactly, but
        // through libm's slow underflow path (`xflowf`) — where a masked attention entry
        // (bias -1e9) always lands: ~9% of a 512-token prefill. The same bits without the call,
        // and without adding the +0 into `sum` (which is never -0: it starts at +0 and every
        // term is at least +0), so a masked entry is not a step of the sum's dependency chain.
        if d < UNDERFLOWS {
            *o = 0.0;
        } else {
            *o = d.exp();
            sum += *o;
        }
    }
    let inv = 1.0 / sum;
    o.iter_mut().for_each(|v| *v *= inv);
}

/// The left-to-right `f32::max` fold of `x`, in eight independent lanes so that it is not one
/// dependency chain. The same value: the maximum does not depend on the order (`f32::max`
/// passes over NaN either way); only a tie of +0 and -0 may come out with the other sign,
/// which moves no difference `v - max` but the sign of an exact zero, and e^±0 = 1.
fn row_max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    chunks.remainder().iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
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
                softmax_row(o, x);
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

/// Grouped-query attention in one op (training and inference): `out = softmax(scale · q kᵀ +
/// bias) v` per key/value head, `q` `[b, kvh, rep·t, d]` (the `rep` query heads of a key/value
/// head stacked), `k`, `v` `[b, kvh, s, d]`, `bias` `[b, 1, 1, t, s]` (a constant). The graph
/// keeps `q`, `k` and `v` (kept anyway) instead of the scores, their scaled and biased copies
/// and the probabilities (four `[.., rep·t, s]` tensors a layer); backward computes the
/// probabilities again. In inference it is one pass instead of four. Forward and backward make
/// the products, the scaling, the bias and the softmax of the composition in `Llama::attention`
/// with the same gemm calls and float operations, so they give the same bits.
pub(crate) struct Attention {
    pub bias: Tensor,
    pub scale: f64,
}

impl Attention {
    /// The probabilities `[b, kvh, rep·t, s]` for contiguous f32 `q` and `k`.
    fn probs(&self, q: &[f32], ql: &Layout, k: &[f32], kl: &Layout) -> candle_core::Result<(Vec<f32>, [usize; 5])> {
        let err = |m: String| candle_core::Error::Msg(format!("fused attention: {m}"));
        let (b, g, m, d) = ql.shape().dims4()?;
        let (kb, kg, s, kd) = kl.shape().dims4()?;
        let (bb, one, one2, t, bs) = self.bias.dims5()?;
        if (kb, kg, kd) != (b, g, d) || (bb, one, one2, bs) != (b, 1, 1, s) || t == 0 || m % t != 0 {
            return Err(err(format!("q {:?}, k {:?}, bias {:?}", ql.dims(), kl.dims(), self.bias.dims())));
        }
        with_f32(&self.bias, "fused attention bias", |bias, _| self.scores_softmax(q, k, bias, [b, g, m, s, d], t))
    }

    /// [`Self::probs`] past its shape checks, over the bias's data.
    fn scores_softmax(
        &self,
        q: &[f32],
        k: &[f32],
        bias: &[f32],
        [b, g, m, s, d]: [usize; 5],
        t: usize,
    ) -> candle_core::Result<(Vec<f32>, [usize; 5])> {
        let mul = self.scale as f32;
        let mut p = vec![0f32; b * g * m * s];
        let mut raw = vec![0f32; m * s];
        for (i, p) in p.chunks_mut(m * s).enumerate() {
            let bi = i / g;
            crate::products::gemm_xwt(&mut raw, &q[i * m * d..(i + 1) * m * d], &k[i * s * d..(i + 1) * s * d], (m, s, d), false, 1.0);
            let bias = &bias[bi * t * s..(bi + 1) * t * s];
            p.par_chunks_mut(chunk_rows(s) * s).zip(raw.par_chunks_mut(chunk_rows(s) * s)).enumerate().for_each(|(c, (p, raw))| {
                for (j, (p, x)) in p.chunks_mut(s).zip(raw.chunks_mut(s)).enumerate() {
                    let row = c * chunk_rows(s) + j;
                    // What `scores * scale` (candle's affine: v·mul + 0) and `+ bias` compute.
                    for (x, &bv) in x.iter_mut().zip(&bias[(row % t) * s..(row % t + 1) * s]) {
                        *x = (*x * mul + 0f32) + bv;
                    }
                    softmax_row(p, x);
                }
            });
        }
        Ok((p, [b, g, m, s, d]))
    }
}

/// `f` over the f32 CPU data and layout of `t`.
pub(crate) fn with_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32], &Layout) -> candle_core::Result<R>) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { return Err(candle_core::Error::Msg(format!("{what}: not on the CPU"))) };
    let (data, _) = f32_rows(cpu, layout, what)?;
    f(data, layout)
}

impl candle_core::CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, _) = f32_rows(sq, lq, "fused attention q")?;
        let (k, _) = f32_rows(sk, lk, "fused attention k")?;
        let (v, _) = f32_rows(sv, lv, "fused attention v")?;
        if lv.dims() != lk.dims() {
            return Err(candle_core::Error::Msg(format!("fused attention: v {:?} for k {:?}", lv.dims(), lk.dims())));
        }
        let (p, [b, g, m, s, d]) = self.probs(q, lq, k, lk)?;
        let mut out = vec![0f32; b * g * m * d];
        for (i, o) in out.chunks_mut(m * d).enumerate() {
            crate::products::gemm_xy(o, &p[i * m * s..(i + 1) * m * s], &v[i * s * d..(i + 1) * s * d], (m, d, s));
        }
        Ok((CpuStorage::F32(out), Shape::from((b, g, m, d))))
    }

    /// The composition's backward: `dv = pᵀ·dout`, `dp = dout·vᵀ`, the softmax's
    /// `p ⊙ (dp − Σ dp ⊙ p)`, times `scale`, then `dq = ds·k`, `dk = (qᵀ·ds)ᵀ`.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (p, [b, g, m, s, _]) =
            with_f32(q, "fused attention q", |qv, lq| with_f32(k, "fused attention k", |kv, lk| self.probs(qv, lq, kv, lk)))?;
        let p = Tensor::from_vec(p, (b, g, m, s), q.device())?;
        let dv = if v.track_op() { Some(p.t()?.matmul(dout)?) } else { None };
        let dp = dout.matmul(&v.t()?)?;
        let dot = (&dp * &p)?.sum_keepdim(D::Minus1)?;
        let ds = (&p * dp.broadcast_sub(&dot)?)?.affine(self.scale, 0.)?;
        let dq = if q.track_op() { Some(ds.matmul(k)?) } else { None };
        let dk = if k.track_op() { Some(q.t()?.matmul(&ds)?.t()?) } else { None };
        Ok((dq, dk, dv))
    }
}

/// Rotary embedding ("rotate half") in one op: for `x` `[b, h, t, d]` and `cos`, `sin`
/// `[b or 1, 1, t, d/2]` (constants), `[x₁·cos − x₂·sin, x₂·cos + x₁·sin]`. The graph keeps
/// `x` only, instead of the composition's six half-size products and sums; forward and
/// backward make the composition's float operations (`ops::rope_composed`), so the same bits.
pub(crate) struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rope {
    /// `out[..half] = f(x₁, x₂, c, s)`, `out[half..] = g(x₁, x₂, c, s)` row by row over `[b, h, t]`.
    fn map(
        &self,
        x: &[f32],
        dims: &[usize],
        f: impl Fn(f32, f32, f32, f32) -> f32 + Sync,
        g: impl Fn(f32, f32, f32, f32) -> f32 + Sync,
    ) -> candle_core::Result<Vec<f32>> {
        let err = |m: String| candle_core::Error::Msg(format!("fused rope: {m}"));
        let [b, h, t, d] = dims else { return Err(err(format!("x of rank {}", dims.len()))) };
        let (b, h, t, d) = (*b, *h, *t, *d);
        let (cb, one, ct, half) = self.cos.dims4()?;
        if one != 1 || ct != t || half * 2 != d || (cb != 1 && cb != b) || self.sin.dims() != self.cos.dims() {
            return Err(err(format!("x {dims:?}, cos {:?}, sin {:?}", self.cos.dims(), self.sin.dims())));
        }
        with_f32(&self.cos, "fused rope cos", |cos, _| {
            with_f32(&self.sin, "fused rope sin", |sin, _| {
                let mut out = vec![0f32; x.len()];
                // One head of one sequence: `t` rows of `d`.
                let head = |(bh, (o, x)): (usize, (&mut [f32], &[f32]))| {
                    let bi = if cb == 1 { 0 } else { bh / h };
                    for ti in 0..t {
                        let (c, s) = (&cos[(bi * t + ti) * half..][..half], &sin[(bi * t + ti) * half..][..half]);
                        let (x, o) = (&x[ti * d..(ti + 1) * d], &mut o[ti * d..(ti + 1) * d]);
                        let (x1, x2) = x.split_at(half);
                        let (o1, o2) = o.split_at_mut(half);
                        for j in 0..half {
                            o1[j] = f(x1[j], x2[j], c[j], s[j]);
                            o2[j] = g(x1[j], x2[j], c[j], s[j]);
                        }
                    }
                };
                if x.len() >= PARALLEL_MIN {
                    out.par_chunks_mut(t * d).zip(x.par_chunks(t * d)).enumerate().for_each(head);
                } else {
                    out.chunks_mut(t * d).zip(x.chunks(t * d)).enumerate().for_each(head);
                }
                Ok(out)
            })
        })
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, _) = f32_rows(st, l, "fused rope")?;
        let out = self.map(x, l.dims(), |x1, x2, c, s| x1 * c - x2 * s, |x1, x2, c, s| x2 * c + x1 * s)?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    /// The composition's gradients: `dx₁ = da·cos + db·sin`, `dx₂ = (−da)·sin + db·cos`.
    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let dx = with_f32(&dy, "fused rope gradient", |g, l| {
            self.map(g, l.dims(), |da, db, c, s| da * c + db * s, |da, db, c, s| (-da) * s + db * c)
        })?;
        Ok(Some(Tensor::from_vec(dx, dy.shape(), dy.device())?))
    }
}

/// SwiGLU's gate in one op: `silu(g) ⊙ u` for `g`, `u` of one shape. The graph keeps `g`
/// and `u` (kept anyway) instead of also `silu(g)`; backward computes `silu(g)` again.
/// Forward and backward make candle's float operations for `g.silu()? * u` (silu as
/// `v / (1 + e^{−v})`; its gradient as candle's backward writes it, `σ·(1 − s) + s` with
/// `σ = 1 / (e^{−v} + 1)`; candle's `1 − s` is `s·(−1) + 1`, the same value as `−s + 1`), so the same bits.
pub(crate) struct SwiGlu;

impl SwiGlu {
    /// Elements per parallel task of [`Self::map`] and [`Self::map2`].
    const CHUNK: usize = 1 << 14;

    /// `f(g, u, i)` for every element, into a new vector (over the pool for large inputs).
    fn map(g: &[f32], u: &[f32], f: impl Fn(f32, f32, usize) -> f32 + Sync) -> Vec<f32> {
        let mut out = vec![0f32; g.len()];
        let per = Self::CHUNK;
        let run = |(c, o): (usize, &mut [f32])| {
            for (j, o) in o.iter_mut().enumerate() {
                let i = c * per + j;
                *o = f(g[i], u[i], i);
            }
        };
        if g.len() >= PARALLEL_MIN {
            out.par_chunks_mut(per).enumerate().for_each(run);
        } else {
            out.chunks_mut(per).enumerate().for_each(run);
        }
        out
    }

    /// [`Self::map`] for an `f` with two results, into two vectors in one pass. (One
    /// const-generic `map` for both, its outputs' chunks gathered per task, measured about a
    /// quarter slower on the fused SwiGLU bench, 47 against 38 ms: the twins stay.)
    fn map2(g: &[f32], u: &[f32], f: impl Fn(f32, f32, usize) -> (f32, f32) + Sync) -> (Vec<f32>, Vec<f32>) {
        let (mut a, mut b) = (vec![0f32; g.len()], vec![0f32; g.len()]);
        let per = Self::CHUNK;
        let run = |(c, (a, b)): (usize, (&mut [f32], &mut [f32]))| {
            for (j, (a, b)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
                let i = c * per + j;
                (*a, *b) = f(g[i], u[i], i);
            }
        };
        if g.len() >= PARALLEL_MIN {
            a.par_chunks_mut(per).zip(b.par_chunks_mut(per)).enumerate().for_each(run);
        } else {
            a.chunks_mut(per).zip(b.chunks_mut(per)).enumerate().for_each(run);
        }
        (a, b)
    }
}

fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// `(silu(v), σ(v))` from one `exp`: candle's sigmoid is `1 / (e^{−v} + 1)`, and
/// `e^{−v} + 1 = 1 + e^{−v}` exactly (float addition commutes), so both are the bits of the
/// separate formulas.
fn silu_sigmoid(v: f32) -> (f32, f32) {
    let den = 1.0 + (-v).exp();
    (v / den, 1.0 / den)
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, _) = f32_rows(s1, l1, "fused swiglu gate")?;
        let (u, _) = f32_rows(s2, l2, "fused swiglu up")?;
        if l1.dims() != l2.dims() {
            return Err(candle_core::Error::Msg(format!("fused swiglu: gate {:?}, up {:?}", l1.dims(), l2.dims())));
        }
        Ok((CpuStorage::F32(Self::map(g, u, |g, u, _| silu(g) * u)), l1.shape().clone()))
    }

    /// `du = dy ⊙ silu(g)`, `dg = (dy ⊙ u) ⊙ (σ(g)·(1 − silu(g)) + silu(g))`, both from one
    /// `e^{−g}` per element (it used to take three: `silu` twice and `σ`).
    fn bwd(&self, g: &Tensor, u: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (dg, du) = with_f32(g, "fused swiglu gate", |gv, _| {
            with_f32(u, "fused swiglu up", |uv, _| {
                with_f32(&dy, "fused swiglu gradient", |d, _| {
                    let dg_of = |u: f32, i: usize, (s, sigmoid): (f32, f32)| (d[i] * u) * (sigmoid * (-s + 1.0) + s);
                    // Both gradients in one pass and from one `exp` when both are wanted (the
                    // usual case: LoRA on the MLP, or full fine-tuning).
                    Ok(match (g.track_op(), u.track_op()) {
                        (true, true) => {
                            let (dg, du) = Self::map2(gv, uv, |g, u, i| {
                                let ss = silu_sigmoid(g);
                                (dg_of(u, i, ss), d[i] * ss.0)
                            });
                            (Some(dg), Some(du))
                        }
                        (true, false) => (Some(Self::map(gv, uv, |g, u, i| dg_of(u, i, silu_sigmoid(g)))), None),
                        (false, true) => (None, Some(Self::map(gv, uv, |g, _, i| d[i] * silu(g)))),
                        (false, false) => (None, None),
                    })
                })
            })
        })?;
        let t = |v: Option<Vec<f32>>| v.map(|v| Tensor::from_vec(v, g.shape(), g.device())).transpose();
        Ok((t(dg)?, t(du)?))
    }
}

/// `log p(target)` per row of logits `[n, vocab]`: `x_t − (ln Σ_j e^{x_j − m} + m)`, `m` the
/// row's maximum — the bits of `safetune_core::model::target_log_probs_composed`, forward
/// and backward, without its `[n, vocab]` intermediates (the shifted logits, their
/// exponentials, and in backward a zero tensor and a sum per node of that chain: about a
/// dozen passes over 50 MB at 256 answer tokens of a 49,152-word vocabulary). Every step is
/// the composition's own float operation in its order: `f32::exp` and `f32::ln` (candle's
/// unary ops on the CPU), candle's row sum ([`VecOps::vec_reduce_sum`]), and in backward
/// each node's `0 + grad` (candle adds every gradient to a zero tensor), which turns a −0
/// into +0.
pub(crate) struct TargetLogProbs {
    pub targets: Vec<u32>,
}

impl TargetLogProbs {
    /// Runs `f(row, its logits, its target)` over the rows in parallel, each with a scratch
    /// row of `cols` (the exponentials).
    fn rows<T: Send>(
        &self,
        x: &[f32],
        cols: usize,
        out: &mut [T],
        per_row: usize,
        f: impl Fn(usize, &[f32], usize, &mut [T], &mut [f32]) + Sync,
    ) {
        let rows = chunk_rows(cols);
        out.par_chunks_mut(rows * per_row).enumerate().for_each(|(c, o)| {
            let mut scratch = vec![0f32; cols];
            for (k, o) in o.chunks_mut(per_row).enumerate() {
                let i = c * rows + k;
                f(i, &x[i * cols..(i + 1) * cols], self.targets[i] as usize, o, &mut scratch);
            }
        });
    }
}

/// The row's maximum as candle's `max_keepdim` gives it (the maximum does not depend on the
/// order; see [`row_max`]), and `Σ_j e^{x_j − m}` summed as candle's `sum_keepdim`, with the
/// exponentials left in `e`.
fn shifted_exp_sum(x: &[f32], e: &mut [f32]) -> (f32, f32) {
    use candle_core::cpu::kernels::VecOps;
    let m = row_max(x);
    for (e, &v) in e.iter_mut().zip(x) {
        *e = (v - m).exp();
    }
    let mut s = 0f32;
    // SAFETY: `e` holds `e.len()` values and `s` is one.
    unsafe { f32::vec_reduce_sum(e.as_ptr(), &mut s, e.len()) };
    (m, s)
}

impl CustomOp1 for TargetLogProbs {
    fn name(&self) -> &'static str {
        "fused-target-log-probs"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, cols) = f32_rows(s, l, "target log-probs")?;
        let n = x.len() / cols.max(1);
        if l.dims().len() != 2 || n != self.targets.len() || self.targets.iter().any(|&t| t as usize >= cols) {
            return Err(candle_core::Error::Msg(format!("target log-probs: logits {:?} for {} targets", l.dims(), self.targets.len())));
        }
        let mut out = vec![0f32; n];
        self.rows(x, cols, &mut out, 1, |_, x, t, o, e| {
            let (m, s) = shifted_exp_sum(x, e);
            o[0] = x[t] - (s.ln() + m);
        });
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    /// With `g` the gradient of row `i`'s output and `s` its sum: the composition's chain,
    /// node by node — `d = 0 + g`; `d_lse = 0 − d`; `d_s = 0 + (0 + d_lse) / s`; each column's
    /// `0 + (0 + d_s) · e_j`; and at the target `+ (0 + (0 + d))` from the gather.
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let z = |v: f32| 0.0 + v;
        let grad = with_f32(x, "target log-probs", |xv, l| {
            with_f32(&dy, "target log-probs gradient", |g, _| {
                let cols = *l.dims().last().unwrap_or(&1);
                let mut out = vec![0f32; xv.len()];
                self.rows(xv, cols, &mut out, cols, |i, x, t, o, e| {
                    let (_, s) = shifted_exp_sum(x, e);
                    let d = z(g[i]);
                    let d_s = z(z(0.0 - d) / s);
                    for (o, &e) in o.iter_mut().zip(e.iter()) {
                        *o = z(z(d_s) * e);
                    }
                    o[t] += z(z(d));
                });
                Ok(out)
            })
        })?;
        Ok(Some(Tensor::from_vec(grad, x.shape(), x.device())?))
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
    fn exp_underflows_to_zero_below_the_cut() {
        // Every f32 from the cut down to -1e9 and beyond: exp is +0 (bits 0), so skipping it is exact.
        let mut d = super::UNDERFLOWS;
        while d > -3e9 {
            assert_eq!(d.next_down().exp().to_bits(), 0, "exp({d})");
            d = if d > -200.0 { d.next_down() } else { d * 1.01 };
        }
        assert_eq!(f32::NEG_INFINITY.exp().to_bits(), 0);
        // ... and just above it, exp is not yet zero everywhere (the cut is not needlessly low).
        assert!((-103.0f32).exp() > 0.0);
    }

    #[test]
    fn softmax_row_gives_the_bits_of_the_plain_loop() {
        // The row kernel before its lane max and skipped zero terms: one fold, one loop.
        fn plain(o: &mut [f32], x: &[f32]) {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in o.iter_mut().zip(x) {
                let d = v - max;
                *o = if d < super::UNDERFLOWS { 0.0 } else { d.exp() };
                sum += *o;
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|v| *v *= inv);
        }
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for (len, seed) in [(1, 1), (7, 2), (8, 3), (9, 4), (63, 5), (100, 6), (512, 7), (513, 8)] {
            let base: Vec<f32> = random(&[len], seed).flatten_all().unwrap().to_vec1().unwrap();
            let scaled: Vec<f32> = base.iter().map(|v| v * 40.0).collect();
            // Attention-style masks: a causal tail, left padding, every other entry, everything.
            let masked = |keep: &dyn Fn(usize) -> bool| -> Vec<f32> {
                base.iter().enumerate().map(|(j, &v)| if keep(j) { v } else { v + -1e9 }).collect()
            };
            rows.extend([base.clone(), scaled, masked(&|j| j <= len / 3), masked(&|j| j >= len / 2), masked(&|j| j % 2 == 0)]);
            rows.push(masked(&|_| false));
        }
        rows.push(vec![0.0, -0.0, 0.0, -0.0, -0.0, 0.0, 0.0, -0.0, -0.0]);
        rows.push(vec![-0.0; 9]);
        rows.push(vec![f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, -200.0, 3.0, -0.0, 0.5, -104.0, 2.0, -103.9]);
        rows.push(vec![0.0, -103.9, -104.0, -87.0, -100.0, -88.7, -1e9, -103.99, -90.0]);
        rows.push(vec![1.0, f32::NAN, 2.0, -5.0, 0.0, 7.0, 1.0, 1.0, 4.0]);
        for x in &rows {
            let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            super::softmax_row(&mut a, x);
            plain(&mut b, x);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "row {x:?}");
        }
    }

    /// The fused target log-probabilities give the composition's bits, forward and backward:
    /// logits spread far enough that some exponentials underflow to 0, upstream gradients of
    /// both signs, 0 and −0, targets at both ends of the vocabulary, rows across the parallel
    /// chunks (a vocabulary of 5,000 puts three rows in a chunk).
    #[test]
    fn fused_target_log_probs_give_the_bits_of_the_composition() {
        let (n, v) = (11, 5000);
        let spread = (random(&[n, v], 21) * 40.0).unwrap();
        let x = Var::from_tensor(&spread).unwrap();
        let targets: Vec<u32> = (0..n as u32)
            .map(|i| match i {
                0 => 0,
                1 => v as u32 - 1,
                _ => (i * 977) % v as u32,
            })
            .collect();
        let t = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        let mut up: Vec<f32> = random(&[n], 22).to_vec1().unwrap();
        up[2] = 0.0;
        up[3] = -0.0;
        let up = Tensor::new(up.as_slice(), &Device::Cpu).unwrap();
        let fused = crate::ops::target_log_probs(x.as_tensor(), &t).unwrap();
        let composed = safetune_core::model::target_log_probs_composed(x.as_tensor(), &t).unwrap();
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fused), bits(&composed), "forward");
        let g1 = (&fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
        assert_eq!(bits(a), bits(b), "backward");
        // Some exponentials did underflow, so the −0 products were exercised.
        let e = (x.as_tensor().broadcast_sub(&x.as_tensor().max_keepdim(D::Minus1).unwrap()).unwrap()).exp().unwrap();
        assert!(e.flatten_all().unwrap().to_vec1::<f32>().unwrap().contains(&0.0));
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

    #[test]
    fn frozen_low_rank_matches_the_composition_forward_and_backward() {
        // Shapes past gemm's special small-matrix kernels, several k-blocks deep.
        let (rows, inp, out, r) = (2 * 40, 600, 72, 8);
        let w = (random(&[out, inp], 6) * 0.05).unwrap();
        let x = Var::from_tensor(&random(&[2, 40, inp], 7)).unwrap();
        let a = Var::from_tensor(&(random(&[r, inp], 8) * 0.05).unwrap()).unwrap();
        let b = Var::from_tensor(&(random(&[out, r], 9) * 0.1).unwrap()).unwrap();
        let up = random(&[2, 40, out], 10);
        for scale in [2.0, 0.75] {
            let h = x.as_tensor().reshape((rows, inp)).unwrap().matmul(&a.t().unwrap()).unwrap();
            let lr = safetune_core::LowRank { h: h.clone(), b: b.as_tensor().clone(), scale };
            let fused = crate::ops::linear_low_rank(x.as_tensor(), &w, &lr).unwrap();
            assert_eq!(fused.dims(), &[2, 40, out]);
            // What the model computed before: the frozen product plus the adapter's delta.
            let delta = (h.matmul(&b.t().unwrap()).unwrap() * scale).unwrap().reshape((2, 40, out)).unwrap();
            let composed = (crate::ops::linear(x.as_tensor(), &w).unwrap() + delta).unwrap();
            let d = max_diff(&fused, &composed);
            // A power-of-two scale is exact, so the sums are the same bits.
            assert!(if scale == 2.0 { d == 0.0 } else { d < 1e-5 }, "scale {scale}: forward {d}");
            let g1 = (&fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("x", x.as_tensor()), ("A", a.as_tensor()), ("B", b.as_tensor())] {
                let (g1, g2) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                let d = max_diff(g1, g2);
                // The same products in the same order: the same bits, whatever the scale.
                assert!(if scale == 2.0 { d == 0.0 } else { d < 1e-4 }, "scale {scale}: {name} backward {d}");
                assert!(g1.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1, "{name}: a gradient must flow");
            }
            // The frozen weight gets no gradient.
            assert!(g1.get(&w).is_none());
        }
    }

    #[test]
    fn fused_attention_matches_the_composition_forward_and_backward() {
        // SmolLM2's grouping (3 key/value heads, 3 query heads each), a padded batch.
        let (b, kvh, rep, t, d) = (2, 3, 3, 24, 64);
        let q = Var::from_tensor(&(random(&[b, kvh, rep * t, d], 11) * 0.3).unwrap()).unwrap();
        let k = Var::from_tensor(&(random(&[b, kvh, t, d], 12) * 0.3).unwrap()).unwrap();
        let v = Var::from_tensor(&random(&[b, kvh, t, d], 13)).unwrap();
        let mask =
            Tensor::from_vec((0..b * t).map(|i| if i % t < 3 && i >= t { 0f32 } else { 1.0 }).collect::<Vec<_>>(), (b, t), &Device::Cpu)
                .unwrap();
        let bias = crate::ops::attention_bias(Some(&mask), b, t, t, &Device::Cpu).unwrap();
        let up = random(&[b, kvh, rep * t, d], 14);
        let scale = 1.0 / (d as f64).sqrt();
        let fused = crate::ops::attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &bias, scale).unwrap();
        let composed = crate::ops::attention_composed(q.as_tensor(), k.as_tensor(), v.as_tensor(), &bias, scale).unwrap();
        assert_eq!(fused.dims(), composed.dims());
        // The same gemm calls and float operations: the same bits.
        assert_eq!(max_diff(&fused, &composed), 0.0, "forward");
        let g1 = (&fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, x) in [("q", q.as_tensor()), ("k", k.as_tensor()), ("v", v.as_tensor())] {
            let (a, c) = (g1.get(x).unwrap(), g2.get(x).unwrap());
            assert_eq!(max_diff(a, c), 0.0, "{name} backward");
            assert!(a.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1, "{name}: a gradient must flow");
        }
    }

    #[test]
    fn fused_attention_in_inference_matches_the_composition_at_prefill_and_decoding_shapes() {
        // Nothing tracked: a left-padded prefill (t = s), then decoding steps (t = 1) against caches
        // of a few lengths — small products take gemm's other kernels (rows × columns ≤ 256).
        let (b, kvh, rep, d) = (2, 3, 3, 64);
        for (t, s) in [(24, 24), (1, 5), (1, 40), (1, 100), (1, 700)] {
            let q = (random(&[b, kvh, rep * t, d], 21) * 0.3).unwrap();
            let k = (random(&[b, kvh, s, d], 22) * 0.3).unwrap();
            let v = random(&[b, kvh, s, d], 23);
            let mask = Tensor::from_vec(
                (0..b * s).map(|i| if i % s < 2 && i >= s { 0f32 } else { 1.0 }).collect::<Vec<_>>(),
                (b, s),
                &Device::Cpu,
            )
            .unwrap();
            let bias = crate::ops::attention_bias(Some(&mask), b, t, s, &Device::Cpu).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let fused = q.apply_op3(&k, &v, super::Attention { bias: bias.clone(), scale }).unwrap();
            let composed = crate::ops::attention_composed(&q, &k, &v, &bias, scale).unwrap();
            assert_eq!(fused.dims(), composed.dims());
            assert_eq!(max_diff(&fused, &composed), 0.0, "t {t}, s {s}");
        }
    }

    #[test]
    fn fused_rope_matches_the_composition_forward_and_backward() {
        // A decoding-sized input (run on the calling thread) and a training-sized one (in parallel),
        // with per-sequence positions (batch b) and shared ones (batch 1).
        for ((b, h, t, d), cb) in [((2, 3, 5, 8), 2), ((2, 3, 5, 8), 1), ((2, 9, 64, 64), 2), ((2, 9, 64, 64), 1)] {
            let x = Var::from_tensor(&random(&[b, h, t, d], 15)).unwrap();
            let up = random(&[b, h, t, d], 16);
            let cos = (random(&[cb, 1, t, d / 2], 17) * 0.3).unwrap();
            let sin = (random(&[cb, 1, t, d / 2], 18) * 0.3).unwrap();
            let fused = crate::ops::rope(x.as_tensor(), &cos, &sin).unwrap();
            let composed = crate::ops::rope_composed(x.as_tensor(), &cos, &sin).unwrap();
            assert_eq!(max_diff(&fused, &composed), 0.0, "forward, cos batch {cb}");
            let g1 = (&fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let (g1, g2) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
            assert_eq!(max_diff(g1, g2), 0.0, "backward, cos batch {cb}");
            assert!(g1.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1, "a gradient must flow");
        }
    }

    #[test]
    fn fused_swiglu_matches_the_composition_forward_and_backward() {
        // Small (on the calling thread) and large (over the pool) inputs.
        for shape in [[2, 5, 12], [2, 64, 1536]] {
            let g = Var::from_tensor(&(random(&shape, 19) * 2.0).unwrap()).unwrap();
            let u = Var::from_tensor(&random(&shape, 20)).unwrap();
            let up = random(&shape, 21);
            let fused = crate::ops::swiglu(g.as_tensor(), u.as_tensor()).unwrap();
            let composed = crate::ops::swiglu_composed(g.as_tensor(), u.as_tensor()).unwrap();
            assert_eq!(max_diff(&fused, &composed), 0.0, "forward {shape:?}");
            let g1 = (&fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, x) in [("gate", g.as_tensor()), ("up", u.as_tensor())] {
                let (a, b) = (g1.get(x).unwrap(), g2.get(x).unwrap());
                assert_eq!(max_diff(a, b), 0.0, "{name} backward {shape:?}");
                assert!(a.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.1, "{name}: a gradient must flow");
            }
            // One input tracked, the other a constant: each gradient alone, the same bits.
            for gate_tracked in [true, false] {
                let (gt, ut) = if gate_tracked {
                    (g.as_tensor().clone(), u.as_tensor().detach())
                } else {
                    (g.as_tensor().detach(), u.as_tensor().clone())
                };
                let x = if gate_tracked { g.as_tensor() } else { u.as_tensor() };
                let fused = crate::ops::swiglu(&gt, &ut).unwrap();
                let composed = crate::ops::swiglu_composed(&gt, &ut).unwrap();
                let g1 = (&fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (&composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
                assert_eq!(max_diff(g1.get(x).unwrap(), g2.get(x).unwrap()), 0.0, "gate tracked {gate_tracked}, {shape:?}");
                let other = if gate_tracked { u.as_tensor() } else { g.as_tensor() };
                assert!(g1.get(other).is_none(), "a constant gets no gradient");
            }
        }
    }
}
