//! The fused training kernels against the compositions they replace, forward
//! and backward, at SmolLM2-135M's shapes for a batch of 4 × 128 tokens:
//! grouped-query attention (9 query heads over 3 key/value heads, head size
//! 64), SwiGLU's gate (1536 wide), RMSNorm (576 wide) and a frozen 576 × 576
//! linear layer with a LoRA r8 adapter; a frozen 576 → 1536 linear layer in f32 and in bf16
//! (`train.precision = "bf16"`); the loss's log-probabilities (256 answer
//! positions over a 49,152-word vocabulary); and the attention of one 512-token
//! prefill in inference. Random inputs, no model file.
//! `cargo bench -p safetune-model --bench kernels`.

use std::time::Duration;

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use safetune_model::ops;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (((i as u64 + 1) * 2654435761 + seed * 97) % 1000) as f32 / 1000.0 - 0.5).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&random(shape, seed)).expect("var")
}

/// Forward, then backward of the sum of the output times a fixed tensor.
fn step(out: Tensor, up: &Tensor) {
    let loss = (out * up).and_then(|l| l.sum_all()).expect("loss");
    std::hint::black_box(loss.backward().expect("backward"));
}

fn benches(c: &mut Criterion) {
    let (b, kvh, rep, t, d) = (4, 3, 3, 128, 64);
    let q = var(&[b, kvh, rep * t, d], 1);
    let k = var(&[b, kvh, t, d], 2);
    let v = var(&[b, kvh, t, d], 3);
    let bias = ops::attention_bias(None, b, t, t, &Device::Cpu).expect("bias");
    let up = random(&[b, kvh, rep * t, d], 4);
    let scale = 1.0 / (d as f64).sqrt();
    let mut g = c.benchmark_group("attention 4 x 128, forward + backward");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements((b * t) as u64));
    g.bench_function("fused", |bn| bn.iter(|| step(ops::attention(&q, &k, &v, &bias, scale).expect("attention"), &up)));
    g.bench_function("composed", |bn| bn.iter(|| step(ops::attention_composed(&q, &k, &v, &bias, scale).expect("attention"), &up)));
    g.finish();

    // SwiGLU's gate at the MLP's width, both inputs tracked (as under LoRA or full fine-tuning).
    let (g_in, u_in) = (var(&[b, t, 1536], 10), var(&[b, t, 1536], 11));
    let up = random(&[b, t, 1536], 12);
    let mut g = c.benchmark_group("swiglu 4 x 128 x 1536, forward + backward");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements((b * t) as u64));
    g.bench_function("fused", |bn| bn.iter(|| step(ops::swiglu(g_in.as_tensor(), u_in.as_tensor()).expect("swiglu"), &up)));
    g.bench_function("composed", |bn| bn.iter(|| step(ops::swiglu_composed(g_in.as_tensor(), u_in.as_tensor()).expect("swiglu"), &up)));
    g.finish();

    // RMSNorm over the residual stream (576 wide), input tracked, weight frozen (as under LoRA).
    let x_in = var(&[b, t, 576], 13);
    let w_norm = random(&[576], 14);
    let up = random(&[b, t, 576], 15);
    let mut g = c.benchmark_group("rms_norm 4 x 128 x 576, forward + backward");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements((b * t) as u64));
    g.bench_function("fused", |bn| bn.iter(|| step(ops::rms_norm(x_in.as_tensor(), &w_norm, 1e-5).expect("rms_norm"), &up)));
    g.bench_function("composed", |bn| bn.iter(|| step(ops::rms_norm_composed(x_in.as_tensor(), &w_norm, 1e-5).expect("rms_norm"), &up)));
    g.finish();

    // Inference: one 512-token causal prefill (nothing tracked, forward only).
    let n = 512;
    let (q, k, v) = (random(&[1, kvh, rep * n, d], 1), random(&[1, kvh, n, d], 2), random(&[1, kvh, n, d], 3));
    let bias = ops::attention_bias(None, 1, n, n, &Device::Cpu).expect("bias");
    let mut g = c.benchmark_group("attention 1 x 512, inference");
    g.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("fused", |bn| bn.iter(|| std::hint::black_box(ops::attention(&q, &k, &v, &bias, scale).expect("attention"))));
    g.finish();

    let (rows, dim, r) = (b * t, 576, 8);
    let w = random(&[dim, dim], 5);
    let x = var(&[b, t, dim], 6);
    let a = var(&[r, dim], 7);
    let bb = var(&[dim, r], 8);
    let up = random(&[b, t, dim], 9);
    let mut g = c.benchmark_group("frozen 576 x 576 linear + LoRA r8, 4 x 128, forward + backward");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(rows as u64));
    let h = || x.as_tensor().reshape((rows, dim)).and_then(|x| x.matmul(&a.t()?)).expect("h");
    g.bench_function("fused", |bn| {
        bn.iter(|| {
            let lr = safetune_core::LowRank { h: h(), b: bb.as_tensor().clone(), scale: 2.0 };
            step(ops::linear_low_rank(&x, &w, &lr).expect("linear"), &up)
        })
    });
    g.bench_function("composed", |bn| {
        bn.iter(|| {
            let delta = (h().matmul(&bb.t().expect("t")).expect("hb") * 2.0).and_then(|d| d.reshape((b, t, dim))).expect("delta");
            step((ops::linear(&x, &w).expect("linear") + delta).expect("sum"), &up)
        })
    });
    g.finish();

    // The MLP's up-projection (576 → 1536) over a frozen weight, f32 against bf16
    // (`train.precision = "bf16"`: x rounded to bf16, f32 accumulation, bf16 result widened).
    let w_up = random(&[1536, dim], 18);
    let w_up_bf16 = w_up.to_dtype(candle_core::DType::BF16).expect("bf16");
    let up = random(&[b, t, 1536], 19);
    let mut g = c.benchmark_group("frozen 576 -> 1536 linear, 4 x 128, forward + backward");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("f32", |bn| bn.iter(|| step(ops::linear(&x, &w_up).expect("linear"), &up)));
    g.bench_function("bf16", |bn| bn.iter(|| step(ops::linear(&x, &w_up_bf16).expect("linear"), &up)));
    g.finish();
    // The product alone (no graph: the backward above adds candle's element-wise passes).
    let x_plain = x.as_tensor().detach();
    let mut g = c.benchmark_group("frozen 576 -> 1536 linear, 4 x 128, forward");
    g.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("f32", |bn| bn.iter(|| std::hint::black_box(ops::linear(&x_plain, &w_up).expect("linear"))));
    g.bench_function("bf16", |bn| bn.iter(|| std::hint::black_box(ops::linear(&x_plain, &w_up_bf16).expect("linear"))));
    g.finish();

    // The loss's log-probabilities: 256 answer positions over SmolLM2's 49,152-word vocabulary.
    let (n, vocab) = (256, 49_152);
    let logits = var(&[n, vocab], 16);
    let targets =
        Tensor::new((0..n as u32).map(|i| (i * 7919) % vocab as u32).collect::<Vec<_>>().as_slice(), &Device::Cpu).expect("targets");
    let up = random(&[n], 17);
    let mut g = c.benchmark_group("target log-probs 256 x 49152, forward + backward");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("fused", |bn| bn.iter(|| step(ops::target_log_probs(logits.as_tensor(), &targets).expect("log-probs"), &up)));
    g.bench_function("composed", |bn| {
        bn.iter(|| step(safetune_core::model::target_log_probs_composed(logits.as_tensor(), &targets).expect("log-probs"), &up))
    });
    g.finish();
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
