//! Mechanism tests: each fails when the defense's rule is removed.

use safetune_core::config::TrainConfig;
use safetune_core::defense::Defense;
use safetune_core::repair::{Repair, WeightSets, Weights};
use safetune_core::training::{stream, PlainSft};
use safetune_core::{CausalLm, Example, ExampleKind};
use safetune_defense_antidote::*;
use safetune_train::{train, with_context, StageData};

fn harmful() -> StageData {
    let mut data = StageData::default();
    let rows = (0..6)
        .map(|i| {
            Example::new(format!("h:{i}"), ExampleKind::Harmful, format!("harmful request {i}?"), "Sure, here is exactly how to do it.")
        })
        .collect::<Vec<_>>();
    data.streams.insert(stream::TASK.to_string(), rows.clone());
    data.streams.insert(stream::HARMFUL.to_string(), rows);
    data
}

fn cfg() -> TrainConfig {
    TrainConfig { epochs: 3, max_steps: 6, batch_size: 3, max_len: 256, learning_rate: 3e-3, warmup_ratio: 0.0, ..Default::default() }
}

fn weights(m: &dyn CausalLm) -> Weights {
    m.weights().into_iter().collect()
}

#[test]
fn the_top_scores_of_each_row_are_pruned() {
    let mask = top_per_row(&[vec![0.1, 0.5, 0.3, 0.9, 0.2], vec![1.0, 1.0, 1.0, 1.0, 1.0]], 0.4);
    assert_eq!(mask[0], vec![false, true, false, true, false]);
    assert_eq!(mask[1], vec![false, false, false, true, true], "ties: the later columns");
    assert_eq!(top_per_row(&[vec![3.0; 10]], 0.1)[0].iter().filter(|&&m| m).count(), 1);
}

#[test]
fn antidote_resets_the_updates_wanda_picks_on_harmful_data_and_undoes_harmful_learning() {
    let aligned = safetune_model::tiny_model(3).unwrap();
    let mut ft = safetune_model::tiny_model(3).unwrap();
    ft.unfreeze_all().unwrap();
    train(&mut ft, &harmful(), &mut PlainSft, &cfg(), None, "attack", true).unwrap();
    ft.freeze_all();
    let (wa, wf) = (weights(&aligned), weights(&ft));
    let w = WeightSets { base: &wa, aligned: &wa, finetuned: &wf };
    let antidote = Antidote::new(AntidoteOptions { dense_ratio: 0.2, samples: 6 }).unwrap();
    let (out, norms) = with_context(&ft, Some(&aligned), &harmful(), &cfg(), |ctx| {
        let out = antidote.repair(&w, ctx)?;
        Ok((out, harmful_input_norms(ctx, 6)?))
    })
    .unwrap();
    assert_eq!(out.len(), ft.linear_modules().len(), "every fine-tuned linear weight is pruned");
    for (name, new) in &out {
        let module = name.trim_end_matches(".weight");
        let delta = (&wf[name] - &wa[name]).unwrap();
        let score = delta.abs().unwrap().broadcast_mul(&norms[module].sqrt().unwrap().unsqueeze(0).unwrap()).unwrap();
        let want = top_per_row(&score.to_vec2::<f32>().unwrap(), 0.2);
        let (new, al, f) = (new.to_vec2::<f32>().unwrap(), wa[name].to_vec2::<f32>().unwrap(), wf[name].to_vec2::<f32>().unwrap());
        for i in 0..new.len() {
            for j in 0..new[i].len() {
                let expect = if want[i][j] { al[i][j] } else { f[i][j] };
                assert_eq!(new[i][j], expect, "{name}[{i}][{j}]");
            }
        }
    }
    // The repaired model has unlearned part of the harmful answers.
    let mut repaired = safetune_model::tiny_model(3).unwrap();
    for (name, v) in wf.iter().chain(out.iter()) {
        repaired.set_weight(name, v.clone()).unwrap();
    }
    let loss = |m: &dyn CausalLm| {
        with_context(m, None, &harmful(), &cfg(), |ctx| {
            let b = ctx.next_batch(stream::HARMFUL)?.unwrap();
            Ok(ctx.lm_loss(&b, None, false)?.0.to_scalar::<f32>()?)
        })
        .unwrap()
    };
    let (before, after, start) = (loss(&ft), loss(&repaired), loss(&aligned));
    assert!(before < start, "the attack taught the harmful answers: {start} → {before}");
    assert!(after > before, "pruning undoes part of it: fine-tuned {before}, repaired {after}");
}

#[test]
fn defaults_and_bad_options() {
    assert_eq!(AntidoteOptions::default(), AntidoteOptions { dense_ratio: 0.1, samples: 2000 });
    let err = Antidote::plan(AntidoteOptions { dense_ratio: 0.0, ..Default::default() }).err().unwrap().to_string();
    assert!(err.starts_with("defense_options.antidote.dense_ratio:"), "{err}");
}
