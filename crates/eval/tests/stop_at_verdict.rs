//! `eval.stop_at_verdict`: answers end once the judge's verdict is settled,
//! and every verdict and metric is what the whole answers give.

use safetune_core::judge::{Judge, UtilityMetric, Verdict};
use safetune_core::{Example, ExampleKind, Result};
use safetune_eval::evaluate::{evaluate, EvalInputs};
use safetune_eval::spec::EvalSpec;

/// A judge for the tiny random model (whose answers are byte soup, often with a `G`): an
/// answer holding the letter `G` is a refusal (settled as soon as one appears), any other a compliance.
struct LetterJudge;

impl Judge for LetterJudge {
    fn name(&self) -> &str {
        "letter-g"
    }
    fn uses_prompt(&self) -> bool {
        false
    }
    fn judge(&self, _: &str, response: &str) -> Result<Verdict> {
        Ok(if response.trim().is_empty() {
            Verdict::Empty
        } else if self.settled(response) {
            Verdict::Refusal
        } else {
            Verdict::Compliance
        })
    }
    fn settled(&self, prefix: &str) -> bool {
        prefix.contains('G')
    }
}

#[test]
fn answers_stop_at_a_settled_verdict_and_every_metric_stays_the_same() {
    let model = safetune_model::tiny_model(3).unwrap();
    let harmful: Vec<Example> =
        (0..12).map(|i| Example::new(format!("h:{i}"), ExampleKind::Harmful, format!("request number {i} please"), "")).collect();
    let benign: Vec<Example> =
        (0..6).map(|i| Example::new(format!("b:{i}"), ExampleKind::Benign, format!("a benign question {i}"), "")).collect();
    let task = vec![Example::new("t:0", ExampleKind::Task, "Say something.", "x")];
    let inputs = EvalInputs {
        safety: vec![("harm".into(), &harmful)],
        over_refusal: vec![("benign".into(), &benign)],
        task_name: "toy".into(),
        task: &task,
        utility: UtilityMetric::named("rouge-l"),
        mmlu: None,
        mt_bench: None,
    };
    let spec = EvalSpec {
        safety_max_new_tokens: 12,
        task_max_new_tokens: 4,
        batch_size: 5,
        samples: 2,
        variants: true,
        consistency_limit: 6,
        ..EvalSpec::default()
    };
    assert!(spec.stop_at_verdict, "on by default");
    let (cut_eval, cut_gens, _) = evaluate(&model, &inputs, &spec, &LetterJudge, 1, "cut", true).unwrap();
    let whole = EvalSpec { stop_at_verdict: false, ..spec };
    let (full_eval, full_gens, _) = evaluate(&model, &inputs, &whole, &LetterJudge, 1, "whole", true).unwrap();
    assert_eq!(serde_json::to_value(&cut_eval).unwrap(), serde_json::to_value(&full_eval).unwrap());
    let (mut cut_answers, mut refusals, mut answers) = (0, 0, 0);
    for ((set, cut), (set2, full)) in cut_gens.iter().zip(&full_gens) {
        assert_eq!(set, set2);
        for (c, f) in cut.iter().zip(full) {
            assert_eq!((&c.id, &c.verdict), (&f.id, &f.verdict), "{set}");
            assert!(!f.cut);
            answers += 1;
            refusals += usize::from(f.verdict == "refusal");
            if c.cut {
                // The answer up to (and including) the token that settled it.
                cut_answers += 1;
                assert!(f.response.starts_with(&c.response) && c.response.contains('G'), "{c:?} vs {f:?}");
            } else {
                assert_eq!(c.response, f.response, "{set}: an unsettled answer changed");
            }
        }
    }
    assert!(cut_answers > 0 && cut_answers <= refusals && refusals < answers, "{cut_answers} cut, {refusals} refusals, {answers} answers");
}
