use std::path::PathBuf;

use proptest::prelude::*;
use safetune_core::{Example, ExampleKind};
use safetune_data::{
    alignment_set, builtin_pools, harmful_variant, AlignmentSpec, DataDir, Pools, Regime,
};

/// `../shared/data` beside the repository, or `SAFETUNE_DATA_DIR`.
fn shared() -> Option<DataDir> {
    let p = std::env::var_os("SAFETUNE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if p.is_dir() {
        Some(DataDir::open(&p).unwrap())
    } else {
        eprintln!("skipped: no data directory at {}", p.display());
        None
    }
}

#[test]
fn shared_data_row_counts_and_disjoint_pools() {
    let Some(dir) = shared() else { return };
    assert_eq!(dir.sst2("train").unwrap().len(), 60_614);
    assert_eq!(dir.sst2("validation").unwrap().len(), 6_735);
    assert_eq!(dir.sst2("test").unwrap().len(), 872);
    assert_eq!(dir.advbench("train").unwrap().len(), 416);
    assert_eq!(dir.advbench("test").unwrap().len(), 156);
    assert_eq!(dir.policy().unwrap().len(), 275);
    assert_eq!(dir.beavertails_unsafe().unwrap().len(), 200);
    assert_eq!(dir.alpaca().unwrap().len(), 1_904);
    let pools = Pools::from_dir(&dir, "sst2").unwrap();
    // AdvBench train shares 125 prompts with test: they are left out of alignment.
    assert_eq!(pools.align_prompts.len(), 291);
    pools.check().unwrap();
    let dropped = 60_614 - pools.task_train.len();
    eprintln!("sst2 train sentences also in test, left out: {dropped}");
    assert!(dropped > 0 && dropped < 100, "{dropped}");
    let labels: Vec<&str> = pools
        .task_test
        .iter()
        .map(|e| e.label.as_deref().unwrap())
        .collect();
    assert!(labels.iter().all(|l| *l == "positive" || *l == "negative"));
}

#[test]
fn builtin_suite_is_disjoint_and_sized() {
    let p = builtin_pools();
    p.check().unwrap();
    assert_eq!(p.task_train.len() + p.task_test.len(), 4000);
    assert_eq!(
        (
            p.align_prompts.len(),
            p.harmful_pairs.len(),
            p.safety_evals[0].1.len()
        ),
        (40, 30, 30)
    );
    let pos = p
        .task_train
        .iter()
        .filter(|e| e.response == "positive")
        .count();
    assert!(pos > 1500 && pos < 2100, "{pos}");
}

#[test]
fn bad_rows_name_file_line_and_field() {
    let root = std::env::temp_dir().join(format!("safetune-data-bad-{}", std::process::id()));
    std::fs::create_dir_all(root.join("sst2")).unwrap();
    std::fs::write(
        root.join("sst2/train.tsv"),
        "sentence\tlabel\ngood film\t1\nbad film\t7\n",
    )
    .unwrap();
    std::fs::write(root.join("sst2/test.tsv"), "text\tlabel\nx\t1\n").unwrap();
    std::fs::create_dir_all(root.join("alpaca")).unwrap();
    std::fs::write(root.join("alpaca/subset.json"), "[{\"instruction\": 3}]").unwrap();
    let dir = DataDir::open(&root).unwrap();
    let e = dir.sst2("train").unwrap_err().to_string();
    assert!(
        e.contains("train.tsv:3") && e.contains("label") && e.contains('7'),
        "{e}"
    );
    let e = dir.sst2("test").unwrap_err().to_string();
    assert!(e.contains("test.tsv:1") && e.contains("header"), "{e}");
    let e = dir.alpaca().unwrap_err().to_string();
    assert!(e.contains("subset.json:1"), "{e}");
    let e = dir.policy().unwrap_err().to_string();
    assert!(
        e.contains("dataset `policy`") && e.contains("policy_benchmark.csv"),
        "{e}"
    );
    std::fs::write(root.join("sst2/validation.tsv"), [0xffu8, 0xfe, 0x00]).unwrap();
    assert!(dir
        .sst2("validation")
        .unwrap_err()
        .to_string()
        .contains("not UTF-8"));
    std::fs::remove_dir_all(root).unwrap();
}

fn pool(kind: ExampleKind, prefix: &str, n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            Example::new(
                format!("{prefix}:{i}"),
                kind,
                format!("{prefix} prompt {i}"),
                "r",
            )
        })
        .collect()
}

#[test]
fn too_many_harmful_examples_is_an_error_with_the_pool_size() {
    let e = harmful_variant(
        &pool(ExampleKind::Task, "t", 100),
        &pool(ExampleKind::Harmful, "h", 10),
        100,
        0.3,
        1,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("has 10 examples; 30 were asked"),
        "{e}"
    );
    assert!(Regime::parse("1.5").is_err());
    assert_eq!(Regime::parse("high-harm").unwrap().ratio(), 0.30);
}

#[test]
fn alignment_set_pairs_prompts_with_varied_refusals() {
    let set = alignment_set(
        &pool(ExampleKind::Harmful, "h", 50),
        &pool(ExampleKind::Benign, "b", 40),
        &AlignmentSpec {
            refusals: None,
            benign: 30,
            seed: 3,
        },
    )
    .unwrap();
    assert_eq!(set.len(), 80);
    let refusals: std::collections::HashSet<&str> = set
        .iter()
        .filter(|e| e.kind == ExampleKind::Refusal)
        .map(|e| e.response.as_str())
        .collect();
    assert!(
        refusals.len() >= 4,
        "several refusal styles, got {}",
        refusals.len()
    );
    assert!(alignment_set(
        &pool(ExampleKind::Harmful, "h", 5),
        &[],
        &AlignmentSpec {
            refusals: Some(6),
            benign: 0,
            seed: 1
        }
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
            prop_assert_ne!(v.task_ids, other.task_ids);
        }
    }
}
