//! Every dataset safetune knows: where its files live in a data directory
//! (the layout of `shared/data`) or on the Hugging Face Hub, how a row
//! becomes an [`Example`], and what a run may use it as. Each is registered
//! once ([`register_dataset!`](crate::register_dataset), built-in ones in `tasks.rs` and `safety.rs`) and
//! found through [`registry`].

use std::collections::BTreeMap;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::rng::SeededRng;
use safetune_core::{Example, Result};

pub use crate::hub::Host;
use crate::hub::HubClient;
use crate::records::read_records;
pub use crate::records::{Format, Record};
use crate::DataDir;

pub const SST2_INSTRUCTION: &str = "Analyze the sentiment of the input, and respond only positive or negative.";
pub const AGNEWS_INSTRUCTION: &str =
    "Categorize the news article given in the input into one of the 4 categories:\n\nWorld\nSports\nBusiness\nSci/Tech";
pub const AGNEWS_LABELS: [&str; 4] = ["World", "Sports", "Business", "Sci/Tech"];

/// SafeTuneBed's repository (arXiv 2506.00676) at the commit whose `data/` files equal
/// `shared/data`'s AdvBench splits, policy set, pure-bad, SAMSum and SQL sets byte for byte
/// (sha256 checked, session 18): their download source.
pub const SAFETUNEBED_REPO: &str = "criticalml-uw/SafeTuneBed";
pub const SAFETUNEBED_COMMIT: &str = "099ea98b8c81b76b04d4ef2a7d7f7c8f16d07a8d";

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

pub struct HubDef {
    pub host: Host,
    pub repo: &'static str,
    pub revision: &'static str,
    pub files: &'static [FileDef],
    /// What is kept of each file's converted rows (`None`: every row), when the dataset is a
    /// documented sample of the upstream file.
    pub sample: Option<fn(Vec<Example>) -> Vec<Example>>,
}

pub struct DatasetDef {
    pub name: &'static str,
    /// What a run may use it as.
    pub uses: &'static [Use],
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

pub mod registry;
mod rows;
mod safety;
mod tasks;

pub use registry::{find, EvalSet, Select, Use};
pub use rows::gsm8k_final;
pub use safety::XSTEST_DEV_STRIDE;

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
                let rows = convert_all(def, f, &path, &prefix)?;
                splits.insert(f.split.to_string(), if let Some(keep) = h.sample { keep(rows) } else { rows });
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
