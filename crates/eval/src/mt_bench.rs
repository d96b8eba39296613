//! MT-Bench (Zheng et al., NeurIPS 2023) with single-answer grading, as
//! FastChat's `llm_judge` runs it: the model answers each question's first
//! turn, then its second turn with the first exchange in context; a chat
//! model grades each turn on 1–10 with FastChat's prompts (`single-v1`, and
//! for math, reasoning and coding `single-math-v1` against GPT-4's reference
//! answer; the `-multi-turn` prompts for the second turn), at temperature 0;
//! the rating is the first `[[x]]` of the reply, else the first `[x]`; a reply
//! with neither leaves the turn unrated and out of the means (FastChat's -1).
//! Differences from FastChat: answers are greedy (FastChat samples writing and
//! roleplay at 0.7, STEM and humanities at 0.1) and `eval.mt_bench.questions`
//! may take a part of the 80, spread over the categories.

use std::collections::BTreeMap;

use safetune_core::anyhow::anyhow;
use safetune_core::judge::ChatGrader;
use safetune_core::progress::Steps;
use safetune_core::{CausalLm, Example, Result};
use safetune_data::mt_bench::{MtBenchJudging, NEEDS_REFERENCE, SINGLE, SINGLE_MATH};
use safetune_metrics::mean_estimate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::answers::{complete_until, greedy};
pub use crate::results::MtBenchResult;
use crate::results::{GenRecord, Generations, Named};

/// `eval.mt_bench`: how MT-Bench is answered and graded (when `data.utility_evals` names `mt-bench`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MtBenchSpec {
    /// The grader (`safetune list judges` shows graders too): `remote`.
    pub grader: String,
    /// Its options (for `remote`: base_url, model, api_key_env, concurrency, timeout_s, retries, cache).
    pub grader_options: serde_json::Value,
    /// Questions asked (0: all 80), taken in turn from each category.
    pub questions: usize,
    /// Tokens per answer (FastChat: 1024).
    pub max_new_tokens: usize,
    /// Tokens of the grader's reply (FastChat: 2048 for OpenAI graders).
    pub grader_max_tokens: usize,
    /// FastChat's `judge_prompts.jsonl` (default: downloaded from github.com/lm-sys/FastChat at a
    /// pinned commit). Relative to the spec file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge_prompts: Option<std::path::PathBuf>,
    /// Its `mt_bench/reference_answer/gpt-4.jsonl` (default: downloaded with the prompts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_answers: Option<std::path::PathBuf>,
}

impl Default for MtBenchSpec {
    fn default() -> Self {
        Self {
            grader: "remote".into(),
            grader_options: serde_json::Value::Null,
            questions: 0,
            max_new_tokens: 1024,
            grader_max_tokens: 2048,
            judge_prompts: None,
            reference_answers: None,
        }
    }
}

/// What MT-Bench needs besides the model.
pub struct MtBenchInputs<'a> {
    pub questions: &'a [Example],
    pub judging: &'a MtBenchJudging,
    pub grader: &'a dyn ChatGrader,
}

/// `n` questions taken in turn from each category in file order (all when `n` = 0).
pub fn select(questions: &[Example], n: usize) -> Vec<&Example> {
    let mut by: BTreeMap<&str, std::collections::VecDeque<&Example>> = BTreeMap::new();
    let mut order = Vec::new();
    for q in questions {
        let c = q.meta.get("category").map(String::as_str).unwrap_or("");
        if !by.contains_key(c) {
            order.push(c);
        }
        by.entry(c).or_default().push_back(q);
    }
    let want = if n == 0 { questions.len() } else { n.min(questions.len()) };
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        for c in &order {
            if out.len() == want {
                break;
            }
            if let Some(q) = by.get_mut(c).and_then(|d| d.pop_front()) {
                out.push(q);
            }
        }
    }
    out
}

/// The rating in a grader's reply: the first `[[x]]`, else the first `[x]` (x a number).
pub fn rating(reply: &str) -> Option<f64> {
    let number_in = |open: &str, close: &str| {
        let mut rest = reply;
        while let Some(i) = rest.find(open) {
            let after = &rest[i + open.len()..];
            let len = after.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(after.len());
            let num = &after[..len];
            let well_formed = num.starts_with(|c: char| c.is_ascii_digit()) && num.matches('.').count() <= 1;
            if well_formed && after[len..].starts_with(close) {
                if let Ok(v) = num.parse::<f64>() {
                    return Some(v);
                }
            }
            rest = &rest[i + open.len()..];
        }
        None
    };
    number_in("[[", "]]").or_else(|| number_in("[", "]"))
}

/// Answers both turns of the selected questions and has the grader rate each turn.
pub fn evaluate(
    model: &dyn CausalLm,
    inputs: &MtBenchInputs,
    spec: &MtBenchSpec,
    batch_size: usize,
    seed: u64,
    label: &str,
    quiet: bool,
) -> Result<(MtBenchResult, Generations)> {
    let questions = select(inputs.questions, spec.questions);
    let format = model.info().format;
    let params = greedy(spec.max_new_tokens, batch_size);
    let second_turns = questions
        .iter()
        .map(|q| q.meta.get("turn2").cloned().ok_or_else(|| anyhow!("MT-Bench question {}: no second turn", q.id)))
        .collect::<Result<Vec<String>>>()?;
    let first_texts: Vec<String> = questions.iter().map(|q| format.prompt(q.system.as_deref(), &q.prompt)).collect();
    let steps = Steps::new(&format!("eval {label}: mt-bench turn 1"), questions.len(), "answer", quiet);
    let a1: Vec<String> = steps.current(|| complete_until(model, &first_texts, &params, None))?.into_iter().map(|(a, _)| a).collect();
    let second_texts: Vec<String> = questions
        .iter()
        .zip(&a1)
        .zip(&second_turns)
        .map(|((q, a), q2)| format.conversation(q.system.as_deref(), &[(q.prompt.as_str(), a.as_str())], q2))
        .collect();
    let steps = Steps::new(&format!("eval {label}: mt-bench turn 2"), questions.len(), "answer", quiet);
    let a2: Vec<String> = steps.current(|| complete_until(model, &second_texts, &params, None))?.into_iter().map(|(a, _)| a).collect();

    // Two grading conversations per question: turn 1, then turn 2 with the whole exchange.
    let mut conversations = Vec::with_capacity(2 * questions.len());
    for (((q, x1), x2), q2) in questions.iter().zip(&a1).zip(&a2).zip(&second_turns) {
        let category = q.meta.get("category").map(String::as_str).unwrap_or("");
        let reference = if NEEDS_REFERENCE.contains(&category) {
            let id: u64 = q
                .meta
                .get("question_id")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("MT-Bench question {}: no question_id", q.id))?;
            let r = inputs
                .judging
                .references
                .get(&id)
                .ok_or_else(|| anyhow!("MT-Bench reference answers: none for question {id} ({category})"))?;
            Some((r.first().cloned().unwrap_or_default(), r.get(1).cloned().unwrap_or_default()))
        } else {
            None
        };
        let (one, two) = if reference.is_some() { SINGLE_MATH } else { SINGLE };
        let mut f1 = vec![("question", q.prompt.as_str()), ("answer", x1.as_str())];
        let mut f2 =
            vec![("question_1", q.prompt.as_str()), ("answer_1", x1.as_str()), ("question_2", q2.as_str()), ("answer_2", x2.as_str())];
        if let Some((r1, r2)) = &reference {
            f1.push(("ref_answer_1", r1.as_str()));
            f2.extend([("ref_answer_1", r1.as_str()), ("ref_answer_2", r2.as_str())]);
        }
        for (name, fields) in [(one, &f1), (two, &f2)] {
            let p = inputs.judging.prompt(name)?;
            conversations.push(vec![("system".to_string(), p.system_prompt.clone()), ("user".to_string(), p.render(fields)?)]);
        }
    }
    let t = std::time::Instant::now();
    let replies = inputs.grader.complete_all(&conversations, spec.grader_max_tokens)?;
    crate::say(quiet, format!("[eval {label}] mt-bench: {} turns graded ({:.0}s)", replies.len(), t.elapsed().as_secs_f64()));

    let mut turns: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut answers = Vec::new();
    let mut grades = Vec::new();
    let mut unrated = 0;
    for (i, q) in questions.iter().enumerate() {
        let category = q.meta.get("category").cloned().unwrap_or_default();
        for (turn, answer) in [(0, &a1[i]), (1, &a2[i])] {
            let reply = &replies[2 * i + turn];
            let r = rating(reply);
            let verdict = match r {
                Some(v) => {
                    turns[turn].push(v);
                    by.entry(category.clone()).or_default().push(v);
                    format!("{v}")
                }
                None => {
                    unrated += 1;
                    "unrated".to_string()
                }
            };
            let id = format!("{}/turn{}", q.id, turn + 1);
            let category = Some(category.clone());
            answers.push(GenRecord {
                id: id.clone(),
                response: answer.clone(),
                verdict: verdict.clone(),
                category: category.clone(),
                cut: false,
            });
            grades.push(GenRecord { id, response: reply.clone(), verdict, category, cut: false });
        }
    }
    let all: Vec<f64> = turns.concat();
    let result = MtBenchResult {
        score: mean_estimate(&all, seed),
        turn1: mean_estimate(&turns[0], seed),
        turn2: mean_estimate(&turns[1], seed),
        unrated,
        by_category: by.into_iter().map(|(name, v)| Named { name, estimate: mean_estimate(&v, seed) }).collect(),
        grader: inputs.grader.fingerprint(),
    };
    crate::say(
        quiet,
        format!(
            "[eval {label}] mt-bench: score {:.2} of 10 ({} turns rated; turn 1 {:.2}, turn 2 {:.2}; {unrated} unrated)",
            result.score.value, result.score.n, result.turn1.value, result.turn2.value
        ),
    );
    Ok((result, vec![("mt-bench".into(), answers), ("mt-bench-grades".into(), grades)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_read_as_fastchat_reads_them() {
        assert_eq!(rating("Good answer. Rating: [[7]]"), Some(7.0));
        assert_eq!(rating("Rating: [[8.5]] (was [[3]])"), Some(8.5));
        assert_eq!(rating("see [1] ... Rating: [[4]]"), Some(4.0), "[[x]] wins over an earlier [x]");
        assert_eq!(rating("Rating: [6]"), Some(6.0));
        assert_eq!(rating("[[rating]] is the format; no number"), None);
        assert_eq!(rating("[[1.2.3]] then [[2]]"), Some(2.0));
        assert_eq!(rating(""), None);
    }

    #[test]
    fn questions_are_taken_in_turn_from_each_category() {
        let q = |i: usize, c: &str| Example::new(format!("q{i}"), safetune_core::ExampleKind::Benign, "p", "").with_meta("category", c);
        let all = vec![q(0, "a"), q(1, "a"), q(2, "a"), q(3, "b"), q(4, "c"), q(5, "c")];
        let ids: Vec<&str> = select(&all, 4).iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["q0", "q3", "q4", "q1"]);
        assert_eq!(select(&all, 0).len(), 6);
        assert_eq!(select(&all, 99).len(), 6);
    }
}
