//! MMLU accuracy by log-likelihood (Hendrycks et al. 2021's protocol): the
//! question, its four options and `Answer:` as plain text, after k solved
//! questions of the same subject from the dev split; the model's answer is the
//! letter among ` A`–` D` with the highest next-token log-likelihood. No text
//! is generated, so no answer is ever unparseable.

use std::collections::BTreeMap;

use candle_core::{Tensor, D};
use safetune_core::anyhow::{anyhow, bail};
use safetune_core::model::ForwardRequest;
use safetune_core::rng::SeededRng;
use safetune_core::{CausalLm, Example, Result};

use crate::results::{GenRecord, MmluResult};

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

fn question(e: &Example, answer: bool) -> Result<String> {
    let mut s = format!("{}\n", e.prompt.trim());
    for l in LETTERS {
        let option = e.meta.get(l).ok_or_else(|| anyhow!("MMLU example {}: no option {l}", e.id))?;
        s.push_str(&format!("{l}. {}\n", option.trim()));
    }
    s.push_str("Answer:");
    if answer {
        s.push_str(&format!(" {}\n\n", e.label.as_deref().unwrap_or("")));
    }
    Ok(s)
}

/// The prompt of a test question after `shots` dev questions of its subject.
pub fn prompt(e: &Example, shots: &[&Example]) -> Result<String> {
    let subject = e.meta.get("subject").map(|s| s.replace('_', " ")).unwrap_or_default();
    let mut s = format!("The following are multiple choice questions (with answers) about {subject}.\n\n");
    for q in shots {
        s.push_str(&question(q, true)?);
    }
    s.push_str(&question(e, false)?);
    Ok(s)
}

/// `n` test questions spread evenly over subjects: a seeded order within each
/// subject, then one question per subject in turn (all when `n` = 0).
pub fn select(test: &[Example], n: usize) -> Vec<&Example> {
    let mut by_subject: BTreeMap<&str, Vec<&Example>> = BTreeMap::new();
    for e in test {
        by_subject.entry(e.meta.get("subject").map(String::as_str).unwrap_or("")).or_default().push(e);
    }
    let mut queues: Vec<Vec<&Example>> = by_subject
        .into_iter()
        .map(|(s, mut v)| {
            SeededRng::derive(0, &format!("mmlu/{s}")).shuffle(&mut v);
            v.reverse();
            v
        })
        .collect();
    let want = if n == 0 { test.len() } else { n.min(test.len()) };
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        for q in queues.iter_mut() {
            if out.len() < want {
                if let Some(e) = q.pop() {
                    out.push(e);
                }
            }
        }
    }
    out
}

/// The token id of ` A` … ` D` (the last token of each encoding).
fn letter_ids(model: &dyn CausalLm) -> Result<[u32; 4]> {
    let mut ids = [0u32; 4];
    let base = model.tokenizer().encode("Answer:")?;
    for (i, l) in LETTERS.iter().enumerate() {
        let enc = model.tokenizer().encode(&format!("Answer: {l}"))?;
        if enc.len() != base.len() + 1 || enc[..base.len()] != base[..] {
            bail!("the tokenizer does not give ` {l}` one token after `Answer:`");
        }
        ids[i] = enc[base.len()];
    }
    Ok(ids)
}

/// Accuracy on `questions` with `shots` dev examples of the same subject each,
/// and one record per question (id, the letter chosen, correct/wrong).
pub fn accuracy(
    model: &dyn CausalLm,
    dev: &[Example],
    questions: &[&Example],
    shots: usize,
    seed: u64,
) -> Result<(MmluResult, Vec<GenRecord>)> {
    let letters = letter_ids(model)?;
    let dev_by_subject = |s: Option<&String>| -> Vec<&Example> { dev.iter().filter(|d| d.meta.get("subject") == s).take(shots).collect() };
    let dev_ = model.device().clone();
    let pick = Tensor::new(&letters, &dev_)?;
    let mut correct = Vec::with_capacity(questions.len());
    let mut recs = Vec::with_capacity(questions.len());
    for e in questions {
        let examples = dev_by_subject(e.meta.get("subject"));
        if examples.len() < shots {
            bail!(
                "MMLU: subject `{}` has {} dev questions, {shots}-shot needs {shots}",
                e.meta.get("subject").map(String::as_str).unwrap_or(""),
                examples.len()
            );
        }
        let ids = model.tokenizer().encode(&prompt(e, &examples)?)?;
        let t = ids.len();
        let ids = Tensor::from_vec(ids, (1, t), &dev_)?;
        let last = Tensor::new(&[(t - 1) as u32], &dev_)?;
        let out = model.forward(&ForwardRequest { ids: Some(&ids), logits_at: Some(&last), ..Default::default() })?;
        let scores = out.logits.flatten_all()?.index_select(&pick, 0)?;
        let best = scores.argmax(D::Minus1)?.to_scalar::<u32>()? as usize;
        let ok = e.label.as_deref() == Some(LETTERS[best]);
        correct.push(ok);
        recs.push(GenRecord {
            id: e.id.clone(),
            response: LETTERS[best].to_string(),
            verdict: if ok { "correct" } else { "wrong" }.into(),
            category: None,
            cut: false,
        });
    }
    Ok((MmluResult { shots, accuracy: safetune_metrics::proportion(&correct, seed) }, recs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetune_core::ExampleKind;

    fn q(id: &str, subject: &str, label: &str) -> Example {
        let mut e = Example::new(id, ExampleKind::Task, format!("Question {id}?"), "").with_label(label).with_meta("subject", subject);
        for l in LETTERS {
            e = e.with_meta(l, format!("option {l}"));
        }
        e
    }

    #[test]
    fn prompts_follow_the_mmlu_layout_and_selection_is_balanced() {
        let shot = q("d1", "high_school_physics", "C");
        let p = prompt(&q("t1", "high_school_physics", "B"), &[&shot]).unwrap();
        assert_eq!(
            p,
            "The following are multiple choice questions (with answers) about high school physics.\n\n\
             Question d1?\nA. option A\nB. option B\nC. option C\nD. option D\nAnswer: C\n\n\
             Question t1?\nA. option A\nB. option B\nC. option C\nD. option D\nAnswer:"
        );
        let test: Vec<Example> =
            (0..10).map(|i| q(&format!("a{i}"), "a", "A")).chain((0..3).map(|i| q(&format!("b{i}"), "b", "B"))).collect();
        let picked = select(&test, 4);
        let subjects: Vec<&str> = picked.iter().map(|e| e.meta["subject"].as_str()).collect();
        assert_eq!(subjects, ["a", "b", "a", "b"]);
        assert_eq!(select(&test, 4).iter().map(|e| &e.id).collect::<Vec<_>>(), picked.iter().map(|e| &e.id).collect::<Vec<_>>(), "seeded");
        assert_eq!(select(&test, 0).len(), 13);
        assert_eq!(select(&test, 100).len(), 13);
    }
}
