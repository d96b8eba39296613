//! The built-in catalog, part one: the tasks (with their metrics and the benign
//! instruction sets), each one [`register_dataset!`](crate::register_dataset) —
//! its local files, its download source, its row converter, licence and what a
//! run may use it as. Harmful and evaluation sets: `safety.rs`.

use safetune_core::judge::UtilityMetric;

use super::registry::Use;
use super::rows::*;
use super::{DatasetDef, FileDef, Host, HubDef, AGNEWS_LABELS};
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
pub(super) use file;

pub(super) const fn def(
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
            sample: None
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
            sample: None
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
            sample: None
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
    files: "alpaca/subset.json | upstream github tatsu-lab/stanford_alpaca (all 52,002 rows)",
    DatasetDef {
        holdout: Some(200),
        // The whole Alpaca set (the local file is a 1,904-row subset of it).
        hub: Some(HubDef {
            host: Host::GitHub,
            repo: "tatsu-lab/stanford_alpaca",
            revision: "761dc5bfbdeeffa89b8bff5d038781a4055f796a",
            files: &[file!("train", "alpaca_data.json", Json, alpaca)],
            sample: None
        }),
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
    files: "dolly/subset.jsonl | hub databricks/databricks-dolly-15k (all 15,011 rows)",
    DatasetDef {
        holdout: Some(50),
        // The whole Dolly set (the local file is a 387-row subset of it).
        hub: Some(HubDef {
            host: Host::HfDataset,
            repo: "databricks/databricks-dolly-15k",
            revision: "main",
            files: &[file!("train", "databricks-dolly-15k.jsonl", Jsonl, dolly)],
            sample: None
        }),
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
    files: "samsum/train.json (upstream github criticalml-uw/SafeTuneBed data/samsum_train.json)",
    DatasetDef {
        holdout: Some(100),
        hub: Some(HubDef {
            host: Host::GitHub,
            repo: super::SAFETUNEBED_REPO,
            revision: super::SAFETUNEBED_COMMIT,
            files: &[file!("train", "data/samsum_train.json", Json, samsum)],
            sample: None
        }),
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
    files: "sqlgen/train.json (upstream github criticalml-uw/SafeTuneBed data/sqlgen_train.json)",
    DatasetDef {
        holdout: Some(100),
        hub: Some(HubDef {
            host: Host::GitHub,
            repo: super::SAFETUNEBED_REPO,
            revision: super::SAFETUNEBED_COMMIT,
            files: &[file!("train", "data/sqlgen_train.json", Json, sqlgen)],
            sample: None
        }),
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
