//! Every dataset safetune knows: where its files live in a data directory
//! (the layout of `shared/data`) or on the Hugging Face Hub, and how a row
//! becomes an [`Example`].

use std::collections::BTreeMap;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::rng::SeededRng;
use safetune_core::{Example, ExampleKind, Result};

use crate::hub::HubClient;
use crate::records::{read_records, Format, Record};
use crate::DataDir;

pub const SST2_INSTRUCTION: &str = "Analyze the sentiment of the input, and respond only positive or negative.";
pub const AGNEWS_INSTRUCTION: &str =
    "Categorize the news article given in the input into one of the 4 categories:\n\nWorld\nSports\nBusiness\nSci/Tech";
pub const AGNEWS_LABELS: [&str; 4] = ["World", "Sports", "Business", "Sci/Tech"];

/// What a dataset is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A fine-tuning task with train and test splits.
    Task,
    /// Harmful request → compliant answer pairs (the attack).
    Harmful,
    /// Harmful (or harmless-looking) prompts to measure refusals.
    EvalSafety,
    /// Utility evaluation outside the tasks.
    EvalUtility,
    /// Risky requests paired with safe answers (alignment data).
    Safety,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Task => "task",
            Role::Harmful => "harmful",
            Role::EvalSafety => "eval-safety",
            Role::EvalUtility => "eval-utility",
            Role::Safety => "safety",
        }
    }
}

/// Turns one record into an example with the given id.
pub type Convert = fn(&Record, &str, String) -> Result<Example>;

/// One file of a dataset split.
pub struct FileDef {
    pub split: &'static str,
    pub path: &'static str,
    pub format: Format,
    /// Column names of a CSV/TSV without a header row.
    pub columns: Option<&'static [&'static str]>,
    pub convert: Convert,
}

/// Where a dataset's upstream files are downloaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// A Hugging Face Hub dataset repository (`{endpoint}/datasets/{repo}/resolve/{revision}/{path}`).
    HfDataset,
    /// A GitHub repository at a pinned commit (`{endpoint}/{repo}/{revision}/{path}`, raw files).
    GitHub,
}

pub struct HubDef {
    pub host: Host,
    pub repo: &'static str,
    pub revision: &'static str,
    pub files: &'static [FileDef],
}

pub struct DatasetDef {
    pub name: &'static str,
    pub role: Role,
    /// Id prefix (`sst2/test:12`).
    pub id_prefix: &'static str,
    /// Ids count rows from 0 (JSON arrays) instead of file lines.
    pub zero_based: bool,
    pub local: &'static [FileDef],
    /// A MMLU-style directory of per-subject CSV files instead of single files.
    pub per_subject_dir: bool,
    /// Test size drawn (seeded, ids recorded) from `train` when there is no test split.
    pub holdout: Option<usize>,
    pub hub: Option<HubDef>,
    pub source: &'static str,
    pub license: &'static str,
}

/// A loaded dataset: its splits and, for a hold-out, the test ids drawn.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub splits: BTreeMap<String, Vec<Example>>,
    pub holdout_ids: Vec<String>,
}

impl Dataset {
    pub fn split(&self, s: &str) -> Result<&[Example]> {
        self.splits.get(s).map(|v| v.as_slice()).ok_or_else(|| {
            anyhow!("dataset `{}` has no split `{s}` (splits: {})", self.name, self.splits.keys().cloned().collect::<Vec<_>>().join(", "))
        })
    }
}

// ---- row converters -------------------------------------------------------

fn task(id: String, prompt: String, response: String) -> Example {
    Example::new(id, ExampleKind::Task, prompt, response)
}

fn sst2(r: &Record, f: &str, id: String) -> Result<Example> {
    let label = match r.scalar("label", f)?.trim() {
        "0" => "negative",
        "1" => "positive",
        other => bail!("{f}:{}: field `label`: unknown label `{other}` (expected 0 or 1)", r.line),
    };
    Ok(task(id, format!("{SST2_INSTRUCTION}\n\nInput: {}", r.text("sentence", f)?.trim()), label.into()).with_label(label))
}

fn agnews_named(r: &Record, f: &str, id: String) -> Result<Example> {
    let label = r.text("label", f)?;
    let label = AGNEWS_LABELS
        .iter()
        .find(|l| **l == label.trim())
        .ok_or_else(|| anyhow!("{f}:{}: field `label`: unknown label `{label}` (World, Sports, Business, Sci/Tech)", r.line))?;
    Ok(task(id, format!("{AGNEWS_INSTRUCTION}\n\nInput: {}", r.text("text", f)?.trim()), label.to_string()).with_label(*label))
}

fn agnews_numbered(r: &Record, f: &str, id: String) -> Result<Example> {
    let n = r.scalar("label", f)?;
    let label = match n.trim() {
        "1" => "World",
        "2" => "Sports",
        "3" => "Business",
        "4" => "Sci/Tech",
        other => bail!("{f}:{}: field `label`: unknown label `{other}` (expected 1-4)", r.line),
    };
    let text = format!("{} {}", r.text("title", f)?.trim(), r.text("description", f)?.trim());
    Ok(task(id, format!("{AGNEWS_INSTRUCTION}\n\nInput: {}", text.replace('\\', " ")), label.into()).with_label(label))
}

fn agnews_hub(r: &Record, f: &str, id: String) -> Result<Example> {
    let n: usize = r.scalar("label", f)?.trim().parse().map_err(|_| anyhow!("{f}:{}: field `label`: expected 0-3", r.line))?;
    let label = *AGNEWS_LABELS.get(n).ok_or_else(|| anyhow!("{f}:{}: field `label`: unknown label {n}", r.line))?;
    Ok(task(id, format!("{AGNEWS_INSTRUCTION}\n\nInput: {}", r.text("text", f)?.trim()), label.into()).with_label(label))
}

/// The number after `####` in a GSM8K answer.
pub fn gsm8k_final(answer: &str) -> Option<String> {
    let tail = answer.rsplit_once("####")?.1.trim();
    let n: String = tail.chars().filter(|c| !matches!(c, ',' | '$')).collect();
    (!n.is_empty()).then_some(n)
}

fn gsm8k(r: &Record, f: &str, id: String) -> Result<Example> {
    let answer = r.text("answer", f)?;
    let label = gsm8k_final(&answer).ok_or_else(|| anyhow!("{f}:{}: field `answer`: no `#### <number>` ending", r.line))?;
    let (work, _) = answer.rsplit_once("####").unwrap_or((&answer, ""));
    let response = format!("{}\nThe final answer is: {label}", work.trim_end());
    Ok(task(id, r.text("question", f)?, response).with_label(label))
}

fn instruction_input(r: &Record, f: &str, input: &str) -> Result<String> {
    let i = r.text("instruction", f)?;
    let x = r.text_or_empty(input, f)?;
    Ok(if x.trim().is_empty() { i } else { format!("{i}\n\n{x}") })
}

fn alpaca(r: &Record, f: &str, id: String) -> Result<Example> {
    let out = r.text("output", f)?;
    Ok(task(id, instruction_input(r, f, "input")?, out.clone()).with_label(out))
}

fn dolly(r: &Record, f: &str, id: String) -> Result<Example> {
    let out = r.text("response", f)?;
    Ok(task(id, instruction_input(r, f, "context")?, out.clone()).with_label(out).with_meta("category", r.text_or_empty("category", f)?))
}

fn samsum(r: &Record, f: &str, id: String) -> Result<Example> {
    let out = r.text("output", f)?;
    Ok(task(id, instruction_input(r, f, "input")?, out.clone()).with_label(out))
}

fn sqlgen(r: &Record, f: &str, id: String) -> Result<Example> {
    let out = r.text("output", f)?;
    let input = r.text("input", f)?;
    let schema = input.split_once("## Context:").map(|(_, s)| s.trim().to_string()).unwrap_or_default();
    Ok(task(id, instruction_input(r, f, "input")?, out.clone()).with_label(out).with_meta("schema", schema))
}

fn harmful(id: String, prompt: String, response: String) -> Example {
    Example::new(id, ExampleKind::Harmful, prompt, response)
}

fn prompt_response(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(harmful(id, r.text("prompt", f)?, r.text("response", f)?))
}

fn pure_bad(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(harmful(id, instruction_input(r, f, "input")?, r.text("output", f)?))
}

fn advbench(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(harmful(id, r.text("prompt", f)?, r.text("target", f)?))
}

fn prompt_only(r: &Record, f: &str, id: String) -> Result<Example> {
    let p = r.text("prompt", f)?;
    if p.trim().is_empty() {
        bail!("{f}:{}: field `prompt` is empty", r.line);
    }
    Ok(harmful(id, p.trim().to_string(), String::new()))
}

/// A risky request with a safe answer written for it (Safety-Tuned LLaMAs).
fn safe_answer(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(Example::new(id, ExampleKind::Refusal, instruction_input(r, f, "input")?, r.text("output", f)?))
}

/// A prompt of a Safety-Tuned LLaMAs evaluation file (`instructions`, optional `tags`).
fn stl_prompt(r: &Record, f: &str, id: String) -> Result<Example> {
    let p = r.text("instructions", f)?;
    if p.trim().is_empty() {
        bail!("{f}:{}: field `instructions` is empty", r.line);
    }
    let e = harmful(id, p.trim().to_string(), String::new());
    Ok(match r.fields.get("tags").and_then(|t| t.as_str()) {
        Some(tag) => e.with_meta("category", tag),
        None => e,
    })
}

fn beavertails_category(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(harmful(id, r.text("prompt", f)?, String::new()).with_meta("category", r.text("category", f)?))
}

fn xstest(r: &Record, f: &str, id: String) -> Result<Example> {
    let label = r.text("label", f)?;
    if label != "safe" && label != "unsafe" {
        bail!("{f}:{}: field `label`: unknown label `{label}` (safe, unsafe)", r.line);
    }
    let kind = if label == "safe" { ExampleKind::Benign } else { ExampleKind::Harmful };
    Ok(Example::new(id, kind, r.text("prompt", f)?, "").with_label(label).with_meta("type", r.text("type", f)?))
}

fn mmlu(r: &Record, f: &str, id: String) -> Result<Example> {
    let answer = r.scalar("answer", f)?;
    let idx: usize =
        answer.trim().parse().ok().filter(|i| *i < 4).ok_or_else(|| anyhow!("{f}:{}: field `answer`: expected 0-3", r.line))?;
    let mut e = Example::new(id, ExampleKind::Task, r.text("question", f)?, "").with_label(["A", "B", "C", "D"][idx]);
    for (k, letter) in ["A", "B", "C", "D"].iter().enumerate() {
        e = e.with_meta(letter, r.text(&format!("choice{k}"), f)?);
    }
    Ok(e)
}

fn mt_bench(r: &Record, f: &str, id: String) -> Result<Example> {
    let turns = r.texts("turns", f)?;
    let first = turns.first().ok_or_else(|| anyhow!("{f}:{}: field `turns` is empty", r.line))?;
    let mut e = Example::new(id, ExampleKind::Benign, first.clone(), "").with_meta("category", r.text("category", f)?);
    if let Some(second) = turns.get(1) {
        e = e.with_meta("turn2", second.clone());
    }
    Ok(e)
}

// ---- the catalog ----------------------------------------------------------

macro_rules! file {
    ($split:literal, $path:literal, $fmt:ident, $conv:ident) => {
        FileDef { split: $split, path: $path, format: Format::$fmt, columns: None, convert: $conv }
    };
    ($split:literal, $path:literal, $fmt:ident, $conv:ident, $cols:expr) => {
        FileDef { split: $split, path: $path, format: Format::$fmt, columns: Some($cols), convert: $conv }
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
        hub: Some(HubDef {
            host: Host::GitHub,
            repo: STL_REPO,
            revision: STL_COMMIT,
            files: &[
                file!("malicious", "data/evaluation/I-MaliciousInstructions.json", JsonColumns, stl_prompt),
                file!("cona", "data/evaluation/I-CoNa.json", JsonColumns, stl_prompt),
                file!("controversial", "data/evaluation/I-Controversial.json", JsonColumns, stl_prompt),
                file!("physical-unsafe", "data/evaluation/I-PhysicalSafetyUnsafe.json", JsonColumns, stl_prompt),
                file!("physical-safe", "data/evaluation/I-PhysicalSafetySafe.json", JsonColumns, stl_prompt),
                file!("q-harm", "data/evaluation/Q-Harm.json", JsonColumns, stl_prompt),
                file!("alpaca", "data/evaluation/I-Alpaca.json", JsonColumns, stl_prompt),
            ],
        }),
        ..def(
            "safety-tuned-llamas-eval",
            Role::EvalSafety,
            "stl-eval",
            false,
            &[
                file!("malicious", "safety_tuned_llamas/evaluation/I-MaliciousInstructions.json", JsonColumns, stl_prompt),
                file!("cona", "safety_tuned_llamas/evaluation/I-CoNa.json", JsonColumns, stl_prompt),
                file!("controversial", "safety_tuned_llamas/evaluation/I-Controversial.json", JsonColumns, stl_prompt),
                file!("physical-unsafe", "safety_tuned_llamas/evaluation/I-PhysicalSafetyUnsafe.json", JsonColumns, stl_prompt),
                file!("physical-safe", "safety_tuned_llamas/evaluation/I-PhysicalSafetySafe.json", JsonColumns, stl_prompt),
                file!("q-harm", "safety_tuned_llamas/evaluation/Q-Harm.json", JsonColumns, stl_prompt),
                file!("alpaca", "safety_tuned_llamas/evaluation/I-Alpaca.json", JsonColumns, stl_prompt),
            ],
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

pub fn find(name: &str) -> Result<&'static DatasetDef> {
    CATALOG
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| anyhow!("unknown dataset `{name}` (known: {})", CATALOG.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")))
}

fn convert_all(def: &DatasetDef, file: &FileDef, path: &std::path::Path, prefix: &str) -> Result<Vec<Example>> {
    let shown = path.display().to_string();
    let records = read_records(path, file.format, file.columns)?;
    records
        .iter()
        .map(|r| {
            let n = if def.zero_based { r.line - 1 } else { r.line };
            (file.convert)(r, &shown, format!("{prefix}:{n}"))
        })
        .collect()
}

/// Where datasets come from.
pub enum DataSource<'a> {
    Dir(&'a DataDir),
    Hub(&'a HubClient),
}

/// Loads every split of a dataset; tasks without a test split get a seeded hold-out.
pub fn load(src: &DataSource, name: &str) -> Result<Dataset> {
    let def = find(name)?;
    let mut splits: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    match src {
        DataSource::Dir(dir) => {
            for f in def.local {
                let prefix = if def.local.len() > 1 { format!("{}/{}", def.id_prefix, f.split) } else { def.id_prefix.to_string() };
                let rows = if def.per_subject_dir {
                    let d = dir.dir(def.name, f.path)?;
                    let mut files: Vec<_> = std::fs::read_dir(&d)?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
                        .collect();
                    files.sort();
                    let mut all = Vec::new();
                    for p in files {
                        let subject =
                            p.file_stem().unwrap_or_default().to_string_lossy().trim_end_matches(&format!("_{}", f.split)).to_string();
                        let rows = convert_all(def, f, &p, &format!("{prefix}/{subject}"))?;
                        all.extend(rows.into_iter().map(|e| e.with_meta("subject", subject.clone())));
                    }
                    all
                } else {
                    convert_all(def, f, &dir.file(def.name, f.path)?, &prefix)?
                };
                splits.insert(f.split.to_string(), rows);
            }
        }
        DataSource::Hub(hub) => {
            let h = def.hub.as_ref().ok_or_else(|| anyhow!("dataset `{name}` has no download source; give a data directory"))?;
            for f in h.files {
                let path = hub.file(h.host, h.repo, h.revision, f.path)?;
                // Ids as from a data directory: the split in the prefix only when there are several files.
                let prefix = if h.files.len() > 1 { format!("{}/{}", def.id_prefix, f.split) } else { def.id_prefix.to_string() };
                splits.insert(f.split.to_string(), convert_all(def, f, &path, &prefix)?);
            }
        }
    }
    let mut holdout_ids = Vec::new();
    if let (Some(size), false) = (def.holdout, splits.contains_key("test")) {
        let train = splits.remove("train").ok_or_else(|| anyhow!("dataset `{name}`: no train split"))?;
        if size >= train.len() {
            bail!("dataset `{name}`: hold-out of {size} needs more than {} rows", train.len());
        }
        let (rest, test, ids) = holdout_split(train, size, name);
        holdout_ids = ids;
        splits.insert("train".into(), rest);
        splits.insert("test".into(), test);
    }
    Ok(Dataset { name: name.to_string(), splits, holdout_ids })
}

/// Draws a fixed (seeded by the dataset's name) test split of `size` rows
/// from `train`: returns the rest, the test rows and their ids. `size < train.len()`.
pub(crate) fn holdout_split(train: Vec<Example>, size: usize, name: &str) -> (Vec<Example>, Vec<Example>, Vec<String>) {
    let mut idx: Vec<usize> = (0..train.len()).collect();
    SeededRng::derive(0, &format!("holdout/{name}")).shuffle(&mut idx);
    let test_idx: std::collections::BTreeSet<usize> = idx[..size].iter().copied().collect();
    let (mut test, mut rest, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for (i, e) in train.into_iter().enumerate() {
        if test_idx.contains(&i) {
            ids.push(e.id.clone());
            test.push(e);
        } else {
            rest.push(e);
        }
    }
    (rest, test, ids)
}
