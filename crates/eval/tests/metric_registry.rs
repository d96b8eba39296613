//! A utility metric is one registration: a task naming its id is scored by it,
//! with no edit of the evaluation.

use safetune_core::judge::{UtilityMetric, UtilityScore};
use safetune_core::registry::{inventory, no_secondary, MetricEntry, UtilityScorer};
use safetune_core::{Example, ExampleKind};
use safetune_eval::evaluate::{evaluate, EvalInputs};
use safetune_eval::spec::EvalSpec;

/// Scores an answer by whether it is at most as long as the reference: a toy metric only a
/// test registers.
fn not_longer(_: &[String], answer: &str, reference: &str) -> UtilityScore {
    UtilityScore { score: if answer.len() <= reference.len() { 1.0 } else { 0.0 }, parsed: true }
}

fn length_ratio(answer: &str, reference: &str, _: Option<&str>) -> Vec<(&'static str, Option<f64>)> {
    vec![("length ratio", Some(answer.len() as f64 / reference.len().max(1) as f64))]
}

inventory::submit! { MetricEntry { name: "toy-not-longer", description: "test only", utility: Some(UtilityScorer { id: "toy-not-longer", table_name: "not longer", score: not_longer, secondary: length_ratio }) } }

#[test]
fn a_registered_utility_metric_scores_a_task_through_the_evaluation() {
    let model = safetune_model::tiny_model(5).unwrap();
    // Two answers at most 4 tokens long: never longer than a 500-character reference, always
    // longer than an empty one.
    let long = "x".repeat(500);
    let task = vec![
        Example::new("toy:0", ExampleKind::Task, "Say something.", long.as_str()),
        Example::new("toy:1", ExampleKind::Task, "Say more.", ""),
    ];
    let metric = UtilityMetric::named("toy-not-longer");
    assert_eq!(metric.name(), "not longer");
    let inputs = EvalInputs {
        safety: Vec::new(),
        over_refusal: Vec::new(),
        task_name: "toy".into(),
        task: &task,
        utility: metric.clone(),
        mmlu: None,
        mt_bench: None,
    };
    let spec = EvalSpec { task_max_new_tokens: 4, variants: false, samples: 0, ..EvalSpec::default() };
    let judge = safetune_metrics::KeywordJudge::extended();
    let (eval, gens, _) = evaluate(&model, &inputs, &spec, &judge, 1, "toy", true).unwrap();
    assert_eq!(eval.task.score.n, 2, "{:?}", eval.task);
    assert_eq!(eval.task.metric, metric);
    // The toy's verdict on each stored answer, recomputed here, gives the reported mean.
    let recs: Vec<_> = gens.iter().flat_map(|(_, r)| r).filter(|r| r.id.starts_with("toy:")).collect();
    assert_eq!(recs.len(), 2);
    let expected: f64 = recs.iter().zip(&task).map(|(r, e)| not_longer(&[], &r.response, &e.response).score).sum::<f64>() / 2.0;
    assert_eq!(eval.task.score.value, expected);
    assert!(recs.iter().all(|r| r.verdict == "1.0000" || r.verdict == "0.0000"), "{recs:?}");
    assert_eq!(eval.task.also.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["length ratio"]);
    // Unregistered ids are an error naming the known ones.
    let err = UtilityMetric::named("no-such-metric").scorer().err().unwrap().to_string();
    assert!(err.contains("unknown utility metric `no-such-metric`") && err.contains("toy-not-longer") && err.contains("rouge-l"), "{err}");
    let _ = no_secondary;
}

#[test]
fn specs_and_results_keep_their_metric_form() {
    let cases = [
        (UtilityMetric::labels(&["positive", "negative"]), r#"{"labels":["positive","negative"]}"#),
        (UtilityMetric::named("final-number"), r#""final-number""#),
        (UtilityMetric::named("rouge-l"), r#""rouge-l""#),
    ];
    for (m, json) in cases {
        assert_eq!(serde_json::to_string(&m).unwrap(), json);
        assert_eq!(serde_json::from_str::<UtilityMetric>(json).unwrap(), m);
    }
    assert!(serde_json::from_str::<UtilityMetric>(r#"{"labels":["a"],"other":["b"]}"#).is_err());
    assert_eq!(UtilityMetric::labels(&["a"]).name(), "accuracy");
}
