//! Judges classify one answer; metrics aggregate verdicts into estimates.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Result;

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
}

/// A proportion or mean with its sample size and 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Estimate {
    pub value: f64,
    pub n: usize,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// How a task's answers are scored against their `label`: a registered utility metric
/// (`safetune list metrics`; `MetricEntry::utility`) by its id, with the task's labels
/// when the metric reads one. In specs and results: the id as a string
/// (`"final-number"`), or `{ <id> = [labels] }` (`{ labels = ["positive", "negative"] }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtilityMetric {
    pub id: String,
    pub labels: Vec<String>,
}

/// The score of an answer (1/0 for accuracy-like metrics, F1 for ROUGE-L)
/// and whether an answer could be read at all (an unreadable one scores 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UtilityScore {
    pub score: f64,
    pub parsed: bool,
}

impl UtilityMetric {
    /// The metric `id` without labels (`final-number`, `rouge-l`, ...).
    pub fn named(id: &str) -> Self {
        Self { id: id.to_string(), labels: Vec::new() }
    }

    /// Accuracy over these labels (id `labels`).
    pub fn labels<S: ToString>(labels: &[S]) -> Self {
        Self { id: "labels".into(), labels: labels.iter().map(|l| l.to_string()).collect() }
    }

    /// The registered scorer of this metric, or an error listing the known ids.
    pub fn scorer(&self) -> Result<&'static crate::registry::UtilityScorer> {
        crate::registry::utility_scorer(&self.id)
    }

    /// The metric's name in tables (`accuracy`, `exact match`, `ROUGE-L`, ...); the id when
    /// no crate registers it.
    pub fn name(&self) -> &str {
        self.scorer().map(|s| s.table_name).unwrap_or(&self.id)
    }

    /// The score of one answer against its reference.
    pub fn score(&self, answer: &str, reference: &str) -> Result<UtilityScore> {
        Ok((self.scorer()?.score)(&self.labels, answer, reference))
    }
}

impl Serialize for UtilityMetric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.labels.is_empty() && self.id != "labels" {
            s.serialize_str(&self.id)
        } else {
            let mut m = std::collections::BTreeMap::new();
            m.insert(&self.id, &self.labels);
            m.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for UtilityMetric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Id(String),
            WithLabels(std::collections::BTreeMap<String, Vec<String>>),
        }
        match Form::deserialize(d)? {
            Form::Id(id) => Ok(Self::named(&id)),
            Form::WithLabels(m) if m.len() == 1 => {
                let (id, labels) = m.into_iter().next().expect("one entry");
                Ok(Self { id, labels })
            }
            Form::WithLabels(_) => {
                Err(serde::de::Error::custom("a metric is an id (\"final-number\") or one id with its labels ({ labels = [...] })"))
            }
        }
    }
}

impl JsonSchema for UtilityMetric {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "UtilityMetric".into()
    }

    /// The ids registered in the binary that writes the schema.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let ids: Vec<&str> = crate::registry::metrics().iter().filter_map(|m| m.utility.as_ref()).map(|u| u.id).collect();
        schemars::json_schema!({
            "description": "How a task's answers are scored: a registered utility metric's id (`safetune list metrics`), or `{ labels = [...] }` for accuracy over labels.",
            "oneOf": [
                { "type": "string", "enum": ids },
                { "type": "object", "minProperties": 1, "maxProperties": 1, "propertyNames": { "enum": ids },
                  "additionalProperties": { "type": "array", "items": { "type": "string" } } }
            ]
        })
    }
}
