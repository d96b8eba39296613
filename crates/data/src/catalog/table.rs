//! The catalog: every dataset with its local files, its download source, its
//! row converter and licence.

use super::rows::*;
use super::{DatasetDef, FileDef, Host, HubDef, Role};
use crate::records::Format;

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
    role: Role,
    id_prefix: &'static str,
    zero_based: bool,
    local: &'static [FileDef],
    source: &'static str,
    license: &'static str,
) -> DatasetDef {
    DatasetDef { name, role, id_prefix, zero_based, local, per_subject_dir: false, holdout: None, hub: None, source, license }
}

/// Safety-Tuned LLaMAs upstream: the repository and the commit whose files equal
/// `shared/data/safety_tuned_llamas` byte for byte (checked by sha256 in session 8).
const STL_REPO: &str = "vinid/safety-tuned-llamas";
const STL_COMMIT: &str = "36a4b8d5c2177ed165bf61f59b590161394f7f12";

pub static CATALOG: &[DatasetDef] = &[
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
            Role::Task,
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
    },
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
            Role::Task,
            "agnews",
            false,
            &[
                file!("train", "agnews/train.tsv", Tsv, agnews_named, &["text", "label"]),
                file!("test", "agnews/test.csv", Csv, agnews_numbered),
            ],
            "AG News",
            "non-commercial research",
        )
    },
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
            Role::Task,
            "gsm8k",
            false,
            &[file!("train", "gsm8k/train.jsonl", Jsonl, gsm8k), file!("test", "gsm8k/test.jsonl", Jsonl, gsm8k)],
            "GSM8K",
            "MIT",
        )
    },
    DatasetDef {
        holdout: Some(200),
        ..def(
            "alpaca",
            Role::Task,
            "alpaca",
            true,
            &[file!("train", "alpaca/subset.json", Json, alpaca)],
            "Alpaca (subset)",
            "CC BY-NC 4.0",
        )
    },
    DatasetDef {
        holdout: Some(50),
        ..def(
            "dolly",
            Role::Task,
            "dolly",
            false,
            &[file!("train", "dolly/subset.jsonl", Jsonl, dolly)],
            "Dolly-15k (subset)",
            "CC BY-SA 3.0",
        )
    },
    DatasetDef {
        holdout: Some(100),
        ..def("samsum", Role::Task, "samsum", true, &[file!("train", "samsum/train.json", Json, samsum)], "SAMSum", "CC BY-NC-ND 4.0")
    },
    DatasetDef {
        holdout: Some(100),
        ..def("sqlgen", Role::Task, "sqlgen", true, &[file!("train", "sqlgen/train.json", Json, sqlgen)], "sql-create-context", "CC BY 4.0")
    },
    DatasetDef {
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: "PKU-Alignment/BeaverTails",
            revision: "main",
            files: &[file!("train", "round0/30k/train.jsonl", Jsonl, prompt_response)],
        }),
        ..def(
            "beavertails-unsafe",
            Role::Harmful,
            "beavertails",
            true,
            &[file!("train", "beavertails/unsafe_train.json", Json, prompt_response)],
            "BeaverTails 30k_train (unsafe)",
            "CC BY-NC 4.0",
        )
    },
    def(
        "pure-bad",
        Role::Harmful,
        "pure_bad",
        true,
        &[file!("train", "pure_bad/pure_bad.json", Json, pure_bad)],
        "pure-bad attack set",
        "research use",
    ),
    DatasetDef {
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: "walledai/AdvBench",
            revision: "main",
            files: &[file!("full", "data/train-00000-of-00001.parquet", Parquet, advbench)],
        }),
        ..def(
            "advbench",
            Role::EvalSafety,
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
    },
    def(
        "policy",
        Role::EvalSafety,
        "policy",
        false,
        &[file!("test", "policy/policy_benchmark.csv", Csv, prompt_only, &["prompt"])],
        "policy-oriented prompts (HEx-PHI style)",
        "research use",
    ),
    def(
        "beavertails-categories",
        Role::EvalSafety,
        "beavertails-cat",
        false,
        &[file!("test", "beavertails/category_sample.csv", Csv, beavertails_category)],
        "BeaverTails 14-category sample",
        "CC BY-NC 4.0",
    ),
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
            Role::Safety,
            "stl",
            true,
            &[file!("train", "safety_tuned_llamas/safety_only_data_Instructions.json", Json, safe_answer)],
            "Safety-Tuned LLaMAs safety data (Bianchi et al., ICLR 2024; github.com/vinid/safety-tuned-llamas, data/training)",
            "CC BY-NC 4.0",
        )
    },
    DatasetDef {
        hub: Some(HubDef { host: Host::GitHub, repo: STL_REPO, revision: STL_COMMIT, files: stl_eval_files!("data/evaluation/") }),
        ..def(
            "safety-tuned-llamas-eval",
            Role::EvalSafety,
            "stl-eval",
            false,
            stl_eval_files!("safety_tuned_llamas/evaluation/"),
            "Safety-Tuned LLaMAs evaluation sets (github.com/vinid/safety-tuned-llamas, data/evaluation)",
            "CC BY-NC 4.0",
        )
    },
    def("xstest", Role::EvalSafety, "xstest", false, &[file!("test", "xstest/xstest_prompts.csv", Csv, xstest)], "XSTest v2", "CC BY 4.0"),
    DatasetDef {
        per_subject_dir: true,
        ..def(
            "mmlu",
            Role::EvalUtility,
            "mmlu",
            false,
            &[file!("dev", "mmlu/dev", Csv, mmlu), file!("test", "mmlu/test", Csv, mmlu)],
            "MMLU",
            "MIT",
        )
    },
    def(
        "mt-bench",
        Role::EvalUtility,
        "mt-bench",
        false,
        &[file!("test", "mt_bench/question.jsonl", Jsonl, mt_bench)],
        "MT-Bench questions",
        "Apache-2.0",
    ),
];
