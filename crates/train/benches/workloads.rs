//! The workloads of docs/PERFORMANCE.md on SmolLM2-135M as criterion
//! benchmarks: one training step (LoRA q,v; LoRA all-linear; full; the two LoRA steps
//! with bf16 frozen products, `train.precision = "bf16"`) at batch 4 × 128 tokens, decoding 64 new tokens at batch 1, 8 and 32, and a
//! 512-token prefill; after each group, the peak resident set it reached.
//!
//! `cargo bench -p safetune-train --bench workloads` (a few minutes; the model
//! must be fetched: `safetune model fetch smollm2-135m-instruct`, or point
//! `SAFETUNE_SMOLLM2_GGUF` at the file). Skipped with a message without it.
//! `cargo xtask perf --compare-torch` runs the same workloads beside PyTorch.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "../examples/workloads/mod.rs"]
mod workloads;

fn group<'a>(c: &'a mut Criterion, name: &str) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(20));
    g
}

fn benches(c: &mut Criterion) {
    safetune_train::tune_process();
    let Some(path) = workloads::smollm2() else { return };
    use safetune_core::config::Precision;
    for (name, kind, precision) in [
        ("train-step/lora-qv", "lora-qv", Precision::F32),
        ("train-step/lora-all", "lora-all", Precision::F32),
        ("train-step/full", "full", Precision::F32),
        ("train-step/lora-qv-bf16", "lora-qv", Precision::Bf16),
        ("train-step/lora-all-bf16", "lora-all", Precision::Bf16),
    ] {
        safetune_model::memory::reset_peak_rss();
        let mut m = workloads::prepared(&path, kind).expect("model");
        let mut g = group(c, name);
        g.throughput(Throughput::Elements(4 * 128));
        g.bench_function("batch 4 x 128", |b| {
            b.iter_custom(|iters| {
                let s = workloads::train_steps_at(&mut m, 4, 128, iters as usize, precision).expect("step");
                Duration::from_secs_f64(s * iters as f64)
            })
        });
        g.finish();
        eprintln!("{name}: peak RSS {:.0} MB", workloads::peak_rss_mb());
    }
    let m = workloads::prepared(&path, "inference").expect("model");
    for batch in [1usize, 8, 32] {
        safetune_model::memory::reset_peak_rss();
        let mut g = group(c, "decode-64");
        g.throughput(Throughput::Elements(batch as u64 * 64));
        g.bench_function(format!("batch {batch}"), |b| b.iter(|| workloads::decode(&m, batch, 64).expect("decode")));
        g.finish();
        eprintln!("decode batch {batch}: peak RSS {:.0} MB", workloads::peak_rss_mb());
    }
    let mut g = group(c, "prefill");
    g.throughput(Throughput::Elements(512));
    g.bench_function("512 tokens", |b| b.iter(|| workloads::prefill(&m, 512).expect("prefill")));
    g.finish();
}

criterion_group!(all, benches);
criterion_main!(all);
