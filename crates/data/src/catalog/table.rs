//! The built-in catalog: every dataset of the benchmark, each one
//! [`register_dataset!`](crate::register_dataset) — its local files, its download source, its row
//! converter, licence, and what a run may use it as (its evaluation sets with
//! the rule that draws them).

use safetune_core::judge::UtilityMetric;
use safetune_core::{Example, Result};

use super::registry::{split, test_split, train_split, EvalSet, Use};
use super::rows::*;
use super::{Dataset, DatasetDef, FileDef, Host, HubDef, AGNEWS_LABELS};
use crate::overlap::remove_overlap;
use crate::records::Format;
use crate::register_dataset;

macro_rules! file {
    ($split:literal, $path:expr, $fmt:ident, $conv:ident) => {
        FileDef { split: $split, path: $path, format: Format::$fmt, columns: None, convert: $conv }
    };
    ($split:literal, $path:expr, $fmt:ident, $conv:ident, $cols:expr) => {
        FileDef { split: $split, path: $path, format: Format::$fmt, columns: Some($cols), convert: $conv }
    };
}

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

const fn def(
    name: &'static str,
    uses: &'static [Use],
    id_prefix: &'static str,
    zero_based: bool,
    local: &'static [FileDef],
    source: &'static str,
    license: &'static str,
) -> DatasetDef {
    DatasetDef { name, uses, id_prefix, zero_based, local, per_subject_dir: false, holdout: None, hub: None, source, license }
}

/// Safety-Tuned LLaMAs upstream: the repository and the commit whose files equal
/// `shared/data/safety_tuned_llamas` byte for byte (checked by sha256 in session 8).
const STL_REPO: &str = "vinid/safety-tuned-llamas";
const STL_COMMIT: &str = "36a4b8d5c2177ed165bf61f59b590161394f7f12";

fn sentiment() -> UtilityMetric {
    UtilityMetric::labels(&["positive", "negative"])
}
fn agnews_metric() -> UtilityMetric {
    UtilityMetric::labels(&AGNEWS_LABELS)
}
fn final_number() -> UtilityMetric {
    UtilityMetric::named("final-number")
}
fn rouge_l() -> UtilityMetric {
    UtilityMetric::named("rouge-l")
}
fn sql_exact() -> UtilityMetric {
    UtilityMetric::named("sql-exact")
}

register_dataset! {
    role: "task",
    splits: "train 60,614 / validation 6,735 / test 872",
    files: "sst2/*.tsv | hub stanfordnlp/sst2",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: "stanfordnlp/sst2",
            revision: "main",
            files: &[
                file!("train", "data/train-00000-of-00001.parquet", Parquet, sst2),
                file!("test", "data/validation-00000-of-00001.parquet", Parquet, sst2),
            ],
        }),
        ..def(
            "sst2",
            &[Use::Task { metric: sentiment }],
            "sst2",
            false,
            &[
                file!("train", "sst2/train.tsv", Tsv, sst2),
                file!("validation", "sst2/validation.tsv", Tsv, sst2),
                file!("test", "sst2/test.tsv", Tsv, sst2),
            ],
            "GLUE SST-2",
            "research use",
        )
    }
}

register_dataset! {
    role: "task",
    splits: "train 10,001 / test 7,600",
    files: "agnews/train.tsv, test.csv | hub fancyzhx/ag_news",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: "fancyzhx/ag_news",
            revision: "main",
            files: &[
                file!("train", "data/train-00000-of-00001.parquet", Parquet, agnews_hub),
                file!("test", "data/test-00000-of-00001.parquet", Parquet, agnews_hub),
            ],
        }),
        ..def(
            "agnews",
            &[Use::Task { metric: agnews_metric }],
            "agnews",
            false,
            &[
                file!("train", "agnews/train.tsv", Tsv, agnews_named, &["text", "label"]),
                file!("test", "agnews/test.csv", Csv, agnews_numbered),
            ],
            "AG News",
            "non-commercial research",
        )
    }
}

register_dataset! {
    role: "task",
    splits: "train 7,473 / test 1,319",
    files: "gsm8k/*.jsonl | hub openai/gsm8k",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: "openai/gsm8k",
            revision: "main",
            files: &[
                file!("train", "main/train-00000-of-00001.parquet", Parquet, gsm8k),
                file!("test", "main/test-00000-of-00001.parquet", Parquet, gsm8k),
            ],
        }),
        ..def(
            "gsm8k",
            &[Use::Task { metric: final_number }],
            "gsm8k",
            false,
            &[file!("train", "gsm8k/train.jsonl", Jsonl, gsm8k), file!("test", "gsm8k/test.jsonl", Jsonl, gsm8k)],
            "GSM8K",
            "MIT",
        )
    }
}

register_dataset! {
    role: "task, benign",
    splits: "train 1,704 / test 200 (seeded hold-out)",
    files: "alpaca/subset.json",
    DatasetDef {
        holdout: Some(200),
        ..def(
            "alpaca",
            &[Use::Task { metric: rouge_l }, Use::Benign],
            "alpaca",
            true,
            &[file!("train", "alpaca/subset.json", Json, alpaca)],
            "Alpaca (subset)",
            "CC BY-NC 4.0",
        )
    }
}

register_dataset! {
    role: "task, benign",
    splits: "train 337 / test 50 (seeded hold-out)",
    files: "dolly/subset.jsonl",
    DatasetDef {
        holdout: Some(50),
        ..def(
            "dolly",
            &[Use::Task { metric: rouge_l }, Use::Benign],
            "dolly",
            false,
            &[file!("train", "dolly/subset.jsonl", Jsonl, dolly)],
            "Dolly-15k (subset)",
            "CC BY-SA 3.0",
        )
    }
}

register_dataset! {
    role: "task",
    splits: "train 900 / test 100 (seeded hold-out)",
    files: "samsum/train.json",
    DatasetDef {
        holdout: Some(100),
        ..def(
            "samsum",
            &[Use::Task { metric: rouge_l }],
            "samsum",
            true,
            &[file!("train", "samsum/train.json", Json, samsum)],
            "SAMSum",
            "CC BY-NC-ND 4.0",
        )
    }
}

register_dataset! {
    role: "task",
    splits: "train 900 / test 100 (seeded hold-out)",
    files: "sqlgen/train.json",
    DatasetDef {
        holdout: Some(100),
        ..def(
            "sqlgen",
            &[Use::Task { metric: sql_exact }],
            "sqlgen",
            true,
            &[file!("train", "sqlgen/train.json", Json, sqlgen)],
            "sql-create-context",
            "CC BY 4.0",
        )
    }
}

register_dataset! {
    role: "harmful",
    splits: "train 200",
    files: "beavertails/unsafe_train.json | hub PKU-Alignment/BeaverTails",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: "PKU-Alignment/BeaverTails",
            revision: "main",
            files: &[file!("train", "round0/30k/train.jsonl", Jsonl, prompt_response)],
        }),
        ..def(
            "beavertails-unsafe",
            &[Use::Harmful { select: train_split }],
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
    files: "pure_bad/pure_bad.json",
    def(
        "pure-bad",
        &[Use::Harmful { select: train_split }],
        "pure_bad",
        true,
        &[file!("train", "pure_bad/pure_bad.json", Json, pure_bad)],
        "pure-bad attack set",
        "research use",
    )
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
    files: "advbench/*.json | hub walledai/AdvBench",
    DatasetDef {
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: "walledai/AdvBench",
            revision: "main",
            files: &[file!("full", "data/train-00000-of-00001.parquet", Parquet, advbench)],
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
    files: "policy/policy_benchmark.csv",
    def(
        "policy",
        &[Use::SafetyEval(EvalSet { name: "policy", validation: false, select: test_split })],
        "policy",
        false,
        &[file!("test", "policy/policy_benchmark.csv", Csv, prompt_only, &["prompt"])],
        "policy-oriented prompts (HEx-PHI style)",
        "research use",
    )
}

register_dataset! {
    role: "eval-safety (14 categories)",
    splits: "test 140",
    files: "beavertails/category_sample.csv",
    def(
        "beavertails-categories",
        &[Use::SafetyEval(EvalSet { name: "beavertails-categories", validation: false, select: test_split })],
        "beavertails-cat",
        false,
        &[file!("test", "beavertails/category_sample.csv", Csv, beavertails_category)],
        "BeaverTails 14-category sample",
        "CC BY-NC 4.0",
    )
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
        hub: Some(HubDef { host: Host::GitHub, repo: STL_REPO, revision: STL_COMMIT, files: stl_eval_files!("data/evaluation/") }),
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
    files: "xstest/xstest_prompts.csv",
    def(
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

register_dataset! {
    role: "eval-utility",
    splits: "dev 285 / test 14,042 (57 subjects)",
    files: "mmlu/{dev,test}/*.csv",
    DatasetDef {
        per_subject_dir: true,
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
    role: "questions (loaded and checked; no metric scores them yet)",
    splits: "test 80",
    files: "mt_bench/question.jsonl",
    def(
        "mt-bench",
        &[],
        "mt-bench",
        false,
        &[file!("test", "mt_bench/question.jsonl", Jsonl, mt_bench)],
        "MT-Bench questions",
        "Apache-2.0",
    )
}
