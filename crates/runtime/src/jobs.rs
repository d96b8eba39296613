//! `--jobs N`: cells fine-tuned in parallel worker processes. The parent keeps
//! the lock, has already aligned and evaluated the shared models, and deals the
//! pending cells round-robin to N workers; each worker runs the resolved spec
//! (`spec.json`) restricted to its cells with cores / N compute threads, so
//! the workers together use the machine's cores once.

use std::path::Path;
use std::process::Command;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;

use crate::options::RunOptions;

/// Runs `cells` in `opts.jobs` worker processes and waits for all of them.
pub fn run_workers(spec_json: &Path, opts: &RunOptions, cells: &[String]) -> Result<()> {
    let jobs = opts.jobs.min(cells.len()).max(1);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = (cores / jobs).max(1);
    let exe = std::env::current_exe().map_err(|e| anyhow!("--jobs: cannot find the safetune executable: {e}"))?;
    let mut children = Vec::new();
    for w in 0..jobs {
        let mine: Vec<&str> = cells.iter().skip(w).step_by(jobs).map(String::as_str).collect();
        let mut cmd = Command::new(&exe);
        cmd.args(opts.worker_args(spec_json, &opts.out)).arg("--worker-cells").arg(mine.join(","));
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
        bail!("--jobs: {} failed; finished cells are kept, rerun to complete the grid", failed.join(", "));
    }
    Ok(())
}
