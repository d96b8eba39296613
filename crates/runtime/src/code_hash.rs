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
//!
//! Only what can change the numbers is hashed: Rust files without their
//! comments (a doc-comment edit must not retrain days of stages), every other
//! file as it is; under a listed directory, Markdown files and `tests`,
//! `benches` and `examples` directories are skipped (none is built into the
//! binary that runs the stages).

use std::path::Path;

use sha2::{Digest, Sha256};

/// The stages and their sources, relative to the workspace root; a directory
/// stands for every file under it, and a path after `!` is left out of the
/// directories above it (training never generates text: a decoding edit does
/// not retrain; `tests/code_keys.rs` checks that no training source calls it).
pub const STAGES: &[(&str, &[&str])] = &[
    (
        "train",
        &[
            "Cargo.lock",
            "crates/core/src",
            "crates/model/src",
            "!crates/model/src/generate.rs",
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
/// sorted order, Rust files without comments; directories walked, skipping
/// `target`, `tests`, `benches` and `examples` directories, dot-files,
/// Markdown files and the files listed after `!`). A listed path that does not
/// exist is hashed as missing, so removing a file changes the hash too.
pub fn hash_sources(root: &Path, paths: &[&str]) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for p in paths.iter().filter(|p| !p.starts_with('!') && !root.join(p).exists()) {
        h.update(format!("missing {p}\n").as_bytes());
    }
    for f in &listed_files(root, paths)? {
        let rel = f.strip_prefix(root).unwrap_or(f);
        let mut body = std::fs::read(f)?;
        if f.extension().is_some_and(|e| e == "rs") {
            body = without_comments(&body);
        }
        h.update(format!("{} {}\n", rel.display(), body.len()).as_bytes());
        h.update(&body);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The files [`hash_sources`] reads, sorted: the listed files that exist and the files under
/// the listed directories (walked as it says), less those listed after `!`.
pub fn listed_files(root: &Path, paths: &[&str]) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let left_out: Vec<std::path::PathBuf> = paths.iter().filter_map(|p| p.strip_prefix('!')).map(|p| root.join(p)).collect();
    for p in paths.iter().filter(|p| !p.starts_with('!')) {
        let full = root.join(p);
        if full.is_dir() {
            walk(&full, &mut files)?;
        } else if full.is_file() {
            files.push(full);
        }
    }
    files.retain(|f| !left_out.contains(f));
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            if !matches!(name, "tests" | "benches" | "examples") {
                walk(&path, out)?;
            }
        } else if !name.ends_with(".md") {
            out.push(path);
        }
    }
    Ok(())
}

/// Rust source without its comments (line, block — nested — and doc comments), everything
/// else byte for byte: string, raw string, byte and char literals are copied whole, so a
/// `//` inside one stays. A block comment becomes one space (it may separate two tokens).
/// Scans bytes: every delimiter is ASCII, and no byte of a multi-byte UTF-8 character is.
pub fn without_comments(src: &[u8]) -> Vec<u8> {
    let n = src.len();
    let mut out = Vec::with_capacity(n);
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < n {
        let rest = &src[i..];
        if rest.starts_with(b"//") {
            while i < n && src[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0usize;
            while i < n {
                if src[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if src[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(b' ');
        } else if let Some(end) = raw_string_end(src, i).filter(|_| i == 0 || !ident(src[i - 1])) {
            out.extend_from_slice(&src[i..end]);
            i = end;
        } else if src[i] == b'"' {
            let start = i;
            i += 1;
            while i < n && src[i] != b'"' {
                i += if src[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(n);
            out.extend_from_slice(&src[start..i]);
        } else if src[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}', 'é') is copied whole; a lifetime or
            // label ('a) is just its quote.
            let start = i;
            let end = if src.get(i + 1) == Some(&b'\\') {
                let mut j = i + 3;
                while j < n && src[j] != b'\'' {
                    j += 1;
                }
                Some(j + 1)
            } else {
                let len = src.get(i + 1).map_or(1, |&b| utf8_len(b));
                (src.get(i + 1 + len) == Some(&b'\'')).then_some(i + 2 + len)
            };
            i = end.unwrap_or(i + 1).min(n);
            out.extend_from_slice(&src[start..i]);
        } else {
            out.push(src[i]);
            i += 1;
        }
    }
    out
}

/// Where a raw string literal starting at `i` (`r"…"`, `r#"…"#`, `br`/`cr` forms) ends.
fn raw_string_end(src: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(src.get(j), Some(b'b' | b'c')) {
        j += 1;
    }
    if src.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = src[j..].iter().take_while(|&&b| b == b'#').count();
    j += hashes;
    if src.get(j) != Some(&b'"') {
        return None;
    }
    j += 1;
    let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
    let at = src[j..].windows(close.len()).position(|w| w == close.as_slice())?;
    Some(j + at + close.len())
}

/// Bytes in the UTF-8 character that starts with `b`.
fn utf8_len(b: u8) -> usize {
    match b {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}
