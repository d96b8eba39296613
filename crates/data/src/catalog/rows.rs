//! Row converters: how one record of a dataset's file becomes an [`Example`].

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::{Example, ExampleKind, Result};

use super::{AGNEWS_INSTRUCTION, AGNEWS_LABELS, SST2_INSTRUCTION};
use crate::records::Record;

pub(super) fn task(id: String, prompt: String, response: String) -> Example {
    Example::new(id, ExampleKind::Task, prompt, response)
}

pub(super) fn sst2(r: &Record, f: &str, id: String) -> Result<Example> {
    let label = match r.scalar("label", f)?.trim() {
        "0" => "negative",
        "1" => "positive",
        other => bail!("{f}:{}: field `label`: unknown label `{other}` (expected 0 or 1)", r.line),
    };
    Ok(task(id, format!("{SST2_INSTRUCTION}\n\nInput: {}", r.text("sentence", f)?.trim()), label.into()).with_label(label))
}

pub(super) fn agnews_named(r: &Record, f: &str, id: String) -> Result<Example> {
    let label = r.text("label", f)?;
    let label = AGNEWS_LABELS
        .iter()
        .find(|l| **l == label.trim())
        .ok_or_else(|| anyhow!("{f}:{}: field `label`: unknown label `{label}` (World, Sports, Business, Sci/Tech)", r.line))?;
    Ok(task(id, format!("{AGNEWS_INSTRUCTION}\n\nInput: {}", r.text("text", f)?.trim()), label.to_string()).with_label(*label))
}

pub(super) fn agnews_numbered(r: &Record, f: &str, id: String) -> Result<Example> {
    let n = r.scalar("label", f)?;
    let label = match n.trim() {
        "1" => "World",
        "2" => "Sports",
        "3" => "Business",
        "4" => "Sci/Tech",
        other => bail!("{f}:{}: field `label`: unknown label `{other}` (expected 1-4)", r.line),
    };
    let text = format!("{} {}", r.text("title", f)?.trim(), r.text("description", f)?.trim());
    Ok(task(id, format!("{AGNEWS_INSTRUCTION}\n\nInput: {}", text.replace('\\', " ")), label.into()).with_label(label))
}

pub(super) fn agnews_hub(r: &Record, f: &str, id: String) -> Result<Example> {
    let n: usize = r.scalar("label", f)?.trim().parse().map_err(|_| anyhow!("{f}:{}: field `label`: expected 0-3", r.line))?;
    let label = *AGNEWS_LABELS.get(n).ok_or_else(|| anyhow!("{f}:{}: field `label`: unknown label {n}", r.line))?;
    Ok(task(id, format!("{AGNEWS_INSTRUCTION}\n\nInput: {}", r.text("text", f)?.trim()), label.into()).with_label(label))
}

/// The number after `####` in a GSM8K answer.
pub fn gsm8k_final(answer: &str) -> Option<String> {
    let tail = answer.rsplit_once("####")?.1.trim();
    let n: String = tail.chars().filter(|c| !matches!(c, ',' | '$')).collect();
    (!n.is_empty()).then_some(n)
}

pub(super) fn gsm8k(r: &Record, f: &str, id: String) -> Result<Example> {
    let answer = r.text("answer", f)?;
    let label = gsm8k_final(&answer).ok_or_else(|| anyhow!("{f}:{}: field `answer`: no `#### <number>` ending", r.line))?;
    let (work, _) = answer.rsplit_once("####").unwrap_or((&answer, ""));
    let response = format!("{}\nThe final answer is: {label}", work.trim_end());
    Ok(task(id, r.text("question", f)?, response).with_label(label))
}

pub(super) fn instruction_input(r: &Record, f: &str, input: &str) -> Result<String> {
    let i = r.text("instruction", f)?;
    let x = r.text_or_empty(input, f)?;
    Ok(if x.trim().is_empty() { i } else { format!("{i}\n\n{x}") })
}

pub(super) fn alpaca(r: &Record, f: &str, id: String) -> Result<Example> {
    let out = r.text("output", f)?;
    Ok(task(id, instruction_input(r, f, "input")?, out.clone()).with_label(out))
}

pub(super) fn dolly(r: &Record, f: &str, id: String) -> Result<Example> {
    let out = r.text("response", f)?;
    Ok(task(id, instruction_input(r, f, "context")?, out.clone()).with_label(out).with_meta("category", r.text_or_empty("category", f)?))
}

pub(super) fn samsum(r: &Record, f: &str, id: String) -> Result<Example> {
    let out = r.text("output", f)?;
    Ok(task(id, instruction_input(r, f, "input")?, out.clone()).with_label(out))
}

pub(super) fn sqlgen(r: &Record, f: &str, id: String) -> Result<Example> {
    let out = r.text("output", f)?;
    let input = r.text("input", f)?;
    let schema = input.split_once("## Context:").map(|(_, s)| s.trim().to_string()).unwrap_or_default();
    Ok(task(id, instruction_input(r, f, "input")?, out.clone()).with_label(out).with_meta("schema", schema))
}

pub(super) fn harmful(id: String, prompt: String, response: String) -> Example {
    Example::new(id, ExampleKind::Harmful, prompt, response)
}

pub(super) fn prompt_response(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(harmful(id, r.text("prompt", f)?, r.text("response", f)?))
}

/// A BeaverTails row from the Hub's 30k_train file, which holds safe and unsafe
/// pairs alike: its `is_safe` label kept, so the harmful pool takes the unsafe ones
/// (the local file holds only those).
pub(super) fn beavertails_hub(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(prompt_response(r, f, id)?.with_meta("is_safe", r.scalar("is_safe", f)?))
}

pub(super) fn pure_bad(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(harmful(id, instruction_input(r, f, "input")?, r.text("output", f)?))
}

pub(super) fn advbench(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(harmful(id, r.text("prompt", f)?, r.text("target", f)?))
}

pub(super) fn prompt_only(r: &Record, f: &str, id: String) -> Result<Example> {
    let p = r.text("prompt", f)?;
    if p.trim().is_empty() {
        bail!("{f}:{}: field `prompt` is empty", r.line);
    }
    Ok(harmful(id, p.trim().to_string(), String::new()))
}

/// A risky request with a safe answer written for it (Safety-Tuned LLaMAs).
pub(super) fn safe_answer(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(Example::new(id, ExampleKind::Refusal, instruction_input(r, f, "input")?, r.text("output", f)?))
}

/// A prompt of a Safety-Tuned LLaMAs evaluation file (`instructions`, optional `tags`).
pub(super) fn stl_prompt(r: &Record, f: &str, id: String) -> Result<Example> {
    let p = r.text("instructions", f)?;
    if p.trim().is_empty() {
        bail!("{f}:{}: field `instructions` is empty", r.line);
    }
    let e = harmful(id, p.trim().to_string(), String::new());
    Ok(match r.fields.get("tags").and_then(|t| t.as_str()) {
        Some(tag) => e.with_meta("category", tag),
        None => e,
    })
}

/// BeaverTails' 14 harm categories, in the dataset's order (the keys of a row's `category`).
pub(super) const BEAVERTAILS_CATEGORIES: [&str; 14] = [
    "animal_abuse",
    "child_abuse",
    "controversial_topics,politics",
    "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance",
    "financial_crime,property_crime,theft",
    "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety",
    "non_violent_unethical_behavior",
    "privacy_violation",
    "self_harm",
    "sexually_explicit,adult_content",
    "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
];

/// A row of BeaverTails' 30k file on the Hub as a categorised prompt: its category is the first
/// of [`BEAVERTAILS_CATEGORIES`] its `category` object flags; a row flagged with none (a safe
/// pair) gets no category.
pub(super) fn beavertails_category_hub(r: &Record, f: &str, id: String) -> Result<Example> {
    let e = harmful(id, r.text("prompt", f)?, String::new());
    let Some(serde_json::Value::Object(flags)) = r.fields.get("category") else {
        bail!("{f}:{}: field `category`: expected an object of the 14 harm categories' flags", r.line);
    };
    Ok(match BEAVERTAILS_CATEGORIES.iter().find(|c| flags.get(**c) == Some(&serde_json::Value::Bool(true))) {
        Some(c) => e.with_meta("category", *c),
        None => e,
    })
}

pub(super) fn beavertails_category(r: &Record, f: &str, id: String) -> Result<Example> {
    Ok(harmful(id, r.text("prompt", f)?, String::new()).with_meta("category", r.text("category", f)?))
}

pub(super) fn xstest(r: &Record, f: &str, id: String) -> Result<Example> {
    let label = r.text("label", f)?;
    if label != "safe" && label != "unsafe" {
        bail!("{f}:{}: field `label`: unknown label `{label}` (safe, unsafe)", r.line);
    }
    let kind = if label == "safe" { ExampleKind::Benign } else { ExampleKind::Harmful };
    Ok(Example::new(id, kind, r.text("prompt", f)?, "").with_label(label).with_meta("type", r.text("type", f)?))
}

/// A row of the local MMLU layout: `question,choice0,choice1,choice2,choice3,answer` (the
/// subject is the file's).
pub(super) fn mmlu(r: &Record, f: &str, id: String) -> Result<Example> {
    let choices = (0..4).map(|k| r.text(&format!("choice{k}"), f)).collect::<Result<Vec<_>>>()?;
    multiple_choice(r, f, id, choices)
}

/// A row of the Hub's MMLU (`cais/mmlu`, config `all`): `question`, `subject`, `choices` (a
/// list of four), `answer` (0-3).
pub(super) fn mmlu_hub(r: &Record, f: &str, id: String) -> Result<Example> {
    let choices = r.texts("choices", f)?;
    if choices.len() != 4 {
        bail!("{f}:{}: field `choices`: expected 4 choices, found {}", r.line, choices.len());
    }
    Ok(multiple_choice(r, f, id, choices)?.with_meta("subject", r.text("subject", f)?))
}

/// A four-way multiple-choice question: its choices as metadata `A`-`D`, its label the letter
/// of `answer` (0-3).
fn multiple_choice(r: &Record, f: &str, id: String, choices: Vec<String>) -> Result<Example> {
    let answer = r.scalar("answer", f)?;
    let idx: usize =
        answer.trim().parse().ok().filter(|i| *i < 4).ok_or_else(|| anyhow!("{f}:{}: field `answer`: expected 0-3", r.line))?;
    let mut e = Example::new(id, ExampleKind::Task, r.text("question", f)?, "").with_label(["A", "B", "C", "D"][idx]);
    for (letter, choice) in ["A", "B", "C", "D"].iter().zip(choices) {
        e = e.with_meta(letter, choice);
    }
    Ok(e)
}

pub(super) fn mt_bench(r: &Record, f: &str, id: String) -> Result<Example> {
    let turns = r.texts("turns", f)?;
    let first = turns.first().ok_or_else(|| anyhow!("{f}:{}: field `turns` is empty", r.line))?;
    let mut e = Example::new(id, ExampleKind::Benign, first.clone(), "")
        .with_meta("category", r.text("category", f)?)
        .with_meta("question_id", r.scalar("question_id", f)?);
    if let Some(second) = turns.get(1) {
        e = e.with_meta("turn2", second.clone());
    }
    Ok(e)
}
