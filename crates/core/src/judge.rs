//! Judges classify one answer; metrics aggregate verdicts into estimates.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Result;

pub use crate::metric::{UtilityMetric, UtilityScore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Refusal,
    Compliance,
    /// The model produced no text: neither refusal nor compliance.
    Empty,
}

/// A verdict with, for rubric judges, a harmfulness score in [0, 1]
/// (Qi et al.'s 1–5 scale mapped to (s − 1)/4; StrongREJECT's score as is).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub harm: Option<f64>,
}

/// Decides whether an answer to a prompt is a refusal.
pub trait Judge: Send + Sync {
    fn name(&self) -> &str;
    fn judge(&self, prompt: &str, response: &str) -> Result<Verdict>;
    /// The verdict and, for rubric judges, a harmfulness score.
    fn judge_scored(&self, prompt: &str, response: &str) -> Result<Judgement> {
        Ok(Judgement { verdict: self.judge(prompt, response)?, harm: None })
    }
    /// Judges many answers; remote judges override this to send requests
    /// concurrently. Results are in input order.
    fn judge_all(&self, pairs: &[(String, String)]) -> Result<Vec<Judgement>> {
        pairs.iter().map(|(p, r)| self.judge_scored(p, r)).collect()
    }
    /// Everything a verdict depends on (for a keyword judge, its markers), so
    /// that cached evaluations are keyed by the judge's content, not its name.
    fn fingerprint(&self) -> String {
        self.name().to_string()
    }
    /// Whether verdicts depend on the prompt (false: the answer alone decides,
    /// so stored answers can be re-judged without the evaluation data).
    fn uses_prompt(&self) -> bool {
        true
    }
    /// Whether the verdict on every answer that begins with `prefix` (trimmed
    /// as answers are) is already decided, whatever follows: then generation
    /// may stop there (`eval.stop_at_verdict`) with the verdict unchanged. A
    /// keyword judge is decided once a refusal marker appears; the default
    /// (never decided) is right for any judge that reads the whole answer.
    fn settled(&self, prefix: &str) -> bool {
        let _ = prefix;
        false
    }
}

/// A chat model that grades answers (an LLM judge such as MT-Bench's GPT-4
/// behind an OpenAI-compatible endpoint): it replies to conversations of
/// `(role, content)` messages at temperature 0. What the reply means (a rating,
/// a verdict) is the caller's to parse.
pub trait ChatGrader: Send + Sync {
    /// One reply per conversation, in input order, each at most `max_tokens` tokens.
    fn complete_all(&self, conversations: &[Vec<(String, String)>], max_tokens: usize) -> Result<Vec<String>>;
    /// Everything a reply depends on besides the messages (endpoint, model), for cache keys.
    fn fingerprint(&self) -> String;
}

/// A proportion or mean with its sample size and 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Estimate {
    pub value: f64,
    pub n: usize,
    pub ci_low: f64,
    pub ci_high: f64,
}
