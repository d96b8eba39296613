//! One timed workload on a model file, for `cargo xtask perf`:
//! `perf MODEL WORKLOAD [--batch B] [--tokens T] [--steps S] [--new N]`, where
//! WORKLOAD is `lora-qv`, `lora-all`, `full` (seconds per training step, after
//! one warm-up step), `decode` (generated tokens per second at batch B, N new
//! tokens each), `prefill` (prompt tokens per second, one prompt of T tokens),
//! or `export DIR` (the model as a Hugging Face directory, for the PyTorch
//! reference). Prints one JSON line with the value and the peak resident set.

use std::time::Instant;

use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::training::PlainSft;
use safetune_core::{CausalLm, Example, ExampleKind, GenerationParams};
use safetune_train::{train, StageData};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn flag(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Seconds per step: one warm-up step, then `steps` timed ones.
fn train_steps(m: &mut safetune_model::Llama, batch: usize, tokens: usize, steps: usize) -> safetune_core::Result<f64> {
    // "word " is one token; prompt and answer split the length.
    let half = "word ".repeat(tokens / 2 - 8);
    let ex = |n: usize| -> Vec<Example> {
        (0..n).map(|i| Example::new(format!("x{i}"), ExampleKind::Task, half.clone(), half.clone())).collect()
    };
    let cfg = |n: usize| TrainConfig { batch_size: batch, max_len: tokens + 16, epochs: 1, max_steps: n, ..Default::default() };
    let mut d = StageData::default();
    d.streams.insert("task".into(), ex(batch));
    train(m, &d, &mut PlainSft, &cfg(1), None, "warm-up", true)?;
    d.streams.insert("task".into(), ex(batch * steps));
    let r = train(m, &d, &mut PlainSft, &cfg(steps), None, "timed", true)?;
    Ok(r.seconds / r.steps as f64)
}

fn main() -> safetune_core::Result<()> {
    safetune_train::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(workload)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: perf MODEL lora-qv|lora-all|full|decode|prefill|export [--batch B] [--tokens T] [--steps S] [--new N]");
        std::process::exit(2);
    };
    let mut m = safetune_model::load_model(std::path::Path::new(path), &candle_core::Device::Cpu)?;
    let (batch, tokens, steps, new) =
        (flag(&args, "--batch", 4), flag(&args, "--tokens", 128), flag(&args, "--steps", 3), flag(&args, "--new", 64));
    let (value, unit) = match workload.as_str() {
        "lora-qv" | "lora-all" => {
            let targets = if workload == "lora-qv" { vec!["q_proj".into(), "v_proj".into()] } else { vec!["all-linear".into()] };
            safetune_lora::attach_lora(&mut m, &LoraConfig { r: 8, alpha: 16.0, dropout: 0.0, targets }, 0)?;
            (train_steps(&mut m, batch, tokens, steps)?, "s/step")
        }
        "full" => {
            m.unfreeze_all()?;
            (train_steps(&mut m, batch, tokens, steps)?, "s/step")
        }
        "decode" => {
            let tok = m.tokenizer();
            let prompt = tok.encode(&m.info().format.prompt(None, "Write a short story about a lighthouse keeper."))?;
            let prompts = vec![prompt; batch];
            // Sampling at a fixed seed: the same number of tokens every run.
            let params = GenerationParams { max_new_tokens: new, temperature: 1.0, top_p: 1.0, seed: 1, batch_size: batch };
            m.generate(&prompts[..1], &GenerationParams { max_new_tokens: 2, ..params.clone() })?;
            let t = Instant::now();
            let out = m.generate(&prompts, &params)?;
            (out.iter().map(|o| o.len()).sum::<usize>() as f64 / t.elapsed().as_secs_f64(), "tok/s")
        }
        "prefill" => {
            let ids: Vec<u32> = m.tokenizer().encode(&"word ".repeat(tokens))?.into_iter().take(tokens).collect();
            let params = GenerationParams { max_new_tokens: 1, temperature: 0.0, top_p: 1.0, seed: 0, batch_size: 1 };
            m.generate(std::slice::from_ref(&ids), &params)?;
            let t = Instant::now();
            m.generate(std::slice::from_ref(&ids), &params)?;
            (ids.len() as f64 / t.elapsed().as_secs_f64(), "tok/s")
        }
        "export" => {
            let dir = args.get(3).ok_or_else(|| safetune_core::anyhow::anyhow!("export needs a directory"))?;
            safetune_model::export_hf(&m, std::path::Path::new(dir))?;
            (0.0, "exported")
        }
        other => safetune_core::anyhow::bail!("unknown workload `{other}`"),
    };
    println!("{}", serde_json::json!({ "workload": workload, "value": value, "unit": unit, "peak_rss_mb": peak_rss_mb() }));
    Ok(())
}
