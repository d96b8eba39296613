//! `--jobs N`: aligned models and cells trained in parallel worker processes. The
//! parent keeps the lock and evaluates the base model; then the aligned models not yet
//! in the cache, then the pending cells, go to worker processes, at most N at a time:
//! one process per group of work (aligned models of one content key; cells that
//! train alike), the largest groups first, the next group starting as soon as a worker
//! ends — so a long group does not hold up groups dealt behind it, and a worker's
//! failure stops only its own group. Each worker runs the resolved spec (`spec.json`)
//! restricted to its models or cells with cores / N compute threads, so the workers
//! together use the machine's cores once. On 2 cores two one-thread workers train 1.47 ×
//! as many steps an hour as one two-thread process (docs/PERFORMANCE.md, "Two
//! one-thread workers"), and a model trained on one thread is the one trained on two,
//! to the bit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;

use crate::options::RunOptions;

/// For `items` pieces of work: the worker processes to run at once (at most `opts.jobs`),
/// the compute threads each gets (the cores shared out), and the executable they run.
fn workers(opts: &RunOptions, items: usize) -> Result<(usize, usize, PathBuf)> {
    let jobs = opts.jobs.min(items).max(1);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let exe = std::env::current_exe().map_err(|e| anyhow!("--jobs: cannot find the safetune executable: {e}"))?;
    Ok((jobs, (cores / jobs).max(1), exe))
}

/// Runs one process per item, at most `jobs` at a time, in the items' order: the next one
/// starts as soon as one ends. Waits for all; returns the names of the items whose process
/// failed (with its exit status). `start` builds and spawns an item's process.
fn pool<T>(items: &[T], jobs: usize, name: impl Fn(&T) -> String, mut start: impl FnMut(&T) -> Result<Child>) -> Result<Vec<String>> {
    let mut running: Vec<(&T, Child)> = Vec::new();
    let mut failed = Vec::new();
    let mut next = items.iter();
    loop {
        while running.len() < jobs.max(1) {
            let Some(item) = next.next() else { break };
            running.push((item, start(item)?));
        }
        if running.is_empty() {
            return Ok(failed);
        }
        // Reap whichever ended; poll gently (the work takes minutes).
        let mut i = 0;
        while i < running.len() {
            if let Some(status) = running[i].1.try_wait().map_err(|e| anyhow!("--jobs: {e}"))? {
                let (item, _) = running.remove(i);
                if !status.success() {
                    failed.push(format!("{} ({status})", name(item)));
                }
            } else {
                i += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// What a worker of [`run_workers`] computes.
#[derive(Clone, Copy)]
pub enum WorkerKind {
    /// Aligned models (labels `aligned`, `aligned+<defense>`), trained and evaluated.
    Alignments,
    /// Cells (fine-tuned, repaired, evaluated).
    Cells,
}

/// Runs the aligned models or cells of `groups` in worker processes, at most `opts.jobs` at
/// once, one process per group (aligned models of one content key, or cells that train
/// alike, `RunPlan::training_groups`: a group trains once), the groups with the most
/// labels first and otherwise in grid order; waits for all of them.
pub fn run_workers(spec_json: &Path, opts: &RunOptions, kind: WorkerKind, groups: &[Vec<String>]) -> Result<()> {
    let items: Vec<(PathBuf, Vec<String>)> = groups.iter().map(|g| (spec_json.to_path_buf(), g.clone())).collect();
    run_items(&items, opts, kind)
}

/// [`run_workers`] for groups of several runs: each group with the resolved spec of the run it
/// belongs to (`<run>/spec.json`; results under `opts.out`). Nothing to do for no groups.
pub fn run_items(items: &[(PathBuf, Vec<String>)], opts: &RunOptions, kind: WorkerKind) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let (jobs, threads, exe) = workers(opts, items.len())?;
    let flag = match kind {
        WorkerKind::Alignments => "--worker-alignments",
        WorkerKind::Cells => "--worker-cells",
    };
    let mut order: Vec<&(PathBuf, Vec<String>)> = items.iter().collect();
    order.sort_by_key(|(_, g)| std::cmp::Reverse(g.len()));
    if !opts.quiet {
        safetune_core::tracing::info!("[jobs] {} group(s) in at most {jobs} worker(s) of {threads} thread(s), largest first", order.len());
    }
    // The run a group belongs to, when there are several: its directory's name.
    let several = items.iter().any(|(s, _)| *s != items[0].0);
    let run_of = |spec: &Path| -> String {
        match spec.parent().and_then(|d| d.file_name()) {
            Some(n) if several => format!(" ({})", n.to_string_lossy()),
            _ => String::new(),
        }
    };
    let failed = pool(
        &order,
        jobs,
        |(s, g)| format!("worker for {}{}", g.join(", "), run_of(s)),
        |(s, g)| {
            let mut cmd = Command::new(&exe);
            cmd.args(opts.worker_args(s, &opts.out)).arg(flag).arg(g.join(","));
            cmd.env("RAYON_NUM_THREADS", threads.to_string());
            if !opts.quiet {
                safetune_core::tracing::info!("[jobs] worker started: {}{}", g.join(", "), run_of(s));
            }
            cmd.spawn().map_err(|e| anyhow!("--jobs: cannot start a worker: {e}"))
        },
    )?;
    if !failed.is_empty() {
        bail!("--jobs: {} failed; finished models and cells are kept, rerun to complete the grid", failed.join(", "));
    }
    Ok(())
}

/// Runs whole specs (resolved `spec.json` files, results under `opts.out`) in at most
/// `opts.jobs` processes at once, each with cores / jobs compute threads: the trials of an
/// attack search's rung. Waits for all; a failed one is named (its finished stages stay cached).
pub fn run_specs(specs: &[PathBuf], opts: &RunOptions) -> Result<()> {
    let (jobs, threads, exe) = workers(opts, specs.len())?;
    let failed = pool(
        specs,
        jobs,
        |s| s.display().to_string(),
        |s| {
            let mut cmd = Command::new(&exe);
            cmd.args(opts.worker_args(s, &opts.out)).env("RAYON_NUM_THREADS", threads.to_string());
            cmd.spawn().map_err(|e| anyhow!("--jobs: cannot start a run: {e}"))
        },
    )?;
    if !failed.is_empty() {
        bail!("--jobs: {} failed; finished stages are cached, rerun to complete", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell command as a pool item: sleeps, then exits with the given code.
    fn sh(script: &str) -> Result<Child> {
        Command::new("sh").arg("-c").arg(script).spawn().map_err(|e| anyhow!("{e}"))
    }

    #[test]
    fn the_pool_starts_the_next_item_when_one_ends_and_names_the_failed() {
        // Item `long` runs 2 s; `a`, `b`, `c` a moment each. With two slots the short ones must
        // run one after another beside the long one: a fixed split (round-robin: `long`, `b` to
        // one slot, `a`, `c` to the other) would start `b` only after `long` ended. Each item logs
        // its start; `long` also logs its end.
        let dir = std::env::temp_dir().join(format!("safetune-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let items = [("long", 2.0, 0), ("a", 0.05, 0), ("b", 0.05, 3), ("c", 0.05, 0)];
        let failed = pool(
            &items,
            2,
            |(n, _, _)| n.to_string(),
            |(n, secs, code)| {
                let end = if *n == "long" { format!("; echo long-end >> {}", log.display()) } else { String::new() };
                sh(&format!("echo {n} >> {log}; sleep {secs}{end}; exit {code}", log = log.display()))
            },
        )
        .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let at = |n: &str| lines.iter().position(|l| *l == n).unwrap_or_else(|| panic!("{n} never ran: {lines:?}"));
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(at("b") < at("long-end") && at("c") < at("long-end"), "short items waited for the long one: {lines:?}");
        // A failed item is named with its status; the others still ran.
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].starts_with("b ("), "{failed:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
