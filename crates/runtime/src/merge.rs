//! `safetune report RUN_DIR --from DIR...`: one grid from the grids of one spec run apart
//! — its seeds or tasks run as separate runs, on other machines or into other results
//! directories. Every sub-run of each DIR is copied into the new RUN_DIR with a spec over
//! all their seeds and tasks, so the report averages across them as if one run had made
//! them. The specs must be the same but for their seeds and tasks.
//!
//! With `--scores-only` the copy leaves out every answer's text (each generations record
//! keeps its id, verdict and category, so refusal retention and the report are the same)
//! and the trained weights (`adapters/`, `weights/`): a grid to publish, commit or move
//! between machines without harmful text, marked by [`SCORES_ONLY`] in each sub-run so
//! that `safetune rejudge` refuses it.

use std::path::{Path, PathBuf};

use safetune_core::anyhow::{bail, Context};
use safetune_core::Result;

use crate::spec::RunSpec;

/// The file marking a sub-run copied by `report --from ... --scores-only`.
pub const SCORES_ONLY: &str = "scores-only.txt";

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
    fn empty_answers(dir: &Path) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot read", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                empty_answers(&path)?;
            } else if path.extension().is_some_and(|e| e == "jsonl") {
                let mut recs = crate::rejudge::read_records(&path)?;
                recs.iter_mut().for_each(|r| r.response.clear());
                crate::rejudge::write_records(&path, &recs)?;
            }
        }
        Ok(())
    }
    if sub.join("generations").is_dir() {
        empty_answers(&sub.join("generations"))?;
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

/// Writes `out` (which must not exist): the sub-runs of every grid of `from` (copied as
/// `how` says) and a spec over their seeds and tasks. Nothing is left at `out` when it fails.
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
    let mut subs: Vec<(String, PathBuf)> = Vec::new();
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
            if let Some((_, other)) = subs.iter().find(|(n, _)| *n == sub.name) {
                bail!("{}: sub-run {} is also in {}", dir.display(), sub.name, other.display());
            }
            if !seeds.contains(&sub.seed) {
                seeds.push(sub.seed);
            }
            if !tasks.contains(&sub.data.task) {
                tasks.push(sub.data.task.clone());
            }
            subs.push((sub.name.clone(), src));
        }
    }
    if subs.is_empty() {
        bail!("--from: no sub-run with results in {}", from.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "));
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
        for (sub, src) in &subs {
            let dest = tmp.join("runs").join(sub);
            crate::stage_cache::copy_tree(src, &dest)?;
            // The runner's lock of the copied directory is not a result.
            let _ = std::fs::remove_file(dest.join(".lock"));
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
