//! Checks against the real SmolLM2-135M-Instruct GGUF.

mod common;

use candle_core::Device;
use safetune_core::{CausalLm, PromptFormat};

#[test]
fn tokenizer_matches_known_ids_and_round_trips() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
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

/// Logits agree with Hugging Face transformers (f32, the same GGUF
/// dequantized by its own code) within this absolute tolerance.
const LOGIT_TOLERANCE: f32 = 2e-3;

#[test]
fn forward_and_greedy_decode_match_transformers_golden() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let golden: serde_json::Value = serde_json::from_str(include_str!("../../../fixtures/smollm2_golden.json")).unwrap();
    let m = safetune_model::load_gguf(&path, &Device::Cpu).unwrap();
    let prompt = golden["prompt"].as_str().unwrap();
    let ids: Vec<u32> = golden["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(m.tokenizer().encode(prompt).unwrap(), ids, "tokenizer differs from transformers'");
    let x = candle_core::Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits =
        m.forward(&safetune_core::model::ForwardRequest { ids: Some(&x), ..Default::default() }).unwrap().logits.squeeze(0).unwrap();
    let mut worst = 0f32;
    for (k, pos) in golden["positions"].as_array().unwrap().iter().enumerate() {
        let row = logits.get(pos.as_u64().unwrap() as usize).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(safetune_model::argmax(&row) as u64, golden["argmax"][k].as_u64().unwrap());
        for (i, g) in golden["logits_head"][k].as_array().unwrap().iter().enumerate() {
            worst = worst.max((row[i] - g.as_f64().unwrap() as f32).abs());
        }
        for (i, g) in golden["top5"][k].as_array().unwrap().iter().zip(golden["top5_logits"][k].as_array().unwrap()) {
            worst = worst.max((row[i.as_u64().unwrap() as usize] - g.as_f64().unwrap() as f32).abs());
        }
    }
    assert!(worst < LOGIT_TOLERANCE, "max |logit difference| {worst}");
    let greedy: Vec<u32> = golden["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let p = safetune_core::GenerationParams { max_new_tokens: greedy.len(), ..Default::default() };
    let got = m.generate(&[ids], &p).unwrap().remove(0);
    // transformers keeps the stop token; safetune strips it.
    let expect: Vec<u32> = greedy.iter().copied().take_while(|t| !m.tokenizer().stop_ids().contains(t)).collect();
    assert_eq!(got, expect);
    eprintln!("max |logit difference| vs transformers: {worst}");
}

/// Answers that end early (a settled verdict) leave the batch; the answers
/// still decoding come out bit for bit as in the full batch — greedy and
/// sampled, with one row left beside a finished one at the end.
#[test]
fn answers_leaving_the_batch_leave_the_others_unchanged() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let m = safetune_model::load_gguf(&path, &Device::Cpu).unwrap();
    let prompts = everyday_prompts(&m, 8);
    for temperature in [0.0, 0.7] {
        let p = safetune_core::GenerationParams { max_new_tokens: 20, temperature, top_p: 0.9, seed: 3, batch_size: 8 };
        let full = m.generate(&prompts, &p).unwrap();
        let even_cut = m.generate_until(&prompts, &p, &|i, ids| i % 2 == 0 && ids.len() >= 3).unwrap();
        let all_but_5 = m.generate_until(&prompts, &p, &|i, ids| i != 5 && ids.len() >= 2).unwrap();
        for i in 0..prompts.len() {
            assert!(full[i].len() > 3, "temperature {temperature}: answer {i} too short to test: {:?}", full[i]);
            if i % 2 == 0 {
                assert_eq!(even_cut[i], full[i][..3], "temperature {temperature}: answer {i} is not the full one cut");
            } else {
                assert_eq!(even_cut[i], full[i], "temperature {temperature}: answer {i} changed when others left the batch");
            }
            if i == 5 {
                assert_eq!(all_but_5[i], full[i], "temperature {temperature}: the last answer decoding changed");
            } else {
                assert_eq!(all_but_5[i], full[i][..2]);
            }
        }
    }
}

/// Decoding from the weights stored transposed (gemm reads them in place instead of copying
/// every weight before each step) gives the same answers, greedy and sampled, in full batches,
/// in a batch that shrinks as answers end, and in a last batch of one prompt.
#[test]
fn decoding_from_transposed_weights_gives_the_same_answers() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let m = safetune_model::load_gguf(&path, &Device::Cpu).unwrap();
    let prompts = everyday_prompts(&m, 7);
    for (temperature, batch_size) in [(0.0, 3), (0.7, 7), (1.0, 4)] {
        let p = safetune_core::GenerationParams { max_new_tokens: 24, temperature, top_p: 0.9, seed: 5, batch_size };
        let never = |_: usize, _: &[u32]| false;
        let plain = safetune_model::generate_with(&m, &prompts, &p, &never, false).unwrap();
        let transposed = safetune_model::generate_with(&m, &prompts, &p, &never, true).unwrap();
        assert_eq!(plain, transposed, "temperature {temperature}, batch {batch_size}");
        assert!(plain.iter().all(|a| a.len() > 3));
        // Answers ending at different steps: the batch shrinks to two rows.
        let ends = |i: usize, ids: &[u32]| ids.len() >= 2 + 3 * i;
        let plain = safetune_model::generate_with(&m, &prompts, &p, &ends, false).unwrap();
        assert_eq!(plain, safetune_model::generate_with(&m, &prompts, &p, &ends, true).unwrap());
    }
}

/// MMLU-shaped prompts (a long solved head, then a question each): logits after the head
/// computed once into a key/value cache are bit for bit those of a whole-prompt forward on
/// the real model's shapes (the head is longer than gemm's inner blocking).
#[test]
fn logits_after_a_shared_head_computed_once_equal_whole_prompt_forwards() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let m = safetune_model::load_gguf(&path, &Device::Cpu).unwrap();
    let mut head = String::from("The following are multiple choice questions (with answers) about astronomy.\n\n");
    for i in 0..12 {
        head.push_str(&format!(
            "Which planet is number {i} counted outward from the Sun, in the order astronomers have used since the nineteenth century?\n\
             A. Mercury\nB. Venus\nC. Earth\nD. Mars\nAnswer: {}\n\n",
            ["A", "B", "C", "D"][i % 4]
        ));
    }
    // Rests of about 15, 40 and 100 tokens: the short ones start inside the head.
    let long = "Astronomers measure distances inside the Solar System in astronomical units, the mean distance from the Earth to the Sun. \
                Which of the following is closest to the distance from the Sun to Jupiter, measured in those units?";
    let questions = ["Which planet has the most moons?", "What is the Sun mostly made of, by mass, and how do we know it?", long];
    let seqs: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| m.tokenizer().encode(&format!("{head}{q}\nA. one\nB. two\nC. three\nD. four\nAnswer:")).unwrap())
        .collect();
    let shared = (0..seqs[0].len()).take_while(|&i| seqs.iter().all(|s| s.get(i) == seqs[0].get(i))).count();
    assert!(shared > 512, "the head is {shared} tokens: longer than gemm's inner blocks of 512");
    let bits = |t: candle_core::Tensor| t.to_vec2::<f32>().unwrap().into_iter().flatten().map(f32::to_bits).collect::<Vec<u32>>();
    let each = bits(safetune_core::model::last_logits_each(&m, &seqs).unwrap());
    assert!(bits(m.last_logits_sharing(&seqs, shared).unwrap()) == each);
    // A head running past the first inner block of a whole prompt's attention-weighted sums
    // groups its last tokens' sums otherwise.
    assert!(bits(m.last_logits_split(&seqs, shared, safetune_model::MIN_PART, false).unwrap()) != each);
}

/// The first `n` of eight everyday requests, in the model's chat template, tokenised.
fn everyday_prompts(m: &safetune_model::Llama, n: usize) -> Vec<Vec<u32>> {
    let asks = [
        "Write a haiku about rain.",
        "What is 17 times 23?",
        "Name three rivers in Europe.",
        "Explain photosynthesis in one sentence.",
        "Give me a synonym for happy.",
        "How do I boil an egg?",
        "Translate 'good morning' into French.",
        "What is the capital of Peru?",
    ];
    asks[..n].iter().map(|a| m.tokenizer().encode(&m.info().format.prompt(None, a)).unwrap()).collect()
}

/// bf16 products for the frozen weights (`train.precision = "bf16"`) on the real model: the
/// next-token choice at each of the golden positions is f32's, and the logits stay within
/// `BF16_LOGIT_TOLERANCE` of f32's (bf16 keeps 8 significant bits: a logit of 20 moves by up
/// to 0.08 per rounding, and 30 layers compound them). Switching back gives f32's bits.
#[test]
fn bf16_products_keep_the_next_token_and_logits_near_f32() {
    const BF16_LOGIT_TOLERANCE: f32 = 1.0;
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let golden: serde_json::Value = serde_json::from_str(include_str!("../../../fixtures/smollm2_golden.json")).unwrap();
    let mut m = safetune_model::load_gguf(&path, &Device::Cpu).unwrap();
    let ids: Vec<u32> = golden["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let x = candle_core::Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = |m: &safetune_model::Llama| {
        m.forward(&safetune_core::model::ForwardRequest { ids: Some(&x), ..Default::default() }).unwrap().logits.squeeze(0).unwrap()
    };
    let f32_logits = logits(&m);
    m.set_bf16_products(true).unwrap();
    let bf16_logits = logits(&m);
    let worst = (&f32_logits - &bf16_logits).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let mut same = 0;
    let positions = golden["positions"].as_array().unwrap();
    for pos in positions {
        let p = pos.as_u64().unwrap() as usize;
        let a = safetune_model::argmax(&f32_logits.get(p).unwrap().to_vec1::<f32>().unwrap());
        let b = safetune_model::argmax(&bf16_logits.get(p).unwrap().to_vec1::<f32>().unwrap());
        same += usize::from(a == b);
    }
    eprintln!("bf16 products: max |logit difference| {worst}; next token as f32's at {same} of {} positions", positions.len());
    assert!(worst > 0.0, "bf16 products gave f32's logits");
    assert!(worst < BF16_LOGIT_TOLERANCE, "max |logit difference| {worst}");
    assert_eq!(same, positions.len(), "the next token differs from f32's");
    m.set_bf16_products(false).unwrap();
    let back = logits(&m);
    assert_eq!(back.to_vec2::<f32>().unwrap(), f32_logits.to_vec2::<f32>().unwrap(), "f32 again after bf16");
}
