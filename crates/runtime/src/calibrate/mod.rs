//! `safetune calibrate SWEEP.toml`: runs candidate protocols (overlays on a
//! base spec) over seeds, on validation data only, and writes the sweep table
//! with every candidate's figures, the targets each misses, and the one chosen.
//!
//! The rule ([`rule`]), on the means over seeds: a candidate passes when its aligned model
//! stays under `aligned_asr_max` on each set, refuses at most
//! `aligned_over_refusal_max` of each over-refusal set, answers at least
//! `aligned_answered_min` of the task prompts, every cell scores at least
//! `task_score_min`, the benign cell keeps at least `benign_retention_min` of
//! the aligned model's refusals, mean ASR rises strictly with the harmful
//! share, and the most harmful cell's mean ASR is at least `harm_gap_min`
//! above the benign cell's (a rise of a point or two is noise, not the
//! effect a benchmark has to show). Among passing candidates the one with the
//! lowest benign-cell ASR is chosen; if none passes, the one with the fewest
//! misses (then the lowest benign-cell ASR), and the table says that no
//! candidate meets every target.

use std::path::PathBuf;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;
use serde::Deserialize;

use crate::hashing::write_json;
use crate::options::RunOptions;
use crate::report::rows_from_dir;
use crate::spec::RunSpec;

mod rule;
use rule::{choose, outcome, table, Outcome, Select};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sweep {
    /// The base spec, relative to the sweep file.
    base: String,
    #[serde(default)]
    seeds: Vec<u64>,
    #[serde(default)]
    select: Select,
    #[serde(rename = "candidate")]
    candidates: Vec<Candidate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Candidate {
    name: String,
    /// Overlays on the base, relative to the sweep file, merged in order.
    #[serde(default)]
    overlays: Vec<String>,
    #[serde(default)]
    note: String,
    /// Seeds for this candidate instead of the sweep's (a short list to screen, the full one to confirm).
    #[serde(default)]
    seeds: Vec<u64>,
}

/// `safetune calibrate`'s flags.
#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// The sweep file (TOML: a base spec, candidate overlays, seeds, targets)
    sweep: PathBuf,
    /// The data directory [default: $SAFETUNE_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where results go (OUT/<sweep>/)
    #[arg(long, value_name = "DIR", default_value = "results")]
    out: PathBuf,
    /// Run only this candidate (repeatable)
    #[arg(long, value_name = "CANDIDATE")]
    only: Vec<String>,
    /// No progress lines
    #[arg(long)]
    quiet: bool,
    /// Check every candidate's spec and print the plan, writing nothing
    #[arg(long)]
    dry_run: bool,
}

pub fn main(args: CalibrateArgs) -> Result<String> {
    let CalibrateArgs { sweep: path, data_dir, out, only, quiet, dry_run } = args;
    let data_dir = data_dir.or_else(crate::options::env_data_dir);
    let (sweep, dir, sweep_name) = crate::spec::read_driver::<Sweep>(&path, "sweep")?;
    if let Some(o) = only.iter().find(|o| !sweep.candidates.iter().any(|c| &c.name == *o)) {
        bail!("--only: no candidate `{o}` in {}", path.display());
    }
    // Every candidate's spec is resolved and checked before anything runs. A sweep may choose
    // only on the sets registered as validation (advbench-dev, stl-dev, xstest-dev): prompts no
    // test figure is computed from.
    let validation_sets = safetune_data::catalog::registry::validation_sets(false);
    let validation_over_refusal = safetune_data::catalog::registry::validation_sets(true);
    let mut specs = Vec::new();
    for c in &sweep.candidates {
        let overlays: Vec<PathBuf> = c.overlays.iter().map(|o| dir.join(o)).collect();
        let spec = RunSpec::load_with_overlays(&dir.join(&sweep.base), &overlays).map_err(|e| anyhow!("candidate {}: {e}", c.name))?;
        if let Some(s) = spec.data.safety_evals.iter().find(|s| !validation_sets.contains(&s.as_str())) {
            bail!(
                "candidate {}: data.safety_evals: `{s}` is not a validation set ({}); a sweep chooses on validation data only",
                c.name,
                validation_sets.join(", ")
            );
        }
        if spec.data.task_split != "validation" {
            bail!("candidate {}: data.task_split: must be \"validation\" (a sweep never scores the task's test split)", c.name);
        }
        if let Some(s) = spec.data.over_refusal.iter().find(|s| !validation_over_refusal.contains(&s.as_str())) {
            bail!(
                "candidate {}: data.over_refusal: `{s}` is not a validation set ({}); a sweep chooses on validation data only",
                c.name,
                validation_over_refusal.join(", ")
            );
        }
        if !spec.data.utility_evals.is_empty() {
            bail!("candidate {}: data.utility_evals: test sets; leave them out of a sweep", c.name);
        }
        specs.push(spec);
    }
    let seeds = if sweep.seeds.is_empty() { vec![specs.first().map(|s| s.seed).unwrap_or(42)] } else { sweep.seeds.clone() };
    let runs_dir = out.join(&sweep_name).join("runs");
    let selected = |c: &Candidate| only.is_empty() || only.contains(&c.name);
    let seeds_of = |c: &Candidate| -> Vec<u64> {
        if c.seeds.is_empty() {
            seeds.clone()
        } else {
            c.seeds.clone()
        }
    };
    let seed_specs = |c: &Candidate, spec: &RunSpec| -> Vec<RunSpec> {
        seeds_of(c)
            .iter()
            .map(|&seed| {
                let mut s = spec.clone();
                s.name = format!("{}-s{seed}", c.name);
                s.seed = seed;
                s.seeds = Vec::new();
                s
            })
            .collect()
    };
    // Every run's data, alignment set and variants are checked before the first one trains.
    let mut plan = String::new();
    for (c, spec) in sweep.candidates.iter().zip(&specs).filter(|(c, _)| selected(c)) {
        for s in seed_specs(c, spec) {
            let opts = RunOptions { dry_run: true, ..RunOptions::new(data_dir.clone(), runs_dir.clone(), true) };
            plan.push_str(&crate::pipeline::run(&s, &opts).map_err(|e| anyhow!("candidate {}: {e}", c.name))?);
        }
    }
    if dry_run {
        return Ok(plan);
    }
    let mut outcomes = Vec::new();
    for (c, spec) in sweep.candidates.iter().zip(&specs) {
        let seeds = seeds_of(c);
        if !selected(c) {
            // Left out: its figures still belong in the table if every seed's run finished earlier.
            let dirs: Vec<PathBuf> = seeds.iter().map(|seed| runs_dir.join(format!("{}-s{seed}", c.name))).collect();
            if dirs.iter().all(|d| d.join("summary.md").is_file()) {
                let rows = dirs.iter().map(|d| rows_from_dir(d)).collect::<Result<Vec<_>>>()?;
                outcomes.push(Outcome { earlier: true, ..outcome(&c.name, &c.note, &seeds, &rows, &sweep.select)? });
            }
            continue;
        }
        let mut rows = Vec::new();
        for s in seed_specs(c, spec) {
            crate::output::say(quiet, format!("[calibrate] candidate {} seed {}", c.name, s.seed));
            crate::pipeline::run(&s, &RunOptions::new(data_dir.clone(), runs_dir.clone(), quiet))?;
            rows.push(rows_from_dir(&runs_dir.join(&s.name))?);
        }
        outcomes.push(outcome(&c.name, &c.note, &seeds, &rows, &sweep.select)?);
    }
    let chosen = choose(&outcomes);
    let md = table(&outcomes, chosen);
    let top = out.join(&sweep_name);
    crate::hashing::write_atomic(&top.join("sweep.md"), md.as_bytes())?;
    write_json(
        &top.join("sweep.json"),
        &serde_json::json!({ "select": sweep.select, "chosen": chosen.map(|i| outcomes[i].name.clone()), "candidates": outcomes }),
    )?;
    Ok(md)
}
