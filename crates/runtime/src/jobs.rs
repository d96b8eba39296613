//! `--jobs N`: aligned models and cells trained in parallel worker processes. The
//! parent keeps the lock and evaluates the base model; it deals the aligned models not
//! yet in the cache round-robin to N workers (each trains and evaluates its models),
//! then the pending cells, cells that train alike together. Each worker runs the
//! resolved spec (`spec.json`) restricted to its models or cells with cores / N compute
//! threads, so the workers together use the machine's cores once. On 2 cores two
//! one-thread workers train 1.47 × as many steps an hour as one two-thread process
//! (docs/PERFORMANCE.md, "Two one-thread workers"), and a model trained on one thread is
//! the one trained on two, to the bit.

use std::path::Path;
use std::process::Command;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;

use crate::options::RunOptions;

/// For `items` pieces of work: the worker processes to start (at most `opts.jobs`), the
/// compute threads each gets (the cores shared out), and the executable they run.
fn workers(opts: &RunOptions, items: usize) -> Result<(usize, usize, std::path::PathBuf)> {
    let jobs = opts.jobs.min(items).max(1);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let exe = std::env::current_exe().map_err(|e| anyhow!("--jobs: cannot find the safetune executable: {e}"))?;
    Ok((jobs, (cores / jobs).max(1), exe))
}

/// What a worker of [`run_workers`] computes.
#[derive(Clone, Copy)]
pub enum WorkerKind {
    /// Aligned models (labels `aligned`, `aligned+<defense>`), trained and evaluated.
    Alignments,
    /// Cells (fine-tuned, repaired, evaluated).
    Cells,
}

/// Runs the aligned models or cells of `groups` in `opts.jobs` worker processes and waits
/// for all of them; a group (cells that train alike, `RunPlan::training_groups`) goes to
/// one worker whole.
pub fn run_workers(spec_json: &Path, opts: &RunOptions, kind: WorkerKind, groups: &[Vec<String>]) -> Result<()> {
    let (jobs, threads, exe) = workers(opts, groups.len())?;
    let flag = match kind {
        WorkerKind::Alignments => "--worker-alignments",
        WorkerKind::Cells => "--worker-cells",
    };
    let mut children = Vec::new();
    for w in 0..jobs {
        let mine: Vec<&str> = groups.iter().skip(w).step_by(jobs).flatten().map(String::as_str).collect();
        let mut cmd = Command::new(&exe);
        cmd.args(opts.worker_args(spec_json, &opts.out)).arg(flag).arg(mine.join(","));
        cmd.env("RAYON_NUM_THREADS", threads.to_string());
        if !opts.quiet {
            safetune_core::tracing::info!("[jobs] worker {w}: {} with {threads} thread(s)", mine.join(", "));
        }
        children.push((w, cmd.spawn().map_err(|e| anyhow!("--jobs: cannot start a worker: {e}"))?));
    }
    let mut failed = Vec::new();
    for (w, mut c) in children {
        let status = c.wait().map_err(|e| anyhow!("--jobs: worker {w}: {e}"))?;
        if !status.success() {
            failed.push(format!("worker {w} ({status})"));
        }
    }
    if !failed.is_empty() {
        bail!("--jobs: {} failed; finished models and cells are kept, rerun to complete the grid", failed.join(", "));
    }
    Ok(())
}

/// Runs whole specs (resolved `spec.json` files, results under `opts.out`) in at most
/// `opts.jobs` processes at once, each with cores / jobs compute threads: the trials of an
/// attack search's rung. Waits for all; a failed one is named (its finished stages stay cached).
pub fn run_specs(specs: &[std::path::PathBuf], opts: &RunOptions) -> Result<()> {
    let (jobs, threads, exe) = workers(opts, specs.len())?;
    let mut running: Vec<(&std::path::PathBuf, std::process::Child)> = Vec::new();
    let mut failed = Vec::new();
    let mut next = specs.iter();
    loop {
        while running.len() < jobs {
            let Some(spec) = next.next() else { break };
            let mut cmd = Command::new(&exe);
            cmd.args(opts.worker_args(spec, &opts.out)).env("RAYON_NUM_THREADS", threads.to_string());
            running.push((spec, cmd.spawn().map_err(|e| anyhow!("--jobs: cannot start a run: {e}"))?));
        }
        if running.is_empty() {
            break;
        }
        // Reap whichever finished; poll gently (runs take minutes).
        let mut i = 0;
        while i < running.len() {
            if let Some(status) = running[i].1.try_wait().map_err(|e| anyhow!("--jobs: {e}"))? {
                let (spec, _) = running.remove(i);
                if !status.success() {
                    failed.push(format!("{} ({status})", spec.display()));
                }
            } else {
                i += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if !failed.is_empty() {
        bail!("--jobs: {} failed; finished stages are cached, rerun to complete", failed.join(", "));
    }
    Ok(())
}
