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
