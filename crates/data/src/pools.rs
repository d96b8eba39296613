//! Everything one run draws from — task splits, harmful pairs, alignment
//! prompts, benign instructions, safety evaluation sets — assembled from a
//! data directory, the Hub, user files or the built-in suite, with
//! alignment, attack and evaluation pools disjoint.

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetune_core::anyhow::bail;
use safetune_core::judge::UtilityMetric;
use safetune_core::{Example, ExampleKind, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::{self, DataSource, Dataset, Role};
use crate::custom::{CustomDataset, CustomRole};
use crate::overlap::{check_disjoint, remove_overlap};

/// Which datasets a run uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSelection {
    /// A task: `sst2`, `agnews`, `gsm8k`, `alpaca`, `dolly`, `samsum`, `sqlgen`, a `data.custom`
    /// name, or `builtin-sentiment` / `builtin-arithmetic` (offline; `builtin` = sentiment).
    pub task: String,
    /// Harmful pairs for the variants: `beavertails-unsafe`, `pure-bad`, `advbench`, or a custom name.
    pub harmful: String,
    /// Safety evaluation sets: `advbench-test`, `policy`, `beavertails-categories`, `xstest-unsafe`,
    /// and `advbench-dev` (validation: AdvBench dev minus the prompts it shares with test).
    pub safety_evals: Vec<String>,
    /// Benign prompts that only look risky, for over-refusal: `xstest-safe`.
    pub over_refusal: Vec<String>,
    /// Benign instructions mixed into alignment: `alpaca`, `dolly` or `alpaca+dolly`.
    pub benign: String,
    /// The task split scored as utility: `test`, or `validation` (SST-2's) when choosing settings.
    pub task_split: String,
    /// Utility benchmarks besides the task: `mmlu` (log-likelihood accuracy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub utility_evals: Vec<String>,
    /// Tasks whose labelled train rows join alignment (`alignment.task_examples` from each): a
    /// task gives a fixed tenth of its train rows (every tenth, after its held-out rows leave),
    /// and that tenth leaves the task's fine-tuning pool. `self` is the run's task. The rows
    /// depend only on the list, so a multi-task run listing all its tasks (`["sst2", "agnews"]`)
    /// aligns once for every task.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub align_tasks: Vec<String>,
}

impl Default for PoolSelection {
    fn default() -> Self {
        Self {
            task: "sst2".into(),
            harmful: "beavertails-unsafe".into(),
            safety_evals: vec!["advbench-test".into(), "policy".into()],
            over_refusal: Vec::new(),
            benign: "alpaca".into(),
            task_split: "test".into(),
            utility_evals: Vec::new(),
            align_tasks: Vec::new(),
        }
    }
}

impl PoolSelection {
    pub fn is_builtin(&self) -> bool {
        self.task.starts_with("builtin")
    }

    /// The tasks of `align_tasks`, `self` named, each once, in order.
    pub fn align_task_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for t in &self.align_tasks {
            let t = if t == SELF_TASK { self.task.as_str() } else { t.as_str() };
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }
}

pub struct Pools {
    /// `builtin`, the data directory, or `hub`.
    pub source: String,
    pub task: String,
    pub task_train: Vec<Example>,
    pub task_test: Vec<Example>,
    /// How the task's answers are scored.
    pub utility: UtilityMetric,
    /// Ids of task test rows drawn as a hold-out (empty when the task has a test split).
    pub holdout_ids: Vec<String>,
    pub harmful_pairs: Vec<Example>,
    /// The pure-bad set on its own (the `pure-bad` regime), when the source has it.
    pub pure_bad: Vec<Example>,
    /// Harmful prompts for templated refusals (AdvBench train; `response` is the
    /// affirmative opening, which safety-recovery examples cut from).
    pub align_prompts: Vec<Example>,
    /// Risky requests with natural safe answers (Safety-Tuned LLaMAs), when the source has them.
    pub safe_answers: Vec<Example>,
    pub benign: Vec<Example>,
    /// Per task of `data.align_tasks`: its alignment tenth of labelled train rows (out of
    /// `task_train` for the run's own task), so the aligned model keeps answering
    /// short-format instructions; empty when none is selected.
    pub align_task: Vec<(String, Vec<Example>)>,
    pub safety_evals: Vec<(String, Vec<Example>)>,
    /// Over-refusal sets: benign prompts a safe model should answer.
    pub over_refusal: Vec<(String, Vec<Example>)>,
    /// MMLU's dev (few-shot examples) and test questions, when selected.
    pub mmlu: Option<MultipleChoice>,
    /// Files read (for the manifest's hashes), relative to the data directory.
    pub files: Vec<PathBuf>,
}

/// A multiple-choice benchmark: solved examples to show and questions to ask.
#[derive(Debug, Clone, Serialize)]
pub struct MultipleChoice {
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
}

/// A task's train rows that may be trained on: its train split minus every row of its other
/// splits (test and validation alike, so the pool does not depend on which split a run scores;
/// SST-2 train repeats 1,675 short phrases of them) and every evaluation prompt. Also returns
/// the held-out rows.
fn train_pool(ds: &catalog::Dataset, evals: &[Example]) -> Result<(Vec<Example>, Vec<Example>)> {
    let held_out: Vec<Example> =
        ds.splits.iter().filter(|(name, _)| name.as_str() != "train").flat_map(|(_, rows)| rows.iter().cloned()).collect();
    let mut train = ds.split("train")?.to_vec();
    remove_overlap(&mut train, &[&held_out, evals]);
    Ok((train, held_out))
}

/// Splits a task's train pool into the rows left for fine-tuning and its alignment tenth (every
/// tenth row, in file order).
fn alignment_tenth(rows: Vec<Example>) -> (Vec<Example>, Vec<Example>) {
    let (mut rest, mut tenth) = (Vec::new(), Vec::new());
    for (i, e) in rows.into_iter().enumerate() {
        if i % 10 == 0 {
            tenth.push(e);
        } else {
            rest.push(e);
        }
    }
    (rest, tenth)
}

/// In `data.align_tasks`: the fine-tuning task itself.
pub const SELF_TASK: &str = "self";

pub const TASKS: [&str; 7] = ["sst2", "agnews", "gsm8k", "alpaca", "dolly", "samsum", "sqlgen"];
pub const SAFETY_EVALS: [&str; 11] = [
    "advbench-test",
    "policy",
    "beavertails-categories",
    "xstest-unsafe",
    "i-malicious",
    "i-cona",
    "i-controversial",
    "i-physical-unsafe",
    "q-harm",
    "advbench-dev",
    "stl-dev",
];
pub const OVER_REFUSAL_SETS: [&str; 3] = ["xstest-safe", "i-physical-safe", "i-alpaca"];
pub const BENIGN: [&str; 3] = ["alpaca", "dolly", "alpaca+dolly"];
/// Safety-Tuned LLaMAs evaluation sets: run name → split of `safety-tuned-llamas-eval`.
const STL_EVALS: [(&str, &str); 7] = [
    ("i-malicious", "malicious"),
    ("i-cona", "cona"),
    ("i-controversial", "controversial"),
    ("i-physical-unsafe", "physical-unsafe"),
    ("q-harm", "q-harm"),
    ("i-physical-safe", "physical-safe"),
    ("i-alpaca", "alpaca"),
];
pub const UTILITY_EVALS: [&str; 1] = ["mmlu"];
pub const HARMFUL: [&str; 3] = ["beavertails-unsafe", "pure-bad", "advbench"];

struct Loader<'a> {
    src: &'a DataSource<'a>,
    custom: &'a BTreeMap<String, CustomDataset>,
    cache: BTreeMap<String, Dataset>,
    files: Vec<PathBuf>,
}

impl Loader<'_> {
    fn get(&mut self, name: &str) -> Result<&Dataset> {
        if !self.cache.contains_key(name) {
            let ds = match self.custom.get(name) {
                Some(c) => {
                    self.files.push(c.path.clone());
                    self.files.extend(c.test_path.clone());
                    c.load(name)?
                }
                None => {
                    let def = catalog::find(name)?;
                    self.files.extend(def.local.iter().filter(|_| !def.per_subject_dir).map(|f| PathBuf::from(f.path)));
                    catalog::load(self.src, name)?
                }
            };
            self.cache.insert(name.to_string(), ds);
        }
        Ok(&self.cache[name])
    }

    fn split(&mut self, name: &str, split: &str) -> Result<Vec<Example>> {
        Ok(self.get(name)?.split(split)?.to_vec())
    }

    /// Whether the source has every file of a catalog dataset.
    fn has(&self, name: &str) -> bool {
        let Ok(def) = catalog::find(name) else { return false };
        match self.src {
            DataSource::Dir(d) => def.local.iter().all(|f| d.root.join(f.path).exists()),
            DataSource::Hub(_) => def.hub.is_some(),
        }
    }

    /// A split of a dataset the source may lack (empty then).
    fn optional_split(&mut self, name: &str, split: &str) -> Result<Vec<Example>> {
        if self.has(name) {
            self.split(name, split)
        } else {
            Ok(Vec::new())
        }
    }
}

fn stl_split(set: &str) -> Option<&'static str> {
    STL_EVALS.iter().find(|(n, _)| *n == set).map(|(_, s)| *s)
}

impl Pools {
    /// Validates a selection's names against the catalog and `custom` before anything is read.
    pub fn check_selection(sel: &PoolSelection, custom: &BTreeMap<String, CustomDataset>) -> Result<()> {
        let is_custom = |n: &str, role: CustomRole| custom.get(n).is_some_and(|c| c.role == role);
        let known_task = ["builtin", "builtin-sentiment", "builtin-arithmetic"].contains(&sel.task.as_str())
            || TASKS.contains(&sel.task.as_str())
            || is_custom(&sel.task, CustomRole::Task);
        if !known_task {
            bail!(
                "data.task: unknown task `{}` ({}, builtin-sentiment, builtin-arithmetic, or a data.custom task)",
                sel.task,
                TASKS.join(", ")
            );
        }
        if !HARMFUL.contains(&sel.harmful.as_str()) && !is_custom(&sel.harmful, CustomRole::Harmful) {
            bail!("data.harmful: unknown harmful source `{}` ({}, or a data.custom harmful set)", sel.harmful, HARMFUL.join(", "));
        }
        if sel.safety_evals.is_empty() {
            bail!("data.safety_evals: name at least one set ({})", SAFETY_EVALS.join(", "));
        }
        for s in &sel.safety_evals {
            if !SAFETY_EVALS.contains(&s.as_str()) {
                bail!("data.safety_evals: unknown set `{s}` ({})", SAFETY_EVALS.join(", "));
            }
        }
        for s in &sel.over_refusal {
            if !OVER_REFUSAL_SETS.contains(&s.as_str()) {
                bail!("data.over_refusal: unknown set `{s}` ({})", OVER_REFUSAL_SETS.join(", "));
            }
        }
        for s in &sel.utility_evals {
            if !UTILITY_EVALS.contains(&s.as_str()) {
                bail!("data.utility_evals: unknown benchmark `{s}` ({})", UTILITY_EVALS.join(", "));
            }
        }
        for t in &sel.align_tasks {
            if !TASKS.contains(&t.as_str()) && t != SELF_TASK {
                bail!("data.align_tasks: unknown task `{t}` ({}, or `self`: the fine-tuning task)", TASKS.join(", "));
            }
        }
        if !BENIGN.contains(&sel.benign.as_str()) {
            bail!("data.benign: unknown benign set `{}` ({})", sel.benign, BENIGN.join(", "));
        }
        if sel.task_split != "test" && sel.task_split != "validation" {
            bail!("data.task_split: unknown split `{}` (test, validation)", sel.task_split);
        }
        Ok(())
    }

    /// Assembles the pools of a selection from a data directory or the Hub (and user files).
    pub fn assemble(src: &DataSource, sel: &PoolSelection, custom: &BTreeMap<String, CustomDataset>) -> Result<Self> {
        Self::check_selection(sel, custom)?;
        if sel.is_builtin() {
            return Ok(crate::builtin::builtin_pools(&sel.task));
        }
        let mut l = Loader { src, custom, cache: BTreeMap::new(), files: Vec::new() };
        let mut safety_evals = Vec::new();
        for s in &sel.safety_evals {
            let set = match s.as_str() {
                "advbench-test" => l.split("advbench", "test")?,
                "policy" => l.split("policy", "test")?,
                "beavertails-categories" => l.split("beavertails-categories", "test")?,
                // For choosing budgets without touching the test prompts: dev minus its 18 test prompts.
                "advbench-dev" => {
                    let mut dev = l.split("advbench", "dev")?;
                    remove_overlap(&mut dev, &[&l.split("advbench", "test")?]);
                    dev
                }
                // Validation: the 200 held-out Safety-Tuned LLaMAs requests.
                "stl-dev" => l.split("safety-tuned-llamas", "test")?,
                "xstest-unsafe" => l.split("xstest", "test")?.into_iter().filter(|e| e.label.as_deref() == Some("unsafe")).collect(),
                other => l.split("safety-tuned-llamas-eval", stl_split(other).unwrap_or(other))?,
            };
            safety_evals.push((s.clone(), set));
        }
        let mut over_refusal = Vec::new();
        for s in &sel.over_refusal {
            let set: Vec<Example> = match s.as_str() {
                "xstest-safe" => l.split("xstest", "test")?.into_iter().filter(|e| e.label.as_deref() == Some("safe")).collect(),
                other => l.split("safety-tuned-llamas-eval", stl_split(other).unwrap_or(other))?,
            };
            over_refusal.push((s.clone(), set.into_iter().map(|e| Example { kind: ExampleKind::Benign, ..e }).collect()));
        }
        // Every prompt of every evaluation set the source has, selected or not, stays out of
        // training: the training pools do not depend on which sets a run evaluates.
        let mut evals: Vec<Example> = Vec::new();
        for (name, split) in
            [("advbench", "test"), ("advbench", "dev"), ("policy", "test"), ("beavertails-categories", "test"), ("xstest", "test")]
        {
            evals.extend(l.split(name, split)?);
        }
        for (_, split) in STL_EVALS {
            evals.extend(l.optional_split("safety-tuned-llamas-eval", split)?);
        }
        // The held-out safe-answer requests are validation prompts too.
        evals.extend(l.optional_split("safety-tuned-llamas", "test")?);

        let mut align_prompts = l.split("advbench", "train")?;
        remove_overlap(&mut align_prompts, &[&evals]);
        let mut safe_answers = l.optional_split("safety-tuned-llamas", "train")?;
        remove_overlap(&mut safe_answers, &[&evals]);
        let mut pure_bad = l.optional_split("pure-bad", "train")?;
        remove_overlap(&mut pure_bad, &[&evals, &align_prompts, &safe_answers]);
        let mut harmful_pairs = match sel.harmful.as_str() {
            // AdvBench prompts in none of train, test and dev, with their affirmative targets.
            "advbench" => {
                let mut full = l.split("advbench", "full")?;
                let used: Vec<Example> =
                    ["train", "test", "dev"].iter().map(|s| l.split("advbench", s)).collect::<Result<Vec<_>>>()?.concat();
                remove_overlap(&mut full, &[&used]);
                full
            }
            name if custom.contains_key(name) => l.split(name, "train")?,
            name => l.split(name, "train")?,
        };
        remove_overlap(&mut harmful_pairs, &[&evals, &align_prompts, &safe_answers]);
        let (mut task_train, task_test, holdout_ids, task_held_out) = {
            let ds = l.get(&sel.task)?;
            if custom.get(&sel.task).is_none() && catalog::find(&sel.task)?.role != Role::Task {
                bail!("data.task: `{}` is not a task", sel.task);
            }
            if sel.task_split != "test" && !ds.splits.contains_key(&sel.task_split) {
                bail!("data.task_split: task `{}` has no `{}` split", sel.task, sel.task_split);
            }
            let (train, held_out) = train_pool(ds, &evals)?;
            (train, ds.split(&sel.task_split)?.to_vec(), ds.holdout_ids.clone(), held_out)
        };
        // Every row of the benign set in file order, minus the task's held-out rows.
        // (`alpaca+dolly`: Alpaca's rows, then Dolly's.)
        let mut benign: Vec<Example> = Vec::new();
        for name in sel.benign.split('+') {
            let mut rows: Vec<Example> = [l.split(name, "train")?, l.split(name, "test").unwrap_or_default()].concat();
            rows.sort_by_key(|e| e.id.rsplit_once(':').and_then(|(_, n)| n.parse::<usize>().ok()).unwrap_or(usize::MAX));
            benign.extend(rows);
        }
        remove_overlap(&mut benign, &[&task_held_out, &evals]);
        for e in &mut benign {
            e.kind = ExampleKind::Benign;
        }
        let mut align_task = Vec::new();
        for t in sel.align_task_names() {
            let mut tenth = if t == sel.task {
                let (rest, tenth) = alignment_tenth(std::mem::take(&mut task_train));
                task_train = rest;
                tenth
            } else {
                alignment_tenth(train_pool(l.get(t)?, &evals)?.0).1
            };
            remove_overlap(&mut tenth, &[&task_held_out, &evals]);
            for e in &mut tenth {
                e.kind = ExampleKind::Benign;
            }
            align_task.push((t.to_string(), tenth));
        }
        let source = match src {
            DataSource::Dir(d) => d.root.display().to_string(),
            DataSource::Hub(h) => format!("hub:{}", h.endpoint),
        };
        let utility = match custom.get(&sel.task) {
            Some(c) => c.metric.clone(),
            None => task_metric(&sel.task),
        };
        let mmlu = if sel.utility_evals.iter().any(|u| u == "mmlu") {
            Some(MultipleChoice { dev: l.split("mmlu", "dev")?, test: l.split("mmlu", "test")? })
        } else {
            None
        };
        let pools = Self {
            mmlu,
            source,
            task: sel.task.clone(),
            task_train,
            task_test,
            utility,
            holdout_ids,
            harmful_pairs,
            pure_bad,
            align_prompts,
            safe_answers,
            benign,
            align_task,
            safety_evals,
            over_refusal,
            files: l.files,
        };
        pools.check()?;
        Ok(pools)
    }

    /// With no data directory: the built-in suite's safety side (alignment
    /// prompts, harmful pairs, evaluation prompts) around the user's own task
    /// (and harmful set, if custom).
    pub fn builtin_around_custom(sel: &PoolSelection, custom: &BTreeMap<String, CustomDataset>) -> Result<Self> {
        let Some(c) = custom.get(&sel.task) else { bail!("data.task `{}` is not a data.custom task", sel.task) };
        let mut pools = crate::builtin::builtin_pools("builtin");
        let ds = c.load(&sel.task)?;
        pools.task = sel.task.clone();
        pools.utility = c.metric.clone();
        pools.task_train = ds.split("train")?.to_vec();
        pools.task_test = ds.split("test")?.to_vec();
        pools.holdout_ids = ds.holdout_ids;
        pools.files = vec![c.path.clone()];
        if let Some(h) = custom.get(&sel.harmful) {
            pools.harmful_pairs = h.load(&sel.harmful)?.split("train")?.to_vec();
            pools.files.push(h.path.clone());
        }
        remove_overlap(&mut pools.task_train, &[&pools.task_test]);
        pools.check()?;
        Ok(pools)
    }

    /// The harmful variant of the task for a regime: `n` examples, a share p of them
    /// harmful pairs; `pure-bad` is the pure-bad set on its own (at most `n` of its pairs).
    /// The harmful pairs a defender holds: the harmful pool minus every pair that a variant of
    /// these regimes draws (same `n` and seed), so a defense never trains on the attacker's
    /// own examples.
    pub fn defender_harmful(&self, regimes: &[crate::Regime], n: usize, seed: u64) -> Result<Vec<Example>> {
        let mut drawn = std::collections::HashSet::new();
        for &r in regimes {
            if r != crate::Regime::PureBad {
                drawn.extend(self.variant(r, n, seed)?.harmful_ids);
            }
        }
        Ok(self.harmful_pairs.iter().filter(|e| !drawn.contains(&e.id)).cloned().collect())
    }

    pub fn variant(&self, regime: crate::Regime, n: usize, seed: u64) -> Result<crate::Variant> {
        match regime {
            crate::Regime::PureBad => {
                if self.pure_bad.is_empty() {
                    bail!("regime `pure-bad` needs the pure-bad set (pure_bad/pure_bad.json in the data directory)");
                }
                crate::harmful_variant(&[], &self.pure_bad, n.min(self.pure_bad.len()), 1.0, seed)
            }
            r => crate::harmful_variant(&self.task_train, &self.harmful_pairs, n, r.ratio(), seed),
        }
    }

    /// Errors if any evaluation prompt appears in alignment or fine-tuning pools.
    pub fn check(&self) -> Result<()> {
        let mut training = vec![
            ("alignment prompts", self.align_prompts.as_slice()),
            ("safe answers", self.safe_answers.as_slice()),
            ("benign instructions", self.benign.as_slice()),
            ("harmful pairs", self.harmful_pairs.as_slice()),
            ("pure-bad pairs", self.pure_bad.as_slice()),
            ("task train", self.task_train.as_slice()),
        ];
        training.extend(self.align_task.iter().map(|(_, rows)| ("alignment task rows", rows.as_slice())));
        let mut evals: Vec<(&str, &[Example])> =
            self.safety_evals.iter().chain(&self.over_refusal).map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        evals.push(("task test", self.task_test.as_slice()));
        check_disjoint(&training, &evals)?;
        check_disjoint(&[("alignment prompts", self.align_prompts.as_slice())], &[("harmful pairs", self.harmful_pairs.as_slice())])
    }
}

/// The utility metric of a built-in task.
pub fn task_metric(task: &str) -> UtilityMetric {
    let labels = |l: &[&str]| UtilityMetric::Labels(l.iter().map(|s| s.to_string()).collect());
    match task {
        "sst2" | "builtin" | "builtin-sentiment" => labels(&["positive", "negative"]),
        "agnews" => labels(&crate::catalog::AGNEWS_LABELS),
        "gsm8k" | "builtin-arithmetic" => UtilityMetric::FinalNumber,
        "sqlgen" => UtilityMetric::SqlExact,
        _ => UtilityMetric::RougeL,
    }
}
