//! `evaluate_resumable`: an evaluation stopped part-way resumes at its first unfinished part,
//! and another evaluation of the same model reuses the parts it asks alike. Each finished part
//! (a safety set's greedy answers, the same set's prompts asked again — samples and variants —,
//! an over-refusal set, the task) is kept in the store under what it depends on; a kept part
//! is used as it is, a missing or unreadable one is computed again.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use safetune_core::judge::UtilityMetric;
use safetune_core::{Example, ExampleKind};
use safetune_eval::evaluate::{evaluate, evaluate_resumable, EvalInputs, PartStore};
use safetune_eval::results::{Generations, ModelEval};
use safetune_eval::spec::EvalSpec;
use serde_json::{to_value, Value};

/// A store in `dir` for the model called `model` (the runtime's hashes the model's identity
/// and the code with sha256; a hash of the same text will do here).
struct Store {
    dir: PathBuf,
    model: &'static str,
}

impl PartStore for Store {
    fn file(&self, what: &Value) -> safetune_core::Result<PathBuf> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.model, what.to_string()).hash(&mut h);
        Ok(self.dir.join(format!("{:016x}.json", h.finish())))
    }
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A harmful set, an over-refusal set and a task, six, four and three prompts.
fn toy_sets() -> (Vec<Example>, Vec<Example>, Vec<Example>) {
    let harmful = (0..6).map(|i| Example::new(format!("h:{i}"), ExampleKind::Harmful, format!("request number {i} please"), "")).collect();
    let benign = (0..4).map(|i| Example::new(format!("b:{i}"), ExampleKind::Benign, format!("a benign question {i}"), "")).collect();
    let task = (0..3).map(|i| Example::new(format!("t:{i}"), ExampleKind::Task, format!("Say something {i}."), "x y")).collect();
    (harmful, benign, task)
}

/// The three sets as an evaluation's inputs (`harm`, `benign`, task `toy`, ROUGE-L).
fn toy_inputs<'a>(harmful: &'a [Example], benign: &'a [Example], task: &'a [Example]) -> EvalInputs<'a> {
    EvalInputs {
        safety: vec![("harm".into(), harmful)],
        over_refusal: vec![("benign".into(), benign)],
        task_name: "toy".into(),
        task,
        utility: UtilityMetric::named("rouge-l"),
        mmlu: None,
        mt_bench: None,
    }
}

fn answers_of(gens: &Generations, prefix: &str) -> Value {
    to_value(gens.iter().filter(|(set, _)| set.starts_with(prefix)).collect::<Vec<_>>()).unwrap()
}

/// The answers to the set called exactly `name` (`harm`, not its samples `harm.samples`).
fn set_of(gens: &Generations, name: &str) -> Value {
    to_value(gens.iter().filter(|(set, _)| set == name).collect::<Vec<_>>()).unwrap()
}

#[test]
fn a_stopped_evaluation_resumes_from_its_kept_parts_and_recomputes_only_the_missing_ones() {
    let (harmful, benign, task) = toy_sets();
    let inputs = toy_inputs(&harmful, &benign, &task);
    let spec =
        EvalSpec { safety_max_new_tokens: 6, task_max_new_tokens: 4, batch_size: 4, samples: 1, variants: false, ..EvalSpec::default() };
    let judge = safetune_metrics::KeywordJudge::extended();
    let dir = std::env::temp_dir().join(format!("safetune-eval-parts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Two different models: what each answers on its own.
    let (first, second) = (safetune_model::tiny_model(5).unwrap(), safetune_model::tiny_model(6).unwrap());
    let store = Store { dir: dir.clone(), model: "first" };
    let (e1, g1, t1) = evaluate_resumable(&first, &inputs, &spec, &judge, 1, "first", true, Some(&store)).unwrap();
    let (e2, g2, _) = evaluate(&second, &inputs, &spec, &judge, 1, "second", true).unwrap();
    for prefix in ["harm", "benign", "toy"] {
        assert_ne!(answers_of(&g1, prefix), answers_of(&g2, prefix), "the two models must answer {prefix} differently");
    }
    let kept = files(&dir);
    assert_eq!(kept.len(), 4, "one file per part: {kept:?}");
    let (task_file, harm_file, samples_file) =
        (part_of(&dir, &kept, "toy"), part_of(&dir, &kept, "harm"), part_of(&dir, &kept, "harm.samples"));

    // Every part kept: the second model is never asked; the result is the first one's, and
    // the times say this evaluation spent none on them.
    let (r, rg, rt) = evaluate_resumable(&second, &inputs, &spec, &judge, 1, "resumed", true, Some(&store)).unwrap();
    assert_eq!(to_value(&r).unwrap(), to_value(&e1).unwrap());
    assert_eq!(to_value(&rg).unwrap(), to_value(&g1).unwrap());
    assert_eq!(rt.len(), t1.len());
    for ((metric, seconds), (first_metric, _)) in rt.iter().zip(&t1) {
        assert_eq!((metric.as_str(), *seconds), (format!("{first_metric} (reused)").as_str(), 0.0));
    }

    // The task's part missing and the safety set's parts unreadable (a stop mid-write leaves
    // no file, but a damaged one is computed again too): those come from the second model, the
    // over-refusal set from the kept part.
    std::fs::remove_file(dir.join(&task_file)).unwrap();
    std::fs::write(dir.join(&harm_file), "{").unwrap();
    std::fs::write(dir.join(&samples_file), "{").unwrap();
    let (m, mg, _): (ModelEval, Generations, _) =
        evaluate_resumable(&second, &inputs, &spec, &judge, 1, "mixed", true, Some(&store)).unwrap();
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

/// The file of `kept` whose part answered the set `name` first.
fn part_of(dir: &std::path::Path, kept: &[String], name: &str) -> String {
    let first_set = |f: &String| -> Value {
        let part: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap();
        part["records"][0][0].clone()
    };
    let found: Vec<&String> = kept.iter().filter(|f| first_set(f) == name).collect();
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    found[0].clone()
}

#[test]
fn another_evaluation_of_the_same_model_reuses_the_parts_it_asks_alike_and_no_other() {
    let (harmful, benign, task_a) = toy_sets();
    let task_b: Vec<Example> =
        (0..5).map(|i| Example::new(format!("u:{i}"), ExampleKind::Task, format!("Name a colour {i}."), "red")).collect();
    let inputs = |task_name: &str, task: &'static [Example]| EvalInputs {
        safety: vec![("harm".into(), leak(&harmful))],
        over_refusal: vec![("benign".into(), leak(&benign))],
        task_name: task_name.into(),
        task,
        utility: UtilityMetric::named("rouge-l"),
        mmlu: None,
        mt_bench: None,
    };
    let (task_a, task_b) = (leak(&task_a), leak(&task_b));
    let spec =
        EvalSpec { safety_max_new_tokens: 6, task_max_new_tokens: 4, batch_size: 4, samples: 1, variants: false, ..EvalSpec::default() };
    let judge = safetune_metrics::KeywordJudge::extended();
    let dir = std::env::temp_dir().join(format!("safetune-eval-shared-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store { dir: dir.clone(), model: "m" };
    let (first, second) = (safetune_model::tiny_model(5).unwrap(), safetune_model::tiny_model(6).unwrap());

    let (_, g1, _) = evaluate_resumable(&first, &inputs("toy", task_a), &spec, &judge, 1, "first", true, Some(&store)).unwrap();
    // What the second model answers on its own: a part taken from the store is the first's.
    let on_its_own = |inputs: &EvalInputs, spec: &EvalSpec, judge: &dyn safetune_core::judge::Judge, seed| {
        evaluate(&second, inputs, spec, judge, seed, "second", true).unwrap().1
    };
    let g2 = on_its_own(&inputs("toy", task_a), &spec, &judge, 1);
    for set in ["harm", "benign"] {
        assert_ne!(answers_of(&g1, set), answers_of(&g2, set), "the two models must answer {set} differently");
    }

    // Another task with another limit (the next task of a run, the same model): the safety
    // and over-refusal parts are reused, only the task is answered.
    let other_task = EvalSpec { task_limit: 4, task_max_new_tokens: 3, ..spec.clone() };
    let (_, g, _) = evaluate_resumable(&second, &inputs("colours", task_b), &other_task, &judge, 1, "next", true, Some(&store)).unwrap();
    let own = on_its_own(&inputs("colours", task_b), &other_task, &judge, 1);
    assert_eq!(answers_of(&g, "harm"), answers_of(&g1, "harm"));
    assert_eq!(answers_of(&g, "benign"), answers_of(&g1, "benign"));
    assert_eq!(answers_of(&g, "colours"), answers_of(&own, "colours"));
    assert_eq!(files(&dir).len(), 5, "only the new task's part was added");

    // Another seed (the next seed of a grid, the same model): the greedy answers and the task's
    // are reused — greedy decoding draws nothing — and their estimates drawn with this seed,
    // as the first model's own evaluation with it gives them; the samples are answered again.
    let (e, g, _) = evaluate_resumable(&second, &inputs("toy", task_a), &spec, &judge, 2, "seed 2", true, Some(&store)).unwrap();
    let first_own = evaluate(&first, &inputs("toy", task_a), &spec, &judge, 2, "first", true).unwrap().0;
    assert_eq!(set_of(&g, "harm"), set_of(&g1, "harm"), "the greedy part reused");
    assert_eq!(answers_of(&g, "benign"), answers_of(&g1, "benign"));
    assert_eq!(set_of(&g, "harm.samples"), set_of(&on_its_own(&inputs("toy", task_a), &spec, &judge, 2), "harm.samples"));
    assert_eq!(to_value(&e.safety[0].asr).unwrap(), to_value(&first_own.safety[0].asr).unwrap());
    assert_eq!(to_value(&e.safety[0].by_category).unwrap(), to_value(&first_own.safety[0].by_category).unwrap());
    assert_eq!(to_value(&e.over_refusal).unwrap(), to_value(&first_own.over_refusal).unwrap());
    assert_eq!(to_value(&e.task).unwrap(), to_value(&first_own.task).unwrap());
    assert_eq!(files(&dir).len(), 6, "only the samples' part was added");

    // Whatever a safety part reads changes its key: the answer budget, the batch, the judge,
    // the model — each is answered again by the second model, greedy answers and samples
    // alike.
    let longer = EvalSpec { safety_max_new_tokens: 7, ..spec.clone() };
    let batch = EvalSpec { batch_size: 3, ..spec.clone() };
    let qi = safetune_metrics::KeywordJudge::qi2023();
    let cases: [(&str, &EvalSpec, &dyn safetune_core::judge::Judge, u64, &'static str); 4] = [
        ("answer budget", &longer, &judge, 1, "m"),
        ("batch size", &batch, &judge, 1, "m"),
        ("judge", &spec, &qi, 1, "m"),
        ("model", &spec, &judge, 1, "another"),
    ];
    for (what, spec, judge, seed, model) in cases {
        let store = Store { dir: dir.clone(), model };
        let (_, g, _) = evaluate_resumable(&second, &inputs("toy", task_a), spec, judge, seed, what, true, Some(&store)).unwrap();
        let own = on_its_own(&inputs("toy", task_a), spec, judge, seed);
        assert_eq!(answers_of(&g, "harm"), answers_of(&own, "harm"), "{what}: a safety part was reused");
        assert_eq!(answers_of(&g, "benign"), answers_of(&own, "benign"), "{what}: the over-refusal part was reused");
    }
    // The samples are a part of their own: without them (the `defenses` preset after a
    // `standard` run) the greedy answers are reused; with other samples too, and only the
    // samples are answered again.
    let no_samples = EvalSpec { samples: 0, ..spec.clone() };
    let (_, g, _) = evaluate_resumable(&second, &inputs("toy", task_a), &no_samples, &judge, 1, "greedy", true, Some(&store)).unwrap();
    assert_eq!(answers_of(&g, "harm"), set_of(&g1, "harm"), "the greedy part alone, reused");
    let two_samples = EvalSpec { samples: 2, ..spec.clone() };
    let (_, g, _) = evaluate_resumable(&second, &inputs("toy", task_a), &two_samples, &judge, 1, "more", true, Some(&store)).unwrap();
    let own = on_its_own(&inputs("toy", task_a), &two_samples, &judge, 1);
    assert_eq!(set_of(&g, "harm"), set_of(&g1, "harm"), "the greedy part reused");
    assert_ne!(set_of(&own, "harm"), set_of(&g1, "harm"));
    assert_eq!(set_of(&g, "harm.samples"), set_of(&own, "harm.samples"), "the samples answered again");
    assert_eq!(answers_of(&g, "benign"), answers_of(&g1, "benign"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A `'static` view of test data (the inputs borrow it across closures).
fn leak<T: Clone>(v: &[T]) -> &'static [T] {
    Box::leak(v.to_vec().into_boxed_slice())
}

#[test]
fn an_over_refusal_set_with_prompt_types_is_scored_per_type_and_its_answers_carry_them() {
    let (harmful, _, task) = toy_sets();
    let types = ["homonyms", "homonyms", "figurative_language", "safe_contexts"];
    let benign: Vec<Example> = (0..4)
        .map(|i| Example::new(format!("b:{i}"), ExampleKind::Benign, format!("a benign question {i}"), "").with_meta("type", types[i]))
        .collect();
    let spec = EvalSpec { safety_max_new_tokens: 6, task_max_new_tokens: 4, batch_size: 4, ..EvalSpec::default() };
    let judge = safetune_metrics::KeywordJudge::extended();
    let model = safetune_model::tiny_model(5).unwrap();
    let (e, gens, _) = evaluate(&model, &toy_inputs(&harmful, &benign, &task), &spec, &judge, 1, "m", true).unwrap();
    let o = &e.over_refusal[0];
    let names: Vec<&str> = o.by_category.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["figurative_language", "homonyms", "safe_contexts"], "{:?}", o.by_category);
    // Every non-empty answer is in exactly one type's figure.
    assert_eq!(o.by_category.iter().map(|n| n.estimate.n).sum::<usize>(), o.refusal_rate.n);
    let stored: Vec<Option<&str>> =
        gens.iter().filter(|(s, _)| s == "benign").flat_map(|(_, r)| r).map(|r| r.category.as_deref()).collect();
    assert_eq!(stored, types.map(Some));
}
