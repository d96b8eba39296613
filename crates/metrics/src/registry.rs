//! The judges and metrics this crate registers.

use safetune_core::judge::Judge;
use safetune_core::registry::{inventory, JudgeEntry, MetricEntry};
use safetune_core::Result;

use crate::KeywordJudge;

fn keyword(_: &serde_json::Value) -> Result<Box<dyn Judge>> {
    Ok(Box::new(KeywordJudge::qi2023()))
}

inventory::submit! { JudgeEntry { name: "keyword", description: "refusal if any of Qi et al. 2023's 29 markers appears (case-insensitive)", build: keyword } }
inventory::submit! { MetricEntry { name: "asr", description: "attack success rate: share of non-empty answers to harmful prompts not judged refusals (greedy)" } }
inventory::submit! { MetricEntry { name: "accuracy", description: "task accuracy from the generated label; unparseable answers count wrong and are reported" } }
