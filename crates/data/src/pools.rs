//! Everything one run draws from — task splits, harmful pairs, alignment
//! prompts, benign instructions, safety evaluation sets — with alignment,
//! attack and evaluation pools disjoint (`check`). Assembled by `assemble.rs`
//! (data directory, Hub, user files) or `builtin.rs` (the offline suite).

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetune_core::anyhow::bail;
use safetune_core::judge::UtilityMetric;
use safetune_core::{Example, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::registry;
use crate::custom::{CustomDataset, CustomRole};
use crate::overlap::check_disjoint;

/// Where a run's datasets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DataSourceKind {
    /// A local directory (`--data-dir` or `SAFETUNE_DATA_DIR`).
    Dir,
    /// The Hugging Face Hub, cached in the standard HF cache.
    Hub,
}

/// The prompt format examples are trained and evaluated in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TemplateChoice {
    /// The model's own chat template.
    Model,
    /// The Alpaca instruction template (SafeTuneBed's).
    Alpaca,
}

fn is_test_split(s: &str) -> bool {
    s == "test"
}

/// Which datasets a run uses: the `[data]` table of a run spec. Names are checked against
/// the dataset registry (`safetune list datasets`) and `custom`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "DataSpec")]
pub struct PoolSelection {
    /// A task: `sst2`, `agnews`, `gsm8k`, `alpaca`, `dolly`, `samsum`, `sqlgen`, a `custom` task,
    /// or `builtin-sentiment` / `builtin-arithmetic` (offline; `builtin` = sentiment).
    pub task: String,
    /// Several tasks: one sub-run per task (and per seed of `seeds`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// Harmful pairs for the variants: `beavertails-unsafe`, `pure-bad`, `advbench`, or a `custom` harmful set.
    pub harmful: String,
    /// Safety evaluation sets: `advbench-test`, `policy`, `beavertails-categories`, `xstest-unsafe`,
    /// `i-malicious`, `i-cona`, `i-controversial`, `i-physical-unsafe`, `q-harm`; validation sets
    /// for choosing settings: `advbench-dev` (AdvBench dev minus the prompts it shares with test)
    /// and `stl-dev` (200 held-out Safety-Tuned LLaMAs requests).
    pub safety_evals: Vec<String>,
    /// Benign prompts that only look risky, for over-refusal (the share refused): `xstest-safe`,
    /// `i-physical-safe`, `i-alpaca`, and `xstest-dev` (validation).
    pub over_refusal: Vec<String>,
    /// Benign instructions mixed into alignment: `alpaca`, `dolly` or `alpaca+dolly`.
    pub benign: String,
    /// The task split scored as utility: `test`, or `validation` (SST-2's) when choosing settings.
    #[serde(skip_serializing_if = "is_test_split")]
    pub task_split: String,
    /// Utility benchmarks besides the task: `mmlu` (accuracy by log-likelihood,
    /// `eval.mmlu_questions` questions, `eval.mmlu_shots`) and `mt-bench` (two-turn
    /// answers graded 1–10 by a chat model, `eval.mt_bench`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub utility_evals: Vec<String>,
    /// Tasks whose labelled train rows join alignment (`alignment.task_examples` from each): a
    /// task gives a fixed tenth of its train rows (every tenth, after its held-out rows leave),
    /// and that tenth leaves the task's fine-tuning pool. `self` is the run's task. The rows
    /// depend only on the list, so a multi-task run listing all its tasks (`["sst2", "agnews"]`)
    /// aligns once for every task.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub align_tasks: Vec<String>,
    pub source: DataSourceKind,
    pub template: TemplateChoice,
    /// User datasets: a file and a field mapping each; paths are relative to the spec file.
    pub custom: BTreeMap<String, CustomDataset>,
}

impl Default for PoolSelection {
    fn default() -> Self {
        Self {
            task: "sst2".into(),
            tasks: Vec::new(),
            harmful: "beavertails-unsafe".into(),
            safety_evals: vec!["advbench-test".into(), "policy".into()],
            over_refusal: Vec::new(),
            benign: "alpaca".into(),
            task_split: "test".into(),
            utility_evals: Vec::new(),
            align_tasks: Vec::new(),
            source: DataSourceKind::Dir,
            template: TemplateChoice::Model,
            custom: BTreeMap::new(),
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
    /// MT-Bench's questions (first turn the prompt, second in meta `turn2`), when selected.
    pub mt_bench: Option<Vec<Example>>,
    /// Files read (for the manifest's hashes), relative to the data directory.
    pub files: Vec<PathBuf>,
}

/// A multiple-choice benchmark: solved examples to show and questions to ask.
#[derive(Debug, Clone, Serialize)]
pub struct MultipleChoice {
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
}

/// In `data.align_tasks`: the fine-tuning task itself.
pub const SELF_TASK: &str = "self";

impl Pools {
    /// Validates a selection's names against the dataset registry and `custom` before anything is read.
    pub fn check_selection(sel: &PoolSelection) -> Result<()> {
        let custom = &sel.custom;
        let is_custom = |n: &str, role: CustomRole| custom.get(n).is_some_and(|c| c.role == role);
        let tasks = registry::tasks();
        let known_task = ["builtin", "builtin-sentiment", "builtin-arithmetic"].contains(&sel.task.as_str())
            || tasks.contains(&sel.task.as_str())
            || is_custom(&sel.task, CustomRole::Task);
        if !known_task {
            bail!(
                "data.task: unknown task `{}` ({}, builtin-sentiment, builtin-arithmetic, or a data.custom task)",
                sel.task,
                tasks.join(", ")
            );
        }
        let harmful = registry::harmful_sets();
        if !harmful.contains(&sel.harmful.as_str()) && !is_custom(&sel.harmful, CustomRole::Harmful) {
            bail!("data.harmful: unknown harmful source `{}` ({}, or a data.custom harmful set)", sel.harmful, harmful.join(", "));
        }
        for (key, list) in [
            ("data.safety_evals", &sel.safety_evals),
            ("data.over_refusal", &sel.over_refusal),
            ("data.utility_evals", &sel.utility_evals),
            ("data.align_tasks", &sel.align_tasks),
        ] {
            safetune_core::config::no_repeats(key, list)?;
        }
        let safety = registry::eval_set_names(false);
        if sel.safety_evals.is_empty() {
            bail!("data.safety_evals: name at least one set ({}, or a data.custom safety-eval set)", safety.join(", "));
        }
        for s in &sel.safety_evals {
            if !safety.contains(&s.as_str()) && !is_custom(s, CustomRole::SafetyEval) {
                bail!("data.safety_evals: unknown set `{s}` ({}, or a data.custom set with role = \"safety-eval\")", safety.join(", "));
            }
        }
        let over = registry::eval_set_names(true);
        for s in &sel.over_refusal {
            if !over.contains(&s.as_str()) && !is_custom(s, CustomRole::OverRefusal) {
                bail!("data.over_refusal: unknown set `{s}` ({}, or a data.custom set with role = \"over-refusal\")", over.join(", "));
            }
        }
        let utility = registry::utility_evals();
        for s in &sel.utility_evals {
            if !utility.contains(&s.as_str()) {
                bail!("data.utility_evals: unknown benchmark `{s}` ({})", utility.join(", "));
            }
        }
        for t in &sel.align_tasks {
            if !tasks.contains(&t.as_str()) && t != SELF_TASK {
                bail!("data.align_tasks: unknown task `{t}` ({}, or `self`: the fine-tuning task)", tasks.join(", "));
            }
        }
        let benign = registry::benign_sets();
        let parts: Vec<&str> = sel.benign.split('+').collect();
        let repeated = parts.iter().enumerate().any(|(i, b)| parts[..i].contains(b));
        if sel.benign.is_empty() || repeated || !parts.iter().all(|b| benign.contains(b)) {
            bail!("data.benign: unknown benign set `{}` ({}, or several joined with `+`)", sel.benign, benign.join(", "));
        }
        if sel.task_split != "test" && sel.task_split != "validation" {
            bail!("data.task_split: unknown split `{}` (test, validation)", sel.task_split);
        }
        Ok(())
    }

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

    /// The harmful variant of the task for a regime: `n` examples, a share p of them
    /// harmful pairs; `pure-bad` is the pure-bad set on its own (at most `n` of its pairs).
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
