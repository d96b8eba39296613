//! One training or evaluation example, independent of any prompt format.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What an example is for. The pipeline keeps these pools apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ExampleKind {
    /// A task example (the user's data).
    Task,
    /// A harmful request paired with a compliant answer (the attack).
    Harmful,
    /// A harmful request paired with a refusal (safety alignment data).
    Refusal,
    /// A benign instruction with a helpful answer.
    Benign,
}

/// A prompt/response pair. `prompt` is the user's whole turn (instruction
/// plus any input); `label` is the gold answer a utility metric reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Example {
    /// Stable id: `<source>:<row>`; ids are what a run records, never text.
    pub id: String,
    pub kind: ExampleKind,
    /// Optional system prompt; `None` means the format's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub prompt: String,
    /// The start of the assistant's answer, given rather than learned: it is
    /// part of the context but carries no loss (safety-recovery examples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<String>,
    pub response: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Extra facts an evaluation reads (harm category, XSTest type, MMLU choices).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub meta: std::collections::BTreeMap<String, String>,
}

impl Example {
    pub fn new(id: impl Into<String>, kind: ExampleKind, prompt: impl Into<String>, response: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            kind,
            system: None,
            prompt: prompt.into(),
            prefill: None,
            response: response.into(),
            label: None,
            meta: Default::default(),
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn with_meta(mut self, key: &str, value: impl Into<String>) -> Self {
        self.meta.insert(key.to_string(), value.into());
        self
    }
}

/// Normalises a prompt for overlap checks: lower case, alphanumerics only,
/// single spaces. Two prompts that differ only in case, whitespace or
/// punctuation normalise to the same key.
pub fn normalize_prompt(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.extend(c.to_lowercase());
        } else {
            space = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_space_and_punctuation() {
        assert_eq!(normalize_prompt("  Write a  Poem, please! "), "write a poem please");
        assert_eq!(normalize_prompt("write a poem please"), normalize_prompt("Write A POEM -- please?"));
        assert_ne!(normalize_prompt("write a poem"), normalize_prompt("write a song"));
    }
}
