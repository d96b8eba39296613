//! Mathematical checks on a tiny random model.

use candle_core::{DType, Device, Tensor, Var};
use safetune_core::model::{ForwardRequest, Perturbation, PerturbationSite};
use safetune_core::{CausalLm, GenerationParams};

fn loss_of(m: &dyn CausalLm, ids: &Tensor) -> Tensor {
    let out = m.forward(&ForwardRequest { ids: Some(ids), ..Default::default() }).unwrap();
    // Mean next-token cross-entropy, composed from differentiable ops.
    let (b, t, v) = out.logits.dims3().unwrap();
    let logits = out.logits.narrow(1, 0, t - 1).unwrap().reshape((b * (t - 1), v)).unwrap();
    let targets = ids.narrow(1, 1, t - 1).unwrap().flatten_all().unwrap();
    let max = logits.max_keepdim(1).unwrap().detach();
    let lse = logits.broadcast_sub(&max).unwrap().exp().unwrap().sum_keepdim(1).unwrap().log().unwrap().broadcast_add(&max).unwrap();
    let picked = logits.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap();
    (lse - picked).unwrap().mean_all().unwrap()
}

fn ids(m: &safetune_model::Llama, text: &str) -> Tensor {
    let v = m.tokenizer().encode(text).unwrap();
    Tensor::new(v.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let mut m = safetune_model::tiny_model(1).unwrap();
    let x = ids(&m, "the cat sat on the mat 123");
    let vars = m.unfreeze_all().unwrap();
    let loss = loss_of(&m, &x);
    let grads = loss.backward().unwrap();
    // One weight of each kind: norms (RMSNorm), q/k (RoPE, softmax), MLP, embeddings.
    let picks = [
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.norm.weight",
        "model.embed_tokens.weight",
    ];
    let mut checked = 0;
    for name in picks {
        let var: &Var = &vars.iter().find(|(n, _)| n == name).unwrap().1;
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let gflat = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // The coordinates with the largest analytic gradient.
        let mut idx: Vec<usize> = (0..gflat.len()).collect();
        idx.sort_by(|&a, &b| gflat[b].abs().total_cmp(&gflat[a].abs()));
        for &i in idx.iter().take(3) {
            let h = 1e-2f32;
            let mut plus = base.clone();
            plus[i] += h;
            var.set(&Tensor::from_vec(plus, var.shape(), &Device::Cpu).unwrap()).unwrap();
            let lp = loss_of(&m, &x).to_scalar::<f32>().unwrap();
            let mut minus = base.clone();
            minus[i] -= h;
            var.set(&Tensor::from_vec(minus, var.shape(), &Device::Cpu).unwrap()).unwrap();
            let lm = loss_of(&m, &x).to_scalar::<f32>().unwrap();
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            let fd = (lp - lm) / (2.0 * h);
            let an = gflat[i];
            assert!(an.abs() > 1e-4, "{name}[{i}]: gradient {an} too small to check");
            let rel = (fd - an).abs() / an.abs().max(fd.abs());
            assert!(rel < 0.05, "{name}[{i}]: analytic {an} vs finite difference {fd}");
            checked += 1;
        }
    }
    assert_eq!(checked, 18);
}

#[test]
fn frozen_linear_backward_gives_the_input_gradient_only() {
    let dev = Device::Cpu;
    let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
    let x = Var::new(&[[[0.5f32, -1., 2.]]], &dev).unwrap();
    let y = safetune_model::ops::linear(x.as_tensor(), &w).unwrap();
    assert_eq!(y.to_vec3::<f32>().unwrap(), vec![vec![vec![4.5, 9.0]]]);
    let g = y.sum_all().unwrap().backward().unwrap();
    // d(sum y)/dx = column sums of W.
    assert_eq!(g.get(x.as_tensor()).unwrap().to_vec3::<f32>().unwrap(), vec![vec![vec![5., 7., 9.]]]);
    assert!(g.get(&w).is_none());
}

/// Each logit's bits, row after row.
fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec2::<f32>().unwrap().into_iter().flatten().map(f32::to_bits).collect()
}

#[test]
fn logits_after_a_shared_head_computed_once_equal_whole_sequence_forwards() {
    let m = safetune_model::tiny_model(2).unwrap();
    let tok = m.tokenizer();
    let head = tok.encode(&"A few solved questions that every prompt repeats. Answer: C\n\n".repeat(3)).unwrap();
    assert!(head.len() > 2 * safetune_model::MIN_PART, "{}", head.len());
    // Rests longer and shorter than MIN_PART (the short one's split moves back into the head).
    let seqs: Vec<Vec<u32>> = [
        "one question, long enough to be a part of its own: what is the capital of France, and why?".to_string(),
        "another, longer question here?".repeat(4),
        "q3".to_string(),
    ]
    .iter()
    .map(|q| head.iter().copied().chain(tok.encode(q).unwrap()).collect())
    .collect();
    let each = bits(&safetune_core::model::last_logits_each(&m, &seqs).unwrap());
    assert_eq!(each.len(), 3 * m.info().vocab_size);
    for shared in [0, 2, safetune_model::MIN_PART - 1, safetune_model::MIN_PART, head.len() - 7, head.len()] {
        assert_eq!(bits(&m.last_logits_sharing(&seqs, shared).unwrap()), each, "sharing the first {shared} tokens");
    }
    // Parts of a few tokens take gemm's small-product paths and round otherwise: the reason
    // for the limit.
    assert_ne!(bits(&m.last_logits_split(&seqs, head.len(), 2, true).unwrap()), each);
    let err = m.last_logits_sharing(&seqs, head.len() + 1).unwrap_err().to_string();
    assert!(err.contains("do not share their first"), "{err}");
    assert!(m.last_logits_sharing(&[], 0).is_err());
}

#[test]
fn padded_batch_and_kv_cache_match_unbatched_full_forward() {
    let m = safetune_model::tiny_model(2).unwrap();
    let tok = m.tokenizer();
    let prompts: Vec<Vec<u32>> = ["hi", "a longer prompt here", "mid size"].iter().map(|t| tok.encode(t).unwrap()).collect();
    let p = GenerationParams { max_new_tokens: 6, batch_size: 1, ..Default::default() };
    let one = m.generate(&prompts, &p).unwrap();
    let batched = m.generate(&prompts, &GenerationParams { batch_size: 3, ..p.clone() }).unwrap();
    assert_eq!(one, batched, "left padding changed greedy outputs");
    // The cached decode equals re-running the whole sequence each step.
    for (prompt, gen) in prompts.iter().zip(&one) {
        let mut seq = prompt.clone();
        for &t in gen {
            let x = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let logits = m.forward(&ForwardRequest { ids: Some(&x), ..Default::default() }).unwrap().logits;
            let last = logits.squeeze(0).unwrap().get(seq.len() - 1).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(safetune_model::argmax(&last), t);
            seq.push(t);
        }
    }
    // Sampling is reproducible from the seed and differs across seeds.
    let s = GenerationParams { max_new_tokens: 8, temperature: 1.0, top_p: 0.95, seed: 5, batch_size: 2 };
    assert_eq!(m.generate(&prompts, &s).unwrap(), m.generate(&prompts, &s).unwrap());
    assert_ne!(m.generate(&prompts, &s).unwrap(), m.generate(&prompts, &GenerationParams { seed: 6, ..s }).unwrap());
}

#[test]
fn a_settled_answer_ends_there_and_the_others_do_not_change() {
    let m = safetune_model::tiny_model(2).unwrap();
    let tok = m.tokenizer();
    let prompts: Vec<Vec<u32>> = ["hi", "a longer prompt here", "mid size", "four"].iter().map(|t| tok.encode(t).unwrap()).collect();
    let p = GenerationParams { max_new_tokens: 6, batch_size: 4, ..Default::default() };
    let full = m.generate(&prompts, &p).unwrap();
    // (Prompt 2's answer is its stop token at once: an answer that ends on its own also leaves.)
    assert_eq!(full.iter().map(Vec::len).collect::<Vec<_>>(), [6, 6, 1, 6], "{full:?}");
    let cut = m.generate_until(&prompts, &p, &|i, ids| i == 1 && ids.len() >= 2).unwrap();
    assert_eq!(cut[1], full[1][..2]);
    for i in [0, 2, 3] {
        assert_eq!(cut[i], full[i]);
    }
    // Never settled: the same as `generate`; settled at once: one token each.
    assert_eq!(m.generate_until(&prompts, &p, &|_, _| false).unwrap(), full);
    let first: Vec<Vec<u32>> = full.iter().map(|a| a[..1.min(a.len())].to_vec()).collect();
    assert_eq!(m.generate_until(&prompts, &p, &|_, _| true).unwrap(), first);
}

fn at(tensors: &[Tensor], site: PerturbationSite) -> Option<Perturbation<'_>> {
    Some(Perturbation { tensors, site })
}

#[test]
fn hidden_states_and_perturbation() {
    let m = safetune_model::tiny_model(3).unwrap();
    let x = ids(&m, "some text");
    let out = m.forward(&ForwardRequest { ids: Some(&x), output_hidden: true, ..Default::default() }).unwrap();
    assert_eq!(out.hidden.len(), 2);
    assert_eq!(out.hidden[0].dims(), &[1, x.dim(1).unwrap(), 32]);
    let zeros: Vec<Tensor> = out.hidden.iter().map(|h| h.zeros_like().unwrap()).collect();
    let same = m
        .forward(&ForwardRequest { ids: Some(&x), perturbation: at(&zeros, PerturbationSite::LayerOutput), ..Default::default() })
        .unwrap();
    let d0 = (&same.logits - &out.logits).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d0, 0.0);
    let ones: Vec<Tensor> = out.hidden.iter().map(|h| h.ones_like().unwrap()).collect();
    let moved =
        m.forward(&ForwardRequest { ids: Some(&x), perturbation: at(&ones, PerturbationSite::LayerOutput), ..Default::default() }).unwrap();
    let d1 = (&moved.logits - &out.logits).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d1 > 1e-3);
    // Only the last layer perturbed: at its output the hidden state moves by exactly e; at its
    // attention output the MLP reacts, so it moves by something else; earlier layers never move.
    let max = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let last: Vec<Tensor> = vec![zeros[0].clone(), (ones[1].clone() * 0.5).unwrap()];
    for site in [PerturbationSite::LayerOutput, PerturbationSite::AttentionOutput] {
        let p =
            m.forward(&ForwardRequest { ids: Some(&x), output_hidden: true, perturbation: at(&last, site), ..Default::default() }).unwrap();
        assert_eq!(max(&p.hidden[0], &out.hidden[0]), 0.0, "{site:?}");
        let shift = max(&(&p.hidden[1] - &out.hidden[1]).unwrap(), &last[1]);
        match site {
            PerturbationSite::LayerOutput => assert!(shift < 1e-5, "{shift}"),
            PerturbationSite::AttentionOutput => assert!(shift > 1e-3 && max(&p.hidden[1], &out.hidden[1]) > 1e-3, "{shift}"),
        }
    }
    let zeros_at_attention = m
        .forward(&ForwardRequest { ids: Some(&x), perturbation: at(&zeros, PerturbationSite::AttentionOutput), ..Default::default() })
        .unwrap();
    assert_eq!(max(&zeros_at_attention.logits, &out.logits), 0.0);
    let _ = DType::F32;
}

#[test]
fn hugging_face_directory_round_trip() {
    let m = safetune_model::tiny_model(7).unwrap();
    let dir = std::env::temp_dir().join(format!("safetune-hf-{}", std::process::id()));
    safetune_model::export_hf(&m, &dir).unwrap();
    let back = safetune_model::load_model(&dir, &Device::Cpu).unwrap();
    assert_eq!(back.info().format, safetune_core::PromptFormat::Chatml);
    let x = ids(&m, "round trip 12");
    let a = m.forward(&ForwardRequest { ids: Some(&x), ..Default::default() }).unwrap().logits;
    let b = back.forward(&ForwardRequest { ids: Some(&x), ..Default::default() }).unwrap().logits;
    assert_eq!((a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    assert_eq!(back.tokenizer().stop_ids(), m.tokenizer().stop_ids());
    // A broken config is a one-line error naming the file.
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": \"big\"}").unwrap();
    let err = safetune_model::load_model(&dir, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn linear_input_norms_are_the_squared_inputs_summed_over_real_tokens() {
    let m = safetune_model::tiny_model(5).unwrap();
    let x = ids(&m, "a short prompt");
    let t = x.dim(1).unwrap();
    let w: std::collections::BTreeMap<String, Tensor> = m.weights().into_iter().collect();
    let req = ForwardRequest { ids: Some(&x), linear_input_norms: true, ..Default::default() };
    let out = m.forward(&req).unwrap();
    assert_eq!(out.linear_input_norms.len(), m.linear_modules().len());
    // Layer 0's q, k and v read the RMS-normed embeddings.
    let emb = w["model.embed_tokens.weight"].index_select(&x.flatten_all().unwrap(), 0).unwrap();
    let rms = (emb.sqr().unwrap().mean_keepdim(1).unwrap() + 1e-5).unwrap().sqrt().unwrap();
    let h = emb.broadcast_div(&rms).unwrap().broadcast_mul(&w["model.layers.0.input_layernorm.weight"]).unwrap();
    let want: Vec<f32> = h.sqr().unwrap().sum(0).unwrap().to_vec1().unwrap();
    for module in ["q_proj", "k_proj", "v_proj"] {
        let got: Vec<f32> = out.linear_input_norms[&format!("model.layers.0.self_attn.{module}")].to_vec1().unwrap();
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "{module}: {diff}");
    }
    // Left padding adds nothing: the same prompt padded by two tokens gives the same statistics.
    let pad = Tensor::zeros((1, 2), DType::U32, &Device::Cpu).unwrap();
    let padded = Tensor::cat(&[&pad, &x], 1).unwrap();
    let mask = Tensor::cat(
        &[Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap(), Tensor::ones((1, t), DType::F32, &Device::Cpu).unwrap()],
        1,
    )
    .unwrap();
    let req = ForwardRequest { ids: Some(&padded), mask: Some(&mask), linear_input_norms: true, ..Default::default() };
    let p = m.forward(&req).unwrap();
    for (name, a) in &out.linear_input_norms {
        let (a, b): (Vec<f32>, Vec<f32>) = (a.to_vec1().unwrap(), p.linear_input_norms[name].to_vec1().unwrap());
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1.0 + x.abs())).fold(0.0f32, f32::max);
        assert!(diff < 1e-3, "{name}: {diff}");
    }
    // Not asked: nothing collected.
    assert!(m.forward(&ForwardRequest { ids: Some(&x), ..Default::default() }).unwrap().linear_input_norms.is_empty());
}
