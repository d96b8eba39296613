//! Metrics: the registry entry of a metric and, for utility metrics, how a
//! task's answers are scored (`UtilityMetric` names a registered scorer).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Result;

/// A metric (`safetune list metrics`). Safety metrics are computed from the
/// judge's verdicts by the evaluation; a utility metric also brings its scorer,
/// which a task names by `id` (`UtilityMetric`), so a new one is this entry alone.
pub struct MetricEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub utility: Option<UtilityScorer>,
}

/// How a utility metric scores one answer against its reference.
pub struct UtilityScorer {
    /// The id tasks and results use (`labels`, `final-number`, `rouge-l`, ...).
    pub id: &'static str,
    /// The column name in tables (`accuracy`, `exact match`, ...).
    pub table_name: &'static str,
    /// Score of one answer (`labels`: the task's labels, empty when it has none).
    pub score: fn(labels: &[String], answer: &str, reference: &str) -> UtilityScore,
    /// Scores reported beside the main one (`schema`: the example's database schema, for
    /// SQL); `None` values are left out of the mean.
    pub secondary: fn(answer: &str, reference: &str, schema: Option<&str>) -> SecondaryScores,
}

/// Named scores of one answer beside the main one (`None`: not defined for this answer).
pub type SecondaryScores = Vec<(&'static str, Option<f64>)>;

/// No secondary scores.
pub fn no_secondary(_: &str, _: &str, _: Option<&str>) -> SecondaryScores {
    Vec::new()
}

inventory::collect!(MetricEntry);

lookup!(metrics, metric, MetricEntry, "metric");

/// The scorer of the utility metric with that id, or an error listing the known ids.
pub fn utility_scorer(id: &str) -> Result<&'static UtilityScorer> {
    let all: Vec<&'static UtilityScorer> = metrics().into_iter().filter_map(|m| m.utility.as_ref()).collect();
    all.iter().find(|s| s.id == id).copied().ok_or_else(|| {
        let known: Vec<&str> = all.iter().map(|s| s.id).collect();
        anyhow::anyhow!("unknown utility metric `{id}` (known: {})", known.join(", "))
    })
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
    pub fn scorer(&self) -> Result<&'static UtilityScorer> {
        utility_scorer(&self.id)
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
        let ids: Vec<&str> = metrics().iter().filter_map(|m| m.utility.as_ref()).map(|u| u.id).collect();
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
