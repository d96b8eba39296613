//! Times LoRA training steps on a model file: `step_time MODEL [BATCH] [LEN] [STEPS]`.

use safetune_core::config::{LoraConfig, TrainConfig};
use safetune_core::training::PlainSft;
use safetune_core::{Example, ExampleKind};
use safetune_train::{train, StageData};

fn main() -> safetune_core::Result<()> {
    safetune_train::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::PathBuf::from(&args[1]);
    let batch: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(8);
    let words: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(60);
    let steps: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(3);
    let mut m = safetune_model::load_model(&path, &candle_core::Device::Cpu)?;
    let lora = LoraConfig { dropout: 0.0, ..Default::default() };
    safetune_lora::attach_lora(&mut m, &lora, 0)?;
    let text = "word ".repeat(words);
    let ex: Vec<Example> =
        (0..batch * steps).map(|i| Example::new(format!("x{i}"), ExampleKind::Task, text.clone(), text.clone())).collect();
    let mut d = StageData::default();
    d.streams.insert("task".into(), ex);
    let cfg = TrainConfig { batch_size: batch, max_len: 4 * words + 64, epochs: 1, ..Default::default() };
    let r = train(&mut m, &d, &mut PlainSft, &cfg, None, "time", false)?;
    println!("{} steps, {:.2} s/step, {} tokens", r.steps, r.seconds / r.steps as f64, r.tokens);
    Ok(())
}
