//! `safetune run --slurm` on a real Slurm: Debian's slurm-wlm, one node, started by
//! `cargo xtask slurm-test`, which runs this ignored test (`--ignored`); `.ci/run` does.
//! A missing or broken Slurm fails it. A tiny-model grid (2 seeds × 6 cells) submitted as job arrays ends
//! with cells byte-identical to a local run, and so does a submission whose array
//! tasks are cancelled mid-run and which is then submitted again.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

/// The tiny spec as a grid over two seeds with three regimes (6 cells per sub-run).
fn grid_spec(d: &Path) -> std::path::PathBuf {
    let spec = std::fs::read_to_string(common::tiny_spec(d)).unwrap();
    let spec = spec
        .replace("seed = 7\n", "seed = 7\nseeds = [7, 8]\n")
        .replace(r#"regimes = ["benign", "high-harm"]"#, r#"regimes = ["benign", "low-harm", "high-harm"]"#);
    let p = d.join("grid.toml");
    std::fs::write(&p, spec).unwrap();
    p
}

fn safetune(args: &[&str], cache: &Path) -> String {
    let r = common::safetune(args, cache);
    assert!(r.status.success(), "safetune {args:?}: {}", String::from_utf8_lossy(&r.stderr));
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// The job ids a `--slurm` submission printed, in order ("preparation job N, cells array N", "report job N").
fn job_ids(out: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for part in out.split([',', '\n']) {
        for key in ["job ", "array "] {
            if let Some(rest) = part.split(key).nth(1) {
                let id: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if !id.is_empty() {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

fn queue() -> String {
    let out = Command::new("squeue").args(["-h", "-o", "%i %T %j"]).output().expect("squeue");
    assert!(out.status.success(), "squeue: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until none of `ids` (or their array tasks) is in the queue.
fn wait_gone(ids: &[String], limit: Duration) {
    let start = Instant::now();
    loop {
        let q = queue();
        if !q.lines().any(|l| ids.iter().any(|id| l.starts_with(&format!("{id} ")) || l.starts_with(&format!("{id}_")))) {
            return;
        }
        assert!(start.elapsed() < limit, "jobs still queued after {limit:?}:\n{q}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn cells_of(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for seed in [7, 8] {
        for (n, b) in common::files(&out.join(format!("tiny/runs/builtin-s{seed}"))) {
            v.push((format!("s{seed}/{n}"), b));
        }
    }
    v
}

#[test]
#[ignore = "needs a Slurm cluster: `cargo xtask slurm-test` starts one and runs this"]
fn a_grid_on_slurm_equals_a_local_run_and_survives_cancel_and_resubmit() {
    let d = common::tmp("slurm");
    let spec = grid_spec(&d);
    let spec = spec.to_str().unwrap();
    let local = d.join("local");
    safetune(&["run", spec, "--out", local.to_str().unwrap()], &d.join("cache-local"));
    let expected = cells_of(&local);
    assert_eq!(expected.len(), 2 * (6 + 2), "2 seeds × (6 cells + base + aligned)");

    // Submitted whole: preparation, 6-task array and report per seed.
    let out = d.join("slurm");
    let printed = safetune(&["run", spec, "--out", out.to_str().unwrap(), "--slurm"], &d.join("cache-slurm"));
    assert!(printed.contains("(6 tasks)"), "{printed}");
    let ids = job_ids(&printed);
    assert_eq!(ids.len(), 5, "2 × (preparation, array) + report: {printed}");
    wait_gone(&ids, Duration::from_secs(1200));
    assert!(out.join("tiny/summary.md").is_file(), "no report: {}", logs(&out));
    assert!(cells_of(&out) == expected, "cells differ from the local run: {}", logs(&out));

    // Cancelled mid-run, then submitted again: nothing lost, nothing twice.
    let out = d.join("slurm-cancel");
    let cache = d.join("cache-cancel");
    let printed = safetune(&["run", spec, "--out", out.to_str().unwrap(), "--slurm"], &cache);
    let ids = job_ids(&printed);
    let start = Instant::now();
    // Wait for an array task of the first seed to be running, then cancel every job.
    while !queue().lines().any(|l| l.starts_with(&format!("{}_", ids[1])) && l.contains("RUNNING")) {
        assert!(start.elapsed() < Duration::from_secs(600), "no array task started:\n{}", queue());
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = Command::new("scancel").args(&ids).status().expect("scancel");
    assert!(st.success());
    wait_gone(&ids, Duration::from_secs(120));
    assert!(!out.join("tiny/summary.md").exists(), "the report ran although its arrays were cancelled");
    let printed = safetune(&["run", spec, "--out", out.to_str().unwrap(), "--slurm"], &cache);
    let ids = job_ids(&printed);
    wait_gone(&ids, Duration::from_secs(1200));
    assert!(out.join("tiny/summary.md").is_file(), "no report after resubmitting: {}", logs(&out));
    assert!(cells_of(&out) == expected, "cells differ after cancel + resubmit: {}", logs(&out));
    let _ = std::fs::remove_dir_all(&d);
}

/// The jobs' logs, for a failure message.
fn logs(out: &Path) -> String {
    let mut s = String::new();
    if let Ok(rd) = std::fs::read_dir(out.join("tiny/slurm/logs")) {
        for e in rd.flatten() {
            s.push_str(&format!("\n--- {}\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()));
        }
    }
    s
}

#[test]
#[ignore = "needs a Slurm cluster: `cargo xtask slurm-test` starts one and runs this"]
fn an_attack_search_on_slurm_equals_a_local_one() {
    let d = common::tmp("slurm-search");
    common::tiny_spec(&d);
    let search = d.join("s.toml");
    std::fs::write(
        &search,
        "base = \"spec.toml\"\ntrials = 4\neta = 2\nrungs = [1, 2]\nseed = 3\nutility_budget = 1.0\n\
         [space]\nlearning_rate = [1e-4, 3e-3]\nmethods = [\"sft-lora\"]\nlora_r = [2, 4]\npoison_ratio = [0.0, 0.5, 1.0]\nn = [8]\n",
    )
    .unwrap();
    let s = search.to_str().unwrap();
    let local = d.join("local");
    safetune(&["attack-search", s, "--out", local.to_str().unwrap(), "--quiet"], &d.join("cache-local"));
    let on_slurm = d.join("slurm");
    safetune(&["attack-search", s, "--out", on_slurm.to_str().unwrap(), "--quiet", "--slurm"], &d.join("cache-slurm"));
    // Rung 0: one job and a 3-task array; rung 1: one job and a 1-task array; the test runs: one and one.
    let logs = std::fs::read_dir(on_slurm.join("s/undefended/slurm/logs")).unwrap().count();
    assert_eq!(logs, (1 + 3) + (1 + 1) + (1 + 1), "one log per job or array task");
    for f in ["search.md", "search.json", "undefended/search.csv", "undefended/search.json"] {
        let (a, b) = (std::fs::read(local.join("s").join(f)), std::fs::read(on_slurm.join("s").join(f)));
        assert!(a.is_ok() && a.ok() == b.ok(), "{f} differs between the local and the Slurm search");
    }
    let _ = std::fs::remove_dir_all(&d);
}
