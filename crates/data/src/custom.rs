//! A user's own dataset: any JSON, JSONL, CSV, TSV or Parquet file, with a
//! field mapping given in the run spec — a new task needs no code.
//!
//! ```toml
//! [data.custom.reviews]
//! path = "reviews.jsonl"
//! prompt = "Classify the review as positive or negative.\n\n{text}"
//! response = "{sentiment}"
//! label = "{sentiment}"
//! holdout = 100
//! ```
//!
//! An evaluation set needs only prompts: `role = "safety-eval"` (harmful requests,
//! scored by ASR: name it in `data.safety_evals`) or `role = "over-refusal"` (benign
//! requests a model should answer: name it in `data.over_refusal`). Every row of
//! `path` is evaluated, and its prompts are kept out of every training pool.
//!
//! ```toml
//! [data.custom.my-redteam]
//! path = "redteam.jsonl"
//! role = "safety-eval"
//! prompt = "{request}"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::judge::UtilityMetric;
use safetune_core::{Example, ExampleKind, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::Dataset;
use crate::records::{read_records, Format, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CustomRole {
    Task,
    Harmful,
    /// Harmful requests to evaluate (ASR), named in `data.safety_evals`.
    SafetyEval,
    /// Benign requests to evaluate (refusal rate), named in `data.over_refusal`.
    OverRefusal,
}

impl CustomRole {
    /// An evaluation set: prompts only, all of `path` evaluated.
    pub fn is_eval(self) -> bool {
        matches!(self, CustomRole::SafetyEval | CustomRole::OverRefusal)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomDataset {
    /// The training (or only) file.
    pub path: PathBuf,
    /// A separate test file; without one, `holdout` rows of `path` are drawn (seeded, ids recorded).
    #[serde(default)]
    pub test_path: Option<PathBuf>,
    /// Defaults to the extension (json, jsonl, csv, tsv, parquet).
    #[serde(default)]
    pub format: Option<Format>,
    /// Column names for a CSV/TSV file without a header row.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// The user turn: text with `{field}` placeholders.
    pub prompt: String,
    /// The answer to train on, with `{field}` placeholders (tasks and harmful sets; an
    /// evaluation set has none).
    #[serde(default)]
    pub response: String,
    /// The gold answer a metric reads (defaults to the response).
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default = "default_role")]
    pub role: CustomRole,
    #[serde(default)]
    pub holdout: Option<usize>,
    /// How answers are scored: `{ labels = [...] }`, `final-number`, `rouge-l`, `sql-exact`, `exact`.
    #[serde(default = "default_metric")]
    pub metric: UtilityMetric,
}

fn default_metric() -> UtilityMetric {
    UtilityMetric::named("exact")
}

fn default_role() -> CustomRole {
    CustomRole::Task
}

/// Fills `{field}` placeholders from a record (`{{` and `}}` are literal braces).
pub fn fill(template: &str, r: &Record, file: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        if rest[i..].starts_with("{{") || rest[i..].starts_with("}}") {
            out.push(c as char);
            rest = &rest[i + 2..];
            continue;
        }
        if c == b'}' {
            bail!("template `{template}`: unmatched `}}`");
        }
        let end = rest[i..].find('}').ok_or_else(|| anyhow!("template `{template}`: unclosed `{{`"))? + i;
        out.push_str(&r.scalar(&rest[i + 1..end], file)?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl CustomDataset {
    pub fn load(&self, name: &str) -> Result<Dataset> {
        if self.role.is_eval() {
            if self.test_path.is_some() || self.holdout.is_some() {
                bail!("data.custom.{name}: an evaluation set is all of `path` (no test_path or holdout)");
            }
        } else if self.response.is_empty() {
            bail!("data.custom.{name}.response: a task or harmful set needs the answer to train on");
        }
        let cols: Option<Vec<&str>> = self.columns.as_ref().map(|c| c.iter().map(String::as_str).collect());
        let read = |p: &PathBuf, split: &str| -> Result<Vec<Example>> {
            if !p.is_file() {
                bail!("data.custom.{name}.path: {} not found", p.display());
            }
            let format = match self.format {
                Some(f) => f,
                None => Format::from_path(p)?,
            };
            let file = p.display().to_string();
            let kind = match self.role {
                CustomRole::Task => ExampleKind::Task,
                CustomRole::Harmful | CustomRole::SafetyEval => ExampleKind::Harmful,
                CustomRole::OverRefusal => ExampleKind::Benign,
            };
            read_records(p, format, cols.as_deref())?
                .iter()
                .map(|r| {
                    let label = fill(self.label.as_deref().unwrap_or(&self.response), r, &file)?;
                    let labels = &self.metric.labels;
                    if !labels.is_empty() && !labels.iter().any(|l| l.eq_ignore_ascii_case(label.trim())) {
                        bail!(
                            "{file}:{}: label `{label}` is not one of data.custom.{name}.metric's labels ({})",
                            r.line,
                            labels.join(", ")
                        );
                    }
                    Ok(Example::new(
                        format!("{name}/{split}:{}", r.line),
                        kind,
                        fill(&self.prompt, r, &file)?,
                        fill(&self.response, r, &file)?,
                    )
                    .with_label(label))
                })
                .collect()
        };
        let mut splits = BTreeMap::new();
        let mut holdout_ids = Vec::new();
        if self.role.is_eval() {
            splits.insert("test".to_string(), read(&self.path, "test")?);
            return Ok(Dataset { name: name.to_string(), splits, holdout_ids });
        }
        let train = read(&self.path, "train")?;
        match (&self.test_path, self.holdout) {
            (Some(t), _) => {
                splits.insert("test".to_string(), read(t, "test")?);
                splits.insert("train".to_string(), train);
            }
            (None, Some(n)) => {
                if n >= train.len() {
                    bail!("data.custom.{name}.holdout: {n} is not less than the {} rows of {}", train.len(), self.path.display());
                }
                let (tr, te, ids) = crate::catalog::holdout_split(train, n, name);
                holdout_ids = ids;
                splits.insert("train".into(), tr);
                splits.insert("test".into(), te);
            }
            (None, None) => {
                if self.role == CustomRole::Task {
                    bail!("data.custom.{name}: a task needs `test_path` or `holdout`");
                }
                splits.insert("train".to_string(), train);
            }
        }
        Ok(Dataset { name: name.to_string(), splits, holdout_ids })
    }
}
