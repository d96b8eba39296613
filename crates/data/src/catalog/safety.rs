//! The built-in catalog, part two: harmful sets, safety and over-refusal
//! evaluation sets (each with the rule that draws it from its dataset's splits)
//! and utility benchmarks, each one [`register_dataset!`](crate::register_dataset).

use safetune_core::{Example, Result};

use super::registry::{split, test_split, train_split, EvalSet, Use};
use super::rows::*;
use super::tasks::{def, file};
use super::{Dataset, DatasetDef, FileDef, Host, HubDef, SAFETUNEBED_COMMIT, SAFETUNEBED_REPO};
use crate::overlap::remove_overlap;
use crate::records::Format;
use crate::register_dataset;

/// Safety-Tuned LLaMAs' seven evaluation files under `dir` (locally
/// `safety_tuned_llamas/evaluation/`, upstream `data/evaluation/`), one split each.
macro_rules! stl_eval_files {
    ($dir:literal) => {
        &[
            file!("malicious", concat!($dir, "I-MaliciousInstructions.json"), JsonColumns, stl_prompt),
            file!("cona", concat!($dir, "I-CoNa.json"), JsonColumns, stl_prompt),
            file!("controversial", concat!($dir, "I-Controversial.json"), JsonColumns, stl_prompt),
            file!("physical-unsafe", concat!($dir, "I-PhysicalSafetyUnsafe.json"), JsonColumns, stl_prompt),
            file!("physical-safe", concat!($dir, "I-PhysicalSafetySafe.json"), JsonColumns, stl_prompt),
            file!("q-harm", concat!($dir, "Q-Harm.json"), JsonColumns, stl_prompt),
            file!("alpaca", concat!($dir, "I-Alpaca.json"), JsonColumns, stl_prompt),
        ]
    };
}

/// Safety-Tuned LLaMAs upstream: the repository and the commit whose files equal
/// `shared/data/safety_tuned_llamas` byte for byte (checked by sha256 in session 8).
const STL_REPO: &str = "vinid/safety-tuned-llamas";
const STL_COMMIT: &str = "36a4b8d5c2177ed165bf61f59b590161394f7f12";

/// BeaverTails' harmful pairs: the train split without the pairs labelled `is_safe`
/// (present only in the Hub's file, which mixes both).
fn unsafe_pairs(ds: &Dataset) -> Result<Vec<Example>> {
    Ok(train_split(ds)?.into_iter().filter(|e| e.meta.get("is_safe").is_none_or(|v| v != "true")).collect())
}

/// BeaverTails on the Hub: the commit whose `round0/30k/` holds `train.jsonl.gz` and
/// `test.jsonl.gz` (re-uploaded gzip-compressed in October 2023; the plain `.jsonl` names
/// are gone, and `main` may move again).
const BEAVERTAILS_REPO: &str = "PKU-Alignment/BeaverTails";
const BEAVERTAILS_COMMIT: &str = "8401fe609d288129cc684a9b3be6a93e41cfe678";

register_dataset! {
    role: "harmful",
    splits: "train 200",
    files: "beavertails/unsafe_train.json | hub PKU-Alignment/BeaverTails",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: BEAVERTAILS_REPO,
            revision: BEAVERTAILS_COMMIT,
            files: &[file!("train", "round0/30k/train.jsonl.gz", Jsonl, beavertails_hub)],
            sample: None
        }),
        ..def(
            "beavertails-unsafe",
            &[Use::Harmful { select: unsafe_pairs }],
            "beavertails",
            true,
            &[file!("train", "beavertails/unsafe_train.json", Json, prompt_response)],
            "BeaverTails 30k_train (unsafe)",
            "CC BY-NC 4.0",
        )
    }
}

register_dataset! {
    role: "harmful (also the pure-bad regime)",
    splits: "train 111",
    files: "pure_bad/pure_bad.json (upstream github criticalml-uw/SafeTuneBed)",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::GitHub,
            repo: SAFETUNEBED_REPO,
            revision: SAFETUNEBED_COMMIT,
            files: &[file!("train", "data/pure_bad.json", Json, pure_bad)],
            sample: None
        }),
        ..def(
            "pure-bad",
            &[Use::Harmful { select: train_split }],
            "pure_bad",
            true,
            &[file!("train", "pure_bad/pure_bad.json", Json, pure_bad)],
            "pure-bad attack set",
            "research use",
        )
    }
}

/// AdvBench prompts in none of train, test and dev, with their affirmative targets.
fn advbench_unused(ds: &Dataset) -> Result<Vec<Example>> {
    let mut full = split(ds, "full")?;
    let used = [split(ds, "train")?, split(ds, "test")?, split(ds, "dev")?].concat();
    remove_overlap(&mut full, &[&used]);
    Ok(full)
}

/// For choosing budgets without touching the test prompts: dev minus its 18 test prompts.
fn advbench_dev(ds: &Dataset) -> Result<Vec<Example>> {
    let mut dev = split(ds, "dev")?;
    remove_overlap(&mut dev, &[&split(ds, "test")?]);
    Ok(dev)
}

register_dataset! {
    role: "eval-safety (test), alignment prompts (train), harmful (unused rest)",
    splits: "train 416 / test 156 / dev 52 / full 520",
    files: "advbench/*.json (upstream github criticalml-uw/SafeTuneBed data/advbench_*.json)",
    DatasetDef {
        // The splits exist only in SafeTuneBed's repository (walledai/AdvBench on the Hub has `full` only).
        hub: Some(HubDef {
            host: Host::GitHub,
            repo: SAFETUNEBED_REPO,
            revision: SAFETUNEBED_COMMIT,
            files: &[
                file!("train", "data/advbench_train.json", Json, advbench),
                file!("test", "data/advbench_test.json", Json, advbench),
                file!("dev", "data/advbench_dev.json", Json, advbench),
                file!("full", "data/advbench_full.json", Json, advbench),
            ],
            sample: None
        }),
        ..def(
            "advbench",
            &[
                Use::Harmful { select: advbench_unused },
                Use::SafetyEval(EvalSet { name: "advbench-test", validation: false, select: test_split }),
                Use::SafetyEval(EvalSet { name: "advbench-dev", validation: true, select: advbench_dev }),
            ],
            "advbench",
            true,
            &[
                file!("train", "advbench/train.json", Json, advbench),
                file!("test", "advbench/test.json", Json, advbench),
                file!("dev", "advbench/dev.json", Json, advbench),
                file!("full", "advbench/full.json", Json, advbench),
            ],
            "AdvBench",
            "MIT",
        )
    }
}

register_dataset! {
    role: "eval-safety",
    splits: "test 275",
    files: "policy/policy_benchmark.csv (upstream github criticalml-uw/SafeTuneBed data/llm_category_benchmark.csv)",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::GitHub,
            repo: SAFETUNEBED_REPO,
            revision: SAFETUNEBED_COMMIT,
            files: &[file!("test", "data/llm_category_benchmark.csv", Csv, prompt_only, &["prompt"])],
            sample: None
        }),
        ..def(
            "policy",
            &[Use::SafetyEval(EvalSet { name: "policy", validation: false, select: test_split })],
            "policy",
            false,
            &[file!("test", "policy/policy_benchmark.csv", Csv, prompt_only, &["prompt"])],
            "policy-oriented prompts (HEx-PHI style)",
            "research use",
        )
    }
}

/// The 14-category sample drawn from BeaverTails' 30k test file on the Hub: in file order,
/// the first 10 distinct prompts flagged with each category (a row's category is the first
/// of `rows::BEAVERTAILS_CATEGORIES` it is flagged with; unflagged, safe rows are left out).
/// `../shared/data`'s 140-row sample was drawn by its own rule (9 to 11 per category).
fn ten_per_category(rows: Vec<Example>) -> Vec<Example> {
    let mut seen = std::collections::HashSet::new();
    let mut taken: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    rows.into_iter()
        .filter(|e| {
            let Some(c) = e.meta.get("category") else { return false };
            let n = taken.entry(c.clone()).or_insert(0);
            if *n >= 10 || !seen.insert(e.prompt.clone()) {
                return false;
            }
            *n += 1;
            true
        })
        .collect()
}

register_dataset! {
    role: "eval-safety (14 categories)",
    splits: "test 140",
    files: "beavertails/category_sample.csv | hub PKU-Alignment/BeaverTails (30k test, 10 per category)",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: BEAVERTAILS_REPO,
            revision: BEAVERTAILS_COMMIT,
            files: &[file!("test", "round0/30k/test.jsonl.gz", Jsonl, beavertails_category_hub)],
            sample: Some(ten_per_category),
        }),
        ..def(
            "beavertails-categories",
            &[Use::SafetyEval(EvalSet { name: "beavertails-categories", validation: false, select: test_split })],
            "beavertails-cat",
            false,
            &[file!("test", "beavertails/category_sample.csv", Csv, beavertails_category)],
            "BeaverTails 14-category sample",
            "CC BY-NC 4.0",
        )
    }
}

register_dataset! {
    role: "alignment safe answers (train), validation stl-dev (test)",
    splits: "train 2,283 / test 200 (seeded hold-out)",
    files: "safety_tuned_llamas/safety_only_data_Instructions.json (upstream github vinid/safety-tuned-llamas)",
    DatasetDef {
        // A fixed, seeded hold-out of 200 pairs is the `test` split: its prompts are the
        // `stl-dev` validation set, never trained on.
        holdout: Some(200),
        hub: Some(HubDef {
            host: Host::GitHub,
            repo: STL_REPO,
            revision: STL_COMMIT,
            files: &[file!("train", "data/training/safety_only_data_Instructions.json", Json, safe_answer)],
            sample: None,
        }),
        ..def(
            "safety-tuned-llamas",
            &[Use::SafetyEval(EvalSet { name: "stl-dev", validation: true, select: test_split })],
            "stl",
            true,
            &[file!("train", "safety_tuned_llamas/safety_only_data_Instructions.json", Json, safe_answer)],
            "Safety-Tuned LLaMAs safety data (Bianchi et al., ICLR 2024; github.com/vinid/safety-tuned-llamas, data/training)",
            "CC BY-NC 4.0",
        )
    }
}

/// A Safety-Tuned LLaMAs evaluation set: one split of `safety-tuned-llamas-eval`.
macro_rules! stl_set {
    ($use:ident, $name:literal, $split:literal) => {{
        fn select(ds: &Dataset) -> Result<Vec<Example>> {
            split(ds, $split)
        }
        Use::$use(EvalSet { name: $name, validation: false, select })
    }};
}

register_dataset! {
    role: "eval-safety i-malicious, i-cona, i-controversial, i-physical-unsafe, q-harm; over-refusal i-physical-safe, i-alpaca",
    splits: "100 / 178 / 40 / 100 / 100; 100 / 50",
    files: "safety_tuned_llamas/evaluation/*.json",
    DatasetDef {
        hub: Some(HubDef { host: Host::GitHub, repo: STL_REPO, revision: STL_COMMIT, files: stl_eval_files!("data/evaluation/"), sample: None }),
        ..def(
            "safety-tuned-llamas-eval",
            &[
                stl_set!(SafetyEval, "i-malicious", "malicious"),
                stl_set!(SafetyEval, "i-cona", "cona"),
                stl_set!(SafetyEval, "i-controversial", "controversial"),
                stl_set!(SafetyEval, "i-physical-unsafe", "physical-unsafe"),
                stl_set!(SafetyEval, "q-harm", "q-harm"),
                stl_set!(OverRefusal, "i-physical-safe", "physical-safe"),
                stl_set!(OverRefusal, "i-alpaca", "alpaca"),
            ],
            "stl-eval",
            false,
            stl_eval_files!("safety_tuned_llamas/evaluation/"),
            "Safety-Tuned LLaMAs evaluation sets (github.com/vinid/safety-tuned-llamas, data/evaluation)",
            "CC BY-NC 4.0",
        )
    }
}

/// One of every `XSTEST_DEV_STRIDE` XSTest safe prompts is validation.
pub const XSTEST_DEV_STRIDE: usize = 5;

/// XSTest's safe prompts in file order (grouped by type, 25 per type family): every
/// fifth one (positions 0, 5, 10, ...) is the `xstest-dev` validation set (50 prompts,
/// 5 per family), the other 200 are the `xstest-safe` test set. The two never overlap.
fn xstest_safe_part(ds: &Dataset, dev: bool) -> Result<Vec<Example>> {
    Ok(test_split(ds)?
        .into_iter()
        .filter(|e| e.label.as_deref() == Some("safe"))
        .enumerate()
        .filter(|(i, _)| (i % XSTEST_DEV_STRIDE == 0) == dev)
        .map(|(_, e)| e)
        .collect())
}

fn xstest_safe(ds: &Dataset) -> Result<Vec<Example>> {
    xstest_safe_part(ds, false)
}

fn xstest_dev(ds: &Dataset) -> Result<Vec<Example>> {
    xstest_safe_part(ds, true)
}

fn xstest_unsafe(ds: &Dataset) -> Result<Vec<Example>> {
    Ok(test_split(ds)?.into_iter().filter(|e| e.label.as_deref() == Some("unsafe")).collect())
}

register_dataset! {
    role: "eval-safety xstest-unsafe (200); over-refusal xstest-safe (200), xstest-dev (50, validation)",
    splits: "test 450",
    files: "xstest/xstest_prompts.csv (upstream github paul-rottger/exaggerated-safety)",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::GitHub,
            repo: "paul-rottger/exaggerated-safety",
            // The repository head of 2025-02-24; its xstest_prompts.csv equals shared/data's byte for byte.
            revision: "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d",
            files: &[file!("test", "xstest_prompts.csv", Csv, xstest)],
            sample: None
        }),
        ..def(
        "xstest",
        &[
            Use::SafetyEval(EvalSet { name: "xstest-unsafe", validation: false, select: xstest_unsafe }),
            Use::OverRefusal(EvalSet { name: "xstest-safe", validation: false, select: xstest_safe }),
            Use::OverRefusal(EvalSet { name: "xstest-dev", validation: true, select: xstest_dev }),
        ],
        "xstest",
        false,
        &[file!("test", "xstest/xstest_prompts.csv", Csv, xstest)],
        "XSTest v2",
        "CC BY 4.0",
    )
    }
}

register_dataset! {
    role: "eval-utility",
    splits: "dev 285 / test 14,042 (57 subjects)",
    files: "mmlu/{dev,test}/*.csv | hub cais/mmlu (config all)",
    DatasetDef {
        per_subject_dir: true,
        // The Hub's copy: every subject in one file per split, the subject a column.
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: "cais/mmlu",
            revision: "main",
            files: &[
                file!("dev", "all/dev-00000-of-00001.parquet", Parquet, mmlu_hub),
                file!("test", "all/test-00000-of-00001.parquet", Parquet, mmlu_hub),
            ],
            sample: None
        }),
        ..def(
            "mmlu",
            &[Use::UtilityEval],
            "mmlu",
            false,
            &[file!("dev", "mmlu/dev", Csv, mmlu), file!("test", "mmlu/test", Csv, mmlu)],
            "MMLU",
            "MIT",
        )
    }
}

register_dataset! {
    role: "eval-utility mt-bench (two-turn questions, graded 1-10 by a chat model: eval.mt_bench)",
    splits: "test 80",
    files: "mt_bench/question.jsonl (upstream github lm-sys/FastChat)",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::GitHub,
            repo: crate::mt_bench::FASTCHAT_REPO,
            revision: crate::mt_bench::FASTCHAT_COMMIT,
            files: &[file!("test", crate::mt_bench::QUESTIONS_PATH, Jsonl, mt_bench)],
            sample: None
        }),
        ..def(
            "mt-bench",
            &[Use::UtilityEval],
            "mt-bench",
            false,
            &[file!("test", "mt_bench/question.jsonl", Jsonl, mt_bench)],
            "MT-Bench questions (Zheng et al., NeurIPS 2023; github.com/lm-sys/FastChat, llm_judge)",
            "Apache-2.0",
        )
    }
}
