//! One timed workload on a model file, for `cargo xtask perf`: `perf MODEL WORKLOAD [--batch B]
//! [--tokens T] [--steps S] [--new N]`, where WORKLOAD is `lora-qv`, `lora-all`, `full`
//! (seconds per training step, after one warm-up step), `decode` (generated tokens per second
//! at batch B, N new tokens each), `prefill` (prompt tokens per second, one prompt of T
//! tokens), `gemm` (GFLOP/s of the best of 15 products x·Wᵀ, x `M × K`, W `N × K`: the
//! machine's ceiling for the model's products), `peak-f32` / `peak-bf16` (one core's
//! multiply-add ceiling with AVX-512 f32 FMAs / AVX-512 BF16 dot products), or `export DIR` (the model as a Hugging Face
//! directory, for the PyTorch reference). Prints one JSON line with the value and the peak
//! resident set. The workloads themselves are in `workloads/mod.rs`, shared with the criterion
//! benchmarks. `--precision bf16` runs a LoRA step's or the product's frozen weights in bf16
//! (`train.precision = "bf16"`).

mod workloads;

fn flag(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> safetune_core::Result<()> {
    safetune_train::tune_process();
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(workload)) = (args.get(1), args.get(2)) else {
        eprintln!(
            "usage: perf MODEL lora-qv|lora-all|full|decode|prefill|gemm|peak-f32|peak-bf16|export [--batch B] [--tokens T] [--steps S] [--new N] [--m M --k K --n N] [--precision f32|bf16]"
        );
        std::process::exit(2);
    };
    let path = std::path::Path::new(path);
    let (batch, tokens, steps, new) =
        (flag(&args, "--batch", 4), flag(&args, "--tokens", 128), flag(&args, "--steps", 3), flag(&args, "--new", 64));
    // The names a spec's `precision` takes (the enum's own serde names).
    let precision: safetune_core::config::Precision = match args.iter().position(|a| a == "--precision") {
        None => Default::default(),
        Some(i) => {
            let name = args.get(i + 1).cloned().unwrap_or_default();
            serde_json::from_value(serde_json::Value::String(name)).unwrap_or_else(|e| {
                eprintln!("--precision: {e}");
                std::process::exit(2);
            })
        }
    };
    let (value, unit) = match workload.as_str() {
        "lora-qv" | "lora-all" | "full" => {
            let mut m = workloads::prepared(path, workload)?;
            workloads::train_steps_at(&mut m, batch, tokens, 1, precision)?; // warm-up
            (workloads::train_steps_at(&mut m, batch, tokens, steps, precision)?, "s/step")
        }
        "decode" => {
            let m = workloads::prepared(path, "inference")?;
            // Warm-up at the same batch (as the PyTorch reference does): a batch of two or more
            // decodes from a transposed copy of the weights, built per call, and only the
            // process's first copy faults its pages in (docs/PERFORMANCE.md, session 26).
            workloads::decode(&m, batch, 2)?;
            (workloads::rate(|| workloads::decode(&m, batch, new))?, "tok/s")
        }
        "prefill" => {
            let m = workloads::prepared(path, "inference")?;
            workloads::prefill(&m, tokens)?; // warm-up
            (workloads::rate(|| workloads::prefill(&m, tokens))?, "tok/s")
        }
        "gemm" => {
            let (m, k, n) = (flag(&args, "--m", 512), flag(&args, "--k", 576), flag(&args, "--n", 1536));
            (workloads::gemm_gflops(m, k, n, precision)?, "GFLOP/s")
        }
        // One core's ceiling; not a product of the model (so nothing for PyTorch to compare).
        "peak-f32" | "peak-bf16" => match workloads::peak_gflops(workload == "peak-bf16") {
            Some(v) => (v, "GFLOP/s"),
            None => safetune_core::anyhow::bail!("this CPU lacks the instructions of `{workload}`"),
        },
        "export" => {
            let m = workloads::prepared(path, "inference")?;
            let dir = args.get(3).ok_or_else(|| safetune_core::anyhow::anyhow!("export needs a directory"))?;
            safetune_model::export_hf(&m, std::path::Path::new(dir))?;
            (0.0, "exported")
        }
        other => safetune_core::anyhow::bail!("unknown workload `{other}`"),
    };
    println!("{}", serde_json::json!({ "workload": workload, "value": value, "unit": unit, "peak_rss_mb": workloads::peak_rss_mb() }));
    Ok(())
}
