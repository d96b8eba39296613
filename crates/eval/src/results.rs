//! What a run writes: a model's evaluation, a cell's result, the generated
//! answers. Plain data (serialised to the run directory; no wall times, so the
//! same spec and seed give byte-identical files).

use std::path::Path;

use safetune_core::judge::{Estimate, UtilityMetric};
use safetune_core::Result;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SafetyResult {
    pub set: String,
    pub asr: Estimate,
    /// Answers with no text (not counted in the ASR).
    pub empty: usize,
    /// Mean harmfulness score in [0, 1] of a rubric judge (none for keyword judges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harmful_score: Option<Estimate>,
    /// With `eval.samples = K`: some of K sampled answers complies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asr_at_k: Option<Estimate>,
    /// Of the prompts the default greedy answer refuses, the share every other
    /// answer also refuses: the K samples (`eval.samples`) and the surface
    /// variants (`eval.variants`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal_consistency: Option<Estimate>,
    /// With `eval.variants`: the share of prompts some surface variant (or the default) gets a compliance for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_asr: Option<Estimate>,
    /// ASR per harm category, for sets whose prompts carry one (BeaverTails' 14).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_category: Vec<Named>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub metric: UtilityMetric,
    /// Mean score (accuracy, exact match or ROUGE-L F1).
    pub score: Estimate,
    /// Answers the metric could not read (scored 0).
    pub unparseable: usize,
    /// Scores reported beside the main one (ROUGE-1/2 beside ROUGE-L, execution
    /// accuracy beside SQL exact match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Named>,
}

/// An estimate with a name (a secondary score, a harm category).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Named {
    pub name: String,
    pub estimate: Estimate,
}

/// Over-refusal on benign prompts that look risky.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverRefusalResult {
    pub set: String,
    /// Share of the non-empty answers judged refusals.
    pub refusal_rate: Estimate,
    pub empty: usize,
    /// The share refused per prompt type, for sets whose prompts carry one (XSTest's ten:
    /// homonyms, figurative language, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_category: Vec<Named>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEval {
    pub safety: Vec<SafetyResult>,
    pub task: TaskResult,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub over_refusal: Vec<OverRefusalResult>,
    /// MMLU accuracy per few-shot setting, when selected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mmlu: Vec<MmluResult>,
    /// MT-Bench ratings, when selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mt_bench: Option<MtBenchResult>,
}

/// One generated answer (no prompt text: ids only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenRecord {
    pub id: String,
    pub response: String,
    pub verdict: String,
    /// The prompt's harm category (harmful sets) or type (benign look-alikes), for sets that
    /// have them (for per-category ASR and refusal rates on re-judging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Generation stopped once the judge's verdict was settled (`eval.stop_at_verdict`):
    /// `response` is the answer up to that point.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

/// Every answer, per evaluation set.
pub type Generations = Vec<(String, Vec<GenRecord>)>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MmluResult {
    /// Solved dev questions before each test question.
    pub shots: usize,
    pub accuracy: Estimate,
}

/// The result of one method × defense stack × regime cell. Contains no wall
/// times, so the same spec and seed give byte-identical files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    pub cell: String,
    pub method: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub defenses: Vec<String>,
    pub regime: String,
    pub poison_ratio: f64,
    pub n: usize,
    pub seed: u64,
    pub aligned_key: String,
    pub task_ids: Vec<String>,
    pub harmful_ids: Vec<String>,
    /// Safety examples a data defense added (ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_ids: Vec<String>,
    /// Weights a post-tuning defense replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
    pub train_losses: Vec<f64>,
    pub train_steps: usize,
    pub eval: ModelEval,
}

/// A cell's label: `sft-lora`, or `sft-lora+vaccine+lisa` with a defense stack.
pub fn cell_label(method: &str, defenses: &[String]) -> String {
    std::iter::once(method.to_string()).chain(defenses.iter().cloned()).collect::<Vec<_>>().join("+")
}

/// The label of an aligned model (its `models/`, `timings/` and `adapters/` entries):
/// `aligned`, or `aligned+<defense>` for an alignment-stage defense's.
pub fn aligned_label(defense: Option<&str>) -> String {
    defense.map_or_else(|| "aligned".into(), |d| format!("aligned+{d}"))
}

/// Why a set's rate is not a measurement: more than half of its answers were
/// empty (a model that emits nothing looks perfectly safe by ASR and perfectly
/// helpful by over-refusal, since empty answers are left out of both). `None`
/// when at least half the answers have text.
pub fn unmeasured(empty: usize, answered: usize) -> Option<String> {
    (empty > answered).then(|| format!("{empty} of {} answers empty", empty + answered))
}

impl SafetyResult {
    /// See [`unmeasured`].
    pub fn failure(&self) -> Option<String> {
        unmeasured(self.empty, self.asr.n)
    }
}

impl OverRefusalResult {
    /// See [`unmeasured`].
    pub fn failure(&self) -> Option<String> {
        unmeasured(self.empty, self.refusal_rate.n)
    }
}

impl ModelEval {
    /// The sets whose figures are not measurements (see [`unmeasured`]).
    pub fn failures(&self) -> Vec<String> {
        let mut out = self.safety_failures();
        out.extend(self.over_refusal.iter().filter_map(|s| Some(format!("{}: {}", s.set, s.failure()?))));
        out
    }

    /// The safety sets (ASR) whose figures are not measurements, as `set: why`.
    pub fn safety_failures(&self) -> Vec<String> {
        self.safety.iter().filter_map(|s| Some(format!("{}: {}", s.set, s.failure()?))).collect()
    }
}

pub use safetune_core::files::write_atomic;

/// A value as pretty JSON (with a final newline), written atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

/// MT-Bench scores of one model: ratings on FastChat's 1–10 scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MtBenchResult {
    /// Mean rating over every rated turn (FastChat's overall score).
    pub score: Estimate,
    pub turn1: Estimate,
    pub turn2: Estimate,
    /// Turns whose grader reply held no rating (left out of the means).
    pub unrated: usize,
    /// Mean rating per category (both turns).
    pub by_category: Vec<Named>,
    /// The grader's identity (endpoint and model).
    pub grader: String,
}
