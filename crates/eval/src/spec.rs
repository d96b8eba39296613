//! How models are evaluated: set sizes, token budgets, the judge, samples,
//! surface variants, MMLU, MT-Bench (the `[eval]` table of a run spec).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSpec {
    /// Prompts per safety set (0: all).
    pub safety_limit: usize,
    /// Task test examples (0: all).
    pub task_limit: usize,
    pub safety_max_new_tokens: usize,
    pub task_max_new_tokens: usize,
    pub batch_size: usize,
    pub judge: String,
    /// Options of the judge (for `remote`: base_url, model, rubric, api_key_env, ...).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub judge_options: serde_json::Value,
    /// Sampled answers per harmful prompt for ASR@K and refusal consistency (0: off).
    pub samples: usize,
    /// Temperature of those samples (nucleus `sample_top_p`), seeded from the run's seed.
    pub sample_temperature: f64,
    pub sample_top_p: f64,
    /// Ask each harmful prompt again in 5 surface variants (no system prompt, a
    /// generic one, two rewordings, the Alpaca template): ASR under any variant,
    /// and refusal consistency across variants and samples.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub variants: bool,
    /// The harmful sets that samples and variants ask (empty: every set of `data.safety_evals`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consistency_sets: Vec<String>,
    /// Prompts of each of those sets asked again (the first N of the set; 0: all). Samples
    /// and variants multiply generation (K + 5 answers per prompt), so a full evaluation
    /// grid can afford them on a part of a set only.
    #[serde(skip_serializing_if = "is_zero")]
    pub consistency_limit: usize,
    /// End a harmful (or over-refusal) answer as soon as the judge's verdict on
    /// it is settled — for keyword judges, once a refusal marker appears — so
    /// refusals cost a few tokens instead of the whole budget. Verdicts and
    /// every metric are the same either way (answers still decoding are not
    /// touched; `docs/METRICS.md`); the stored refusal is cut there and
    /// marked `cut`. Judges that read the whole answer never settle early.
    #[serde(skip_serializing_if = "is_true")]
    pub stop_at_verdict: bool,
    /// MMLU questions asked (spread over the 57 subjects; 0: all 14,042), when
    /// `data.utility_evals` names `mmlu`.
    #[serde(skip_serializing_if = "is_default_mmlu_questions")]
    pub mmlu_questions: usize,
    /// Few-shot settings MMLU is scored at (solved dev questions of the same subject first).
    #[serde(skip_serializing_if = "is_default_mmlu_shots")]
    pub mmlu_shots: Vec<usize>,
    /// MT-Bench's answering and grading, when `data.utility_evals` names `mt-bench`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mt_bench: Option<crate::mt_bench::MtBenchSpec>,
}

const MMLU_QUESTIONS: usize = 570;
fn is_zero(n: &usize) -> bool {
    *n == 0
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_default_mmlu_questions(n: &usize) -> bool {
    *n == MMLU_QUESTIONS
}
fn is_default_mmlu_shots(v: &[usize]) -> bool {
    v == [0, 5]
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            safety_limit: 0,
            task_limit: 0,
            safety_max_new_tokens: 64,
            task_max_new_tokens: 16,
            batch_size: 16,
            judge: "keyword".into(),
            judge_options: serde_json::Value::Null,
            samples: 0,
            sample_temperature: 0.7,
            sample_top_p: 1.0,
            variants: false,
            consistency_sets: Vec::new(),
            consistency_limit: 0,
            stop_at_verdict: true,
            mmlu_questions: MMLU_QUESTIONS,
            mmlu_shots: vec![0, 5],
            mt_bench: None,
        }
    }
}
