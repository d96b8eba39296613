//! A dataset registered outside the data crate — one `register_dataset!`, no other
//! edit — is a task, a safety evaluation set and a validation set for specs, is
//! listed by `safetune list datasets`, is assembled into a run's pools, and its
//! evaluation prompts leave every training pool.

mod common;

use safetune_core::judge::UtilityMetric;
use safetune_core::{Example, ExampleKind, Result};
use safetune_data::catalog::registry::{self, test_split, train_split, EvalSet, Use};
use safetune_data::catalog::{DatasetDef, FileDef, Format, Record};
use safetune_data::{DataDir, DataSource, PoolSelection, Pools};

fn toy_row(r: &Record, f: &str, id: String) -> Result<Example> {
    let label = r.text("label", f)?;
    Ok(Example::new(id, ExampleKind::Task, r.text("text", f)?, label.clone()).with_label(label))
}

fn toy_prompt(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(Example::new(id, ExampleKind::Harmful, r.text("text", f)?, ""))
}

fn yes_no() -> UtilityMetric {
    UtilityMetric::labels(&["yes", "no"])
}

safetune_data::register_dataset! {
    role: "task (test only)",
    splits: "train 4 / test 2",
    files: "toy/{train,test}.jsonl",
    DatasetDef {
        name: "toy-task",
        uses: &[Use::Task { metric: yes_no }, Use::Harmful { select: train_split }],
        id_prefix: "toy",
        zero_based: false,
        local: &[
            FileDef { split: "train", path: "toy/train.jsonl", format: Format::Jsonl, columns: None, convert: toy_row },
            FileDef { split: "test", path: "toy/test.jsonl", format: Format::Jsonl, columns: None, convert: toy_row },
        ],
        per_subject_dir: false,
        holdout: None,
        hub: None,
        source: "written by this test",
        license: "MIT OR Apache-2.0",
    }
}

safetune_data::register_dataset! {
    role: "eval-safety (test only)",
    splits: "test 2",
    files: "toy/harm.jsonl",
    DatasetDef {
        name: "toy-harm",
        uses: &[Use::SafetyEval(EvalSet { name: "toy-harm-dev", validation: true, select: test_split })],
        id_prefix: "toy-harm",
        zero_based: false,
        local: &[FileDef { split: "test", path: "toy/harm.jsonl", format: Format::Jsonl, columns: None, convert: toy_prompt }],
        per_subject_dir: false,
        holdout: None,
        hub: None,
        source: "written by this test",
        license: "MIT OR Apache-2.0",
    }
}

#[test]
fn a_dataset_registered_elsewhere_is_listed_checked_assembled_and_kept_out_of_training() {
    // Listed, with its set names and roles, before any data is read.
    let listed: Vec<&str> = safetune_core::registry::datasets().iter().map(|d| d.name).collect();
    assert!(listed.contains(&"toy-task") && listed.contains(&"toy-harm"), "{listed:?}");
    assert!(registry::tasks().contains(&"toy-task"));
    assert!(registry::harmful_sets().contains(&"toy-task"));
    assert!(registry::eval_set_names(false).contains(&"toy-harm-dev"));
    assert!(registry::validation_sets(false).contains(&"toy-harm-dev"));
    assert!(!registry::eval_set_names(true).contains(&"toy-harm-dev"), "a safety set is not an over-refusal set");
    let sel = PoolSelection { task: "toy-task".into(), safety_evals: vec!["toy-harm-dev".into()], ..PoolSelection::default() };
    Pools::check_selection(&sel).unwrap();
    let wrong = PoolSelection { over_refusal: vec!["toy-harm-dev".into()], ..sel.clone() };
    let err = Pools::check_selection(&wrong).unwrap_err().to_string();
    assert!(err.starts_with("data.over_refusal: unknown set `toy-harm-dev`"), "{err}");
    // From the Hub: a dataset registered without a download source is named with the spec key
    // that asked for it, before anything downloads (offline client: no request could go out).
    let hub = safetune_data::HubClient {
        endpoint: "http://127.0.0.1:9".into(),
        github_endpoint: "http://127.0.0.1:9".into(),
        offline: true,
        ..safetune_data::HubClient::from_env()
    };
    let Err(err) = Pools::assemble(&DataSource::Hub(&hub), &sel) else { panic!("assembled from the Hub without a source") };
    let err = err.to_string();
    assert!(err.contains("no download source for toy-task (data.task), toy-harm (data.safety_evals)"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Assembled from a data directory: the shared one (AdvBench, Alpaca, ...) plus the toy files.
    let Some(shared) = common::shared() else { return };
    let root = std::env::temp_dir().join(format!("safetune-registry-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("toy")).unwrap();
    for entry in std::fs::read_dir(&shared.root).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), root.join(entry.file_name())).unwrap();
    }
    let line = |text: &str, label: &str| format!("{{\"text\": \"{text}\", \"label\": \"{label}\"}}\n");
    let train = ["is the sky blue", "is fire cold", "is water wet", "toy evaluation prompt one"];
    let train: String = train.iter().enumerate().map(|(i, t)| line(t, ["yes", "no"][i % 2])).collect();
    std::fs::write(root.join("toy/train.jsonl"), train).unwrap();
    std::fs::write(root.join("toy/test.jsonl"), line("is snow white", "yes") + &line("is ice hot", "no")).unwrap();
    std::fs::write(root.join("toy/harm.jsonl"), line("Toy evaluation prompt one", "") + &line("toy evaluation prompt two", "")).unwrap();

    let dir = DataDir::open(&root).unwrap();
    let p = Pools::assemble(&DataSource::Dir(&dir), &sel).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(p.utility, yes_no());
    assert_eq!(p.task_test.len(), 2);
    assert_eq!(p.safety_evals.iter().map(|(n, v)| (n.as_str(), v.len())).collect::<Vec<_>>(), [("toy-harm-dev", 2)]);
    // The train row that repeats an evaluation prompt (after normalisation) is gone.
    assert_eq!(p.task_train.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["toy/train:1", "toy/train:2", "toy/train:3"]);
    assert!(p.files.iter().any(|f| f.ends_with("toy/harm.jsonl")));
}
