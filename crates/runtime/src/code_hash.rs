//! Which source files produce each cached stage, and their hash. Compiled
//! twice: by `build.rs`, which hashes the workspace's sources at build time
//! into `SAFETUNE_CODE_TRAIN` / `SAFETUNE_CODE_EVAL`, and into the library
//! (for its tests and for `code_keys`). Uses std and sha2 only.
//!
//! A stage's key holds the hash of the code that computes it, so after an
//! edit a rerun recomputes that stage and the stages after it, and only those:
//! - `train`: alignment and fine-tuning (the model, LoRA, the trainer, every
//!   defense, and the runtime files that drive training);
//! - `eval`: scoring a model (the model's forward and generation, adapters,
//!   scoring, metrics, judges, and the runtime file that drives evaluation).
//!
//! Data code is not listed: every stage's key already holds the hash of the
//! data it reads (the alignment set, the variant pools, the evaluation sets),
//! so a data-code edit that changes any example changes the keys downstream.
//! `Cargo.lock` is in both: a dependency update can change the numbers.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The stages and their sources, relative to the workspace root; a directory
/// stands for every file under it.
pub const STAGES: &[(&str, &[&str])] = &[
    (
        "train",
        &[
            "Cargo.lock",
            "crates/core/src",
            "crates/model/src",
            "crates/lora/src",
            "crates/train/src",
            "crates/defenses",
            "crates/runtime/src/align.rs",
            "crates/runtime/src/cell.rs",
            "crates/runtime/src/stack.rs",
            "crates/runtime/src/defenses.rs",
            "crates/runtime/src/run.rs",
        ],
    ),
    (
        "eval",
        &[
            "Cargo.lock",
            "crates/core/src",
            "crates/model/src",
            "crates/lora/src",
            "crates/eval/src",
            "crates/metrics/src",
            "crates/judges",
            "crates/runtime/src/run.rs",
        ],
    ),
];

/// sha256 over the listed files under `root` (path and contents of each, in
/// sorted order; directories walked; `target` directories and dot-files
/// skipped). A listed path that does not exist is hashed as missing, so
/// removing a file changes the hash too.
pub fn hash_sources(root: &Path, paths: &[&str]) -> std::io::Result<String> {
    let mut files = Vec::new();
    let mut h = Sha256::new();
    for p in paths {
        let full = root.join(p);
        if full.is_dir() {
            walk(&full, &mut files)?;
        } else if full.is_file() {
            files.push(full);
        } else {
            h.update(format!("missing {p}\n").as_bytes());
        }
    }
    files.sort();
    files.dedup();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap_or(f);
        let body = std::fs::read(f)?;
        h.update(format!("{} {}\n", rel.display(), body.len()).as_bytes());
        h.update(&body);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}
