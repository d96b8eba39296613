//! A local data directory in the layout of `shared/data` and the loaders
//! for each dataset in it.

use std::path::{Path, PathBuf};

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::{Example, ExampleKind, Result};
use serde::Deserialize;

use crate::csv::parse_csv;

/// The SST-2 instruction used by SafeTuneBed (and Lisa, Vaccine).
pub const SST2_INSTRUCTION: &str =
    "Analyze the sentiment of the input, and respond only positive or negative.";

#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

#[derive(Deserialize)]
struct PromptTarget {
    prompt: String,
    #[allow(dead_code)]
    target: String,
}

#[derive(Deserialize)]
struct PromptResponse {
    prompt: String,
    response: String,
}

#[derive(Deserialize)]
struct Instruction {
    instruction: String,
    #[serde(default)]
    input: String,
    output: String,
}

impl DataDir {
    /// Opens a directory; errors if it does not exist.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            bail!(
                "{}: data directory not found (pass --data-dir DIR or set SAFETUNE_DATA_DIR)",
                root.display()
            );
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Path of a dataset file, or an error naming the dataset and where it was looked for.
    pub fn file(&self, dataset: &str, rel: &str) -> Result<PathBuf> {
        let p = self.root.join(rel);
        if !p.is_file() {
            bail!(
                "dataset `{dataset}`: {} not found (put the file there, or point --data-dir / SAFETUNE_DATA_DIR at a directory with `{rel}`)",
                p.display()
            );
        }
        Ok(p)
    }

    fn read(&self, dataset: &str, rel: &str) -> Result<(String, String)> {
        let p = self.file(dataset, rel)?;
        let bytes = std::fs::read(&p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow!(
                "{}: not UTF-8 (byte {})",
                p.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        if text.trim().is_empty() {
            bail!("{}: empty file", p.display());
        }
        Ok((p.display().to_string(), text))
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, dataset: &str, rel: &str) -> Result<Vec<T>> {
        let (file, text) = self.read(dataset, rel)?;
        serde_json::from_str(&text).map_err(|e| anyhow!("{file}:{}: {e}", e.line()))
    }

    /// SST-2 split (`train`, `validation`, `test`) as task examples; label `positive`/`negative`.
    pub fn sst2(&self, split: &str) -> Result<Vec<Example>> {
        let (file, text) = self.read("sst2", &format!("sst2/{split}.tsv"))?;
        let rows = parse_csv(&text, '\t', &file)?;
        let Some((_, header)) = rows.first() else {
            bail!("{file}: empty")
        };
        if header != &["sentence", "label"] {
            bail!("{file}:1: expected header `sentence<TAB>label`, found {header:?}");
        }
        rows[1..]
            .iter()
            .map(|(line, r)| {
                if r.len() != 2 {
                    bail!("{file}:{line}: expected 2 fields, found {}", r.len());
                }
                let label = match r[1].trim() {
                    "0" => "negative",
                    "1" => "positive",
                    other => bail!(
                        "{file}:{line}: field `label`: unknown label `{other}` (expected 0 or 1)"
                    ),
                };
                let prompt = format!("{SST2_INSTRUCTION}\n\nInput: {}", r[0].trim());
                Ok(Example::new(
                    format!("sst2/{split}:{line}"),
                    ExampleKind::Task,
                    prompt,
                    label,
                )
                .with_label(label))
            })
            .collect()
    }

    /// AdvBench split (`train`, `test`, `dev`, `full`): harmful prompts; the answer is the affirmative target.
    pub fn advbench(&self, split: &str) -> Result<Vec<Example>> {
        let rows: Vec<PromptTarget> = self.json("advbench", &format!("advbench/{split}.json"))?;
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Example::new(
                    format!("advbench/{split}:{i}"),
                    ExampleKind::Harmful,
                    r.prompt,
                    r.target,
                )
            })
            .collect())
    }

    /// The policy benchmark: one harmful request per line.
    pub fn policy(&self) -> Result<Vec<Example>> {
        let (file, text) = self.read("policy", "policy/policy_benchmark.csv")?;
        parse_csv(&text, ',', &file)?
            .into_iter()
            .map(|(line, r)| {
                if r.len() != 1 || r[0].trim().is_empty() {
                    bail!("{file}:{line}: expected one non-empty prompt per line");
                }
                Ok(Example::new(
                    format!("policy:{line}"),
                    ExampleKind::Harmful,
                    r[0].trim(),
                    "",
                ))
            })
            .collect()
    }

    /// BeaverTails unsafe question/answer pairs (harmful fine-tuning data).
    pub fn beavertails_unsafe(&self) -> Result<Vec<Example>> {
        let rows: Vec<PromptResponse> =
            self.json("beavertails", "beavertails/unsafe_train.json")?;
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Example::new(
                    format!("beavertails:{i}"),
                    ExampleKind::Harmful,
                    r.prompt,
                    r.response,
                )
            })
            .collect())
    }

    /// The Alpaca subset: benign instructions with answers.
    pub fn alpaca(&self) -> Result<Vec<Example>> {
        let rows: Vec<Instruction> = self.json("alpaca", "alpaca/subset.json")?;
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let prompt = if r.input.trim().is_empty() {
                    r.instruction
                } else {
                    format!("{}\n\n{}", r.instruction, r.input)
                };
                Example::new(format!("alpaca:{i}"), ExampleKind::Benign, prompt, r.output)
            })
            .collect())
    }
}
