//! `evaluate_resumable`: an evaluation stopped part-way resumes at its first unfinished part.
//! Each finished part (a safety set with its samples, an over-refusal set, the task) is kept in
//! the directory; a kept part is used as it is, a missing or unreadable one is computed again.

use safetune_core::judge::UtilityMetric;
use safetune_core::{Example, ExampleKind};
use safetune_eval::evaluate::{evaluate, evaluate_resumable, EvalInputs};
use safetune_eval::results::{Generations, ModelEval};
use safetune_eval::spec::EvalSpec;
use serde_json::{to_value, Value};

fn answers_of(gens: &Generations, prefix: &str) -> Value {
    to_value(gens.iter().filter(|(set, _)| set.starts_with(prefix)).collect::<Vec<_>>()).unwrap()
}

#[test]
fn a_stopped_evaluation_resumes_from_its_kept_parts_and_recomputes_only_the_missing_ones() {
    let harmful: Vec<Example> =
        (0..6).map(|i| Example::new(format!("h:{i}"), ExampleKind::Harmful, format!("request number {i} please"), "")).collect();
    let benign: Vec<Example> =
        (0..4).map(|i| Example::new(format!("b:{i}"), ExampleKind::Benign, format!("a benign question {i}"), "")).collect();
    let task: Vec<Example> =
        (0..3).map(|i| Example::new(format!("t:{i}"), ExampleKind::Task, format!("Say something {i}."), "x y")).collect();
    let inputs = EvalInputs {
        safety: vec![("harm".into(), &harmful)],
        over_refusal: vec![("benign".into(), &benign)],
        task_name: "toy".into(),
        task: &task,
        utility: UtilityMetric::named("rouge-l"),
        mmlu: None,
        mt_bench: None,
    };
    let spec =
        EvalSpec { safety_max_new_tokens: 6, task_max_new_tokens: 4, batch_size: 4, samples: 1, variants: false, ..EvalSpec::default() };
    let judge = safetune_metrics::KeywordJudge::extended();
    let dir = std::env::temp_dir().join(format!("safetune-eval-parts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Two different models: what each answers on its own.
    let (first, second) = (safetune_model::tiny_model(5).unwrap(), safetune_model::tiny_model(6).unwrap());
    let (e1, g1, _) = evaluate_resumable(&first, &inputs, &spec, &judge, 1, "first", true, Some(&dir)).unwrap();
    let (e2, g2, _) = evaluate(&second, &inputs, &spec, &judge, 1, "second", true).unwrap();
    for prefix in ["harm", "benign", "toy"] {
        assert_ne!(answers_of(&g1, prefix), answers_of(&g2, prefix), "the two models must answer {prefix} differently");
    }
    let mut kept: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    kept.sort();
    assert_eq!(kept, ["over-refusal-0.json", "safety-0.json", "task.json"]);

    // Every part kept: the second model is never asked; the result is the first one's.
    let (r, rg, _) = evaluate_resumable(&second, &inputs, &spec, &judge, 1, "resumed", true, Some(&dir)).unwrap();
    assert_eq!(to_value(&r).unwrap(), to_value(&e1).unwrap());
    assert_eq!(to_value(&rg).unwrap(), to_value(&g1).unwrap());

    // The task's part missing and the safety part unreadable (a stop mid-write leaves no file,
    // but a damaged one is computed again too): those two come from the second model, the
    // over-refusal set from the kept part.
    std::fs::remove_file(dir.join("task.json")).unwrap();
    std::fs::write(dir.join("safety-0.json"), "{").unwrap();
    let (m, mg, _): (ModelEval, Generations, _) =
        evaluate_resumable(&second, &inputs, &spec, &judge, 1, "mixed", true, Some(&dir)).unwrap();
    assert_eq!(to_value(&m.task).unwrap(), to_value(&e2.task).unwrap());
    assert_eq!(to_value(&m.safety).unwrap(), to_value(&e2.safety).unwrap());
    assert_eq!(to_value(&m.over_refusal).unwrap(), to_value(&e1.over_refusal).unwrap());
    assert_eq!(answers_of(&mg, "harm"), answers_of(&g2, "harm"));
    assert_eq!(answers_of(&mg, "toy"), answers_of(&g2, "toy"));
    assert_eq!(answers_of(&mg, "benign"), answers_of(&g1, "benign"));
    // The sets keep the evaluation's order whichever parts were kept.
    let order = |g: &Generations| g.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>();
    assert_eq!(order(&mg), order(&g1));
    std::fs::remove_dir_all(&dir).unwrap();
}
