//! The `safetune` command line (hand-parsed: no parser dependency).

use std::path::PathBuf;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::registry;
use safetune_core::Result;

use crate::options::RunOptions;
use crate::spec::RunSpec;

pub const USAGE: &str = "safetune — how safe does an LLM stay when it is fine-tuned?

usage:
  safetune run SPEC.toml [--overlay OVER.toml]... [--data-dir DIR] [--task TASK] [--out DIR] [--quiet] [--json] [--jobs N] [--dry-run]
          [--checkpoint-minutes M]
      align → fine-tune → evaluate every method × regime of SPEC; results in OUT/<name>/
      (OUT defaults to ./results; DIR defaults to $SAFETUNE_DATA_DIR; overlays merge into SPEC in order;
      SPEC may be a results directory's spec.json; --jobs N fine-tunes N cells at once, cores split between them;
      --dry-run checks every input of every sub-run and prints the plan, writing nothing;
      every training stage saves a checkpoint each M minutes (default 10, 0: never) under the cache's
      partial/, and a run started again after a stop resumes each stage from its last one)
{eval}
  safetune report RUN_DIR [--json]
      rewrite RUN_DIR/summary.md and RUN_DIR/report/ (tables as Markdown, CSV, JSON, LaTeX;
      SVG plots) from its results, and print the table (--json: the rows as JSON)
  safetune calibrate SWEEP.toml [--data-dir DIR] [--out DIR] [--only CANDIDATE]... [--quiet] [--dry-run]
      run every candidate protocol of a sweep (overlays on a base spec) over its seeds on validation
      data only, and write OUT/<sweep>/sweep.md (figures, the targets each misses, the choice) and sweep.json
  safetune rejudge RUN_DIR [--judge NAME]
      recompute every safety verdict and ASR of RUN_DIR from its stored answers (no generation)
{serve}
  safetune judge-check [--data-dir DIR] [--judge NAME]... [--json]
      agreement (accuracy, Cohen's kappa) of refusal judges with XSTest's human labels
  safetune model fetch NAME      download a known model into the cache (smollm2-135m-instruct)
  safetune model path NAME       print where a known model is cached
  safetune list datasets|methods|defenses|metrics|judges
  safetune schema                print the JSON Schema of run specs
  safetune --help";

/// Parses and runs a command line; returns what to print on stdout.
pub fn main_with(args: &[String]) -> Result<String> {
    let Some(cmd) = args.first() else { bail!("no command given (see `safetune --help`)") };
    if args.iter().any(|a| a == "--help" || a == "-h") || cmd == "help" {
        return Ok(USAGE.replace("{eval}", crate::eval_cmd::USAGE).replace("{serve}", crate::serve::USAGE));
    }
    match cmd.as_str() {
        "run" => {
            let mut spec_path = None;
            let mut data_dir = crate::options::env_data_dir();
            let mut out = PathBuf::from("results");
            let mut quiet = false;
            let mut task = None;
            let mut json = false;
            let mut jobs = 1;
            let mut worker_cells: Option<Vec<String>> = None;
            let mut overlays = Vec::new();
            let mut dry_run = false;
            let mut checkpoint_every = Some(crate::options::DEFAULT_CHECKPOINT_EVERY);
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--data-dir" => data_dir = Some(PathBuf::from(it.next().ok_or_else(|| anyhow!("--data-dir needs a directory"))?)),
                    "--out" => out = PathBuf::from(it.next().ok_or_else(|| anyhow!("--out needs a directory"))?),
                    "--quiet" => quiet = true,
                    "--json" => json = true,
                    "--dry-run" => dry_run = true,
                    "--checkpoint-minutes" => {
                        let v = it.next().ok_or_else(|| anyhow!("--checkpoint-minutes needs a number"))?;
                        let m: f64 = v
                            .parse()
                            .ok()
                            .filter(|m: &f64| m.is_finite() && *m >= 0.0 && *m <= 1e6)
                            .ok_or_else(|| anyhow!("--checkpoint-minutes: `{v}` is not a number of minutes ≥ 0"))?;
                        checkpoint_every = (m > 0.0).then(|| std::time::Duration::from_secs_f64(m * 60.0));
                    }
                    "--jobs" => {
                        let v = it.next().ok_or_else(|| anyhow!("--jobs needs a number"))?;
                        jobs = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| anyhow!("--jobs: `{v}` is not a positive integer"))?;
                    }
                    "--worker-cells" => {
                        worker_cells = Some(
                            it.next().ok_or_else(|| anyhow!("--worker-cells needs cell names"))?.split(',').map(String::from).collect(),
                        )
                    }
                    "--overlay" => overlays.push(PathBuf::from(it.next().ok_or_else(|| anyhow!("--overlay needs a TOML file"))?)),
                    "--task" => task = Some(it.next().ok_or_else(|| anyhow!("--task needs a task name"))?.clone()),
                    f if f.starts_with('-') => bail!("run: unknown flag `{f}`"),
                    p if spec_path.is_none() => spec_path = Some(PathBuf::from(p)),
                    p => bail!("run: unexpected argument `{p}`"),
                }
            }
            let spec_path = spec_path.ok_or_else(|| anyhow!("run: give a spec file (safetune run SPEC.toml)"))?;
            let mut spec = RunSpec::load_with_overlays(&spec_path, &overlays)?;
            if let Some(t) = task {
                spec.data.task = t;
                spec.validate().map_err(|e| anyhow!("--task: {e}"))?;
            }
            let opts = RunOptions { jobs, worker_cells, dry_run, checkpoint_every, ..RunOptions::new(data_dir, out.clone(), quiet) };
            let table = crate::pipeline::run(&spec, &opts).inspect_err(|_| crate::prepare::undo_new_dirs())?;
            if dry_run || opts.worker_cells.is_some() {
                return Ok(table);
            }
            let dir = out.join(&spec.name);
            crate::output::checked(if json { rows_json(&dir)? } else { table }, &dir)
        }
        "eval" => crate::eval_cmd::main(&args[1..]).inspect_err(|e| {
            if e.downcast_ref::<crate::output::Unmeasured>().is_none() {
                crate::prepare::undo_new_dirs()
            }
        }),
        "rejudge" => crate::rejudge::main(&args[1..]),
        "calibrate" => crate::calibrate::main(&args[1..]),
        "judge-check" => crate::judge_check::main(&args[1..]),
        "serve" => crate::serve::main(&args[1..]),
        "report" => {
            let mut dir = None;
            let mut json = false;
            for a in &args[1..] {
                match a.as_str() {
                    "--json" => json = true,
                    f if f.starts_with('-') => bail!("report: unknown flag `{f}`"),
                    p if dir.is_none() => dir = Some(PathBuf::from(p)),
                    p => bail!("report: unexpected argument `{p}`"),
                }
            }
            let dir = dir.ok_or_else(|| anyhow!("report: give a results directory (safetune report results/NAME)"))?;
            if !dir.is_dir() {
                bail!("{}: no such results directory", dir.display());
            }
            let title = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "results".into());
            if dir.join("runs").is_dir() {
                // A grid over tasks × seeds: every sub-run in the spec's order, then the aggregate.
                let spec_file = dir.join("spec.json");
                let text = std::fs::read_to_string(&spec_file).map_err(|e| anyhow!("{}: {e}", spec_file.display()))?;
                let top: RunSpec = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", spec_file.display()))?;
                let mut runs = Vec::new();
                for s in top.expand() {
                    let sub = dir.join("runs").join(&s.name);
                    if sub.join("spec.json").exists() {
                        crate::report::write_report(&sub, &s.name)?;
                        runs.push((s.data.task.clone(), s.seed, sub));
                    }
                }
                return crate::report::write_seed_report(&dir, &top.name, &runs);
            }
            let table = crate::report::write_report(&dir, &title)?;
            if json {
                return rows_json(&dir);
            }
            Ok(table)
        }
        "model" => match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("fetch"), Some(name)) => Ok(crate::fetch::fetch(name, false)?.display().to_string()),
            (Some("path"), Some(name)) => Ok(crate::fetch::model_path(name)?.display().to_string()),
            _ => bail!("usage: safetune model fetch|path NAME"),
        },
        "list" => list(args.get(1).map(String::as_str).unwrap_or("")),
        "schema" => crate::spec::schema_json(),
        other => bail!("unknown command `{other}` (see `safetune --help`)"),
    }
}

fn list(what: &str) -> Result<String> {
    let (head, rows): (&[&str], Vec<Vec<String>>) = match what {
        "datasets" => (
            &["name", "role", "splits (rows)", "source", "license"],
            registry::datasets()
                .iter()
                .map(|d| vec![d.name.into(), d.role.into(), d.splits.into(), d.source.into(), d.license.into()])
                .collect(),
        ),
        "methods" => (&["name", "description"], registry::methods().iter().map(|m| vec![m.name.into(), m.description.into()]).collect()),
        "defenses" => (
            &["name", "stages", "description"],
            registry::defenses()
                .iter()
                .map(|d| {
                    let stages = d.stages()?.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
                    Ok(vec![d.name.into(), stages, d.description.into()])
                })
                .collect::<Result<_>>()?,
        ),
        "metrics" => (&["name", "description"], registry::metrics().iter().map(|m| vec![m.name.into(), m.description.into()]).collect()),
        "judges" => (&["name", "description"], registry::judges().iter().map(|j| vec![j.name.into(), j.description.into()]).collect()),
        other => bail!("list: unknown kind `{other}` (datasets, methods, defenses, metrics, judges)"),
    };
    if rows.is_empty() {
        return Ok(format!("(no {what} registered)"));
    }
    // Aligned columns; the last one runs free.
    let widths: Vec<usize> =
        (0..head.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).chain([head[c].len()]).max().unwrap_or(0)).collect();
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        cells
            .iter()
            .enumerate()
            .map(|(c, v)| if c + 1 == n { v.to_string() } else { format!("{v:<w$}", w = widths[c]) })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = vec![line(head.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    if what == "defenses" {
        out.push(String::new());
        out.push("Where each differs from the reference code it was read against (its README has the fidelity table):".into());
        let w = registry::defenses().iter().map(|d| d.name.len()).max().unwrap_or(0);
        out.extend(registry::defenses().iter().map(|d| format!("{:<w$}  {}", d.name, d.differs)));
    }
    Ok(out.join("\n"))
}

fn rows_json(run_dir: &std::path::Path) -> Result<String> {
    Ok(serde_json::to_string_pretty(&crate::report::rows_from_dir(run_dir)?)?)
}
