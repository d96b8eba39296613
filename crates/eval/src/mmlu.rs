//! MMLU accuracy by log-likelihood (Hendrycks et al. 2021's protocol): the
//! question, its four options and `Answer:` as plain text, after k solved
//! questions of the same subject from the dev split; the model's answer is the
//! letter among ` A`–` D` with the highest next-token log-likelihood. No text
//! is generated, so no answer is ever unparseable.

use std::collections::BTreeMap;

use candle_core::{Tensor, D};
use safetune_core::anyhow::{anyhow, bail};
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

/// Questions scored together: a subject's share its few-shot head, which the model may
/// compute once ([`CausalLm::last_logits_sharing`]); at most this many at a time bounds the
/// logits held (`[n, vocab]`).
const GROUP: usize = 64;

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
    let pick = Tensor::new(&letters, model.device())?;
    // Questions of one subject in their order, subjects in order of first appearance.
    let mut groups: Vec<(Option<&String>, Vec<usize>)> = Vec::new();
    for (i, e) in questions.iter().enumerate() {
        let subject = e.meta.get("subject");
        match groups.iter_mut().find(|(s, _)| *s == subject) {
            Some((_, g)) => g.push(i),
            None => groups.push((subject, vec![i])),
        }
    }
    let mut best = vec![0usize; questions.len()];
    for (subject, members) in &groups {
        let examples = dev_by_subject(*subject);
        if examples.len() < shots {
            bail!(
                "MMLU: subject `{}` has {} dev questions, {shots}-shot needs {shots}",
                subject.map(String::as_str).unwrap_or(""),
                examples.len()
            );
        }
        for chunk in members.chunks(GROUP) {
            let seqs =
                chunk.iter().map(|&i| model.tokenizer().encode(&prompt(questions[i], &examples)?)).collect::<Result<Vec<Vec<u32>>>>()?;
            let shared = (0..seqs[0].len()).take_while(|&j| seqs.iter().all(|s| s.get(j) == seqs[0].get(j))).count();
            let scores = model.last_logits_sharing(&seqs, shared)?.index_select(&pick, 1)?;
            for (&i, row) in chunk.iter().zip(scores.argmax(D::Minus1)?.to_vec1::<u32>()?) {
                best[i] = row as usize;
            }
        }
    }
    let mut correct = Vec::with_capacity(questions.len());
    let mut recs = Vec::with_capacity(questions.len());
    for (e, &b) in questions.iter().zip(&best) {
        let ok = e.label.as_deref() == Some(LETTERS[b]);
        correct.push(ok);
        recs.push(GenRecord {
            id: e.id.clone(),
            response: LETTERS[b].to_string(),
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

    /// Scoring a subject's questions together (their few-shot head computed once) picks, for
    /// every question in its place, the letter one whole-prompt forward per question picks.
    #[test]
    fn questions_scored_by_subject_come_back_in_order_with_the_letters_of_single_forwards() {
        let m = safetune_model::tiny_model_with(5, &["Ġ A", "Ġ B", "Ġ C", "Ġ D"]).unwrap();
        let long = "a question long enough that its rest after the shared head is a part of its own?";
        let mut dev = Vec::new();
        for subject in ["astronomy", "virology"] {
            for (i, letter) in LETTERS.iter().enumerate().take(3) {
                let mut d = q(&format!("{subject} dev {i}?"), subject, letter);
                d.id = format!("{subject}-dev{i}");
                dev.push(d);
            }
        }
        let test: Vec<Example> = (0..7)
            .map(|i| {
                let subject = if i % 3 == 0 { "virology" } else { "astronomy" };
                let mut e = q(&format!("t{i} {long}{}", "more ".repeat(i)), subject, LETTERS[i % 4]);
                e.id = format!("t{i}");
                e
            })
            .collect();
        let questions: Vec<&Example> = test.iter().collect();
        let (result, recs) = accuracy(&m, &dev, &questions, 2, 0).unwrap();
        assert_eq!(recs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["t0", "t1", "t2", "t3", "t4", "t5", "t6"]);
        let letters = letter_ids(&m).unwrap();
        let mut correct = 0;
        for (e, r) in questions.iter().zip(&recs) {
            let shots: Vec<&Example> = dev.iter().filter(|d| d.meta.get("subject") == e.meta.get("subject")).take(2).collect();
            let ids = m.tokenizer().encode(&prompt(e, &shots).unwrap()).unwrap();
            let row = safetune_core::model::last_logits_each(&m, &[ids]).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
            let scores: Vec<f32> = letters.iter().map(|&l| row[l as usize]).collect();
            let want = (0..4).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
            assert_eq!(r.response, LETTERS[want], "{}", e.id);
            correct += usize::from(e.label.as_deref() == Some(LETTERS[want]));
        }
        assert_eq!(result.accuracy.n, 7);
        assert!((result.accuracy.value - correct as f64 / 7.0).abs() < 1e-12);
        assert!(accuracy(&m, &dev, &questions, 4, 0).unwrap_err().to_string().contains("4-shot needs 4"));
    }
}
