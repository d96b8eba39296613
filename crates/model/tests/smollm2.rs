//! Checks against the real SmolLM2-135M-Instruct GGUF.

mod common;

use candle_core::Device;
use safetune_core::{CausalLm, PromptFormat};

#[test]
fn tokenizer_matches_known_ids_and_round_trips() {
    let Some(path) = common::smollm2_gguf() else { return };
    let m = safetune_model::load_gguf(&path, &Device::Cpu).unwrap();
    let tok = m.tokenizer();
    assert_eq!(tok.encode("<|im_start|>assistant\n").unwrap(), vec![1, 520, 9531, 198]);
    // Digits are split one by one; no prefix space is added.
    let ids = tok.encode("2024").unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
    for text in ["Hello, world! The answer is 42.", "  spaces\tand\nnewlines ünïcödé 😀", "positive"] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    assert!(tok.stop_ids().contains(&2), "<|im_end|> stops generation");
    assert_eq!(m.info().format, PromptFormat::Chatml);
}
