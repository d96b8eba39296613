//! A model trained on one compute thread is the one trained on two, to the bit — what lets
//! `--jobs` deal aligned models and cells to one-thread workers (docs/PERFORMANCE.md, "Two
//! one-thread workers"). The thread count of candle and rayon is fixed per process, so the
//! test runs itself twice as a child process with `RAYON_NUM_THREADS` 1 and 2, on a random
//! model wide enough that the products and the fused kernels split their work across
//! threads, and compares what each child trained and generated.

use std::hash::{Hash, Hasher};

use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::training::PlainSft;
use safetune_core::{CausalLm, Example, ExampleKind, GenerationParams};
use safetune_train::{train, StageData};

const CHILD: &str = "SAFETUNE_THREAD_INVARIANCE_CHILD";
const TEST: &str = "training_and_generation_do_not_depend_on_the_thread_count";

/// In the child: LoRA on every linear layer (in f32 and with bf16 frozen products) and a full
/// fine-tuning pass, two steps each at
/// batch 4 of ~100 tokens (the MLP's activations are 4 × 100 × 1024 floats, above the fused
/// kernels' parallel threshold), then batched greedy and sampled answers; one hash of every
/// trained weight's bits, the losses and the answers.
fn child_fingerprint() -> u64 {
    let wide = |c: safetune_model::LlamaConfig| safetune_model::LlamaConfig {
        hidden_size: 256,
        intermediate_size: 1024,
        num_heads: 8,
        num_kv_heads: 4,
        head_dim: 32,
        ..c
    };
    let examples: Vec<Example> = (0..8)
        .map(|i| {
            Example::new(
                format!("x{i}"),
                ExampleKind::Task,
                format!("request {i}: {}", "tell me about the weather and the sea ".repeat(1 + i % 3)),
                format!("answer {i}: {}", "the sea is calm today ".repeat(2 + i % 2)),
            )
        })
        .collect();
    let mut data = StageData::default();
    data.streams.insert("task".into(), examples.clone());
    let cfg = TrainConfig { batch_size: 4, max_len: 256, epochs: 1, max_steps: 2, seed: 3, ..Default::default() };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut lora = safetune_model::tiny_model_shaped(31, wide).unwrap();
    let lc = LoraConfig { r: 8, alpha: 16.0, dropout: 0.0, targets: vec!["all-linear".into()] };
    safetune_lora::attach_lora(&mut lora, &lc, 5).unwrap();
    let mut full = safetune_model::tiny_model_shaped(32, wide).unwrap();
    full.unfreeze_all().unwrap();
    // LoRA with the frozen products in bf16 (`precision = "bf16"`: gemmkit's kernel, split
    // across threads by its own rule, and the parallel conversions to and from bf16).
    let mut lora_bf16 = safetune_model::tiny_model_shaped(33, wide).unwrap();
    safetune_lora::attach_lora(&mut lora_bf16, &lc, 6).unwrap();
    let bf16 = TrainConfig { precision: safetune_core::config::Precision::Bf16, ..cfg.clone() };
    for (m, cfg) in [(&mut lora, &cfg), (&mut full, &cfg), (&mut lora_bf16, &bf16)] {
        let r = train(m, &data, &mut PlainSft, cfg, None, "threads", true).unwrap();
        assert_eq!(r.steps, 2);
        r.losses.iter().for_each(|l| l.to_bits().hash(&mut h));
        for (name, v) in m.trainable() {
            name.hash(&mut h);
            let bits: Vec<u32> = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
            bits.hash(&mut h);
        }
    }
    let tok = lora.tokenizer();
    let prompts: Vec<Vec<u32>> = examples.iter().map(|e| tok.encode(&lora.info().format.prompt(None, &e.prompt)).unwrap()).collect();
    for temperature in [0.0, 0.8] {
        let params = GenerationParams { max_new_tokens: 12, temperature, top_p: 0.9, seed: 4, batch_size: 4 };
        let out = safetune_model::generate_with(&lora, &prompts, &params, &|_, _| false, true).unwrap();
        out.hash(&mut h);
    }
    h.finish()
}

#[test]
fn training_and_generation_do_not_depend_on_the_thread_count() {
    if std::env::var_os(CHILD).is_some() {
        println!("FINGERPRINT {}", child_fingerprint());
        return;
    }
    let run = |threads: &str| -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{threads} thread(s): {stdout}{}", String::from_utf8_lossy(&out.stderr));
        // The harness prints "test <name> ... " before the child's own line.
        let at = stdout.find("FINGERPRINT ").unwrap_or_else(|| panic!("no fingerprint: {stdout}"));
        stdout[at..].lines().next().unwrap_or_default().to_string()
    };
    let (one, two) = (run("1"), run("2"));
    assert_eq!(one, two, "one thread and two trained or answered differently");
}
