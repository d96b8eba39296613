//! `safetune rejudge RUN_DIR [--judge NAME]`: recomputes every safety verdict
//! and ASR of a results directory from its stored answers (no generation), for
//! judges that read the answer alone. The result is what a fresh evaluation
//! with that judge would give: answers do not depend on the judge, and the
//! bootstrap uses the run's seed.

use std::path::Path;

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::judge::{Judge, Judgement, Verdict};
use safetune_core::registry;
use safetune_core::Result;

use crate::evaluate::{refusal_rate_of, verdict_name};
use crate::hashing::write_atomic;
use crate::hashing::write_json;
use crate::results::CellResult;
use crate::results::{GenRecord, ModelEval};
use crate::spec::RunSpec;

/// The file marking a sub-run copied by `report --from ... --scores-only` (`merge.rs`): it has no
/// answers to judge.
pub const SCORES_ONLY: &str = "scores-only.txt";

pub(crate) fn write_records(path: &Path, recs: &[GenRecord]) -> Result<()> {
    let mut out = String::new();
    for r in recs {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    write_atomic(path, out.as_bytes())
}

pub(crate) fn read_records(path: &Path) -> Result<Vec<GenRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines().enumerate().map(|(i, l)| serde_json::from_str(l).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))).collect()
}

/// Re-judges every answer of one generations file in place; returns the
/// records (with their new verdicts) and the judgements, in file order.
fn rejudge_file(file: &Path, judge: &dyn Judge) -> Result<(Vec<GenRecord>, Vec<Judgement>)> {
    let mut recs = read_records(file)?;
    let pairs: Vec<(String, String)> = recs.iter().map(|r| (String::new(), r.response.clone())).collect();
    let judgements = judge.judge_all(&pairs)?;
    for (r, j) in recs.iter_mut().zip(&judgements) {
        r.verdict = verdict_name(j.verdict).into();
    }
    write_records(file, &recs)?;
    Ok((recs, judgements))
}

/// The first generations file (under `dir`, recursively, in name order) holding an answer cut at a settled verdict.
fn first_cut_answers(dir: &Path) -> Result<Option<std::path::PathBuf>> {
    let mut entries: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
        Ok(r) => r.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Ok(None),
    };
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if let Some(f) = first_cut_answers(&p)? {
                return Ok(Some(f));
            }
        } else if p.extension().is_some_and(|e| e == "jsonl") && read_records(&p)?.iter().any(|r| r.cut) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

fn verdicts(judgements: &[Judgement]) -> Vec<Verdict> {
    judgements.iter().map(|j| j.verdict).collect()
}

/// Re-judges one evaluated model's safety sets in place; returns (set, old ASR, new ASR).
fn rejudge_eval(eval: &mut ModelEval, gen_dir: &Path, judge: &dyn Judge, seed: u64) -> Result<Vec<(String, f64, f64)>> {
    let mut changes = Vec::new();
    // The prompts asked again are a prefix of the set: those up to the last with extra answers.
    let asked_again = |per: &[Vec<Verdict>]| per.iter().rposition(|v| !v.is_empty()).map_or(0, |i| i + 1);
    for s in &mut eval.safety {
        let (recs, judgements) = rejudge_file(&gen_dir.join(format!("{}.jsonl", s.set)), judge)?;
        let default = verdicts(&judgements);
        let (asr, empty) = safetune_metrics::asr_of(&default, seed);
        s.by_category = crate::evaluate::per_category(&recs, &default, seed);
        s.harmful_score = safetune_metrics::harm_of(&judgements, seed);
        changes.push((s.set.clone(), s.asr.value, asr.value));
        s.asr = asr;
        s.empty = empty;
        // Answers beyond the greedy one: samples (`<id>#<k>`) and surface variants (`<id>@<variant>`).
        let index: std::collections::HashMap<&str, usize> = recs.iter().enumerate().map(|(i, r)| (r.id.as_str(), i)).collect();
        let mut others: Vec<Vec<Verdict>> = vec![Vec::new(); recs.len()];
        let mut regroup = |suffix: &str, sep: char| -> Result<Vec<Vec<Verdict>>> {
            let (extra, judged) = rejudge_file(&gen_dir.join(format!("{}.{suffix}.jsonl", s.set)), judge)?;
            let mut per: Vec<Vec<Verdict>> = vec![Vec::new(); recs.len()];
            for (r, j) in extra.iter().zip(&judged) {
                let prompt = r.id.rsplit_once(sep).map(|(p, _)| p).unwrap_or(&r.id);
                let i = *index.get(prompt).ok_or_else(|| anyhow!("{}: answer {} has no prompt in {}.jsonl", suffix, r.id, s.set))?;
                per[i].push(j.verdict);
                others[i].push(j.verdict);
            }
            // Only the first `eval.consistency_limit` prompts are asked again.
            per.truncate(asked_again(&per));
            Ok(per)
        };
        if s.asr_at_k.is_some() {
            let at_k = safetune_metrics::any_compliance(&regroup("samples", '#')?, seed);
            changes.push((format!("{} (ASR@K)", s.set), s.asr_at_k.as_ref().map(|e| e.value).unwrap_or(0.0), at_k.value));
            s.asr_at_k = Some(at_k);
        }
        if s.variant_asr.is_some() {
            let mut per = regroup("variants", '@')?;
            for (p, d) in per.iter_mut().zip(&default) {
                // (`per` holds the prompts asked again only: zip stops there.)
                p.push(*d);
            }
            let v = safetune_metrics::any_compliance(&per, seed);
            changes.push((format!("{} (any variant)", s.set), s.variant_asr.as_ref().map(|e| e.value).unwrap_or(0.0), v.value));
            s.variant_asr = Some(v);
        }
        if s.refusal_consistency.is_some() {
            let n = asked_again(&others);
            s.refusal_consistency = Some(safetune_metrics::refusal_consistency(&default[..n], &others[..n], seed));
        }
    }
    for s in &mut eval.over_refusal {
        let (recs, judgements) = rejudge_file(&gen_dir.join(format!("{}.jsonl", s.set)), judge)?;
        let judged = verdicts(&judgements);
        let (rate, empty) = refusal_rate_of(&judged, seed);
        s.by_category = crate::evaluate::refusal_per_category(&recs, &judged, seed);
        changes.push((format!("{} (refused)", s.set), s.refusal_rate.value, rate.value));
        s.refusal_rate = rate;
        s.empty = empty;
    }
    Ok(changes)
}

/// `safetune rejudge`'s flags.
#[derive(clap::Args, Debug)]
pub struct RejudgeArgs {
    /// A results directory
    run_dir: std::path::PathBuf,
    /// The judge to apply [default: the run's]
    #[arg(long)]
    judge: Option<String>,
    /// The judge's options, a JSON object [default: the run's, for the run's judge]
    #[arg(long, value_name = "JSON")]
    judge_options: Option<String>,
}

pub fn main(args: RejudgeArgs) -> Result<String> {
    let RejudgeArgs { run_dir: dir, judge: judge_name, judge_options } = args;
    let judge_options = match judge_options {
        Some(v) => Some(serde_json::from_str::<serde_json::Value>(&v).map_err(|e| anyhow!("--judge-options: not JSON: {e}"))?),
        None => None,
    };
    if dir.join(SCORES_ONLY).is_file() {
        bail!(
            "{}: a scores-only copy (`report --from ... --scores-only`) has no answers to judge; rejudge the directory it was copied from",
            dir.display()
        );
    }
    let spec_file = dir.join("spec.json");
    let text =
        std::fs::read_to_string(&spec_file).with_context(|| format!("{}: cannot read (not a results directory?)", spec_file.display()))?;
    let mut spec: RunSpec = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", spec_file.display()))?;
    let name = judge_name.unwrap_or_else(|| spec.eval.judge.clone());
    let judge_options = match judge_options {
        Some(o) => o,
        None if name == spec.eval.judge => spec.eval.judge_options.clone(),
        None => serde_json::Value::Null,
    };
    let judge = (registry::judge(&name).map_err(|e| anyhow!("--judge: {e}"))?.build)(&judge_options)?;
    if judge.uses_prompt() {
        bail!("--judge {name}: this judge reads the prompt; rejudge works from stored answers only");
    }
    let _lock = crate::lock::RunLock::acquire(&dir)?;
    // Answers cut where the run's judge had settled its verdict are whole answers to that
    // judge only: another judge needs them in full (checked before anything is rewritten).
    let original = (registry::judge(&spec.eval.judge)?.build)(&spec.eval.judge_options)?;
    if original.fingerprint() != judge.fingerprint() {
        if let Some(file) = first_cut_answers(&dir.join("generations"))? {
            bail!(
                "{}: answers were cut once the `{}` judge's verdict was settled (eval.stop_at_verdict); judging them with `{name}` \
                 needs whole answers: rerun with `[eval] stop_at_verdict = false`",
                file.display(),
                spec.eval.judge
            );
        }
    }
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir.join("models")).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(label) =
            path.file_stem().map(|s| s.to_string_lossy().to_string()).filter(|_| path.extension().is_some_and(|e| e == "json"))
        else {
            continue;
        };
        let mut eval: ModelEval = serde_json::from_str(&std::fs::read_to_string(&path)?).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        for (set, old, new) in rejudge_eval(&mut eval, &dir.join("generations").join(&label), judge.as_ref(), spec.seed)? {
            lines.push(format!("{label} {set}: ASR {:.1}% → {:.1}%", 100.0 * old, 100.0 * new));
        }
        write_json(&path, &eval)?;
    }
    for entry in std::fs::read_dir(dir.join("cells")).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let mut cell: CellResult =
            serde_json::from_str(&std::fs::read_to_string(&path)?).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let gen_dir = dir.join("generations").join(&cell.cell);
        for (set, old, new) in rejudge_eval(&mut cell.eval, &gen_dir, judge.as_ref(), spec.seed)? {
            lines.push(format!("{} {set}: ASR {:.1}% → {:.1}%", cell.cell, 100.0 * old, 100.0 * new));
        }
        write_json(&path, &cell)?;
    }
    if spec.eval.judge != name || spec.eval.judge_options != judge_options {
        spec.eval.judge = name.clone();
        spec.eval.judge_options = judge_options;
        write_json(&spec_file, &spec)?;
    }
    let title = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let table = crate::report::write_report(&dir, &title)?;
    Ok(format!("judge `{name}`:\n{}\n\n{table}", lines.join("\n")))
}
