//! Helpers of the end-to-end tests (`pipeline.rs`, `grids.rs`).
#![allow(dead_code)] // each test file uses some of these helpers

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh temporary directory for one test.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("safetune-rt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A spec for the tiny model on the built-in suite: two regimes, LoRA and full fine-tuning.
pub fn tiny_spec(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    safetune_model::export_hf(&safetune_model::tiny_model(21).unwrap(), &model).unwrap();
    let spec = format!(
        r#"
name = "tiny"
seed = 7
[model]
source = "{}"
[data]
task = "builtin"
[alignment]
refusals = 8
recovery = 4
benign = 4
lora = {{ r = 4, alpha = 8.0, dropout = 0.0, targets = ["q_proj", "v_proj"] }}
train = {{ learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 384 }}
[finetune]
n = 8
regimes = ["benign", "high-harm"]
methods = ["sft-lora", "sft-full"]
train = {{ learning_rate = 1e-3, epochs = 1, batch_size = 4, max_len = 384 }}
[eval]
safety_limit = 4
task_limit = 6
safety_max_new_tokens = 6
task_max_new_tokens = 3
batch_size = 4
samples = 2
variants = true
consistency_limit = 3
"#,
        model.display()
    );
    let p = dir.join("spec.toml");
    std::fs::write(&p, spec).unwrap();
    p
}

/// `safetune eval`'s flags for what [`tiny_spec`]'s `[data]` and `[eval]` say (its task, limits,
/// token budgets, batch, samples, variants, consistency limit and seed): an evaluation with these
/// scores a model as that run's cells are scored.
pub const TINY_EVAL_FLAGS: [&str; 19] = [
    "--task",
    "builtin",
    "--safety-limit",
    "4",
    "--task-limit",
    "6",
    "--safety-tokens",
    "6",
    "--task-tokens",
    "3",
    "--batch-size",
    "4",
    "--samples",
    "2",
    "--variants",
    "--consistency-limit",
    "3",
    "--seed",
    "7",
];

/// Runs the `safetune` binary with its own cache and no data directory from the environment,
/// with `RUST_BACKTRACE=1` as in a developer's shell (errors must stay one short line).
pub fn safetune(args: &[&str], cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_safetune"))
        .args(args)
        .env("SAFETUNE_CACHE", cache)
        .env("RUST_BACKTRACE", "1")
        .env_remove("SAFETUNE_DATA_DIR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Asserts that a command was refused as bad input: exit code 2 and one line on stderr that
/// contains `needle`. Returns that line.
#[allow(dead_code)]
pub fn refused(out: &std::process::Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(2), "{needle}: {err}");
    assert!(err.lines().count() == 1 && err.contains(needle), "{needle}: {err}");
    err
}

/// As [`safetune`], with `RUST_LOG` set.
pub fn safetune_logged(args: &[&str], cache: &Path, rust_log: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_safetune"))
        .args(args)
        .env("SAFETUNE_CACHE", cache)
        .env_remove("SAFETUNE_DATA_DIR")
        .env("RUST_LOG", rust_log)
        .output()
        .unwrap()
}

/// Every result file of `cells/` and `models/`, by name, with its bytes.
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for sub in ["cells", "models"] {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            v.push((format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(&p).unwrap()));
        }
    }
    v
}

/// Copies a directory tree (a results directory to tamper with).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
