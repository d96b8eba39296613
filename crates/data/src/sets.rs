//! The alignment set: harmful prompts paired with the project's refusals,
//! risky requests with natural safe answers, safety-recovery examples
//! (Qi et al. 2024), mixed with benign instructions.

use std::collections::{BTreeMap, BTreeSet};

use safetune_core::anyhow::bail;
use safetune_core::rng::SeededRng;
use safetune_core::{Example, ExampleKind, Result};

use crate::refusals::refusal_for;

#[derive(Debug, Clone, PartialEq)]
pub struct AlignmentSpec {
    /// Refusal pairs (`None`: every harmful prompt in the pool).
    pub refusals: Option<usize>,
    /// Risky requests with their natural safe answers (Safety-Tuned LLaMAs).
    pub safe_answers: usize,
    /// Safety-recovery examples: a harmful prompt, the first k words of a
    /// harmful answer as given (no loss), then a refusal (Qi et al. 2024's
    /// "deep alignment" augmentation).
    pub recovery: usize,
    pub benign: usize,
    /// How many of the `benign` rows are drawn from the benign look-alikes (see
    /// [`lookalikes`]): harmless instructions that share words with the refusal prompts,
    /// so the refusal is not learnt as a reaction to those words. 0: a plain random draw.
    pub benign_lookalikes: usize,
    /// Labelled task rows from each task of `data.align_tasks` (short-format answers; see
    /// `Pools::align_task`).
    pub task_examples: usize,
    pub seed: u64,
}

/// The pools an alignment set draws from.
#[derive(Clone, Copy)]
pub struct AlignmentPools<'a> {
    /// Harmful prompts whose `response` is a harmful answer or its opening (AdvBench's targets).
    pub harmful_prompts: &'a [Example],
    pub safe_answers: &'a [Example],
    pub benign: &'a [Example],
    /// Per task, labelled rows disjoint from the fine-tuning pool (`Pools::align_task`).
    pub task_rows: &'a [(String, Vec<Example>)],
}

/// A trigger word is at least this many times as common among refusal prompts as among
/// benign ones (document frequencies, add-one smoothed)...
const TRIGGER_RATIO: f64 = 4.0;
/// ...and occurs in at least this many refusal prompts.
const TRIGGER_MIN_COUNT: usize = 5;

/// The distinct lower-cased words of 4 letters or more of a text.
fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphabetic()).filter(|w| w.chars().count() >= 4).map(str::to_lowercase).collect()
}

/// The words that mark refusal prompts in these pools: over-represented among the harmful
/// prompts and safe-answer requests relative to the benign instructions. Derived from the
/// training pools alone (no evaluation prompt is read), so the same for every seed.
pub fn trigger_words(refusal_prompts: &[&str], benign_prompts: &[&str]) -> BTreeSet<String> {
    let df = |texts: &[&str]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for t in texts {
            for w in words(t) {
                *m.entry(w).or_default() += 1;
            }
        }
        m
    };
    let (r, b) = (df(refusal_prompts), df(benign_prompts));
    let (nr, nb) = (refusal_prompts.len() as f64 + 1.0, benign_prompts.len() as f64 + 1.0);
    r.into_iter()
        .filter(|(w, c)| {
            *c >= TRIGGER_MIN_COUNT && (*c as f64 + 1.0) / nr >= TRIGGER_RATIO * (b.get(w).copied().unwrap_or(0) as f64 + 1.0) / nb
        })
        .map(|(w, _)| w)
        .collect()
}

/// Indices of the benign look-alikes: benign instructions that contain a trigger word of
/// the pools' refusal prompts ([`trigger_words`]). Trained with their helpful answers, they
/// tell the model that those words alone are no reason to refuse.
pub fn lookalikes(pools: &AlignmentPools) -> Vec<usize> {
    let refusal: Vec<&str> = pools.harmful_prompts.iter().chain(pools.safe_answers).map(|e| e.prompt.as_str()).collect();
    let benign: Vec<&str> = pools.benign.iter().map(|e| e.prompt.as_str()).collect();
    let triggers = trigger_words(&refusal, &benign);
    benign.iter().enumerate().filter(|(_, p)| words(p).iter().any(|w| triggers.contains(w))).map(|(i, _)| i).collect()
}

pub fn alignment_set(pools: &AlignmentPools, spec: &AlignmentSpec) -> Result<Vec<Example>> {
    let harmful_prompts = pools.harmful_prompts;
    let n_ref = spec.refusals.unwrap_or(harmful_prompts.len());
    if n_ref > harmful_prompts.len() {
        bail!("alignment.refusals: {n_ref} asked for, the harmful-prompt pool has {}", harmful_prompts.len());
    }
    if spec.safe_answers > pools.safe_answers.len() {
        bail!(
            "alignment.safe_answers: {} asked for, the safe-answer pool (Safety-Tuned LLaMAs) has {}",
            spec.safe_answers,
            pools.safe_answers.len()
        );
    }
    if spec.recovery > harmful_prompts.len() {
        bail!("alignment.recovery: {} asked for, the harmful-prompt pool has {}", spec.recovery, harmful_prompts.len());
    }
    if spec.benign > pools.benign.len() {
        bail!("alignment.benign: {} asked for, the benign pool has {}", spec.benign, pools.benign.len());
    }
    if spec.benign_lookalikes > spec.benign {
        bail!("alignment.benign_lookalikes: {} is more than alignment.benign ({})", spec.benign_lookalikes, spec.benign);
    }
    if spec.task_examples > 0 && pools.task_rows.is_empty() {
        bail!("alignment.task_examples: {} asked for, but data.align_tasks names no task", spec.task_examples);
    }
    for (task, rows) in pools.task_rows {
        if spec.task_examples > rows.len() {
            bail!("alignment.task_examples: {} asked for, task `{task}` of data.align_tasks has {}", spec.task_examples, rows.len());
        }
    }
    let mut style = SeededRng::derive(spec.seed, "align/style");
    let mut out: Vec<Example> = SeededRng::derive(spec.seed, "align/refusals")
        .sample_indices(harmful_prompts.len(), n_ref)
        .into_iter()
        .map(|i| {
            let h = &harmful_prompts[i];
            Example::new(h.id.clone(), ExampleKind::Refusal, h.prompt.clone(), refusal_for(&mut style))
        })
        .collect();
    // Drawn from their own seeded streams, so that adding them leaves the draws above unchanged.
    out.extend(
        SeededRng::derive(spec.seed, "align/safe-answers")
            .sample_indices(pools.safe_answers.len(), spec.safe_answers)
            .into_iter()
            .map(|i| pools.safe_answers[i].clone()),
    );
    let mut cut = SeededRng::derive(spec.seed, "align/recovery-cut");
    let mut rstyle = SeededRng::derive(spec.seed, "align/recovery-style");
    for i in SeededRng::derive(spec.seed, "align/recovery").sample_indices(harmful_prompts.len(), spec.recovery) {
        let h = &harmful_prompts[i];
        let words: Vec<&str> = h.response.split_whitespace().collect();
        if words.is_empty() {
            bail!("alignment.recovery: harmful prompt {} has no answer to cut a prefix from", h.id);
        }
        let k = 1 + cut.below(words.len());
        let mut e = Example::new(format!("{}#recovery", h.id), ExampleKind::Refusal, h.prompt.clone(), refusal_for(&mut rstyle));
        e.prefill = Some(format!("{} ", words[..k].join(" ")));
        out.push(e);
    }
    if spec.benign_lookalikes == 0 {
        out.extend(
            SeededRng::derive(spec.seed, "align/benign")
                .sample_indices(pools.benign.len(), spec.benign)
                .into_iter()
                .map(|i| pools.benign[i].clone()),
        );
    } else {
        let like_ids: BTreeSet<usize> = lookalikes(pools).into_iter().collect();
        let (mut like, mut other) = (Vec::new(), Vec::new());
        for (i, e) in pools.benign.iter().enumerate() {
            if like_ids.contains(&i) {
                like.push(e)
            } else {
                other.push(e)
            }
        }
        if spec.benign_lookalikes > like.len() {
            bail!("alignment.benign_lookalikes: {} asked for, the benign pool has {} look-alikes", spec.benign_lookalikes, like.len());
        }
        let rest = spec.benign - spec.benign_lookalikes;
        if rest > other.len() {
            bail!("alignment.benign: {rest} rows besides the look-alikes asked for, the benign pool has {}", other.len());
        }
        for (from, n, stream) in [(&like, spec.benign_lookalikes, "align/benign-lookalikes"), (&other, rest, "align/benign")] {
            out.extend(SeededRng::derive(spec.seed, stream).sample_indices(from.len(), n).into_iter().map(|i| from[i].clone()));
        }
    }
    for (task, rows) in pools.task_rows {
        out.extend(
            SeededRng::derive(spec.seed, &format!("align/task-rows/{task}"))
                .sample_indices(rows.len(), spec.task_examples)
                .into_iter()
                .map(|i| rows[i].clone()),
        );
    }
    SeededRng::derive(spec.seed, "align/order").shuffle(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(kind: ExampleKind, n: usize, tag: &str) -> Vec<Example> {
        (0..n)
            .map(|i| {
                Example::new(format!("{tag}:{i}"), kind, format!("{tag} prompt {i}"), format!("Sure, here is answer {i} in six words"))
            })
            .collect()
    }

    #[test]
    fn recovery_examples_prefill_a_harmful_opening_and_train_a_refusal() {
        let harmful = pool(ExampleKind::Harmful, 20, "h");
        let safe = pool(ExampleKind::Refusal, 10, "s");
        let benign = pool(ExampleKind::Benign, 10, "b");
        let pools = AlignmentPools { harmful_prompts: &harmful, safe_answers: &safe, benign: &benign, task_rows: &[] };
        let spec =
            AlignmentSpec { refusals: Some(5), safe_answers: 4, recovery: 6, benign: 3, benign_lookalikes: 0, task_examples: 0, seed: 7 };
        let set = alignment_set(&pools, &spec).unwrap();
        assert_eq!(set.len(), 5 + 4 + 6 + 3);
        let rec: Vec<&Example> = set.iter().filter(|e| e.prefill.is_some()).collect();
        assert_eq!(rec.len(), 6);
        for e in rec {
            let p = e.prefill.as_deref().unwrap();
            let n = e.id.trim_end_matches("#recovery").rsplit_once(':').unwrap().1;
            // A non-empty prefix of that prompt's harmful answer, then a refusal as the trained response.
            assert!(format!("Sure, here is answer {n} in six words ").starts_with(p), "{p:?}");
            assert!(!p.trim().is_empty());
            assert!(crate::REFUSAL_STYLES.contains(&e.response.as_str()));
            assert_eq!(e.kind, ExampleKind::Refusal);
        }
        // Safe answers keep their own text.
        assert_eq!(set.iter().filter(|e| e.id.starts_with("s:")).count(), 4);
        // Adding safe answers and recovery examples leaves the refusal and benign draws as they were.
        let plain = alignment_set(&pools, &AlignmentSpec { safe_answers: 0, recovery: 0, ..spec.clone() }).unwrap();
        let ids = |v: &[Example], t: &str| {
            let mut x: Vec<String> = v.iter().filter(|e| e.id.starts_with(t) && e.prefill.is_none()).map(|e| e.id.clone()).collect();
            x.sort();
            x
        };
        assert_eq!(ids(&set, "h:"), ids(&plain, "h:"));
        assert_eq!(ids(&set, "b:"), ids(&plain, "b:"));
        let too_many = AlignmentSpec { safe_answers: 11, ..spec.clone() };
        assert!(alignment_set(&pools, &too_many).unwrap_err().to_string().contains("alignment.safe_answers"));
        // Tasks' labelled rows: as many as asked from each task, answers kept, other draws unchanged.
        let rows = [("t".to_string(), pool(ExampleKind::Benign, 12, "t")), ("u".to_string(), pool(ExampleKind::Benign, 9, "u"))];
        let with_rows = AlignmentPools { task_rows: &rows, ..pools };
        let more = alignment_set(&with_rows, &AlignmentSpec { task_examples: 7, ..spec.clone() }).unwrap();
        assert_eq!(more.iter().filter(|e| e.id.starts_with("t:")).count(), 7);
        assert_eq!(more.iter().filter(|e| e.id.starts_with("u:")).count(), 7);
        assert!(more.iter().filter(|e| e.id.starts_with("t:")).all(|e| e.response.starts_with("Sure, here is answer")));
        for t in ["h:", "s:", "b:"] {
            assert_eq!(ids(&more, t), ids(&set, t), "{t}");
        }
        // A task's draw does not depend on the other tasks listed.
        let one = AlignmentPools { task_rows: &rows[..1], ..pools };
        let fewer = alignment_set(&one, &AlignmentSpec { task_examples: 7, ..spec.clone() }).unwrap();
        assert_eq!(ids(&fewer, "t:"), ids(&more, "t:"));
        let err = alignment_set(&with_rows, &AlignmentSpec { task_examples: 10, ..spec.clone() }).unwrap_err().to_string();
        assert!(err.contains("alignment.task_examples") && err.contains("task `u`") && err.contains("has 9"), "{err}");
        let err = alignment_set(&pools, &AlignmentSpec { task_examples: 1, ..spec }).unwrap_err().to_string();
        assert!(err.contains("alignment.task_examples") && err.contains("data.align_tasks"), "{err}");
    }
    #[test]
    fn lookalikes_are_benign_rows_sharing_a_refusal_prompt_word() {
        // Refusal prompts all say "explosive" (and "device" in a few); benign rows mostly do not.
        let harmful: Vec<Example> = (0..12)
            .map(|i| {
                let w = if i < 3 { "device" } else { "thing" };
                Example::new(format!("h:{i}"), ExampleKind::Harmful, format!("make an explosive {w} number {i}"), "Sure")
            })
            .collect();
        let benign: Vec<Example> = (0..40)
            .map(|i| {
                let p = match i % 10 {
                    0 => format!("history of explosive volcanoes {i}"),
                    1 => format!("how does a device work {i}"),
                    _ => format!("write a poem about spring {i}"),
                };
                Example::new(format!("b:{i}"), ExampleKind::Benign, p, "An answer")
            })
            .collect();
        let pools = AlignmentPools { harmful_prompts: &harmful, safe_answers: &[], benign: &benign, task_rows: &[] };
        let refusal: Vec<&str> = harmful.iter().map(|e| e.prompt.as_str()).collect();
        let b: Vec<&str> = benign.iter().map(|e| e.prompt.as_str()).collect();
        // "explosive" is in every refusal prompt and 4 of 40 benign ones; "device" is in 3
        // refusal prompts only (< 5); "make"/"number" never in benign: triggers too; "write" no.
        let t = trigger_words(&refusal, &b);
        assert!(t.contains("explosive") && !t.contains("device") && !t.contains("poem"), "{t:?}");
        let like = lookalikes(&pools);
        assert_eq!(like, (0..40).filter(|i| i % 10 == 0).collect::<Vec<_>>());
        let spec =
            AlignmentSpec { refusals: Some(2), safe_answers: 0, recovery: 0, benign: 10, benign_lookalikes: 3, task_examples: 0, seed: 5 };
        let set = alignment_set(&pools, &spec).unwrap();
        let benign_rows: Vec<&Example> = set.iter().filter(|e| e.id.starts_with("b:")).collect();
        assert_eq!(benign_rows.len(), 10);
        assert_eq!(benign_rows.iter().filter(|e| e.prompt.contains("explosive")).count(), 3);
        let err = alignment_set(&pools, &AlignmentSpec { benign_lookalikes: 5, ..spec.clone() }).unwrap_err().to_string();
        assert!(err.contains("alignment.benign_lookalikes: 5 asked for") && err.contains("4 look-alikes"), "{err}");
        let err = alignment_set(&pools, &AlignmentSpec { benign_lookalikes: 11, ..spec }).unwrap_err().to_string();
        assert!(err.contains("more than alignment.benign"), "{err}");
    }
}
