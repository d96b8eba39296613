//! `safetune report RUN_DIR --from DIR...`: one grid from the grids of one spec run apart
//! — its seeds or tasks run as separate runs, on other machines or into other results
//! directories, or one sub-run's cells cut into pieces with `safetune run --cells`. Every
//! sub-run of each DIR is copied into the new RUN_DIR with a spec over all their seeds and
//! tasks, so the report averages across them as if one run had made them. The specs must be
//! the same but for their seeds and tasks.
//!
//! A sub-run found in several DIRs (pieces of it) is their union: what only one piece has is
//! taken from it; what two pieces both computed (the base model's evaluation, an aligned
//! model both started from) must be the same, or the merge stops naming the file — except the
//! bookkeeping that depends on the machine or the build (cache keys under `keys/`, wall times
//! under `timings/` and in the training records under `trained/`: the first piece's are
//! kept). Its `manifest.json` is the first piece's with the aligned models' keys and the
//! timings of all, and `pieces` saying what each computed, where and with which code.
//!
//! With `--scores-only` the copy leaves out every answer's text (each generations record
//! keeps its id, verdict and category, so refusal retention and the report are the same)
//! and the trained weights (`adapters/`, `weights/`): a grid to publish, commit or move
//! between machines without harmful text, marked by [`SCORES_ONLY`] in each sub-run so
//! that `safetune rejudge` refuses it. A scores-only piece joins another piece of its
//! sub-run only under `--scores-only`; their answers then agree when every record but its
//! text does.

use std::path::{Path, PathBuf};

use safetune_core::anyhow::{bail, Context};
use safetune_core::Result;

use crate::spec::RunSpec;

/// The file marking a scores-only copy (defined beside `rejudge`, which refuses one).
pub use crate::rejudge::SCORES_ONLY;

/// What [`merge`] copies of each sub-run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Copy {
    /// Every file but the runner's lock.
    Whole,
    /// Scores, verdicts and logs: answers emptied, trained weights left out.
    ScoresOnly,
}

/// Turns the copied sub-run `sub` into a scores-only one: its trained weights removed, every
/// answer of its generations emptied (id, verdict, category kept), the [`SCORES_ONLY`] mark.
fn keep_scores_only(sub: &Path) -> Result<()> {
    for weights in ["adapters", "weights"] {
        let dir = sub.join(weights);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("{}: cannot remove", dir.display()))?;
        }
    }
    let generations = sub.join("generations");
    if generations.is_dir() {
        for rel in files_under(&generations)?.iter().filter(|r| r.extension().is_some_and(|e| e == "jsonl")) {
            let path = generations.join(rel);
            crate::rejudge::write_records(&path, &records_without_text(&path)?)?;
        }
    }
    crate::hashing::write_atomic(
        &sub.join(SCORES_ONLY),
        b"Copied by `safetune report --from ... --scores-only`: every answer's text removed (its id, verdict and \
          category kept, so the scores and refusal retention are the run's), the trained weights left out. \
          `safetune rejudge` needs the directory it was copied from.\n",
    )
}

/// A grid directory's spec (`spec.json`, read and checked as `safetune run` would).
fn read_spec(dir: &Path) -> Result<RunSpec> {
    if !dir.join("runs").is_dir() {
        bail!("{}: not a grid over seeds or tasks (no runs/ directory)", dir.display());
    }
    RunSpec::load(&dir.join("spec.json"))
}

/// The spec without what may differ between the grids merged: seeds and tasks.
fn without_grid(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("seed");
        o.remove("seeds");
        if let Some(d) = o.get_mut("data").and_then(|d| d.as_object_mut()) {
            d.remove("task");
            d.remove("tasks");
        }
    }
    v
}

/// The dotted path of the first place two JSON values differ (`None`: equal).
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, &path),
                    _ => Some(path),
                }
            })
        }
        _ => (a != b).then(|| if at.is_empty() { "(the whole spec)".to_string() } else { at.to_string() }),
    }
}

/// Every file under `dir`, as paths relative to it, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot read", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Files of a sub-run rebuilt after a merge (or the runner's lock): never compared.
fn rebuilt(rel: &Path) -> bool {
    rel == Path::new(".lock")
        || rel == Path::new("manifest.json")
        || rel == Path::new("summary.md")
        || rel == Path::new("adapters/README.md")
        || rel.starts_with("report")
}

/// Bookkeeping that depends on the build or the machine, not on what was computed: the first
/// piece's copy is kept when two differ.
fn bookkeeping(rel: &Path) -> bool {
    rel.starts_with("keys") || rel.starts_with("timings")
}

/// Whether two `trained/<cell>.json` records agree on what was trained (steps, losses,
/// tokens, examples left out), their wall times and peak memory aside: bookkeeping of the
/// machine, and a record rebuilt from a cached cell takes its time from the cell's timings.
fn same_training(a: &Path, b: &Path) -> Result<bool> {
    let read = |p: &Path| -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
        let mut v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not a training record", p.display()))?;
        if let Some(o) = v.as_object_mut() {
            o.remove("train");
        }
        if let Some(o) = v.get_mut("report").and_then(|r| r.as_object_mut()) {
            o.remove("seconds");
        }
        Ok(v)
    };
    Ok(read(a)? == read(b)?)
}

/// A generations file's records with every answer's text emptied (id, verdict, category kept).
fn records_without_text(path: &Path) -> Result<Vec<crate::results::GenRecord>> {
    let mut recs = crate::rejudge::read_records(path)?;
    recs.iter_mut().for_each(|r| r.response.clear());
    Ok(recs)
}

/// Whether two generations files hold the same records but for the answers' text.
fn same_but_text(a: &Path, b: &Path) -> Result<bool> {
    Ok(serde_json::to_value(records_without_text(a)?)? == serde_json::to_value(records_without_text(b)?)?)
}

/// Adds the piece `src` of a sub-run to its copy `dest` (made from the piece `first`): the
/// files `dest` lacks are copied; a file both have must agree (see the module's doc).
fn add_piece(src: &Path, dest: &Path, first: &Path) -> Result<()> {
    let scores_only = dest.join(SCORES_ONLY).is_file() || src.join(SCORES_ONLY).is_file();
    for rel in files_under(src)? {
        if rebuilt(&rel) {
            continue;
        }
        let (from, to) = (src.join(&rel), dest.join(&rel));
        if !to.exists() {
            crate::stage_cache::copy_tree(&from, &to)?;
            continue;
        }
        let same = std::fs::read(&from).with_context(|| format!("{}: cannot read", from.display()))?
            == std::fs::read(&to).with_context(|| format!("{}: cannot read", to.display()))?;
        let answers = rel.starts_with("generations") && rel.extension().is_some_and(|e| e == "jsonl");
        let training = rel.starts_with("trained") && rel.extension().is_some_and(|e| e == "json");
        if same || bookkeeping(&rel) || (scores_only && answers && same_but_text(&from, &to)?) || (training && same_training(&from, &to)?) {
            continue;
        }
        bail!("{}: differs from {} — pieces of one sub-run must agree on what both computed", from.display(), first.join(&rel).display());
    }
    Ok(())
}

/// The manifest of a sub-run merged from `pieces`: the first piece's, with the aligned
/// models' keys and the timings of every piece (`run_s`: their sum) and, per piece, where it
/// came from, the build and machine it ran on and the cells it computed.
fn merged_manifest(pieces: &[PathBuf]) -> Result<serde_json::Value> {
    let read = |dir: &PathBuf| -> Result<serde_json::Value> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a run's manifest", path.display()))
    };
    let mut merged = read(&pieces[0])?;
    let mut run_s = 0.0;
    let mut about = Vec::new();
    for dir in pieces {
        let m = read(dir)?;
        for at in ["/alignment/keys", "/timings"] {
            let (Some(theirs), Some(ours)) =
                (m.pointer(at).and_then(|v| v.as_object()), merged.pointer_mut(at).and_then(|v| v.as_object_mut()))
            else {
                continue;
            };
            for (k, v) in theirs {
                ours.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        run_s += m["timings"]["run_s"].as_f64().unwrap_or(0.0);
        about.push(serde_json::json!({
            "from": dir.display().to_string(),
            "git_revision": m["git_revision"],
            "code_sha256": m["code_sha256"],
            "safetune_version": m["safetune_version"],
            "machine": m["machine"],
            "cells_selected": m.get("cells_selected").cloned().unwrap_or(serde_json::Value::String("all".into())),
            "run_s": m["timings"]["run_s"],
        }));
    }
    if let Some(t) = merged.get_mut("timings").and_then(|t| t.as_object_mut()) {
        t.insert("run_s".into(), run_s.into());
    }
    if let Some(o) = merged.as_object_mut() {
        o.remove("cells_selected");
        o.insert("pieces".into(), about.into());
    }
    Ok(merged)
}

/// Writes `out` (which must not exist): the sub-runs of every grid of `from` (copied as
/// `how` says; pieces of one sub-run joined) and a spec over their seeds and tasks.
/// Nothing is left at `out` when it fails.
pub fn merge(out: &Path, from: &[PathBuf], how: Copy) -> Result<()> {
    if out.exists() {
        bail!("{}: already exists (the merged grid is written to a new directory)", out.display());
    }
    let mut specs = Vec::new();
    for dir in from {
        specs.push((dir, read_spec(dir)?));
    }
    let (first_dir, first) = &specs[0];
    let reference = without_grid(serde_json::to_value(first)?);
    let (mut seeds, mut tasks): (Vec<u64>, Vec<String>) = (Vec::new(), Vec::new());
    // Each sub-run with the directories of its pieces, in the order met.
    let mut subs: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for (dir, spec) in &specs {
        if let Some(path) = first_difference(&reference, &without_grid(serde_json::to_value(spec)?), "") {
            bail!(
                "{}: its spec differs from {}'s in more than seeds and tasks, at `{path}`",
                dir.join("spec.json").display(),
                first_dir.display()
            );
        }
        for sub in spec.expand() {
            let src = dir.join("runs").join(&sub.name);
            if !src.join("spec.json").is_file() {
                continue;
            }
            match subs.iter_mut().find(|(n, _)| *n == sub.name) {
                Some((_, pieces)) if pieces.contains(&src) => bail!("--from: {} given twice", dir.display()),
                Some((_, pieces)) => pieces.push(src),
                None => subs.push((sub.name.clone(), vec![src])),
            }
            if !seeds.contains(&sub.seed) {
                seeds.push(sub.seed);
            }
            if !tasks.contains(&sub.data.task) {
                tasks.push(sub.data.task.clone());
            }
        }
    }
    if subs.is_empty() {
        bail!("--from: no sub-run with results in {}", from.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    if how == Copy::Whole {
        if let Some(p) = subs.iter().filter(|(_, p)| p.len() > 1).flat_map(|(_, p)| p).find(|p| p.join(SCORES_ONLY).is_file()) {
            bail!("{}: a scores-only copy joins other pieces of its sub-run only under --scores-only", p.display());
        }
    }
    seeds.sort_unstable();
    let mut top = first.clone();
    top.seeds = seeds;
    top.data.tasks = tasks;
    top.seed = top.seeds[0];
    top.data.task = top.data.tasks[0].clone();
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<()> {
        for (sub, pieces) in &subs {
            let dest = tmp.join("runs").join(sub);
            crate::stage_cache::copy_tree(&pieces[0], &dest)?;
            // The runner's lock of the copied directory is not a result.
            let _ = std::fs::remove_file(dest.join(".lock"));
            if pieces.len() > 1 {
                for piece in &pieces[1..] {
                    add_piece(piece, &dest, &pieces[0])?;
                }
                crate::hashing::write_json(&dest.join("manifest.json"), &merged_manifest(pieces)?)?;
                if how == Copy::Whole {
                    // The adapters of every piece, in one README (a scores-only copy has none).
                    let spec = RunSpec::load(&dest.join("spec.json"))?;
                    let aligned: Vec<String> = crate::plan::RunPlan::of(&spec)?
                        .alignments
                        .iter()
                        .map(|d| crate::results::aligned_label(d.as_deref()))
                        .filter(|l| dest.join("adapters").join(l).is_dir())
                        .collect();
                    let _ = std::fs::remove_file(dest.join("adapters/README.md"));
                    crate::align::write_adapters_readme(&dest, &spec.model.source, &aligned)?;
                }
            }
            if how == Copy::ScoresOnly {
                keep_scores_only(&dest)?;
            }
        }
        crate::hashing::write_json(&tmp.join("spec.json"), &top)?;
        std::fs::rename(&tmp, out).with_context(|| format!("{}: cannot create", out.display()))?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_training_records_agree_but_for_their_wall_times() {
        let dir = std::env::temp_dir().join(format!("safetune-merge-trained-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let piece = |name: &str, seconds: f64, losses: [f64; 2], rss: f64| {
            let p = dir.join(name);
            std::fs::create_dir_all(p.join("trained")).unwrap();
            let record = serde_json::json!({ "report": { "steps": 2, "losses": losses, "tokens": 64, "seconds": seconds },
                                             "train": { "seconds": seconds + 0.1, "peak_rss_mb": rss } });
            std::fs::write(p.join("trained/cell.json"), serde_json::to_string_pretty(&record).unwrap()).unwrap();
            p
        };
        let dest = piece("dest", 398.39, [0.5, 0.25], 2428.3);
        // The record rebuilt from a cached cell: its time is the stage's, another machine's memory.
        let rebuilt = piece("rebuilt", 398.53, [0.5, 0.25], 2500.0);
        add_piece(&rebuilt, &dest, &dest).unwrap();
        let other = piece("other", 398.39, [0.5, 0.125], 2428.3);
        let err = add_piece(&other, &dest, &dest).unwrap_err().to_string();
        assert!(err.contains("trained/cell.json: differs from"), "a different loss is a different training: {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_first_difference_is_named_by_its_path() {
        let a = serde_json::json!({ "a": 1, "b": { "c": [1, 2], "d": "x" } });
        assert_eq!(first_difference(&a, &a, ""), None);
        let b = serde_json::json!({ "a": 1, "b": { "c": [1, 3], "d": "x" } });
        assert_eq!(first_difference(&a, &b, "").as_deref(), Some("b.c"));
        let c = serde_json::json!({ "a": 1, "b": { "c": [1, 2] } });
        assert_eq!(first_difference(&a, &c, "").as_deref(), Some("b.d"));
        let spec = serde_json::json!({ "name": "n", "seed": 1, "seeds": [1], "data": { "task": "t", "tasks": ["t"], "x": 1 } });
        let other = serde_json::json!({ "name": "n", "seed": 2, "seeds": [2, 3], "data": { "task": "u", "x": 1 } });
        assert_eq!(first_difference(&without_grid(spec), &without_grid(other), ""), None);
    }
}
