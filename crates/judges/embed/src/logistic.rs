//! L2-regularised logistic regression fitted by Newton's method (exact,
//! deterministic: no learning rate, no shuffling).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    pub weights: Vec<f64>,
    pub bias: f64,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Logistic {
    /// P(class 1) for one feature vector.
    pub fn prob(&self, x: &[f64]) -> f64 {
        sigmoid(self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>())
    }

    /// Fits on rows `x` with labels `y`; `l2` penalises the weights (not the bias).
    /// Returns `None` when there is nothing to fit (no rows, or one class only).
    pub fn fit(x: &[Vec<f64>], y: &[bool], l2: f64, iterations: usize) -> Option<Self> {
        let d = x.first()?.len();
        if y.iter().all(|&v| v) || y.iter().all(|&v| !v) || x.len() != y.len() {
            return None;
        }
        // Parameters: weights then bias (index d).
        let mut theta = vec![0.0; d + 1];
        // Rows with a trailing 1 for the bias, as one f64 matrix: the Hessian
        // Xᵀ diag(w) X is one matrix product.
        let n = x.len();
        let flat: Vec<f64> = x.iter().flat_map(|r| r.iter().copied().chain(std::iter::once(1.0))).collect();
        let xm = Tensor::from_vec(flat, (n, d + 1), &Device::Cpu).ok()?;
        let xt = xm.t().ok()?.contiguous().ok()?;
        for _ in 0..iterations {
            let th = Tensor::from_vec(theta.clone(), (d + 1, 1), &Device::Cpu).ok()?;
            let z: Vec<f64> = xm.matmul(&th).ok()?.flatten_all().ok()?.to_vec1().ok()?;
            let p: Vec<f64> = z.iter().map(|&z| sigmoid(z)).collect();
            let r: Vec<f64> = p.iter().zip(y).map(|(p, &l)| p - if l { 1.0 } else { 0.0 }).collect();
            let w: Vec<f64> = p.iter().map(|p| (p * (1.0 - p)).max(1e-10)).collect();
            let r_t = Tensor::from_vec(r, (n, 1), &Device::Cpu).ok()?;
            let mut grad: Vec<f64> = xt.matmul(&r_t).ok()?.flatten_all().ok()?.to_vec1().ok()?;
            let w_t = Tensor::from_vec(w, (n, 1), &Device::Cpu).ok()?;
            let mut hess: Vec<f64> = xt.matmul(&xm.broadcast_mul(&w_t).ok()?).ok()?.flatten_all().ok()?.to_vec1().ok()?;
            for i in 0..d {
                grad[i] += l2 * theta[i];
                hess[i * (d + 1) + i] += l2;
            }
            hess[d * (d + 1) + d] += 1e-8;
            let step = cholesky_solve(&mut hess, &grad, d + 1)?;
            let mut change = 0.0f64;
            for (t, s) in theta.iter_mut().zip(&step) {
                *t -= s;
                change = change.max(s.abs());
            }
            if change < 1e-9 {
                break;
            }
        }
        let bias = theta.pop()?;
        Some(Self { weights: theta, bias })
    }
}

/// Solves A x = b for a symmetric positive-definite A (n × n, overwritten).
fn cholesky_solve(a: &mut [f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut s = a[j * n + j];
        for k in 0..j {
            s -= a[j * n + k] * a[j * n + k];
        }
        if s <= 0.0 {
            return None;
        }
        let l = s.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / l;
        }
    }
    let mut y = b.to_vec();
    for i in 0..n {
        for k in 0..i {
            y[i] -= a[i * n + k] * y[k];
        }
        y[i] /= a[i * n + i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= a[k * n + i] * y[k];
        }
        y[i] /= a[i * n + i];
    }
    Some(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_a_linear_rule_and_matches_a_known_solution() {
        // y = 1 when x0 + x1 > 1: a strongly penalised fit still ranks by x0 + x1.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..20 {
            for j in 0..20 {
                let (a, b) = (i as f64 / 19.0, j as f64 / 19.0);
                x.push(vec![a, b]);
                y.push(a + b > 1.0);
            }
        }
        let m = Logistic::fit(&x, &y, 1e-3, 50).unwrap();
        let correct = x.iter().zip(&y).filter(|(r, &l)| (m.prob(r) > 0.5) == l).count();
        assert!(correct >= 390, "{correct}/400");
        assert!((m.weights[0] - m.weights[1]).abs() < 1e-6, "symmetric data, equal weights: {:?}", m.weights);
        // A closed form: at x = 0 labels (0, 1), at x = 1 labels (1, 1, 1, 0);
        // the unpenalised fit gives p(0) = 1/2, p(1) = 3/4: bias 0, weight ln 3.
        let x2 = vec![vec![0.0], vec![0.0], vec![1.0], vec![1.0], vec![1.0], vec![1.0]];
        let y2 = vec![false, true, true, true, true, false];
        let m2 = Logistic::fit(&x2, &y2, 0.0, 100).unwrap();
        assert!(m2.bias.abs() < 1e-6 && (m2.weights[0] - 3f64.ln()).abs() < 1e-6, "{m2:?}");
        assert!(Logistic::fit(&x2, &[true; 6], 0.0, 10).is_none(), "one class: nothing to fit");
    }
}
