//! `safetune run SPEC --slurm`: the run as Slurm jobs. Per sub-run (one for a single
//! run; task × seed for a grid): a preparation job (base evaluation, the aligned models
//! and their evaluations, as a `--jobs` parent does before its workers), then a job array
//! with one task per cell, or per group of cells that train alike (`--worker-cells
//! CELL,...`, started when the preparation succeeded, requeue-safe: a cell file appears
//! once, atomically, and a requeued task resumes its training from the last
//! checkpoint), then one job that runs the whole spec again once
//! every array succeeded: every stage is found done, and it writes the manifests and
//! reports. Results directory and stage cache must be on storage every node sees.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetune_core::anyhow::{anyhow, bail, Context};
use safetune_core::Result;

use crate::hashing::write_json;
use crate::options::RunOptions;
use crate::plan::RunPlan;
use crate::spec::RunSpec;

/// What `--slurm` submits with: the binary the jobs run and extra `sbatch` arguments.
pub struct Submit<'a> {
    pub exe: PathBuf,
    pub sbatch_args: &'a [String],
}

/// Quotes a word for `sh`.
fn sh(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Runs `sbatch --parsable ARGS…` and returns the job id.
fn sbatch(args: &[String]) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .output()
        .map_err(|e| anyhow!("--slurm: cannot run sbatch ({e}); is Slurm installed here?"))?;
    if !out.status.success() {
        bail!("--slurm: sbatch failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints "jobid" or "jobid;cluster".
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("--slurm: sbatch printed `{}`, not a job id", text.trim());
    }
    Ok(id)
}

/// A job's command line for `sh`: the binary, then `opts.worker_args` (progress lines go
/// to the job's log unless `--quiet`), then `extra`.
fn job_line(exe: &Path, spec_json: &Path, out: &Path, opts: &RunOptions, extra: &str) -> String {
    let words = std::iter::once(exe.display().to_string()).chain(opts.worker_args(spec_json, out));
    words.map(|w| sh(&w)).collect::<Vec<_>>().join(" ") + extra
}

/// `sbatch` arguments naming a job and sending its log (one per array task) to `staging/logs/`.
fn log_args(staging: &Path, job: &str) -> Vec<String> {
    vec!["--job-name".to_string(), job.to_string(), "--output".into(), staging.join("logs/%x-%A_%a.out").display().to_string()]
}

/// Submits `spec` (checked already) and returns what to print.
pub fn submit(spec: &RunSpec, opts: &RunOptions, how: &Submit) -> Result<String> {
    let abs = |p: &Path| -> Result<PathBuf> { Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) }) };
    let out = abs(&opts.out)?;
    let opts = &RunOptions { out: out.clone(), data_dir: opts.data_dir.as_deref().map(abs).transpose()?, ..opts.clone() };
    let subs = spec.expand();
    let grid = !subs.is_empty();
    // (spec of the sub-run, the directory its run directory goes in)
    let runs: Vec<(RunSpec, PathBuf)> =
        if !grid { vec![(spec.clone(), out.clone())] } else { subs.into_iter().map(|s| (s, out.join(&spec.name).join("runs"))).collect() };
    let staging = out.join(&spec.name).join("slurm");
    std::fs::create_dir_all(staging.join("logs")).with_context(|| format!("{}: cannot create", staging.display()))?;
    let log = |name: &str| log_args(&staging, name);
    let mut lines = Vec::new();
    let mut arrays = Vec::new();
    for (s, dir) in &runs {
        let spec_json = staging.join(format!("{}.json", s.name));
        write_json(&spec_json, s)?;
        // One line per group of cells that train alike (a repair with the cell it repairs).
        let cells: Vec<String> =
            RunPlan::of(s)?.only(opts.only_cells.as_deref())?.training_groups().into_iter().map(|g| g.join(",")).collect();
        std::fs::write(staging.join(format!("{}.cells", s.name)), cells.join("\n") + "\n")?;
        // Preparation: every stage before the cells (no cell matches an empty name).
        let prep_cmd = job_line(&how.exe, &spec_json, dir, opts, " --worker-cells ''");
        let mut args = log(&format!("safetune-{}-prepare", s.name));
        args.extend(how.sbatch_args.iter().cloned());
        args.extend(["--wrap".into(), prep_cmd]);
        let prep = sbatch(&args)?;
        // One array task per line of the cell list.
        let script = staging.join(format!("{}.sh", s.name));
        let cell_list = staging.join(format!("{}.cells", s.name));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n# One cell of {name} per array task (written by `safetune run --slurm`).\nset -e\ncell=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {list})\nexec {cmd} --worker-cells \"$cell\"\n",
                name = s.name,
                list = sh(&cell_list.display().to_string()),
                cmd = job_line(&how.exe, &spec_json, dir, opts, ""),
            ),
        )?;
        let mut args = log(&format!("safetune-{}-cells", s.name));
        args.extend([format!("--array=0-{}", cells.len().saturating_sub(1)), "--requeue".into(), format!("--dependency=afterok:{prep}")]);
        args.extend(how.sbatch_args.iter().cloned());
        args.push(script.display().to_string());
        let array = sbatch(&args)?;
        lines.push(format!("{}: preparation job {prep}, cells array {array} ({} tasks)", s.name, cells.len()));
        arrays.push(array);
    }
    // The whole spec once every array succeeded: finds every stage done, writes reports.
    let top_json = staging.join(format!("{}.json", spec.name));
    if grid {
        write_json(&top_json, spec)?;
    }
    let final_cmd = job_line(&how.exe, &top_json, &out, opts, "");
    let mut args = log(&format!("safetune-{}-report", spec.name));
    args.push(format!("--dependency=afterok:{}", arrays.join(":")));
    args.extend(how.sbatch_args.iter().cloned());
    args.extend(["--wrap".into(), final_cmd]);
    let report = sbatch(&args)?;
    lines.push(format!("report job {report} (after every array); results in {}", out.join(&spec.name).display()));
    lines.push(format!("logs in {}; watch with `squeue --me`", staging.join("logs").display()));
    Ok(lines.join("\n"))
}

/// Rejects what a Slurm submission cannot do.
pub fn check(opts: &RunOptions) -> Result<()> {
    if opts.jobs > 1 {
        bail!("--slurm: --jobs does not apply (each cell is its own array task)");
    }
    if opts.dry_run {
        bail!("--slurm: --dry-run checks the spec without submitting; drop one of them");
    }
    Ok(())
}

/// Runs whole specs (resolved `spec.json` files) as Slurm jobs and waits for them (`sbatch
/// --wait`): the first alone (it aligns and evaluates the models the others share), the rest
/// as one requeue-safe array; an attack search's rung. Logs go to `staging/logs/`.
pub fn run_specs_and_wait(specs: &[PathBuf], opts: &RunOptions, how: &Submit, staging: &Path, name: &str) -> Result<()> {
    let Some((first, rest)) = specs.split_first() else { return Ok(()) };
    std::fs::create_dir_all(staging.join("logs")).with_context(|| format!("{}: cannot create", staging.display()))?;
    let log = |job: &str| [vec!["--wait".to_string()], log_args(staging, job)].concat();
    let mut args = log(&format!("safetune-{name}-first"));
    args.extend(how.sbatch_args.iter().cloned());
    args.extend(["--wrap".into(), job_line(&how.exe, first, &opts.out, opts, "")]);
    sbatch(&args).map_err(|e| anyhow!("{e} (logs in {})", staging.join("logs").display()))?;
    if rest.is_empty() {
        return Ok(());
    }
    let list = staging.join(format!("{name}.specs"));
    std::fs::write(&list, rest.iter().map(|p| p.display().to_string() + "\n").collect::<String>())?;
    let script = staging.join(format!("{name}.sh"));
    let words = std::iter::once(how.exe.display().to_string()).chain(opts.worker_args(Path::new("SPEC"), &opts.out));
    let line = words.map(|w| if w == "SPEC" { "\"$spec\"".to_string() } else { sh(&w) }).collect::<Vec<_>>().join(" ");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# One run per array task (written by `safetune attack-search --slurm`).\nset -e\nspec=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {})\nexec {line}\n",
            sh(&list.display().to_string())
        ),
    )?;
    let mut args = log(&format!("safetune-{name}"));
    args.extend([format!("--array=0-{}", rest.len() - 1), "--requeue".into()]);
    args.extend(how.sbatch_args.iter().cloned());
    args.push(script.display().to_string());
    sbatch(&args).map_err(|e| anyhow!("{e} (logs in {})", staging.join("logs").display()))?;
    Ok(())
}
