//! Mechanism tests: each fails when the defense's rule is removed.

use safetune_core::defense::{DataMix, Defense, DefenseData};
use safetune_core::{Example, ExampleKind};
use safetune_defense_recovery_mix::*;

fn pool(kind: ExampleKind, prefix: &str, n: usize, answer: &str) -> Vec<Example> {
    (0..n).map(|i| Example::new(format!("{prefix}:{i}"), kind, format!("{prefix} request {i}"), answer)).collect()
}

const REFUSALS: &[&str] = &["I can't help with that.", "Sorry, I won't do that."];

#[test]
fn adds_refusals_half_of_them_after_a_harmful_prefix_given_as_prefill() {
    let answer = "Step one is to gather the following things and then carefully";
    let harmful = pool(ExampleKind::Harmful, "h", 400, answer);
    let mut task = pool(ExampleKind::Task, "t", 800, "positive");
    let mix = RecoveryMix::new(RecoveryMixOptions::default()).unwrap();
    let data = DefenseData { harmful: &harmful, refusals: REFUSALS, ..Default::default() };
    mix.mix(&mut task, &data, 3).unwrap();
    assert_eq!(task.len(), 1000, "a quarter of n added");
    assert_eq!(task.iter().filter(|e| e.kind == ExampleKind::Task).count(), 800, "the user's data is kept");
    let added: Vec<&Example> = task.iter().filter(|e| e.id.ends_with("#recovery-mix")).collect();
    assert_eq!(added.len(), 200);
    let mut prefixed = 0;
    for e in &added {
        assert_eq!(e.kind, ExampleKind::Refusal);
        assert!(REFUSALS.contains(&e.response.as_str()), "{}", e.response);
        let source = harmful.iter().find(|h| format!("{}#recovery-mix", h.id) == e.id).unwrap();
        assert_eq!(e.prompt, source.prompt);
        if let Some(p) = &e.prefill {
            prefixed += 1;
            assert!(answer.starts_with(p.trim_end()) && !p.trim().is_empty(), "{p:?}");
        }
    }
    assert!((80..=120).contains(&prefixed), "about half start after a harmful prefix: {prefixed}");
    // The user's examples are interleaved, not appended.
    assert!(task[..800].iter().any(|e| e.id.ends_with("#recovery-mix")));
    // Same seed, same mix.
    let mut again = pool(ExampleKind::Task, "t", 800, "positive");
    mix.mix(&mut again, &data, 3).unwrap();
    assert_eq!(again, task);
}

#[test]
fn prefixes_are_cut_at_most_at_max_prefix_words_and_a_short_pool_is_an_error() {
    let long = (0..300).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let harmful = pool(ExampleKind::Harmful, "h", 50, &long);
    let mut task = pool(ExampleKind::Task, "t", 40, "positive");
    let mix = RecoveryMix::new(RecoveryMixOptions { fraction: 1.0, prefix_share: 1.0, max_prefix_words: 7 }).unwrap();
    mix.mix(&mut task, &DefenseData { harmful: &harmful, refusals: REFUSALS, ..Default::default() }, 1).unwrap();
    let cuts: Vec<usize> = task.iter().filter_map(|e| e.prefill.as_ref()).map(|p| p.split_whitespace().count()).collect();
    assert_eq!(cuts.len(), 40);
    assert!(cuts.iter().all(|&c| (1..=7).contains(&c)) && cuts.contains(&7) && cuts.contains(&1), "{cuts:?}");
    let mut task = pool(ExampleKind::Task, "t", 100, "positive");
    let err = mix.mix(&mut task, &DefenseData { harmful: &harmful, refusals: REFUSALS, ..Default::default() }, 1).unwrap_err().to_string();
    assert!(err.starts_with("defense_options.recovery-mix.fraction: 100 recovery examples asked for"), "{err}");
}

#[test]
fn defaults_and_bad_options() {
    assert_eq!(RecoveryMixOptions::default(), RecoveryMixOptions { fraction: 0.25, prefix_share: 0.5, max_prefix_words: 100 });
    let err = RecoveryMix::plan(RecoveryMixOptions { prefix_share: 2.0, ..Default::default() }).err().unwrap().to_string();
    assert!(err.starts_with("defense_options.recovery-mix.prefix_share:"), "{err}");
}
