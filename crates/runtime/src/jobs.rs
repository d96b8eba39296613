//! `--jobs N`: aligned models and cells computed in parallel worker processes. The parent
//! keeps the lock and evaluates the base models; then the aligned models not yet in the
//! cache, their evaluations and the pending cells — of every sub-run of a grid — go to
//! worker processes, at most N at a time, one process per item of work (aligned models of
//! one content key; one aligned model's evaluation; cells that train alike). An item
//! starts once the items it needs have ended (a cell group after its aligned model is
//! trained and evaluated in its run's directory), the first ready one in the order
//! trainings, evaluations, cells, the largest first, as soon as a worker ends — so a
//! long item does not hold up items dealt behind it, a third alignment trains beside the
//! first two's cells rather than alone, and a worker's failure stops only the items that
//! need it. Each worker runs the resolved spec (`spec.json`) restricted to its models or
//! cells with cores / N compute threads — all the cores when it is the only item that
//! can run — so the workers together use the machine's cores once. On 2 cores two
//! one-thread workers train 1.21–1.47 × as many steps an hour as one two-thread process
//! (docs/PERFORMANCE.md, "Two one-thread workers", "Across a grid's sub-runs"), and a
//! model trained on one thread is the one trained on two, to the bit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;

use crate::options::RunOptions;

/// For `items` pieces of work: the worker processes to run at once (at most `opts.jobs`),
/// the machine's cores, and the executable they run.
fn workers(opts: &RunOptions, items: usize) -> Result<(usize, usize, PathBuf)> {
    let jobs = opts.jobs.min(items).max(1);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let exe = std::env::current_exe().map_err(|e| anyhow!("--jobs: cannot find the safetune executable: {e}"))?;
    Ok((jobs, cores, exe))
}

/// Runs one process per item, at most `jobs` at a time: whenever a slot is free, the first
/// item in the slice's order whose `after` items (indices into `items`) have all ended well
/// starts. `start` builds and spawns an item's process with the compute threads it gets:
/// `cores / jobs`, or every core when nothing runs and no other item is ready (nothing can
/// then become ready before it ends, so the cores are never given twice). Waits for all;
/// returns the names of the items whose process failed (with its exit status) and of those
/// never started because an item they need failed. `ended` hears of each process's end and
/// how long it ran.
fn pool<T>(
    items: &[T],
    jobs: usize,
    cores: usize,
    after: impl Fn(&T) -> &[usize],
    name: impl Fn(&T) -> String,
    mut start: impl FnMut(&T, usize) -> Result<Child>,
    mut ended: impl FnMut(&T, std::process::ExitStatus, std::time::Duration),
) -> Result<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Waiting,
        Running,
        Ended,
        Failed,
    }
    let jobs = jobs.max(1);
    let mut state = vec![State::Waiting; items.len()];
    let mut running: Vec<(usize, Child, std::time::Instant)> = Vec::new();
    let mut failed = Vec::new();
    loop {
        while running.len() < jobs {
            let ready: Vec<usize> = (0..items.len())
                .filter(|&i| state[i] == State::Waiting && after(&items[i]).iter().all(|&j| state.get(j) == Some(&State::Ended)))
                .collect();
            let Some(&i) = ready.first() else { break };
            let threads = if running.is_empty() && ready.len() == 1 { cores } else { (cores / jobs).max(1) };
            running.push((i, start(&items[i], threads)?, std::time::Instant::now()));
            state[i] = State::Running;
        }
        if running.is_empty() {
            // What still waits needs an item that failed (or, in a malformed list, itself).
            for item in items.iter().zip(&state).filter(|(_, s)| **s == State::Waiting).map(|(item, _)| item) {
                let needs: Vec<String> = after(item)
                    .iter()
                    .filter(|&&j| state.get(j) != Some(&State::Ended))
                    .map(|&j| items.get(j).map_or(format!("item {j}"), &name))
                    .collect();
                failed.push(format!("{} (not started: needs {})", name(item), needs.join(", ")));
            }
            return Ok(failed);
        }
        // Reap whichever ended; poll gently (the work takes minutes).
        let mut k = 0;
        while k < running.len() {
            if let Some(status) = running[k].1.try_wait().map_err(|e| anyhow!("--jobs: {e}"))? {
                let (i, _, started) = running.remove(k);
                ended(&items[i], status, started.elapsed());
                state[i] = if status.success() { State::Ended } else { State::Failed };
                if !status.success() {
                    failed.push(format!("{} ({status})", name(&items[i])));
                }
            } else {
                k += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// What a worker computes: its `Item::labels` are aligned models' labels (`aligned`,
/// `aligned+<defense>`) or cells' labels.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Work {
    /// Train the aligned models of one content key (then evaluate them).
    Align,
    /// Evaluate an aligned model trained elsewhere (the cache, another run's worker).
    Evaluate,
    /// Fine-tune, repair and evaluate cells that train alike.
    Cells,
}

/// One worker process of [`run_graph`].
#[derive(Debug)]
pub struct Item {
    /// The resolved spec of the run it belongs to (`<run>/spec.json`).
    pub spec: PathBuf,
    pub work: Work,
    pub labels: Vec<String>,
    /// The items (indices into the list given to [`run_graph`]) that must end well first.
    pub after: Vec<usize>,
}

/// Runs `items` in worker processes (results under `opts.out`), at most `opts.jobs` at once,
/// the first ready item in the order trainings, evaluations, cells — the largest (most
/// labels) first within each, otherwise in the given order; waits for all. A failure is
/// named with the items it kept from starting. Nothing to do for no items. `run_done`
/// hears of each run (its spec's path) once every item of that run has ended well, while
/// the other runs' workers go on (a grid then finishes that sub-run at once: its results
/// stay whole if the grid is stopped or fails later); the next item starts after it returns.
pub fn run_graph(items: &[Item], opts: &RunOptions, mut run_done: impl FnMut(&Path)) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    // Items of each run still to end well.
    let mut left: std::collections::HashMap<&Path, usize> = std::collections::HashMap::new();
    for it in items {
        *left.entry(it.spec.as_path()).or_default() += 1;
    }
    let (jobs, cores, exe) = workers(opts, items.len())?;
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| (items[i].work, std::cmp::Reverse(items[i].labels.len())));
    let mut at = vec![0; items.len()];
    for (new, &old) in order.iter().enumerate() {
        at[old] = new;
    }
    let sorted: Vec<(&Item, Vec<usize>)> = order.iter().map(|&i| (&items[i], items[i].after.iter().map(|&j| at[j]).collect())).collect();
    if !opts.quiet {
        safetune_core::tracing::info!("[jobs] {} worker(s), at most {jobs} at once, each as it can start", sorted.len());
    }
    // The run an item belongs to, when there are several: its directory's name.
    let several = items.iter().any(|it| it.spec != items[0].spec);
    let run_of = |spec: &Path| -> String {
        match spec.parent().and_then(|d| d.file_name()) {
            Some(n) if several => format!(" ({})", n.to_string_lossy()),
            _ => String::new(),
        }
    };
    let what = |it: &Item| format!("{}{}", it.labels.join(", "), run_of(&it.spec));
    let failed = pool(
        &sorted,
        jobs,
        cores,
        |(_, after)| after,
        |(it, _)| format!("worker for {}", what(it)),
        |(it, after), threads| {
            let flag = match it.work {
                Work::Align | Work::Evaluate => "--worker-alignments",
                Work::Cells => "--worker-cells",
            };
            let mut cmd = Command::new(&exe);
            cmd.args(opts.worker_args(&it.spec, &opts.out)).arg(flag).arg(it.labels.join(","));
            cmd.env("RAYON_NUM_THREADS", threads.to_string());
            if !opts.quiet {
                // What it waited for, if anything: `after a; b`.
                let needs: Vec<String> = after.iter().map(|&j| what(sorted[j].0)).collect();
                let needs = if needs.is_empty() { String::new() } else { format!(", after {}", needs.join("; ")) };
                safetune_core::tracing::info!("[jobs] worker started: {}{needs}", what(it));
            }
            cmd.spawn().map_err(|e| anyhow!("--jobs: cannot start a worker: {e}"))
        },
        |(it, _), status, took| {
            if !opts.quiet {
                let how = if status.success() { String::new() } else { format!(", {status}") };
                let s = took.as_secs();
                safetune_core::tracing::info!("[jobs] worker ended: {} ({}m {:02}s{how})", what(it), s / 60, s % 60);
            }
            if status.success() {
                let n = left.get_mut(it.spec.as_path()).expect("every item's run is counted");
                *n -= 1;
                if *n == 0 {
                    run_done(&it.spec);
                }
            }
        },
    )?;
    if !failed.is_empty() {
        bail!("--jobs: {} failed; finished models and cells are kept, rerun to complete the run", failed.join(", "));
    }
    Ok(())
}

/// Runs whole specs (resolved `spec.json` files, results under `opts.out`) in at most
/// `opts.jobs` processes at once, each with cores / jobs compute threads: the trials of an
/// attack search's rung. Waits for all; a failed one is named (its finished stages stay cached).
pub fn run_specs(specs: &[PathBuf], opts: &RunOptions) -> Result<()> {
    let (jobs, cores, exe) = workers(opts, specs.len())?;
    let failed = pool(
        specs,
        jobs,
        cores,
        |_| &[],
        |s| s.display().to_string(),
        |s, threads| {
            let mut cmd = Command::new(&exe);
            cmd.args(opts.worker_args(s, &opts.out)).env("RAYON_NUM_THREADS", threads.to_string());
            cmd.spawn().map_err(|e| anyhow!("--jobs: cannot start a run: {e}"))
        },
        |_, _, _| {},
    )?;
    if !failed.is_empty() {
        bail!("--jobs: {} failed; finished stages are cached, rerun to complete", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell command as a pool item: logs its start (with its threads), sleeps, logs its
    /// end, then exits with the given code.
    fn sh(log: &Path, name: &str, secs: f64, code: i32, threads: usize) -> Result<Child> {
        let log = log.display();
        let script = format!("echo start {name} {threads} >> {log}; sleep {secs}; echo end {name} >> {log}; exit {code}");
        Command::new("sh").arg("-c").arg(script).spawn().map_err(|e| anyhow!("{e}"))
    }

    /// Runs `items` (name, seconds, exit code, after) in a pool of `jobs` slots on 4 cores;
    /// returns the log's lines and the failed items' names.
    fn run(tag: &str, items: &[(&str, f64, i32, Vec<usize>)], jobs: usize) -> (Vec<String>, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("safetune-pool-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let failed = pool(
            items,
            jobs,
            4,
            |(_, _, _, after)| after,
            |(n, ..)| n.to_string(),
            |(n, secs, code, _), threads| sh(&log, n, *secs, *code, threads),
            |_, _, _| {},
        )
        .unwrap();
        let lines = std::fs::read_to_string(&log).unwrap().lines().map(String::from).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        (lines, failed)
    }

    fn at(lines: &[String], line: &str) -> usize {
        lines.iter().position(|l| l.starts_with(line)).unwrap_or_else(|| panic!("no `{line}`: {lines:?}"))
    }

    #[test]
    fn the_pool_starts_the_next_item_when_one_ends_and_names_the_failed() {
        // Item `long` runs 2 s; `a`, `b`, `c` a moment each. With two slots the short ones must
        // run one after another beside the long one: a fixed split (round-robin: `long`, `b` to
        // one slot, `a`, `c` to the other) would start `b` only after `long` ended.
        let items = [("long", 2.0, 0, vec![]), ("a", 0.05, 0, vec![]), ("b", 0.05, 3, vec![]), ("c", 0.05, 0, vec![])];
        let (lines, failed) = run("order", &items, 2);
        assert_eq!(lines.len(), 8, "{lines:?}");
        assert!(at(&lines, "start b") < at(&lines, "end long") && at(&lines, "start c") < at(&lines, "end long"), "{lines:?}");
        // Two items ready at once: each gets half the cores.
        assert!(lines.iter().filter(|l| l.starts_with("start")).all(|l| l.ends_with(" 2")), "{lines:?}");
        // A failed item is named with its status; the others still ran.
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].starts_with("b ("), "{failed:?}");
    }

    #[test]
    fn an_item_starts_once_what_it_needs_has_ended_beside_a_longer_item_dealt_before_it() {
        // Three alignments in two slots, and each one's cells: `c1` needs `a1`, `c2` needs
        // `a2` (dealt before `a2`, it must wait for it rather than take the free slot). `a3`
        // takes the slot `a1` frees; `c1` and `c2` then run beside `a3` — with the cells in a
        // phase after every alignment, they would wait for `a3`'s end.
        let items =
            [("a1", 0.2, 0, vec![]), ("c2", 0.05, 0, vec![2]), ("a2", 0.6, 0, vec![]), ("a3", 2.5, 0, vec![]), ("c1", 0.05, 0, vec![0])];
        let (lines, failed) = run("deps", &items, 2);
        assert!(failed.is_empty(), "{failed:?}");
        assert!(at(&lines, "end a1") < at(&lines, "start a3"), "{lines:?}");
        assert!(at(&lines, "end a1") < at(&lines, "start c1") && at(&lines, "end a2") < at(&lines, "start c2"), "{lines:?}");
        assert!(at(&lines, "end c1") < at(&lines, "end a3") && at(&lines, "end c2") < at(&lines, "end a3"), "{lines:?}");
    }

    #[test]
    fn an_item_alone_gets_every_core_and_what_needs_a_failed_item_never_starts() {
        // `f` fails; `g` needs it and never starts (named with what it needs). `f` and `x`,
        // started together, get two of the four cores each; `h` needs `x` and is then the only
        // item that can run: it gets all four.
        let items = [("f", 0.05, 3, vec![]), ("x", 0.3, 0, vec![]), ("g", 0.05, 0, vec![0]), ("h", 0.05, 0, vec![1])];
        let (lines, failed) = run("fail", &items, 2);
        assert!(!lines.iter().any(|l| l.contains(" g")), "{lines:?}");
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert!(failed[0].starts_with("f (") && failed[1] == "g (not started: needs f)", "{failed:?}");
        assert!(lines.contains(&"start f 2".to_string()) && lines.contains(&"start x 2".to_string()), "{lines:?}");
        assert!(lines.contains(&"start h 4".to_string()), "{lines:?}");
    }
}
