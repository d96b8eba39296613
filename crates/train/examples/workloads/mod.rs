//! The timed workloads shared by `examples/perf.rs` (`cargo xtask perf`) and
//! `benches/workloads.rs` (criterion).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use safetune_core::config::{LoraConfig, Precision, TrainConfig};
use safetune_core::training::PlainSft;
use safetune_core::{CausalLm, Example, ExampleKind, GenerationParams, Result};
use safetune_model::Llama;
use safetune_train::{train, StageData};

/// The SmolLM2 GGUF from `SAFETUNE_SMOLLM2_GGUF` or the model cache.
pub fn smollm2() -> Option<PathBuf> {
    let p = std::env::var_os("SAFETUNE_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| safetune_core::cache_dir().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.exists() {
        return Some(p);
    }
    eprintln!("skipped: {} not present (safetune model fetch smollm2-135m-instruct)", p.display());
    None
}

/// Peak resident set since the last reset, in MB (NaN where it cannot be read).
pub fn peak_rss_mb() -> f64 {
    safetune_model::memory::peak_rss_mb().unwrap_or(f64::NAN)
}

/// The model ready for a workload: `lora-qv`, `lora-all` (adapters r8
/// attached), `full` (every weight trainable) or `inference`.
pub fn prepared(path: &Path, kind: &str) -> Result<Llama> {
    let mut m = safetune_model::load_model(path, &candle_core::Device::Cpu)?;
    match kind {
        "lora-qv" | "lora-all" => {
            let targets = if kind == "lora-qv" { vec!["q_proj".into(), "v_proj".into()] } else { vec!["all-linear".into()] };
            safetune_lora::attach_lora(&mut m, &LoraConfig { r: 8, alpha: 16.0, dropout: 0.0, targets }, 0)?;
        }
        "full" => {
            m.unfreeze_all()?;
        }
        _ => {}
    }
    Ok(m)
}

/// Seconds per training step over `steps` steps (after the first call's
/// warm-up, which callers do themselves by calling once).
pub fn train_steps(m: &mut Llama, batch: usize, tokens: usize, steps: usize) -> Result<f64> {
    train_steps_at(m, batch, tokens, steps, Precision::F32)
}

/// [`train_steps`] with the frozen weights' products at `precision` (`TrainConfig::precision`).
pub fn train_steps_at(m: &mut Llama, batch: usize, tokens: usize, steps: usize, precision: Precision) -> Result<f64> {
    // "word " is one token; prompt and answer split the length.
    let half = "word ".repeat(tokens / 2 - 8);
    let examples: Vec<Example> =
        (0..batch * steps).map(|i| Example::new(format!("x{i}"), ExampleKind::Task, half.clone(), half.clone())).collect();
    let cfg = TrainConfig { batch_size: batch, max_len: tokens + 16, epochs: 1, max_steps: steps, precision, ..Default::default() };
    let mut d = StageData::default();
    d.streams.insert("task".into(), examples);
    let r = train(m, &d, &mut PlainSft, &cfg, None, "timed", true)?;
    Ok(r.seconds / r.steps as f64)
}

/// GFLOP/s of `x · Wᵀ` (x `m × k` f32, W `n × k` as the model stores its weights): candle's
/// CPU matmul at f32, or the bf16 frozen-weight product (`train.precision = "bf16"`, W in bf16,
/// with its conversions of x to bf16 and of the result to f32); the best of 15 calls after
/// one warm-up.
pub fn gemm_gflops(m: usize, k: usize, n: usize, precision: Precision) -> Result<f64> {
    let dev = candle_core::Device::Cpu;
    let x = candle_core::Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let w = candle_core::Tensor::randn(0f32, 1.0, (n, k), &dev)?;
    let product: Box<dyn Fn() -> Result<candle_core::Tensor>> = match precision {
        Precision::F32 => Box::new(|| Ok(x.matmul(&w.t()?)?)),
        Precision::Bf16 => {
            let wb = w.to_dtype(candle_core::DType::BF16)?;
            Box::new(move || safetune_model::ops::linear(&x, &wb))
        }
    };
    product()?;
    let mut best = f64::INFINITY;
    for _ in 0..15 {
        let t = Instant::now();
        product()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// Generates `new` tokens for `batch` copies of one prompt (sampling at a
/// fixed seed); returns the number of tokens generated.
pub fn decode(m: &Llama, batch: usize, new: usize) -> Result<usize> {
    let tok = m.tokenizer();
    let prompt = tok.encode(&m.info().format.prompt(None, "Write a short story about a lighthouse keeper."))?;
    let prompts = vec![prompt; batch];
    let params = GenerationParams { max_new_tokens: new, temperature: 1.0, top_p: 1.0, seed: 1, batch_size: batch };
    // `SAFETUNE_PERF_STORED_WEIGHTS=1`: decode from the weights as stored, not their transposed
    // copy (docs/PERFORMANCE.md, "Decoding from transposed weights"), to time the difference.
    let stored = std::env::var("SAFETUNE_PERF_STORED_WEIGHTS").is_ok_and(|v| v == "1");
    Ok(safetune_model::generate_with(m, &prompts, &params, &|_, _| false, !stored)?.iter().map(|o| o.len()).sum())
}

/// One forward pass over a `tokens`-token prompt (and one generated token).
pub fn prefill(m: &Llama, tokens: usize) -> Result<usize> {
    let ids: Vec<u32> = m.tokenizer().encode(&"word ".repeat(tokens))?.into_iter().take(tokens).collect();
    let params = GenerationParams { max_new_tokens: 1, temperature: 0.0, top_p: 1.0, seed: 0, batch_size: 1 };
    m.generate(std::slice::from_ref(&ids), &params)?;
    Ok(ids.len())
}

/// Tokens per second of a closure returning a token count.
pub fn rate(f: impl FnOnce() -> Result<usize>) -> Result<f64> {
    let t = Instant::now();
    let n = f()?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// One core's multiply-add ceiling in GFLOP/s: 28 independent chains of AVX-512 f32 FMAs
/// (`bf16 = false`, 32 flops an instruction) or of AVX-512 BF16 dot products (`vdpbf16ps`,
/// 64 flops an instruction: 16 lanes × 2 products × 2), the instruction a bf16 matrix
/// product would be built on (docs/PERFORMANCE.md, "bf16"). `None` when the CPU lacks the
/// instruction set.
pub fn peak_gflops(bf16: bool) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        const ITERS: usize = 10_000_000;
        let ok = if bf16 { is_x86_feature_detected!("avx512bf16") } else { is_x86_feature_detected!("avx512f") };
        if !ok {
            return None;
        }
        let t = Instant::now();
        // SAFETY: the instruction sets were detected above.
        let sum = unsafe {
            if bf16 {
                peak::dot_bf16(ITERS)
            } else {
                peak::fma_f32(ITERS)
            }
        };
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        let flops_per_instruction = if bf16 { 64.0 } else { 32.0 };
        Some((ITERS * peak::CHAINS) as f64 * flops_per_instruction / secs / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = bf16;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    pub const CHAINS: usize = 28;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_f32(iters: usize) -> f32 {
        let (a, b) = (_mm512_set1_ps(1.0), _mm512_set1_ps(1e-9));
        let mut c = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for acc in c.iter_mut() {
                *acc = _mm512_fmadd_ps(a, b, *acc);
            }
        }
        c.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dot_bf16(iters: usize) -> f32 {
        // bf16 pairs (1.0, 1.0): 0x3f80 each half.
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let mut c = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for acc in c.iter_mut() {
                *acc = _mm512_dpbf16_ps(*acc, a, a);
            }
        }
        c.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }
}
