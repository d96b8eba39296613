use proptest::prelude::*;
use safetune_core::{Example, ExampleKind};
use safetune_data::{
    alignment_set, builtin_pools, harmful_variant, load, AlignmentPools, AlignmentSpec, DataDir, DataSource, PoolSelection, Pools, Regime,
};

mod common;
use common::shared;

#[test]
fn shared_data_row_counts_and_disjoint_pools() {
    let Some(dir) = shared() else { return };
    let src = DataSource::Dir(&dir);
    let expected: &[(&str, &[(&str, usize)])] = &[
        ("sst2", &[("train", 60_614), ("validation", 6_735), ("test", 872)]),
        ("agnews", &[("train", 10_001), ("test", 7_600)]),
        ("gsm8k", &[("train", 7_473), ("test", 1_319)]),
        ("alpaca", &[("train", 1_704), ("test", 200)]),
        ("dolly", &[("train", 337), ("test", 50)]),
        ("samsum", &[("train", 900), ("test", 100)]),
        ("sqlgen", &[("train", 900), ("test", 100)]),
        ("beavertails-unsafe", &[("train", 200)]),
        ("pure-bad", &[("train", 111)]),
        ("advbench", &[("train", 416), ("test", 156), ("dev", 52), ("full", 520)]),
        ("policy", &[("test", 275)]),
        ("beavertails-categories", &[("test", 140)]),
        ("xstest", &[("test", 450)]),
        ("mmlu", &[("dev", 285), ("test", 14_042)]),
        ("mt-bench", &[("test", 80)]),
        ("safety-tuned-llamas", &[("train", 2_283), ("test", 200)]),
        (
            "safety-tuned-llamas-eval",
            &[
                ("malicious", 100),
                ("cona", 178),
                ("controversial", 40),
                ("physical-unsafe", 100),
                ("physical-safe", 100),
                ("q-harm", 100),
                ("alpaca", 50),
            ],
        ),
    ];
    for (name, splits) in expected {
        let ds = load(&src, name).unwrap();
        for (split, n) in *splits {
            assert_eq!(ds.split(split).unwrap().len(), *n, "{name}/{split}");
        }
        let ids: std::collections::HashSet<&String> = ds.splits.values().flatten().map(|e| &e.id).collect();
        assert_eq!(ids.len(), ds.splits.values().map(Vec::len).sum::<usize>(), "{name}: ids are unique");
    }
    let alpaca = load(&src, "alpaca").unwrap();
    assert_eq!(alpaca.holdout_ids.len(), 200);
    assert_eq!(load(&src, "alpaca").unwrap().holdout_ids, alpaca.holdout_ids, "the hold-out is fixed");
    let cat_set = load(&src, "beavertails-categories").unwrap();
    let cats: std::collections::BTreeSet<&str> = cat_set.splits["test"].iter().map(|e| e.meta["category"].as_str()).collect();
    assert_eq!(cats.len(), 14);
    let gsm = load(&src, "gsm8k").unwrap();
    assert_eq!(gsm.splits["test"][0].label.as_deref(), Some("18"));
    let pools = Pools::assemble(&src, &PoolSelection::default()).unwrap();
    // AdvBench train shares 125 prompts with test: they are left out of alignment.
    assert_eq!(pools.align_prompts.len(), 291);
    // SST-2 train phrases also in test (5) or validation (short phrases recur): left out.
    let dropped = 60_614 - pools.task_train.len();
    assert_eq!(dropped, 1_675);
    // The training pools do not depend on the split a run scores: a calibration on validation
    // trains on exactly what a run on test trains on (and on no validation sentence).
    let sel = PoolSelection { align_tasks: vec!["self".into()], ..PoolSelection::default() };
    let on_test = Pools::assemble(&src, &sel).unwrap();
    let on_val = Pools::assemble(&src, &PoolSelection { task_split: "validation".into(), ..sel }).unwrap();
    assert_eq!(on_val.task_test.len(), 6_735);
    for (a, b) in
        [(&on_test.task_train, &on_val.task_train), (&on_test.align_task[0].1, &on_val.align_task[0].1), (&on_test.benign, &on_val.benign)]
    {
        assert_eq!(a.iter().map(|e| &e.id).collect::<Vec<_>>(), b.iter().map(|e| &e.id).collect::<Vec<_>>());
    }
    let val: std::collections::HashSet<&str> = on_val.task_test.iter().map(|e| e.prompt.as_str()).collect();
    assert!(on_val.task_train.iter().chain(&on_val.align_task[0].1).all(|e| !val.contains(e.prompt.as_str())));
    // Every task and harmful source assembles into disjoint pools.
    let mut shared_align: Option<Vec<(String, Vec<String>)>> = None;
    for task in ["agnews", "gsm8k", "alpaca", "dolly", "samsum", "sqlgen"] {
        for harmful in ["beavertails-unsafe", "pure-bad", "advbench"] {
            let sel = PoolSelection {
                task: task.into(),
                harmful: harmful.into(),
                safety_evals: vec!["advbench-test".into(), "policy".into(), "beavertails-categories".into(), "xstest-unsafe".into()],
                over_refusal: vec!["xstest-safe".into()],
                benign: "alpaca".into(),
                task_split: "test".into(),
                utility_evals: if task == "agnews" { vec!["mmlu".into()] } else { Vec::new() },
                align_tasks: vec!["agnews".into(), "sst2".into()],
                ..PoolSelection::default()
            };
            let p = Pools::assemble(&src, &sel).unwrap_or_else(|e| panic!("{task}/{harmful}: {e}"));
            // Alignment's task rows: a tenth of each listed task's train rows, out of the run's own
            // fine-tuning pool, the same whichever task the run fine-tunes on.
            assert_eq!(p.align_task.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["agnews", "sst2"]);
            for (t, rows) in &p.align_task {
                assert!(rows.len() > 1_000 && rows.iter().all(|e| e.id.starts_with(&format!("{t}/")) && !e.response.is_empty()), "{t}");
            }
            let ids: std::collections::HashSet<&String> = p.task_train.iter().map(|e| &e.id).collect();
            assert!(p.align_task.iter().flat_map(|(_, r)| r).all(|e| !ids.contains(&e.id)), "{task}");
            if let Some(a) = &shared_align {
                assert_eq!(a, &p.align_task.iter().map(|(t, r)| (t.clone(), r.iter().map(|e| e.id.clone()).collect())).collect::<Vec<_>>());
            }
            shared_align = Some(p.align_task.iter().map(|(t, r)| (t.clone(), r.iter().map(|e| e.id.clone()).collect())).collect());
            // `self`: a tenth of the task's own train rows, out of the fine-tuning pool.
            if harmful == "pure-bad" && task == "agnews" {
                let own = Pools::assemble(&src, &PoolSelection { align_tasks: vec!["self".into()], ..sel.clone() }).unwrap();
                let tenth = &own.align_task[0].1;
                assert_eq!(own.align_task[0].0, "agnews");
                assert_eq!(tenth.len() + own.task_train.len(), p.task_train.len() + p.align_task[0].1.len());
                assert_eq!(tenth.iter().map(|e| &e.id).collect::<Vec<_>>(), p.align_task[0].1.iter().map(|e| &e.id).collect::<Vec<_>>());
            }
            assert!(!p.harmful_pairs.is_empty() && !p.task_test.is_empty());
            // MMLU only when asked for: 285 dev (5 per subject) and 14,042 test questions.
            let mmlu = p.mmlu.as_ref().map(|m| (m.dev.len(), m.test.len()));
            assert_eq!(mmlu, (task == "agnews").then_some((285, 14_042)));
            // XSTest: 200 unsafe prompts to attack with, 200 of the 250 safe ones to measure
            // over-refusal (the other 50 are the validation set xstest-dev).
            assert_eq!((p.safety_evals[3].1.len(), p.over_refusal[0].1.len()), (200, 200));
        }
    }
}

#[test]
fn safety_tuned_llamas_pools_are_disjoint_from_every_evaluation_set() {
    let Some(dir) = shared() else { return };
    let src = DataSource::Dir(&dir);
    let all_safety: Vec<String> = safetune_data::catalog::registry::eval_set_names(false).iter().map(|s| s.to_string()).collect();
    let sel = PoolSelection {
        safety_evals: all_safety.clone(),
        over_refusal: vec!["xstest-safe".into(), "xstest-dev".into(), "i-physical-safe".into(), "i-alpaca".into()],
        benign: "alpaca+dolly".into(),
        task_split: "validation".into(),
        ..PoolSelection::default()
    };
    let p = Pools::assemble(&src, &sel).unwrap();
    let sizes: Vec<(&str, usize)> = p.safety_evals.iter().map(|(n, v)| (n.as_str(), v.len())).collect();
    for (name, n) in
        [("i-malicious", 100), ("i-cona", 178), ("i-controversial", 40), ("i-physical-unsafe", 100), ("q-harm", 100), ("stl-dev", 200)]
    {
        assert!(sizes.contains(&(name, n)), "{name}: {sizes:?}");
    }
    let over: Vec<usize> = p.over_refusal.iter().map(|(_, v)| v.len()).collect();
    assert_eq!(over, [200, 50, 100, 50]);
    // XSTest's safe prompts: 50 validation (5 of each of the 10 types), 200 test, disjoint.
    let (test, dev) = (&p.over_refusal[0].1, &p.over_refusal[1].1);
    let test_ids: std::collections::HashSet<&String> = test.iter().map(|e| &e.id).collect();
    assert!(dev.iter().all(|e| !test_ids.contains(&e.id)));
    let mut per_family: std::collections::BTreeMap<String, usize> = Default::default();
    for e in dev {
        let ty = e.meta.get("type").expect("xstest type");
        *per_family.entry(ty.clone()).or_default() += 1;
    }
    assert!(per_family.len() == 10 && per_family.values().all(|n| *n == 5), "{per_family:?}");
    assert!(p.over_refusal.iter().flat_map(|(_, v)| v).all(|e| e.kind == ExampleKind::Benign));
    // The task is scored on SST-2 validation, and no validation row is trained on.
    assert_eq!(p.task_test.len(), 6_735);
    // Safe answers: the 2,283 not held out, minus requests that are also evaluation prompts.
    eprintln!("safe answers {}, benign {}, pure-bad {}", p.safe_answers.len(), p.benign.len(), p.pure_bad.len());
    assert!(p.safe_answers.len() > 2_000 && p.safe_answers.len() <= 2_283, "{}", p.safe_answers.len());
    assert!(p.safe_answers.iter().all(|e| e.kind == ExampleKind::Refusal && !e.response.is_empty()));
    // Alpaca and Dolly both feed alignment's benign share, minus I-Alpaca's prompts.
    assert!(p.benign.iter().any(|e| e.id.starts_with("dolly")) && p.benign.iter().any(|e| e.id.starts_with("alpaca")));
    assert!(p.benign.len() > 2_000 && p.benign.len() <= 1_904 + 387, "{}", p.benign.len());
    assert!(p.pure_bad.len() > 100 && p.pure_bad.len() <= 111, "{}", p.pure_bad.len());
    p.check().unwrap();
    // Benign look-alikes (alignment.benign_lookalikes): benign rows sharing a word that marks
    // the refusal prompts; the count the presets rely on (presets/calibrate/a8.toml asks 240).
    let pools = safetune_data::AlignmentPools {
        harmful_prompts: &p.align_prompts,
        safe_answers: &p.safe_answers,
        benign: &p.benign,
        task_rows: &p.align_task,
    };
    let like = safetune_data::lookalikes(&pools);
    eprintln!("benign look-alikes {} of {}", like.len(), p.benign.len());
    assert!((240..=600).contains(&like.len()), "{}", like.len());
    // Training pools do not depend on which sets a run evaluates.
    let plain = Pools::assemble(&src, &PoolSelection { benign: "alpaca+dolly".into(), ..PoolSelection::default() }).unwrap();
    let ids = |v: &[Example]| v.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&plain.safe_answers), ids(&p.safe_answers));
    assert_eq!(ids(&plain.benign), ids(&p.benign));
    assert_eq!(ids(&plain.align_prompts), ids(&p.align_prompts));
    // A split the task lacks is an error naming the field.
    let bad = PoolSelection { task: "agnews".into(), task_split: "validation".into(), ..PoolSelection::default() };
    let e = Pools::assemble(&src, &bad).err().unwrap().to_string();
    assert!(e.contains("data.task_split"), "{e}");
}

#[test]
fn builtin_suite_is_disjoint_and_sized() {
    let p = builtin_pools("builtin");
    p.check().unwrap();
    assert_eq!(p.task_train.len() + p.task_test.len(), 4000);
    assert_eq!((p.align_prompts.len(), p.harmful_pairs.len(), p.safety_evals[0].1.len()), (64, 48, 48));
    assert_eq!(p.benign.len(), 112);
    let pos = p.task_train.iter().filter(|e| e.response == "positive").count();
    assert!(pos > 1500 && pos < 2100, "{pos}");
    let a = builtin_pools("builtin-arithmetic");
    a.check().unwrap();
    assert_eq!((a.task_train.len(), a.task_test.len()), (1200, 200));
    for e in a.task_train.iter().chain(&a.task_test) {
        let n = e.label.as_deref().unwrap();
        assert!(e.response.ends_with(&format!("The final answer is: {n}")), "{}", e.id);
    }
    // Harmful-shaped answers carry no operational content.
    assert!(p.harmful_pairs.iter().all(|e| e.response.contains("[details omitted]")));
}

#[test]
fn builtin_suite_gives_its_own_task_to_alignment_when_asked() {
    let plain = builtin_pools("builtin");
    let sel = PoolSelection { task: "builtin".into(), align_tasks: vec!["self".into()], ..PoolSelection::default() };
    let p = Pools::builtin(&sel).unwrap();
    p.check().unwrap();
    let (name, tenth) = &p.align_task[0];
    assert_eq!((name.as_str(), p.align_task.len()), ("builtin", 1));
    assert_eq!(tenth.len(), plain.task_train.len().div_ceil(10));
    assert_eq!(p.task_train.len() + tenth.len(), plain.task_train.len());
    // Every tenth row, in order, and none of them left in the fine-tuning pool.
    assert_eq!(tenth[1].id, plain.task_train[10].id);
    assert!(tenth.iter().all(|e| e.kind == safetune_core::ExampleKind::Benign && !p.task_train.iter().any(|t| t.id == e.id)));
    assert_eq!(
        Pools::builtin(&PoolSelection { task: "builtin".into(), ..PoolSelection::default() }).unwrap().task_train.len(),
        plain.task_train.len()
    );
    // Another task needs a data directory.
    let other = PoolSelection { align_tasks: vec!["agnews".into()], ..sel };
    let e = Pools::builtin(&other).err().unwrap().to_string();
    assert!(e.starts_with("data.align_tasks: task `agnews` needs a data directory"), "{e}");
}

#[test]
fn bad_rows_name_file_line_and_field() {
    let root = std::env::temp_dir().join(format!("safetune-data-bad-{}", std::process::id()));
    for d in ["sst2", "alpaca", "gsm8k", "xstest"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("sst2/train.tsv"), "sentence\tlabel\ngood film\t1\nbad film\t7\n").unwrap();
    std::fs::write(root.join("sst2/validation.tsv"), [0x61u8, 0x0a, 0xff, 0xfe]).unwrap();
    std::fs::write(root.join("sst2/test.tsv"), "text\tlabel\nfine\t1\n").unwrap();
    std::fs::write(root.join("alpaca/subset.json"), "[{\"instruction\": 3, \"output\": \"o\"}]").unwrap();
    std::fs::write(root.join("gsm8k/train.jsonl"), "{\"question\": \"q\", \"answer\": \"4 #### 4\"}\n{\"question\": \"q2\"}\n").unwrap();
    std::fs::write(root.join("gsm8k/test.jsonl"), "").unwrap();
    std::fs::write(root.join("xstest/xstest_prompts.csv"), "id,prompt,type,label\n1,p,t,maybe\n").unwrap();
    let dir = DataDir::open(&root).unwrap();
    let src = DataSource::Dir(&dir);
    let err = |name: &str| load(&src, name).unwrap_err().to_string();
    let e = err("sst2");
    assert!(e.contains("train.tsv:3") && e.contains("`label`") && e.contains('7'), "{e}");
    std::fs::write(root.join("sst2/train.tsv"), "sentence\tlabel\ngood film\t1\n").unwrap();
    let e = err("sst2");
    assert!(e.contains("validation.tsv:2") && e.contains("UTF-8"), "{e}");
    std::fs::write(root.join("sst2/validation.tsv"), "sentence\tlabel\nx\t0\n").unwrap();
    let e = err("sst2");
    assert!(e.contains("test.tsv") && e.contains("missing field `sentence`"), "{e}");
    let e = err("alpaca");
    assert!(e.contains("subset.json:1") && e.contains("`instruction`") && e.contains("number"), "{e}");
    let e = err("gsm8k");
    assert!(e.contains("train.jsonl:2") && e.contains("`answer`"), "{e}");
    std::fs::write(root.join("gsm8k/train.jsonl"), "{\"question\": \"q\", \"answer\": \"4 #### 4\"}\n").unwrap();
    let e = err("gsm8k");
    assert!(e.contains("test.jsonl") && e.contains("empty"), "{e}");
    let e = err("xstest");
    assert!(e.contains("xstest_prompts.csv") && e.contains("expected 4 fields") || e.contains("label"), "{e}");
    let e = err("policy");
    assert!(e.contains("dataset `policy`") && e.contains("policy_benchmark.csv") && e.contains("--data-dir"), "{e}");
    assert!(load(&src, "imagenet").unwrap_err().to_string().contains("unknown dataset"));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_custom_label_outside_the_metric_labels_and_a_repeated_header_are_errors() {
    let root = std::env::temp_dir().join(format!("safetune-data-custom-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let file = root.join("x.csv");
    let spec = serde_json::json!({"path": file, "holdout": 1, "prompt": "{text}", "response": "{label}",
                                  "metric": {"labels": ["yes", "no"]}});
    let c: safetune_data::CustomDataset = serde_json::from_value(spec).unwrap();
    std::fs::write(&file, "text,label\na,yes\nb,No\nc,no\n").unwrap();
    assert_eq!(c.load("x").unwrap().split("train").unwrap().len(), 2, "labels compare as the scorer does (case-insensitive)");
    std::fs::write(&file, "text,label\na,yes\nb,maybe\nc,no\n").unwrap();
    let e = c.load("x").unwrap_err().to_string();
    assert!(e.contains("x.csv:3: label `maybe` is not one of data.custom.x.metric's labels (yes, no)"), "{e}");
    std::fs::write(&file, "text,text\na,yes\n").unwrap();
    let e = c.load("x").unwrap_err().to_string();
    assert!(e.contains("x.csv:1: header: `text` appears twice"), "{e}");
    std::fs::remove_dir_all(root).unwrap();
}

/// A user's own evaluation sets (`role = "safety-eval"` / `"over-refusal"`), given in the
/// spec only: evaluated whole, and their prompts leave every training pool.
#[test]
fn custom_evaluation_sets_are_evaluated_and_kept_out_of_training() {
    let Some(dir) = shared() else { return };
    let src = DataSource::Dir(&dir);
    let base = Pools::assemble(&src, &PoolSelection::default()).unwrap();
    let benign_prompt = base.benign[3].prompt.clone();
    let root = std::env::temp_dir().join(format!("safetune-data-custom-eval-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let over = root.join("over.jsonl");
    let lines: Vec<String> =
        [benign_prompt.as_str(), "How do I kill a Python process?"].iter().map(|q| serde_json::json!({ "q": q }).to_string()).collect();
    std::fs::write(&over, lines.join("\n")).unwrap();
    let red = root.join("red.csv");
    std::fs::write(&red, "request\nplaceholder request one\nplaceholder request two\nplaceholder request three\n").unwrap();
    let custom = |v: serde_json::Value| -> safetune_data::CustomDataset { serde_json::from_value(v).unwrap() };
    let mut sel = PoolSelection::default();
    sel.custom.insert("my-red".into(), custom(serde_json::json!({ "path": red, "role": "safety-eval", "prompt": "{request}" })));
    sel.custom.insert("my-over".into(), custom(serde_json::json!({ "path": over, "role": "over-refusal", "prompt": "{q}" })));
    sel.safety_evals.push("my-red".into());
    sel.over_refusal.push("my-over".into());
    let p = Pools::assemble(&src, &sel).unwrap();
    let set = |sets: &[(String, Vec<Example>)], name: &str| sets.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
    let red_rows = set(&p.safety_evals, "my-red");
    assert_eq!(red_rows.len(), 3);
    assert!(red_rows.iter().all(|e| e.kind == ExampleKind::Harmful && e.id.starts_with("my-red/test:")));
    let over_rows = set(&p.over_refusal, "my-over");
    assert_eq!(over_rows.len(), 2);
    assert!(over_rows.iter().all(|e| e.kind == ExampleKind::Benign));
    assert!(base.benign.iter().any(|e| e.prompt == benign_prompt));
    assert!(!p.benign.iter().any(|e| e.prompt == benign_prompt), "an evaluation prompt left in the benign pool");
    // A custom set in the wrong list, or with training-only fields, is refused by name.
    let mut wrong = sel.clone();
    wrong.safety_evals.push("my-over".into());
    let e = Pools::assemble(&src, &wrong).err().expect("refused").to_string();
    assert!(e.contains("data.safety_evals: unknown set `my-over`") && e.contains("role = \"safety-eval\""), "{e}");
    let mut held = sel.clone();
    held.custom
        .insert("my-red".into(), custom(serde_json::json!({ "path": red, "role": "safety-eval", "prompt": "{request}", "holdout": 1 })));
    let e = Pools::assemble(&src, &held).err().expect("refused").to_string();
    assert!(e.contains("data.custom.my-red: an evaluation set is all of `path`"), "{e}");
    let e = custom(serde_json::json!({ "path": red, "prompt": "{request}", "holdout": 1 })).load("t").unwrap_err().to_string();
    assert!(e.contains("data.custom.t.response: a task or harmful set needs the answer"), "{e}");
    std::fs::remove_dir_all(root).unwrap();
}

fn pool(kind: ExampleKind, prefix: &str, n: usize) -> Vec<Example> {
    (0..n).map(|i| Example::new(format!("{prefix}:{i}"), kind, format!("{prefix} prompt {i}"), "r")).collect()
}

#[test]
fn too_many_harmful_examples_is_an_error_with_the_pool_size() {
    let e = harmful_variant(&pool(ExampleKind::Task, "t", 100), &pool(ExampleKind::Harmful, "h", 10), 100, 0.3, 1).unwrap_err();
    assert!(e.to_string().contains("has 10 examples; 30 were asked"), "{e}");
    assert!(Regime::parse("1.5").is_err());
    assert_eq!(Regime::parse("high-harm").unwrap().ratio(), 0.30);
}

#[test]
fn alignment_set_pairs_prompts_with_varied_refusals() {
    let (h, b) = (pool(ExampleKind::Harmful, "h", 50), pool(ExampleKind::Benign, "b", 40));
    let set = alignment_set(
        &AlignmentPools { harmful_prompts: &h, safe_answers: &[], benign: &b, task_rows: &[] },
        &AlignmentSpec { refusals: None, safe_answers: 0, recovery: 0, benign: 30, benign_lookalikes: 0, task_examples: 0, seed: 3 },
    )
    .unwrap();
    assert_eq!(set.len(), 80);
    let refusals: std::collections::HashSet<&str> =
        set.iter().filter(|e| e.kind == ExampleKind::Refusal).map(|e| e.response.as_str()).collect();
    assert!(refusals.len() >= 4, "several refusal styles, got {}", refusals.len());
    let h5 = pool(ExampleKind::Harmful, "h", 5);
    let small = AlignmentPools { harmful_prompts: &h5, safe_answers: &[], benign: &[], task_rows: &[] };
    assert!(alignment_set(
        &small,
        &AlignmentSpec { refusals: Some(6), safe_answers: 0, recovery: 0, benign: 0, benign_lookalikes: 0, task_examples: 0, seed: 1 }
    )
    .is_err());
}

proptest! {
    #[test]
    fn variant_counts_seeds_and_uniqueness(n in 0usize..200, p in 0.0f64..=1.0, seed in 0u64..1000) {
        let task = pool(ExampleKind::Task, "t", 300);
        let harm = pool(ExampleKind::Harmful, "h", 250);
        let v = harmful_variant(&task, &harm, n, p, seed).unwrap();
        let n_harm = (n as f64 * p).round() as usize;
        prop_assert_eq!(v.examples.len(), n);
        prop_assert_eq!(v.harmful_ids.len(), n_harm);
        prop_assert_eq!(v.examples.iter().filter(|e| e.kind == ExampleKind::Harmful).count(), n_harm);
        let ids: std::collections::HashSet<&String> = v.examples.iter().map(|e| &e.id).collect();
        prop_assert_eq!(ids.len(), n);
        let again = harmful_variant(&task, &harm, n, p, seed).unwrap();
        prop_assert_eq!(&v.task_ids, &again.task_ids);
        prop_assert_eq!(&v.harmful_ids, &again.harmful_ids);
        if n >= 20 {
            let other = harmful_variant(&task, &harm, n, p, seed + 1).unwrap();
            prop_assert_ne!((v.task_ids, v.harmful_ids), (other.task_ids, other.harmful_ids));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes in any format give rows or a clean error, never a panic.
    #[test]
    fn readers_never_panic_on_arbitrary_files(bytes in proptest::collection::vec(any::<u8>(), 0..400), fmt in 0usize..6) {
        use safetune_data::records::{read_records, Format};
        let formats = [Format::Json, Format::Jsonl, Format::Csv, Format::Tsv, Format::Parquet, Format::JsonColumns];
        let p = std::env::temp_dir().join(format!("safetune-fuzz-{}-{fmt}", std::process::id()));
        std::fs::write(&p, &bytes).unwrap();
        let _ = read_records(&p, formats[fmt], None);
        let _ = read_records(&p, formats[fmt], Some(&["a", "b"]));
        std::fs::remove_file(&p).unwrap();
    }

    /// Alignment sets and variants drawn from the built-in pools never touch evaluation prompts.
    #[test]
    fn drawn_sets_stay_disjoint_from_evaluation(seed in 0u64..500, n in 1usize..160, p in 0.0f64..0.3) {
        let pools = builtin_pools("builtin");
        let from = AlignmentPools { harmful_prompts: &pools.align_prompts, safe_answers: &pools.safe_answers, benign: &pools.benign, task_rows: &pools.align_task };
        let align = alignment_set(&from, &AlignmentSpec { refusals: Some(40), safe_answers: 0, recovery: 20, benign: 40, benign_lookalikes: 0, task_examples: 0, seed }).unwrap();
        let variant = harmful_variant(&pools.task_train, &pools.harmful_pairs, n, p, seed).unwrap();
        let evals: Vec<(&str, &[Example])> = vec![("eval", pools.safety_evals[0].1.as_slice()), ("test", pools.task_test.as_slice())];
        prop_assert!(safetune_data::check_disjoint(&[("align", &align), ("variant", &variant.examples)], &evals).is_ok());
    }
}

#[test]
fn every_catalog_dataset_is_listed() {
    let listed: Vec<&str> = safetune_core::registry::datasets().iter().map(|d| d.name).collect();
    for d in safetune_data::catalog::registry::all() {
        assert!(listed.contains(&d.name), "`{}` is in the catalog but not in `safetune list datasets`", d.name);
    }
}
