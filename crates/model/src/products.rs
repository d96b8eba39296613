//! The matrix products the fused ops make themselves: gemm called with the strides candle's
//! matmul passes it, so a product written here has the bits of candle's (used by `ops`'
//! frozen-weight linear ops and by `fused`'s attention).

/// `y = x Wᵀ` (`x` `[m, k]`, `w` `[n, k]`, both row-major; `y` `[m, n]`) written into `y`, or
/// `y + beta · x Wᵀ` when `accumulate`. The strides are the ones candle's matmul passes to
/// gemm for `x.matmul(&w.t())`, so the sums are the same.
pub(crate) fn gemm_xwt(y: &mut [f32], x: &[f32], w: &[f32], (m, n, k): (usize, usize, usize), accumulate: bool, beta: f32) {
    assert!(y.len() == m * n && x.len() == m * k && w.len() == n * k, "gemm_xwt: slice lengths");
    // Wᵀ is read from `w` (n × k row-major) as a k × n matrix: row stride 1, column stride k.
    // SAFETY: the lengths are asserted above.
    unsafe { gemm_call(y, x, w, (m, n, k), (k as isize, 1), accumulate, beta) }
}

/// `y = x V` (`x` `[m, k]`, `v` `[k, n]`, both row-major; `y` `[m, n]`), with the strides
/// candle's matmul passes to gemm for `x.matmul(&v)` of contiguous operands.
pub(crate) fn gemm_xy(y: &mut [f32], x: &[f32], v: &[f32], (m, n, k): (usize, usize, usize)) {
    assert!(y.len() == m * n && x.len() == m * k && v.len() == k * n, "gemm_xy: slice lengths");
    // SAFETY: the lengths are asserted above; `v` is k × n row-major (row stride n, column stride 1).
    unsafe { gemm_call(y, x, v, (m, n, k), (1, n as isize), false, 1.0) }
}

/// gemm of a row-major `[m, k]` lhs and a rhs of strides `(column, row)` into a row-major
/// `[m, n]` destination, parallel as candle runs it.
///
/// # Safety
/// `rhs` must hold every element its strides reach for a `k × n` matrix; `y` and `x` are
/// `m × n` and `m × k`.
unsafe fn gemm_call(
    y: &mut [f32],
    x: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
    (rcs, rrs): (isize, isize),
    accumulate: bool,
    beta: f32,
) {
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    gemm::gemm(
        m,
        n,
        k,
        y.as_mut_ptr(),
        1,
        n as isize,
        accumulate,
        x.as_ptr(),
        1,
        k as isize,
        rhs.as_ptr(),
        rcs,
        rrs,
        if accumulate { 1f32 } else { 0f32 },
        beta,
        false,
        false,
        false,
        parallelism,
    );
}

/// `v` rounded to bf16, to nearest with ties to even, NaN kept a (quiet) NaN: `half`'s
/// `bf16::from_f32`, written without branches so that the loop over a slice vectorises
/// (test `bf16_rounding_is_halfs`).
#[inline]
fn round_bf16(v: f32) -> half::bf16 {
    let b = v.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    let nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
    half::bf16::from_bits(if nan { (b >> 16) as u16 | 0x0040 } else { rounded })
}

/// Elements below which a conversion runs on the calling thread.
const CONVERT_PARALLEL_MIN: usize = 1 << 16;

/// `f` over matching chunks of `out` and `src`, in parallel on the process's threads when the
/// slices are long enough to pay for it.
fn convert<A: Sync, B: Send>(out: &mut [B], src: &[A], f: impl Fn(&mut [B], &[A]) + Sync) {
    use rayon::prelude::*;
    let threads = candle_core::utils::get_num_threads();
    if threads < 2 || src.len() < CONVERT_PARALLEL_MIN {
        return f(out, src);
    }
    let chunk = src.len().div_ceil(threads);
    out.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(o, s)| f(o, s));
}

/// f32 values rounded to bf16 ([`round_bf16`]).
fn to_bf16(x: &[f32]) -> Vec<half::bf16> {
    let mut out = vec![half::bf16::ZERO; x.len()];
    convert(&mut out, x, |o, s| {
        for (o, &v) in o.iter_mut().zip(s) {
            *o = round_bf16(v);
        }
    });
    out
}

/// A product of bf16 operands (f32 accumulation, bf16 result) widened into `y` (exact).
fn bf16_gemm_into(y: &mut [f32], a: gemmkit::MatRef<'_, half::bf16>, b: gemmkit::MatRef<'_, half::bf16>, (m, n): (usize, usize)) {
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 { gemmkit::Parallelism::Rayon(threads) } else { gemmkit::Parallelism::Serial };
    let mut out = vec![half::bf16::ZERO; m * n];
    gemmkit::gemm(half::bf16::ONE, a, b, half::bf16::ZERO, gemmkit::MatMut::from_row_major(&mut out, m, n), par);
    convert(y, &out, |d, s| {
        for (d, s) in d.iter_mut().zip(s) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    });
}

/// `y = x Wᵀ` (`x` `[m, k]` f32, `w` `[n, k]` bf16, both row-major; `y` `[m, n]`) in bf16:
/// `x` rounded to bf16, the sums accumulated in f32 (AVX-512 BF16's `vdpbf16ps` where the CPU
/// has it, gemmkit's widening kernel elsewhere), each result rounded to bf16 — what a
/// bf16 linear layer computes.
pub(crate) fn gemm_xwt_bf16(y: &mut [f32], x: &[f32], w: &[half::bf16], (m, n, k): (usize, usize, usize)) {
    assert!(y.len() == m * n && x.len() == m * k && w.len() == n * k, "gemm_xwt_bf16: slice lengths");
    let xb = to_bf16(x);
    bf16_gemm_into(y, gemmkit::MatRef::from_row_major(&xb, m, k), gemmkit::MatRef::from_col_major(w, k, n), (m, n));
}

/// `y = g W` (`g` `[m, n]` f32, `w` `[n, k]` bf16 row-major; `y` `[m, k]`) in bf16 as
/// [`gemm_xwt_bf16`]: the input gradient of a frozen bf16 weight.
pub(crate) fn gemm_xw_bf16(y: &mut [f32], g: &[f32], w: &[half::bf16], (m, n, k): (usize, usize, usize)) {
    assert!(y.len() == m * k && g.len() == m * n && w.len() == n * k, "gemm_xw_bf16: slice lengths");
    let gb = to_bf16(g);
    bf16_gemm_into(y, gemmkit::MatRef::from_row_major(&gb, m, n), gemmkit::MatRef::from_row_major(w, n, k), (m, k));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn same(v: f32) -> bool {
        super::round_bf16(v).to_bits() == half::bf16::from_f32(v).to_bits()
    }

    /// The branch-free rounding is `half`'s on every kind of value: ties both ways, the
    /// largest finite values (which round to infinity), infinities, NaNs, subnormals, zeros.
    #[test]
    fn bf16_rounding_is_halfs() {
        for bits in [
            0u32,
            0x8000_0000,
            0x0000_0001,
            0x0000_8000,
            0x0001_8000,
            0x3F80_8000,
            0x3F81_8000,
            0x3F80_7FFF,
            0x3F80_8001,
            0x7F7F_FFFF,
            0xFF7F_FFFF,
            0x7F80_0000,
            0xFF80_0000,
            0x7F80_0001,
            0x7FC0_0000,
            0xFFFF_FFFF,
            0x7F80_8000,
        ] {
            assert!(same(f32::from_bits(bits)), "{bits:#010x}");
        }
    }

    proptest! {
        #[test]
        fn bf16_rounding_is_halfs_on_any_bits(bits in any::<u32>()) {
            prop_assert!(same(f32::from_bits(bits)), "{:#010x}", bits);
        }
    }
}
